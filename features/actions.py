"""What an event log's action words mean, and the channels a campaign event can have.

Kept apart from the importer (and free of heavy imports) so the command line can list
the choices in its help without loading the importer.

>>> action_table()[norm_action("Add To Cart")]
('web', 'add_to_cart')
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# What an event log's action values mean: (event type, action). Keys are normalised
# (lower case, "-" and " " as "_"); the words of Google Analytics, Segment, Snowplow, Mixpanel,
# Klaviyo and Mailchimp, and of public shop logs (Retailrocket's view/addtocart/transaction,
# REES46's view/cart/purchase).
_VOCABULARY: dict[tuple[str, str], tuple[str, ...]] = {
    ("web", "page_view"): ("page_view", "pageview", "page", "screen_view", "view_page", "visit", "page_viewed",
                           "$mp_web_page_view", "active_on_site"),
    ("web", "product_view"): ("product_view", "view", "item_view", "view_item", "productview",
                              "product_viewed", "detail", "product_detail", "viewed", "viewed_product"),
    ("web", "add_to_cart"): ("add_to_cart", "addtocart", "cart", "add", "add_cart",
                             "added_to_cart", "product_added", "add_to_basket", "added_to_basket"),
    ("web", "remove_from_cart"): ("remove_from_cart", "removefromcart", "remove_cart",
                                  "product_removed"),
    ("web", "search"): ("search", "products_searched", "view_search_results"),
    ("web", "signup"): ("signup", "sign_up", "register", "registration", "signed_up"),
    ("web", "login"): ("login", "log_in", "sign_in", "signin", "signed_in"),
    ("purchase", "completed"): ("purchase", "transaction", "order", "buy", "purchased",
                                "order_completed", "sale", "placed_order"),
    ("purchase", "refunded"): ("refund", "refunded", "return", "returned", "order_refunded",
                               "cancel", "cancelled", "canceled", "chargeback", "reversed"),
    # Campaign words are read with an "email_" prefix and an "_email" suffix too (email_opened,
    # email_link_clicked; Klaviyo's "Opened Email", "Received Email").
    ("campaign", "sent"): ("sent", "send"),
    ("campaign", "delivered"): ("delivered", "delivery", "received"),
    ("campaign", "opened"): ("opened", "open"),
    ("campaign", "clicked"): ("clicked", "click", "link_clicked"),
    ("campaign", "converted"): ("converted", "conversion", "convert"),
    # A spam complaint ends the mailing as an unsubscribe does (senders must stop sending).
    ("campaign", "unsubscribed"): ("unsubscribed", "unsubscribe", "optout", "opt_out", "unsub",
                                   "marked_as_spam", "spam_complaint", "complained"),
    ("campaign", "bounced"): ("bounced", "bounce", "soft_bounce", "hard_bounce", "soft_bounced", "hard_bounced"),
}
ACTION_ALIASES: dict[str, tuple[str, str]] = {
    spelled: target
    for target, words in _VOCABULARY.items()
    for word in words
    for spelled in ((word, f"email_{word}", f"{word}_email", word.replace("marked_", "marked_email_"))
                    if target[0] == "campaign" else (word,))
}
# What --map may name: each leadpulse action (refund for a refunded purchase), or skip.
TARGETS = frozenset({
    *(a for t, a in _VOCABULARY if t != "purchase"), "purchase", "refund", "skip",
})
CHANNELS = frozenset({"email", "sms", "push", "web", "ads"})


def norm_action(value: str) -> str:
    """An action cell as the alias table spells it: lower case, ``_`` for spaces and dashes.

    >>> norm_action("  Add-To Cart "), norm_action("EMAIL_OPENED")
    ('add_to_cart', 'email_opened')
    """
    return re.sub(r"[\s-]+", "_", value.strip().lower())


def action_table(overrides: Mapping[str, str] = {}) -> dict[str, tuple[str, str]]:
    """Normalised action value -> ``(event type, action)``: the aliases, then ``overrides``.

    A value mapped to ``skip`` gives ``("skip", "")``; look values up with :func:`norm_action`.

    >>> table = action_table({"PV": "page_view", "wishlist": "skip"})
    >>> [table.get(norm_action(v)) for v in ("addtocart", "View", "transaction", "pv", "wishlist", "like")]
    [('web', 'add_to_cart'), ('web', 'product_view'), ('purchase', 'completed'), ('web', 'page_view'), ('skip', ''), None]
    >>> table[norm_action("Email Opened")], table[norm_action("Opened Email")], table[norm_action("Marked Email as Spam")]
    (('campaign', 'opened'), ('campaign', 'opened'), ('campaign', 'unsubscribed'))
    """
    table = dict(ACTION_ALIASES)
    for raw, target in overrides.items():
        table[norm_action(raw)] = action_target(target)
    return table


def action_target(target: str) -> tuple[str, str]:
    """What a ``--map`` target means: ``(event type, action)``, ``("skip", "")`` for skip.

    >>> action_target("page_view"), action_target("refund"), action_target("skip")
    (('web', 'page_view'), ('purchase', 'refunded'), ('skip', ''))
    """
    if target == "skip":
        return ("skip", "")
    if target in ("purchase", "refund"):
        return ("purchase", "completed" if target == "purchase" else "refunded")
    return next(t for t in _VOCABULARY if t[1] == target)


__all__ = ["ACTION_ALIASES", "CHANNELS", "TARGETS", "action_table", "action_target", "norm_action"]

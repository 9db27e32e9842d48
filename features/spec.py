"""Features declared as data.

A :class:`FeatureSpec` says *what* to aggregate (a source: event type and
actions), *how* (an aggregation) and *over what time* (a sliding window or an
exponential half-life). A :class:`DerivedSpec` combines other features at read
time (a smoothed rate, "cart without purchase"). One engine
(:mod:`features.engine`) turns specs into state updates and feature vectors,
so adding a feature is a line of data, not code.

>>> spec = FeatureSpec("page_views_7d", "web:page_view", "count", window="7d")
>>> spec.window_ms // 3_600_000
168
>>> FeatureSpec("bad", "web:teleport", "count")
Traceback (most recent call last):
...
ValueError: bad: unknown action 'teleport' for web
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import cached_property
from typing import Any, Literal

Aggregation = Literal["count", "sum", "max", "min", "first_time", "last_time", "distinct", "decayed"]
DerivedKind = Literal["ratio", "after", "present", "days_since", "mean_gap"]

ACTIONS: dict[str, frozenset[str]] = {
    "web": frozenset(
        {"page_view", "product_view", "add_to_cart", "remove_from_cart", "search", "signup", "login"}
    ),
    # For purchases the "action" is the order status.
    "purchase": frozenset({"completed", "refunded"}),
    "campaign": frozenset(
        {"sent", "delivered", "opened", "clicked", "converted", "unsubscribed", "bounced"}
    ),
}
TIME_AGGS = ("first_time", "last_time")
_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
DAY_MS = 86_400_000


def parse_duration_ms(text: str) -> int:
    """``"90d"`` -> milliseconds; units s, m, h, d, w.

    >>> parse_duration_ms("1h"), parse_duration_ms("2w") // DAY_MS
    (3600000, 14)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 24h, 7d, 2w)")
    return int(float(match.group(1)) * _UNITS_MS[match.group(2)])


def name_words(name: str) -> list[str]:
    """The words of a name, in lower case: ``customerGender``, ``AGE_GROUP``, ``Age Band``.

    >>> name_words("customerGender"), name_words("Shipping and Handling Amount")
    (['customer', 'gender'], ['shipping', 'and', 'handling', 'amount'])
    """
    return [w for w in re.split(r"[^0-9a-z]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()) if w]


# Matched as words of a name in any case (sensitive_word): AGE_GROUP, customer_gender. The
# defaults of the scoring config, the core and the engine alike.
DEFAULT_SENSITIVE = ("age", "age_band", "gender", "sex", "ethnicity", "race", "religion", "nationality",
                     "birth_date", "birthdate", "date_of_birth", "dob", "birth_year", "geschlecht", "sexe",
                     "sexo", "edad")


def sensitive_word(name: str | None, sensitive: Sequence[str]) -> str | None:
    """The sensitive name that ``name`` holds as one of its words, in any case (``None``: none).

    A field is an export's column, named as its tool names it: ``Age``, ``AGE_GROUP`` and
    ``customer_gender`` are the age and gender the defaults name, ``page_views`` and
    ``average_basket`` are not.

    >>> [sensitive_word(n, ("age", "age_band", "gender")) for n in ("Age", "AGE_GROUP", "customerGender",
    ...                                                              "page_views", "average_basket", None)]
    ['age', 'age', 'gender', None, None, None]
    """
    if not name:
        return None
    words = name_words(name)
    for entry in sensitive:
        want = name_words(entry)
        if want and any(words[i:i + len(want)] == want for i in range(len(words) - len(want) + 1)):
            return entry
    return None


def check_name(name: object, what: str = "names") -> None:
    """Refuse a name that is not lower_snake_case (names key Redis, metric labels, model inputs).

    >>> check_name("orders_90d"); check_name("Upsell-Score", "score kind names")
    Traceback (most recent call last):
    ...
    ValueError: Upsell-Score: score kind names are lower_snake_case
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"{name}: {what} are lower_snake_case")


@dataclass(frozen=True)
class FeatureSpec:
    """One aggregated feature.

    ``source`` is ``"type"`` or ``"type:action|action"`` (for purchases the
    action is the status), or ``"any"``; several such selectors join with
    ``+`` (``"web+campaign:clicked"``). ``field`` names the numeric value for
    sum/max/min/decayed (``amount`` or an extra field); without it each event
    counts ``weights.get(action, 1)``. ``distinct`` counts distinct values of
    ``field`` (at most ``cap`` most recent are kept). ``buckets`` sets the
    resolution of a sliding window: window / buckets. ``default`` is the value before any
    event (``None``: no value yet) of a count or sum without a window, a max, a min or a
    time; the others read 0.0 then, and refuse another. The names of ``first_time``
    and ``last_time`` features, and only theirs, end in ``_at``: raw times are
    never model inputs, and :func:`scoring.models.model_input` knows them by name.
    """

    name: str
    source: str
    agg: Aggregation
    window: str | None = None
    half_life: str | None = None
    field: str | None = None
    weights: Mapping[str, float] = dc_field(default_factory=dict)
    buckets: int = 12
    cap: int = 50
    default: float | None = 0.0

    def __post_init__(self) -> None:
        check_name(self.name)
        # Model inputs drop raw times by name (scoring.models.model_input): a time not called
        # *_at would be a model input (an epoch in ms), any other feature called *_at never one.
        if self.agg in TIME_AGGS and not self.name.endswith("_at"):
            raise ValueError(f"{self.name}: a first_time or last_time feature's name ends in _at "
                             "(raw times are never model inputs)")
        if self.agg not in TIME_AGGS and self.name.endswith("_at"):
            raise ValueError(f"{self.name}: only a first_time or last_time feature's name ends in _at "
                             "(those are not model inputs)")
        if not isinstance(self.source, str):
            raise ValueError(f"{self.name}: source is text such as 'web:add_to_cart', not {self.source!r}")
        if self.field is not None and not isinstance(self.field, str):
            raise ValueError(f"{self.name}: field is the name of an event field, not {self.field!r}")
        for key in ("window", "half_life"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{self.name}: {key} is a duration such as 7d, not {value!r}")
        if isinstance(self.buckets, bool) or not isinstance(self.buckets, int) or not 1 <= self.buckets <= 100:
            raise ValueError(f"{self.name}: buckets must be a whole number from 1 to 100, not {self.buckets!r}")
        seen: set[str] = set()  # the actions this feature's source has
        for etype, actions in self.selectors():
            if etype != "any" and etype not in ACTIONS:
                raise ValueError(f"{self.name}: unknown event type {etype!r}")
            for action in actions:
                if action not in ACTIONS.get(etype, ()):
                    raise ValueError(f"{self.name}: unknown action {action!r} for {etype}")
            types = ACTIONS if etype == "any" else (etype,)
            seen.update(actions or (a for t in types for a in ACTIONS[t]))
        # A misspelt action in weights would count 1 for the action it meant, silently.
        if not isinstance(self.weights, Mapping):
            raise ValueError(f"{self.name}: weights map actions to numbers, not {self.weights!r}")
        if set(self.weights) - seen:
            raise ValueError(f"{self.name}: weights for actions its source never has: "
                             f"{sorted(map(str, set(self.weights) - seen))} (it has {', '.join(sorted(seen))})")
        if self.agg == "decayed" and not self.half_life:
            raise ValueError(f"{self.name}: decayed needs half_life")
        if self.agg != "decayed" and self.half_life:
            raise ValueError(f"{self.name}: half_life only goes with agg 'decayed'")
        if self.window and self.agg not in ("count", "sum", "max", "distinct"):
            raise ValueError(f"{self.name}: a window goes with count, sum, max or distinct")
        if self.agg in ("max", "min") and not self.field:
            raise ValueError(f"{self.name}: {self.agg} needs a field")
        if self.agg == "distinct" and not (self.field and self.window):
            raise ValueError(f"{self.name}: distinct needs a field and a window")
        # These read 0.0 when there is nothing to count: another default was ignored, silently.
        if self.default != 0.0 and (self.agg in ("distinct", "decayed") or (self.window and self.agg != "max")):
            what = {"distinct": "a distinct count", "decayed": "a decayed sum"}.get(self.agg, f"a windowed {self.agg}")
            raise ValueError(f"{self.name}: default has no effect on {what} (it reads 0.0 with nothing to "
                             "count); default goes with count and sum without a window, max, min, "
                             "first_time and last_time")
        # Validated now, not at the first event; a bucket must be at least 1 ms (a divisor).
        if self.window and self.window_ms < self.buckets:
            raise ValueError(f"{self.name}: window must be longer than 0 (1 ms per bucket), not {self.window!r}")
        if self.half_life and self.half_life_ms <= 0:
            raise ValueError(f"{self.name}: half_life must be longer than 0, not {self.half_life!r}")

    def selectors(self) -> list[tuple[str, tuple[str, ...]]]:
        """``[(event_type, actions)]``; an empty action tuple matches every action."""
        if self.source == "any":
            return [("any", ())]
        out = []
        for part in self.source.split("+"):
            etype, _, actions = part.partition(":")
            out.append((etype, tuple(a for a in actions.split("|") if a)))
        return out

    @cached_property
    def window_ms(self) -> int:
        return parse_duration_ms(self.window) if self.window else 0

    @cached_property
    def half_life_ms(self) -> int:
        return parse_duration_ms(self.half_life) if self.half_life else 0


@dataclass(frozen=True)
class DerivedSpec:
    """A feature computed at read time from others.

    - ``ratio``: ``(a + prior_a) / (b + prior_b)``, a smoothed rate.
    - ``after``: 1.0 when time feature ``a`` is later than ``b`` (or ``b`` absent).
    - ``present``: 1.0 when ``a`` has a value.
    - ``days_since``: days from time feature ``a`` to the read time (``default`` if absent).
    - ``mean_gap``: mean days between events from (first time, last time, count); needs 2+.
    """

    name: str
    kind: DerivedKind
    inputs: tuple[str, ...]
    prior: tuple[float, float] = (0.0, 0.0)
    default: float | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.name.endswith("_at"):  # see FeatureSpec: *_at names are dropped from model inputs
            raise ValueError(f"{self.name}: a derived feature is never a time: no _at at the end of its name")


# What each derived kind reads: a time feature (True), a number (False) or either (None).
_DERIVED_INPUTS: dict[str, tuple[bool | None, ...]] = {
    "ratio": (False, False), "after": (True, True), "present": (None,), "days_since": (True,),
    "mean_gap": (True, True, False),
}


@dataclass(frozen=True)
class Catalog:
    """The features a deployment computes."""

    features: tuple[FeatureSpec, ...]
    derived: tuple[DerivedSpec, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.features] + [d.name for d in self.derived]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"duplicate feature names: {sorted(dupes)}")
        known: set[str] = {f.name for f in self.features}
        times = {f.name for f in self.features if f.agg in TIME_AGGS}
        for d in self.derived:
            missing = [i for i in d.inputs if i not in known]
            if missing:
                raise ValueError(f"{d.name}: unknown inputs {missing}")
            # days_since over a count read it as an epoch: about 20,000 days, quietly.
            for i, (name, time) in enumerate(zip(d.inputs, _DERIVED_INPUTS.get(d.kind, ()), strict=False)):
                if time is not None and (name in times) != time:
                    wanted = "a time feature (first_time or last_time)" if time else "a number, not a time,"
                    raise ValueError(f"{d.name}: {d.kind} takes {wanted} as input {i + 1}, not {name!r}")
            known.add(d.name)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features] + [d.name for d in self.derived]


def _windows(name: str, source: str, agg: Aggregation, windows: Sequence[str], **kw: Any) -> list[FeatureSpec]:
    return [FeatureSpec(f"{name}_{w}", source, agg, window=w, **kw) for w in windows]


# A refund's amount (never negative in an event) taken off its purchase's.
NET = {"refunded": -1.0}
# Events the customer caused (every web action, an order, a reaction to a campaign).
ACTIVE = "web+purchase:completed+campaign:opened|clicked|converted|unsubscribed"


def default_catalog() -> Catalog:
    """What marketing scoring uses: RFM, tenure, web activity, campaign engagement, decay.

    >>> cat = default_catalog()
    >>> "days_since_last_purchase" in cat.names and "open_rate_90d" in cat.names
    True
    """
    short = ("1h", "24h", "7d", "30d")
    f: list[FeatureSpec] = [
        # Transactional (RFM)
        FeatureSpec("orders_total", "purchase:completed", "count"),
        # Spend is net of refunds (money kept): a customer who refunded every order is no big
        # spender. Orders count what was ordered; refunds count apart (refunds_365d).
        FeatureSpec("spend_total", "purchase", "sum", field="amount", weights=NET),
        *_windows("orders", "purchase:completed", "count", ("90d", "365d")),
        *_windows("spend", "purchase", "sum", ("90d", "365d"), field="amount", weights=NET),
        FeatureSpec("max_order_amount", "purchase:completed", "max", field="amount", default=None),
        FeatureSpec("refunds_365d", "purchase:refunded", "count", window="365d"),
        FeatureSpec("first_purchase_at", "purchase:completed", "first_time", default=None),
        FeatureSpec("last_purchase_at", "purchase:completed", "last_time", default=None),
        FeatureSpec("first_seen_at", "any", "first_time", default=None),
        FeatureSpec("last_seen_at", "any", "last_time", default=None),
        # What the customer did, not what we sent: sends, deliveries and bounces are ours.
        FeatureSpec("last_active_at", ACTIVE, "last_time", default=None),
        # Behavioural (web)
        *_windows("page_views", "web:page_view", "count", short),
        *_windows("product_views", "web:product_view", "count", short),
        *_windows("add_to_carts", "web:add_to_cart", "count", short),
        *_windows("sessions", "web", "distinct", short, field="session_id"),
        FeatureSpec("searches_7d", "web:search", "count", window="7d"),
        FeatureSpec("last_visit_at", "web", "last_time", default=None),
        FeatureSpec("last_add_to_cart_at", "web:add_to_cart", "last_time", default=None),
        FeatureSpec("signed_up_at", "web:signup", "first_time", default=None),
        # Relational (campaigns)
        *_windows("sends", "campaign:sent", "count", ("30d", "90d")),
        *_windows("opens", "campaign:opened", "count", ("30d", "90d")),
        *_windows("clicks", "campaign:clicked", "count", ("30d", "90d")),
        *_windows("conversions", "campaign:converted", "count", ("30d", "90d")),
        FeatureSpec("last_click_at", "campaign:clicked", "last_time", default=None),
        FeatureSpec("unsubscribed_at", "campaign:unsubscribed", "last_time", default=None),
        # Decayed engagement indices
        FeatureSpec(
            "web_engagement", "web", "decayed", half_life="7d",
            weights={"page_view": 1, "product_view": 2, "search": 1, "add_to_cart": 5,
                     "remove_from_cart": 0, "signup": 5, "login": 1},
        ),
        FeatureSpec(
            "campaign_engagement", "campaign", "decayed", half_life="14d",
            weights={"sent": 0, "delivered": 0, "opened": 1, "clicked": 3, "converted": 8,
                     "unsubscribed": 0, "bounced": 0},
        ),
        FeatureSpec("spend_decayed", "purchase:completed", "decayed", half_life="30d", field="amount"),
    ]
    d = [
        DerivedSpec("avg_basket", "ratio", ("spend_total", "orders_total")),
        DerivedSpec("days_since_last_purchase", "days_since", ("last_purchase_at",)),
        DerivedSpec("days_since_first_purchase", "days_since", ("first_purchase_at",)),
        DerivedSpec("tenure_days", "days_since", ("first_seen_at",), default=0.0),
        DerivedSpec("days_since_last_event", "days_since", ("last_seen_at",)),
        DerivedSpec("days_since_last_active", "days_since", ("last_active_at",)),
        DerivedSpec("days_since_last_visit", "days_since", ("last_visit_at",)),
        DerivedSpec("days_since_last_click", "days_since", ("last_click_at",)),
        DerivedSpec("cart_without_purchase", "after", ("last_add_to_cart_at", "last_purchase_at")),
        DerivedSpec("unsubscribed", "present", ("unsubscribed_at",)),
        DerivedSpec("is_buyer", "present", ("first_purchase_at",)),
        # The customer's own rhythm: how long they usually wait, and how overdue they are now.
        DerivedSpec("days_between_purchases", "mean_gap",
                    ("first_purchase_at", "last_purchase_at", "orders_total")),
        DerivedSpec("purchase_overdue_ratio", "ratio",
                    ("days_since_last_purchase", "days_between_purchases")),
        # Beta(1, 4) prior: a customer with no sends reads as a typical 20% opener.
        DerivedSpec("open_rate_90d", "ratio", ("opens_90d", "sends_90d"), prior=(1.0, 5.0)),
        DerivedSpec("click_rate_90d", "ratio", ("clicks_90d", "sends_90d"), prior=(0.25, 5.0)),
    ]
    return Catalog(tuple(f), tuple(d))

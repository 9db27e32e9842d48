"""Which score changes become alerts and lead-nurturing triggers.

Alerts: a score jumps by at least ``jump_points`` within ``jump_window``, or
enters a higher band. Bands use hysteresis (see :class:`scoring.kinds.Bands`)
and each customer has a cooldown per score kind, so a customer hovering at a
threshold does not flap.

Triggers are declared as data (:class:`TriggerRule`); a deterministic salted
hash puts a fixed fraction of customers in a control group, marked
``control: true`` so marketing tools can hold them out and uplift can be
measured.

>>> in_control("c42", salt="s", fraction=0.0), in_control("c42", salt="s", fraction=1.0)
(False, True)
>>> BAND_RANK["hot"] > BAND_RANK["warm"]
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from features.spec import DAY_MS, parse_duration_ms

BAND_RANK = {None: -1, "cold": 0, "warm": 1, "hot": 2}


def in_control(customer_id: str, salt: str, fraction: float) -> bool:
    """Deterministic control-group membership: the same customer always lands the same way."""
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class TriggerRule:
    """A nurturing action fired when a score kind enters a band, or a customer is idle.

    ``band``: fire when the kind's band rises into this band. ``min_idle_days``:
    fire on an idle rescore when the customer has been silent that long (their own
    activity, ``days_since_last_active``: our sends do not count; and has bought
    before, when ``requires_purchase``). ``cooldown`` stops repeats.
    """

    name: str
    kind: str
    action: str
    band: str | None = None
    min_idle_days: float | None = None
    requires_purchase: bool = True
    cooldown: str = "30d"

    @cached_property
    def cooldown_ms(self) -> int:
        return parse_duration_ms(self.cooldown)


def default_triggers() -> list[TriggerRule]:
    return [
        TriggerRule("hot_lead", "purchase_propensity", "route_to_sales", band="hot", requires_purchase=False, cooldown="7d"),
        TriggerRule("churn_risk_high", "churn_risk", "send_retention_offer", band="hot"),
        TriggerRule("likely_responder", "campaign_response", "follow_up_same_campaign", band="hot", requires_purchase=False, cooldown="3d"),
        TriggerRule("re_engage_dormant", "purchase_propensity", "send_win_back", min_idle_days=45),
    ]


@dataclass(frozen=True)
class Policy:
    """Publication, alert and trigger settings (one place, all configurable)."""

    min_change: float = 1.0
    jump_points: float = 15.0
    jump_window: str = "7d"
    alert_cooldown: str = "1d"
    control_fraction: float = 0.1
    control_salt: str = "leadpulse"
    triggers: tuple[TriggerRule, ...] = field(default_factory=lambda: tuple(default_triggers()))

    @cached_property
    def jump_window_ms(self) -> int:
        return parse_duration_ms(self.jump_window)

    @cached_property
    def alert_cooldown_ms(self) -> int:
        return parse_duration_ms(self.alert_cooldown)


# A score history keeps the lowest score per slice of the jump window: at most this many
# slices (and the one being filled), whatever the rescoring rate.
JUMP_SLICES = 8


def jump_from(history: list[tuple[int, float]], value: float, now: int, window_ms: int) -> float:
    """Rise of ``value`` over the lowest score in the window (0 when none).

    ``history`` holds (slice start, lowest score in the slice), as :func:`remember_score`
    keeps it: the window reaches back to the start of its oldest slice, an eighth of the
    window at most beyond it.

    >>> jump_from([(0, 10.0), (5, 30.0)], 40.0, now=6, window_ms=10)
    30.0
    """
    slice_ms = max(1, window_ms // JUMP_SLICES)
    lows = [v for t, v in history if now - t < window_ms + slice_ms]
    return value - min(lows) if lows else 0.0


def remember_score(history: list[tuple[int, float]], ts: int, value: float, window_ms: int) -> list[tuple[int, float]]:
    """The history with a new score: the lowest score per eighth of the window, for the window.

    Bounded however often a customer is rescored; the lows of the whole window stay (an
    hourly score rising for two days over a 7-day window is one rise, not the last 8 hours).

    >>> h: list[tuple[int, float]] = []
    >>> for hour in range(49):  # rises by half a point an hour
    ...     h = remember_score(h, hour * 3_600_000, 0.5 * hour, 7 * 86_400_000)
    >>> len(h), jump_from(h, 24.5, 48 * 3_600_000, 7 * 86_400_000)
    (3, 24.5)
    """
    slice_ms = max(1, window_ms // JUMP_SLICES)
    start = ts - ts % slice_ms
    horizon = ts - window_ms - slice_ms
    # Called at every score: the common cases (nothing expired, a new slice, a score no lower
    # in the same slice) touch the ends of the list only. A new list, never the one given.
    if history and history[0][0] <= horizon:
        history = [h for h in history if h[0] > horizon]
    if history and history[-1][0] == start:
        return history if value >= history[-1][1] else [*history[:-1], (start, value)]
    return [*history[-JUMP_SLICES:], (start, value)]


__all__ = ["BAND_RANK", "DAY_MS", "Policy", "TriggerRule", "default_triggers", "in_control", "jump_from",
           "remember_score"]

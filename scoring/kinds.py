"""Score kinds declared as data.

A learned kind says when a customer is scored, which outcome labels the
example, over what horizon, and what the label is when the horizon closes
without it. Rule kinds (engagement points, RFM grades) need no labels.

>>> kinds = default_kinds()
>>> [k.name for k in kinds]
['purchase_propensity', 'churn_risk', 'campaign_response', 'engagement', 'rfm_segment']
>>> k = kinds[1]
>>> (k.horizon_ms // DAY_MS, k.label_without_outcome, k.requires_purchase)
(60, 1, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from features.spec import DAY_MS, check_name, parse_duration_ms

KindType = Literal["learned", "rule", "rfm"]
ModelName = Literal["logistic", "tree", "forest"]
LearnAt = Literal["horizon", "fresh"]


@dataclass(frozen=True)
class Bands:
    """Value thresholds (0-100) for warm and hot, with hysteresis for leaving a band."""

    warm: float = 30.0
    hot: float = 60.0
    hysteresis: float = 3.0

    def of(self, value: float, previous: str | None = None) -> str:
        """Band for a value; a customer leaves a band only ``hysteresis`` points below it.

        >>> Bands(30, 60, 3).of(58, previous="hot"), Bands(30, 60, 3).of(56, previous="hot")
        ('hot', 'warm')
        """
        warm, hot = self.warm, self.hot
        if previous == "hot":
            hot -= self.hysteresis
        if previous in ("hot", "warm"):
            warm -= self.hysteresis
        return "hot" if value >= hot else "warm" if value >= warm else "cold"


@dataclass(frozen=True)
class ScoreKind:
    """One score a deployment publishes."""

    name: str
    type: KindType = "learned"
    # When to score: these (type, action) pairs always score; otherwise at most every rescore interval.
    score_on: tuple[str, ...] = ()
    only_on: tuple[str, ...] = ()  # if set, score ONLY at these events (e.g. campaign:sent)
    rescore: str = "1d"  # min event time between two scores of one customer (other events)
    rescore_on: tuple[str, ...] = ()  # events ("type" or "type:action") that may rescore; () = any
    tick: str | None = None  # also rescore idle customers this often (event time)
    # Each idle rescore waits max(tick, (tick_growth - 1) x the silence so far; silence is
    # days_since_last_active, the customer's own, where the catalogue has it): with 2, a
    # customer silent since day 0 is rescored at days 7, 14, 28, 56, 112 instead of weekly.
    # A silent customer's features change fast at first (the 1h-7d windows empty) and slowly
    # later, so this follows the score for O(log silence) work, not O(silence). 1 = every tick.
    tick_growth: float = 1.0
    register: str = "1d"  # at most one pending example per customer per this interval
    horizon: str = "7d"
    outcome: tuple[str, ...] = ("purchase:completed",)
    label_on_outcome: int = 1
    label_without_outcome: int = 0
    match_field: str | None = None  # outcome must match the scored event's field (campaign_id)
    requires_purchase: bool = False
    active_within: str | None = None  # eligible only if the last purchase is this recent
    model: ModelName = "logistic"
    min_labels: int = 50  # cold start until this many labels, with min_per_class of each
    consolidate_every: int = 200  # refit on the recent window after this many labels (0 = pure SGD)
    window: int = 20_000  # labels kept for consolidation
    consolidate_max: int = 1_000  # at most this many labels between two refits
    half_life: int = 0  # refit weights: a label this many labels older counts half (0 = off)
    drift_refit: bool = False  # on an ADWIN drift, refit at once on the labels since the drift
    drift_min_rows: int = 1_000  # ... but on at least this many
    missing_indicators: bool = True  # absent "<name>_missing" inputs read 0.0
    min_per_class: int = 10
    # ... and until the model ranks this many recent labels at least as well as the rule did
    # (scored before learning each, beside the rule; 0 = no trial).
    trial: int = 1_000
    # ... reaching back up to this many labels while the last ``trial`` hold fewer than 30 of
    # a class (rare outcomes: a 1% rate gives 10 per 1,000); 0 = exactly ``trial``.
    trial_max: int = 50_000
    # When examples are learned: "horizon" (each at its horizon close, with its final
    # label) or "fresh" (at once with the slow class, again at its outcome; the model
    # corrects for the bias: fake negative calibration, see OnlineModel.learn_fresh).
    learn_at: LearnAt = "horizon"
    bands: Bands = field(default_factory=Bands)
    rule_weights: Mapping[str, float] = field(default_factory=dict)  # rule / prior points
    rule_scale: float = 50.0

    def __post_init__(self) -> None:
        # The name keys Redis (lp:model:<name>), Prometheus labels, topics' records and example
        # ids ("<name>:<customer>:<ms>"): lower_snake_case, as feature names are.
        check_name(self.name, "score kind names")
        if isinstance(self.tick_growth, bool) or not isinstance(self.tick_growth, int | float) \
                or not 1.0 <= self.tick_growth < 100.0:
            raise ValueError(f"{self.name}: tick_growth must be a number from 1 to 100, not {self.tick_growth!r}")
        if self.learn_at not in ("horizon", "fresh"):
            raise ValueError(f"{self.name}: learn_at must be 'horizon' or 'fresh', not {self.learn_at!r}")
        if {self.label_on_outcome, self.label_without_outcome} != {0, 1}:
            raise ValueError(f"{self.name}: label_on_outcome and label_without_outcome must be 0 and 1")

    @cached_property
    def horizon_ms(self) -> int:
        return parse_duration_ms(self.horizon)

    @cached_property
    def rescore_ms(self) -> int:
        return parse_duration_ms(self.rescore)

    @cached_property
    def register_ms(self) -> int:
        return parse_duration_ms(self.register)

    @cached_property
    def tick_ms(self) -> int:
        return parse_duration_ms(self.tick) if self.tick else 0

    @cached_property
    def active_within_ms(self) -> int:
        return parse_duration_ms(self.active_within) if self.active_within else 0

    @property
    def learned(self) -> bool:
        return self.type == "learned"


# Points a marketing tool would give; also the cold-start prior of the learned kinds.
ENGAGEMENT_POINTS: dict[str, float] = {
    "web_engagement": 1.0,
    "campaign_engagement": 2.0,
    "add_to_carts_7d": 4.0,
    "sessions_7d": 2.0,
    "clicks_30d": 4.0,
    "orders_90d": 10.0,
    "spend_decayed": 0.05,
}
PROPENSITY_PRIOR: dict[str, float] = {
    "add_to_carts_7d": 6.0,
    "product_views_7d": 1.0,
    "sessions_7d": 2.0,
    "clicks_30d": 4.0,
    "orders_90d": 5.0,
    "orders_total": 2.0,
    "cart_without_purchase": 8.0,
    "days_since_last_purchase": -0.05,
}
CHURN_PRIOR: dict[str, float] = {
    # Recency dominates churn: long silence, few orders, no recent engagement. Silence is the
    # customer's own (visits, orders, reactions), not our sends. A buyer starts
    # at 30 points: most one-time buyers never return, so even right after a first purchase
    # the prior is about 0.55, not 0 (which put every fresh one-time buyer at the bottom).
    "is_buyer": 30.0,
    "days_since_last_active": 0.8,
    "orders_365d": -6.0,
    "web_engagement": -1.0,
    "campaign_engagement": -1.0,
}
RESPONSE_PRIOR: dict[str, float] = {
    "click_rate_90d": 100.0,
    "open_rate_90d": 20.0,
    "clicks_30d": 5.0,
    "unsubscribed": -50.0,
}


def default_kinds() -> list[ScoreKind]:
    """The five default score kinds (see the README for each definition)."""
    return [
        ScoreKind(
            "purchase_propensity",
            score_on=("web:add_to_cart", "web:signup", "campaign:clicked", "purchase:completed"),
            rescore="1h",
            # Sends, deliveries and opens are weak news: they do not rescore by themselves.
            rescore_on=("web", "purchase", "campaign:clicked", "campaign:converted"),
            tick="7d",
            register="7d",
            horizon="7d",
            active_within=None,
            bands=Bands(warm=15, hot=40),
            rule_weights=PROPENSITY_PRIOR,
            rule_scale=25.0,
        ),
        ScoreKind(
            "churn_risk",
            score_on=("purchase:completed",),
            rescore="1d",
            rescore_on=("web", "purchase", "campaign:clicked", "campaign:converted"),
            tick="14d",
            register="14d",
            horizon="60d",
            label_on_outcome=0,
            label_without_outcome=1,
            requires_purchase=True,
            # A customer silent for longer than the horizon has churned already: no news to predict.
            active_within="60d",
            bands=Bands(warm=40, hot=70),
            rule_weights=CHURN_PRIOR,
            rule_scale=30.0,
        ),
        ScoreKind(
            "campaign_response",
            only_on=("campaign:sent",),
            register="0s",
            horizon="3d",
            outcome=("campaign:clicked", "campaign:converted"),
            match_field="campaign_id",
            bands=Bands(warm=10, hot=30),
            rule_weights=RESPONSE_PRIOR,
            rule_scale=40.0,
        ),
        ScoreKind(
            "engagement",
            type="rule",
            score_on=("web:add_to_cart", "campaign:clicked", "purchase:completed"),
            rescore="6h",
            rescore_on=("web", "purchase", "campaign:opened", "campaign:clicked", "campaign:converted"),
            bands=Bands(warm=30, hot=70),
            rule_weights=ENGAGEMENT_POINTS,
            rule_scale=40.0,
        ),
        ScoreKind(
            "rfm_segment",
            type="rfm",
            score_on=("purchase:completed",),
            rescore="7d",
            rescore_on=("purchase",),
            # Regraded every two weeks while the customer is silent: recency is what changes then,
            # and scored only at purchases every grade had R = 5 (0 days) and R's edges were all 0.
            # Two weeks, not one: on a sparse purchase history weekly regrades made the replay
            # 1.3-1.5x slower; every 14 days they mostly fall on churn's own rescores.
            tick="14d",
            requires_purchase=True,
            bands=Bands(warm=40, hot=75),
        ),
    ]


__all__ = ["DAY_MS", "Bands", "ScoreKind", "default_kinds"]

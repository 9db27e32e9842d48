"""Deterministic event simulator with latent ground truth.

The generative story, one simulated day at a time (event time, not wall time):

* **World.** Customers get a segment (consumer / smb / enterprise), a region
  and latent traits drawn once: a purchase *propensity*, a browsing
  *engagement* and a campaign *responsiveness* (correlated, with noise), a
  daily *churn hazard*, a *one-shot* probability of going dormant right after
  a purchase, a *wake rate* for dormant customers, a basket size, channel
  opt-ins and favourite product categories. A catalogue of products with
  lognormal prices and a calendar of campaigns are drawn too.
* **Acquisition cohorts.** Customers arrive in waves (acquisition pushes,
  a year-end wave) on top of a steady trickle; nobody has an event before
  arriving. A quarter arrive with a shopping intent; most never come back.
* **Shopping missions.** An active customer starts a short *mission*
  (a few days of intent) at a rate driven by propensity, season, weekday and
  recent campaign clicks. During a mission they visit more, view products and
  fill carts, and each day may buy; most missions are abandoned. Outside
  missions there is background browsing (window shopping, noisy signal) and a
  trickle of purchases with no web trace. So views and carts *precede*
  purchases with real but noisy signal.
* **Dormancy.** Customers go dormant (churn hazard, and often right after a
  purchase, so most buyers buy once) and then emit nothing but campaign
  deliveries; dormant customers occasionally wake up, a campaign click wakes
  them too.
* **Campaigns.** Weekly newsletters, promos, SMS and push sends, year-end
  pushes, reactivation mails, and triggered flows (cart-abandon email and
  push, retargeting ads, on-site pop-ups). Each send goes sent -> delivered
  (or bounced) -> maybe opened -> maybe clicked, with delays of seconds to
  days; clicks land on the site and may start a mission; a purchase within
  seven days of a click emits ``converted``. Hard bounces stop a channel, an
  unsubscribed customer gets no further sends.
* **Seasonality.** Weekly rhythm, Black Friday, a December ramp, a Christmas
  dip, January sales and a summer lull; visits follow a diurnal curve.
* **Regime change** (optional). From the midpoint, carts and browsing predict
  much less (more window shopping, more purchases with no web trace), email
  stops converting while SMS and push clicks start to, and the consumer and
  smb segments swap roles, so an online model must adapt.
  ``regime="privacy"`` changes the measurement instead (what Apple's Mail
  Privacy Protection did to email in 2021): from the midpoint, the mail app of
  about 45% of customers opens every delivered email within a minute, whether
  or not anyone reads it, so opens, open rates and "last active" stop telling
  interest or dormancy for them. Clicks still need a real read.
* **Dirty data** (optional, in :func:`write_jsonl` only): malformed JSON,
  missing fields, wrong types, negative amounts, absurd timestamps, unknown
  types and exact duplicates.

Stream details: ``ts`` is RFC 3339 with an offset; the web tracker stamps
local time (``+01:00``), the shop and campaign tools UTC (``+00:00``), so
compare instants, not strings. A few percent of events arrive up to
:data:`MAX_DISORDER_SECONDS` late. Every event carries ``segment`` and
``region``; there is no personal data.

The random streams are split (world, dynamics, event details, dirt), so
``web=False`` / ``campaigns=False`` observe the *same* world through fewer
channels: purchases are identical to those of the full simulation.
Everything is a pure function of the config: same config, same bytes.

>>> events = list(simulate(SimulationConfig(customers=5, days=10, seed=3)))
>>> events == list(simulate(SimulationConfig(customers=5, days=10, seed=3)))
True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CAMPAIGN_ACTIONS",
    "CHANNELS",
    "MAX_DISORDER_SECONDS",
    "REGIONS",
    "REQUIRED_FIELDS",
    "SEGMENTS",
    "WEB_ACTIONS",
    "SimulationConfig",
    "SimulationSummary",
    "ground_truth",
    "simulate",
    "write_jsonl",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000
#: Events come out sorted by ``ts`` except that an event may be delivered up to
#: this many seconds late (as from a real collector): for any two events in the
#: output, a later one is never more than this much older than an earlier one.
MAX_DISORDER_SECONDS = 180

SEGMENTS = ("consumer", "smb", "enterprise")
REGIONS = ("north", "south", "east", "west")
CHANNELS = ("email", "sms", "push", "web", "ads")
WEB_ACTIONS = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "search",
    "signup",
    "login",
)
CAMPAIGN_ACTIONS = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "unsubscribed",
    "bounced",
)
CATEGORIES = (
    "electronics",
    "home",
    "garden",
    "fashion",
    "beauty",
    "sports",
    "toys",
    "books",
    "grocery",
    "office",
)
#: Required fields per event type (the common ones included).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "web": ("event_id", "customer_id", "ts", "type", "action"),
    "purchase": ("event_id", "customer_id", "ts", "type", "order_id", "amount", "currency"),
    "campaign": ("event_id", "customer_id", "ts", "type", "campaign_id", "channel", "action"),
}

_EMAIL, _SMS, _PUSH, _WEB, _ADS = range(5)
# Sources stamp time differently, as real ones do: the web tracker reports
# local time (CET, +01:00), the shop and campaign tools report UTC.
_WEB_OFFSET_MIN = 60
_UTC_OFFSET_MIN = 0
# Random stream ids (one numpy Generator per concern, all from the seed).
_S_WORLD, _S_DYNAMICS, _S_DETAILS, _S_DIRT = 1, 2, 3, 4
# Its own stream: drawing the trait leaves every other draw, and so every other regime, as it was.
_S_MAIL_PROXY = 5


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. The history starts in the past on purpose.

    >>> SimulationConfig(customers=5, days=10).days
    10
    """

    customers: int = 1000
    days: int = 365
    seed: int = 0
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    regime_change: bool = False
    regime: str = "behaviour"  # what changes at the midpoint: "behaviour" or "privacy" (see above)
    dirty: float = 0.0
    web: bool = True
    campaigns: bool = True

    def __post_init__(self) -> None:
        if self.customers < 0:
            raise ValueError("customers must be >= 0")
        if self.days < 1:
            raise ValueError("days must be >= 1")
        if not 0.0 <= self.dirty < 0.9:
            raise ValueError("dirty must be in [0, 0.9)")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {', '.join(REGIMES)}")
        if self.start.tzinfo is None:
            object.__setattr__(self, "start", self.start.replace(tzinfo=UTC))


@dataclass(frozen=True)
class SimulationSummary:
    """Counts of what :func:`write_jsonl` wrote.

    ``events`` counts valid, unique event lines (``web + purchase + campaign``);
    ``malformed`` the invalid lines of any kind and ``duplicates`` the exact
    copies of earlier lines, so ``lines == events + malformed + duplicates``.
    ``customers``, ``buyers`` (at least one completed order) and
    ``repeat_buyers`` (two or more) are computed from the valid lines.
    """

    events: int
    web: int
    purchase: int
    campaign: int
    malformed: int
    duplicates: int
    customers: int
    buyers: int
    repeat_buyers: int
    lines: int = 0
    dirty_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def repeat_buyer_share(self) -> float:
        """Share of buyers with two or more orders (0.0 without buyers)."""
        return self.repeat_buyers / self.buyers if self.buyers else 0.0


# --------------------------------------------------------------------------- helpers


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _sigmoid(x: FloatArray) -> FloatArray:
    return 1.0 / (1.0 + np.exp(-x))


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a bijection on 64-bit ints (unique, random-looking ids)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


_TWO = [f"{i:02d}" for i in range(60)]
_THREE = [f"{i:03d}" for i in range(1000)]


class _Clock:
    """Fast RFC 3339 formatting of epoch milliseconds with a fixed offset."""

    def __init__(self) -> None:
        self._days: dict[tuple[int, int], tuple[str, str]] = {}

    def fmt(self, ms: int, offset_min: int) -> str:
        local = ms + offset_min * MIN_MS
        day, rem = divmod(local, DAY_MS)
        parts = self._days.get((day, offset_min))
        if parts is None:
            sign = "+" if offset_min >= 0 else "-"
            oh, om = divmod(abs(offset_min), 60)
            text = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
            parts = (f"{text}T", f"{sign}{oh:02d}:{om:02d}")
            self._days[(day, offset_min)] = parts
        head, suffix = parts
        sec, milli = divmod(rem, 1000)
        hour, sec = divmod(sec, 3600)
        minute, second = divmod(sec, 60)
        return f"{head}{_TWO[hour]}:{_TWO[minute]}:{_TWO[second]}.{_THREE[milli]}{suffix}"


class _Draws:
    """Buffered uniform / normal draws from a numpy Generator (fast scalar access)."""

    def __init__(self, rng: np.random.Generator, size: int = 1 << 16) -> None:
        self._rng = rng
        self._size = size
        self._u: list[float] = []
        self._n: list[float] = []
        self._iu = 0
        self._in = 0

    def u(self) -> float:
        if self._iu >= len(self._u):
            self._u = self._rng.random(self._size).tolist()
            self._iu = 0
        value = self._u[self._iu]
        self._iu += 1
        return value

    def normal(self) -> float:
        if self._in >= len(self._n):
            self._n = self._rng.standard_normal(self._size).tolist()
            self._in = 0
        value = self._n[self._in]
        self._in += 1
        return value

    def below(self, n: int) -> int:
        return min(int(self.u() * n), n - 1)

    def lognormal_ms(self, median_ms: float, sigma: float) -> int:
        return int(median_ms * math.exp(sigma * self.normal()))

    def poisson(self, lam: float) -> int:
        # Knuth; lam is small everywhere it is used.
        limit = math.exp(-lam)
        k = 0
        p = self.u()
        while p > limit:
            k += 1
            p *= self.u()
        return k


# --------------------------------------------------------------------------- regimes


@dataclass(frozen=True)
class _Regime:
    mission_rate: float  # daily mission start probability per unit of propensity
    arrival_mission: float  # share of new customers arriving with intent
    mission_sessions: float
    bg_sessions: float
    bg_zc: float  # loading of background browsing on propensity (bargain hunters if < 0)
    cart_mission: float
    cart_bg: float
    m0: float  # purchase logit on a mission day, before effects
    a_sess: float
    a_cart: float
    a_prop: float
    a_click: tuple[float, ...]  # by channel, for a click in the last 3 days
    click_mission: tuple[float, ...]  # P(click starts a mission) by channel
    click_shift: tuple[float, ...]  # click logit shift by channel
    click_zc: tuple[float, ...]  # loading of the click logit on propensity, by channel
    direct_rate: float  # purchases with no mission (phone, store, app), per propensity
    abandon: float
    seg_shift: tuple[float, ...]  # log multiplier on mission rate by segment
    proxy_opens: bool = False  # mail apps that open every delivered email (privacy regime)


_REGIME_A = _Regime(
    mission_rate=0.04,
    arrival_mission=0.25,
    mission_sessions=0.95,
    bg_sessions=0.035,
    bg_zc=0.0,
    cart_mission=0.38,
    cart_bg=0.03,
    m0=-3.3,
    a_sess=1.3,
    a_cart=1.3,
    a_prop=0.45,
    a_click=(0.5, 0.1, 0.1, 0.4, 0.3),
    click_mission=(0.22, 0.05, 0.05, 0.2, 0.15),
    click_shift=(0.0, -0.3, -0.3, 0.0, 0.0),
    click_zc=(0.5, 0.5, 0.4, 0.5, 0.6),
    direct_rate=0.0012,
    abandon=0.24,
    seg_shift=(0.0, 0.5, -0.1),
)
# After the change: shoppers buy through the app or marketplaces (fewer, less
# telling visits), bargain hunters browse and fill carts, email clicks come
# from deal hunters who do not buy, SMS and push start to convert, and the
# consumer and smb segments swap roles.
_REGIME_B = _Regime(
    mission_rate=0.04,
    arrival_mission=0.25,
    mission_sessions=0.5,
    bg_sessions=0.07,
    bg_zc=-0.5,
    cart_mission=0.15,
    cart_bg=0.14,
    m0=-2.3,
    a_sess=0.2,
    a_cart=0.2,
    a_prop=0.45,
    a_click=(0.0, 1.2, 1.1, 0.4, 0.6),
    click_mission=(0.0, 0.4, 0.35, 0.2, 0.3),
    click_shift=(0.2, 0.5, 0.5, 0.0, 0.0),
    click_zc=(-0.4, 0.9, 0.8, 0.5, 0.6),
    direct_rate=0.006,
    abandon=0.24,
    seg_shift=(0.4, -0.9, -0.1),
)


# After a privacy change: the same behaviour, measured differently (proxy opens).
_REGIME_PRIVACY = dataclasses.replace(_REGIME_A, proxy_opens=True)
REGIMES = ("behaviour", "privacy")
MAIL_PROXY_SHARE = 0.45  # customers whose mail app opens on delivery, once the change is on


# --------------------------------------------------------------------------- world


@dataclass(frozen=True)
class _Campaign:
    idx: int
    campaign_id: str
    channel: int
    day: int
    hour: float
    kind: str  # newsletter, promo, seasonal, reactivation
    share: float  # share of eligible customers targeted
    segment: int  # -1 for all


@dataclass
class _World:
    config: SimulationConfig
    start_ms: int
    end_ms: int
    mid: int
    segment: IntArray
    region: IntArray
    z: FloatArray  # propensity logit
    propensity: FloatArray
    zc: FloatArray  # standardised propensity
    engagement: FloatArray
    responsiveness: FloatArray
    churn_hazard: FloatArray
    one_shot: FloatArray
    wake_rate: FloatArray
    basket_mu: FloatArray  # log-scale multiplier on quantities
    qty_mean: FloatArray
    optin: BoolArray  # (n, 3): email, sms, push
    bad_email: BoolArray
    mail_proxy: BoolArray  # their mail app opens every delivered email (privacy regime only)
    fav: IntArray  # (n, 2) favourite categories
    arrival_day: IntArray
    arrival_ms: IntArray
    product_cat: IntArray
    product_price: FloatArray
    products_by_cat: list[IntArray]
    product_weight_by_cat: list[FloatArray]
    season: FloatArray  # per day
    weekly: FloatArray  # per day
    campaigns: list[_Campaign]
    flow_ids: dict[str, int]  # flow name -> campaign index
    campaign_ids: list[str]
    campaign_channel: IntArray
    by_day: dict[int, list[_Campaign]]


def _calendar(start: datetime, days: int) -> tuple[FloatArray, FloatArray, list[int]]:
    """Seasonal and weekday multipliers per simulated day; Black Friday day indices."""
    season = np.ones(days)
    weekly = np.ones(days)
    week = (1.08, 1.0, 0.98, 0.97, 0.9, 0.87, 1.12)  # Monday .. Sunday
    black_fridays: list[int] = []
    first = start.date()
    for d in range(days):
        day = first + timedelta(days=d)
        weekly[d] = week[day.weekday()]
        m, dom = day.month, day.day
        s = 1.0
        if (m == 11 and dom >= 15) or (m == 12 and dom <= 22):
            progress = ((day - date(day.year, 11, 15)).days) / 37.0
            s = 1.0 + 0.6 * progress
        elif m == 12 and 23 <= dom <= 26:
            s = 0.7
        elif m == 12:
            s = 1.1
        elif m == 1 and 2 <= dom <= 20:
            s = 1.25
        elif (m == 7 and dom >= 15) or (m == 8 and dom <= 20):
            s = 0.85
        # Black Friday: the day after the fourth Thursday of November, to Cyber Monday.
        nov1 = date(day.year, 11, 1)
        thursday = nov1 + timedelta(days=(3 - nov1.weekday()) % 7 + 21)
        bf = thursday + timedelta(days=1)
        if bf <= day <= bf + timedelta(days=3):
            s *= 2.0
        if day == bf:
            black_fridays.append(d)
        season[d] = s
    return season, weekly, black_fridays


def _arrivals(rng: np.random.Generator, n: int, days: int, black_fridays: list[int]) -> IntArray:
    """Arrival day per customer: a base at the start, a trickle and acquisition waves."""
    n_waves = 3 + days // 180
    centers = list(rng.uniform(0.05 * days, 0.95 * days, size=n_waves))
    widths = list(rng.uniform(3.0, 12.0, size=n_waves))
    weights = list(rng.dirichlet(np.full(n_waves, 2.0)))
    for bf in black_fridays:
        centers.append(bf + 10.0)
        widths.append(14.0)
        weights.append(0.3)
    w = np.asarray(weights)
    w = w / w.sum()
    kind = rng.choice(3, size=n, p=[0.12, 0.3, 0.58])  # base, trickle, wave
    wave = rng.choice(len(w), size=n, p=w)
    day = np.where(
        kind == 0,
        rng.uniform(0, min(14.0, days), size=n),
        np.where(
            kind == 1,
            rng.uniform(0, days, size=n),
            np.asarray(centers)[wave] + np.asarray(widths)[wave] * rng.standard_normal(n),
        ),
    )
    return np.clip(np.floor(day), 0, days - 1).astype(np.int64)


def _campaign_calendar(
    rng: np.random.Generator, start: datetime, days: int, black_fridays: list[int]
) -> tuple[list[_Campaign], dict[str, int]]:
    plans: list[
        tuple[int, int, float, str, float, int]
    ] = []  # day, channel, hour, kind, share, seg
    first = start.date()
    newsletter_weekday = int(rng.integers(0, 5))
    for d in range(days):
        day = first + timedelta(days=d)
        if day.weekday() == newsletter_weekday:
            plans.append((d, _EMAIL, 9.0, "newsletter", 0.92, -1))
    d = int(rng.integers(3, 14))
    while d < days:
        seg = int(rng.integers(0, 3)) if rng.random() < 0.3 else -1
        plans.append((d, _EMAIL, 10.5, "promo", float(rng.uniform(0.3, 0.7)), seg))
        d += int(rng.integers(10, 19))
    d = int(rng.integers(5, 25))
    while d < days:
        plans.append((d, _SMS, 12.0, "promo", float(rng.uniform(0.4, 0.8)), -1))
        d += int(rng.integers(24, 38))
    d = int(rng.integers(2, 12))
    while d < days:
        plans.append((d, _PUSH, 18.0, "promo", float(rng.uniform(0.5, 0.9)), -1))
        d += int(rng.integers(8, 15))
    d = int(rng.integers(20, 40))
    while d < days:
        plans.append((d, _EMAIL, 11.0, "reactivation", 1.0, -1))
        d += 30
    for bf in black_fridays:
        for offset in (-2, 0, 3, 20):
            if 0 <= bf + offset < days:
                for channel, hour in ((_EMAIL, 7.5), (_SMS, 11.5), (_PUSH, 17.5)):
                    plans.append((bf + offset, channel, hour, "seasonal", 1.0, -1))
    plans.sort()
    campaigns: list[_Campaign] = []
    for i, (d, channel, hour, kind, share, seg) in enumerate(plans):
        cid = f"cmp-{i + 1:04d}-{CHANNELS[channel]}-{kind}"
        campaigns.append(_Campaign(i, cid, channel, d, hour, kind, share, seg))
    flows = {  # name: (channel, hour of day)
        "cart-email": (_EMAIL, 10.0),
        "cart-push": (_PUSH, 19.0),
        "retarget-ads": (_ADS, 0.0),
        "onsite-popup": (_WEB, 0.0),
    }
    flow_ids: dict[str, int] = {}
    for name, (channel, hour) in flows.items():
        i = len(campaigns)
        campaigns.append(_Campaign(i, f"flow-{name}", channel, -1, hour, "flow", 1.0, -1))
        flow_ids[name] = i
    return campaigns, flow_ids


def _world(config: SimulationConfig) -> _World:
    rng = _rng(config.seed, _S_WORLD)
    n, days = config.customers, config.days
    start_ms = int(config.start.timestamp() * 1000)
    segment = rng.choice(3, size=n, p=[0.7, 0.22, 0.08]).astype(np.int64)
    region = rng.choice(4, size=n, p=[0.3, 0.26, 0.24, 0.2]).astype(np.int64)
    g = rng.standard_normal((n, 6))
    seg_off = np.array([0.0, 0.25, -0.1])[segment]
    reg_off = np.array([0.1, -0.1, 0.0, 0.05])[region]
    z = -1.35 + seg_off + reg_off + 1.15 * g[:, 0]
    zc = (z + 1.35) / 1.15
    propensity = _sigmoid(z)
    engagement = 0.55 * zc + 0.835 * g[:, 1]
    responsiveness = 0.5 * zc + 0.3 * engagement + 0.8 * g[:, 2]
    churn_hazard = np.clip(np.exp(np.log(1 / 70) - 0.45 * zc + 0.7 * g[:, 3]), 0.0005, 0.25)
    one_shot = _sigmoid(1.3 - 1.1 * zc + 1.5 * g[:, 4])
    wake_rate = np.exp(np.log(1 / 300) + 0.6 * rng.standard_normal(n))
    basket_mu = 0.25 * g[:, 5] + np.array([0.0, 0.3, 0.6])[segment]
    qty_mean = np.array([0.25, 1.5, 6.0])[segment]
    optin = np.column_stack(
        [
            rng.random(n) < np.array([0.68, 0.8, 0.88])[segment],
            rng.random(n) < np.array([0.3, 0.2, 0.1])[segment],
            rng.random(n) < np.array([0.3, 0.15, 0.05])[segment],
        ]
    )
    bad_email = rng.random(n) < 0.03
    # Favourite categories: consumers like anything, businesses office/electronics.
    cat_p = np.array(
        [
            [0.12, 0.14, 0.07, 0.16, 0.1, 0.1, 0.08, 0.09, 0.1, 0.04],
            [0.2, 0.08, 0.04, 0.02, 0.02, 0.04, 0.02, 0.08, 0.1, 0.4],
            [0.35, 0.05, 0.03, 0.01, 0.01, 0.02, 0.01, 0.04, 0.08, 0.4],
        ]
    )
    fav = np.empty((n, 2), dtype=np.int64)
    for s in range(3):
        idx = np.flatnonzero(segment == s)
        fav[idx] = rng.choice(len(CATEGORIES), size=(idx.size, 2), p=cat_p[s])
    season, weekly, black_fridays = _calendar(config.start, days)
    arrival_day = _arrivals(rng, n, days, black_fridays)
    # Arrival time of day: diurnal, bounded to the day.
    arrival_ms = start_ms + arrival_day * DAY_MS + _diurnal_ms(rng, n)
    n_products = 400
    product_cat = rng.integers(0, len(CATEGORIES), size=n_products).astype(np.int64)
    cat_price = np.log(np.array([180.0, 45.0, 35.0, 40.0, 22.0, 50.0, 25.0, 14.0, 9.0, 30.0]))
    product_price = np.round(
        np.exp(cat_price[product_cat] + 0.6 * rng.standard_normal(n_products)), 2
    )
    product_price = np.maximum(product_price, 0.99)
    popularity = rng.pareto(1.2, size=n_products) + 0.05
    products_by_cat = [np.flatnonzero(product_cat == c) for c in range(len(CATEGORIES))]
    weight_by_cat = [np.cumsum(popularity[p]) / popularity[p].sum() for p in products_by_cat]
    campaigns, flow_ids = _campaign_calendar(rng, config.start, days, black_fridays)
    by_day: dict[int, list[_Campaign]] = {}
    for c in campaigns:
        if c.day >= 0:
            by_day.setdefault(c.day, []).append(c)
    return _World(
        config=config,
        start_ms=start_ms,
        end_ms=start_ms + days * DAY_MS,
        mid=days // 2,
        segment=segment,
        region=region,
        z=z,
        propensity=propensity,
        zc=zc,
        engagement=engagement,
        responsiveness=responsiveness,
        churn_hazard=churn_hazard,
        one_shot=one_shot,
        wake_rate=wake_rate,
        basket_mu=basket_mu,
        qty_mean=qty_mean,
        optin=optin,
        bad_email=bad_email,
        mail_proxy=_rng(config.seed, _S_MAIL_PROXY).random(n) < MAIL_PROXY_SHARE,
        fav=fav,
        arrival_day=arrival_day,
        arrival_ms=arrival_ms.astype(np.int64),
        product_cat=product_cat,
        product_price=product_price,
        products_by_cat=products_by_cat,
        product_weight_by_cat=weight_by_cat,
        season=season,
        weekly=weekly,
        campaigns=campaigns,
        flow_ids=flow_ids,
        campaign_ids=[c.campaign_id for c in campaigns],
        campaign_channel=np.array([c.channel for c in campaigns], dtype=np.int64),
        by_day=by_day,
    )


# Visits by hour of day (local time): a lunch bump and an evening peak.
_HOURLY = np.array(
    [0.6, 0.35, 0.2, 0.15, 0.15, 0.25, 0.6, 1.2, 1.8, 2.2, 2.4, 2.6,
     3.0, 2.8, 2.5, 2.4, 2.5, 2.8, 3.2, 3.8, 4.2, 4.0, 3.0, 1.6]
)  # fmt: skip
_HOURLY_CDF = np.cumsum(_HOURLY) / _HOURLY.sum()


def _diurnal_ms(rng: np.random.Generator, size: int) -> IntArray:
    hour = np.searchsorted(_HOURLY_CDF, rng.random(size), side="right")
    return (np.minimum(hour, 23) * HOUR_MS + rng.integers(0, HOUR_MS, size=size)).astype(np.int64)


# --------------------------------------------------------------------------- dynamics


@dataclass
class _Sends:
    """One campaign's sends today; times are epoch ms, -1 for 'did not happen'."""

    campaign: int
    cust: IntArray
    sent: IntArray
    delivered: IntArray
    bounced: IntArray
    opened: IntArray
    clicked: IntArray
    unsub: IntArray


@dataclass
class _DayPlan:
    day: int
    day_ms: int
    mission: BoolArray  # on a mission during today's visits
    sessions: IntArray  # regular sessions per customer today
    carts: IntArray  # add-to-cart actions per customer today
    arrivals: IntArray
    landings: list[tuple[int, int, int]]  # (customer, campaign, click ms) click-throughs today
    buyers: IntArray
    attributed: IntArray  # campaign index per buyer, -1 if none
    sends: list[_Sends]
    onsite: list[tuple[int, bool]]  # (customer, clicked) pop-ups shown today


@dataclass
class _Record:
    dormant_from: dict[int, int] = field(default_factory=dict)
    spells: dict[int, list[tuple[int, int | None]]] = field(default_factory=dict)
    unsubscribed_ms: dict[int, int] = field(default_factory=dict)


def _dynamics(w: _World, record: _Record | None = None) -> Iterator[_DayPlan]:
    """The latent state machine, one day at a time; draws only from the dynamics stream."""
    cfg = w.config
    rng = _rng(cfg.seed, _S_DYNAMICS)
    n = cfg.customers
    never = -(10**6)
    arrived = np.zeros(n, dtype=bool)
    alive = np.zeros(n, dtype=bool)
    mission = np.zeros(n, dtype=bool)
    mcart = np.zeros(n, dtype=bool)
    last_order = np.full(n, never, dtype=np.int64)
    click_day = np.full(n, never, dtype=np.int64)
    click_camp = np.full(n, -1, dtype=np.int64)
    abandon_day = np.full(n, never, dtype=np.int64)
    unsub_ms = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    channel_dead = np.zeros((n, 3), dtype=bool)
    pending: dict[int, list[tuple[int, int, int]]] = {}
    zc = w.zc

    def go_dormant(idx: IntArray, d: int) -> None:
        if record is not None:
            for i in idx.tolist():
                record.dormant_from[i] = d + 1

    def wake(idx: IntArray, d: int) -> None:
        if record is not None:
            for i in idx.tolist():
                since = record.dormant_from.pop(i, None)
                if since is not None:
                    record.spells.setdefault(i, []).append((since, d))

    def send(
        reg: _Regime, sends: list[_Sends], camp: int, idx: IntArray, sent_ms: IntArray
    ) -> None:
        """Send one campaign to ``idx``; apply unsubscribes, hard bounces, schedule clicks."""
        sb = _send_outcomes(w, reg, rng, camp, idx, sent_ms, alive, mission, unsub_ms)
        sends.append(sb)
        has_unsub = sb.unsub >= 0
        uc = sb.cust[has_unsub]
        unsub_ms[uc] = sb.unsub[has_unsub]
        if record is not None:
            for c, t in zip(uc.tolist(), sb.unsub[has_unsub].tolist(), strict=True):
                record.unsubscribed_ms[c] = t
        ch = int(w.campaign_channel[camp])
        if ch < 3:  # a hard bounce (bad address, dead number or token) ends the channel
            hard = (sb.bounced >= 0) & (w.bad_email[sb.cust] | (ch != _EMAIL))
            channel_dead[sb.cust[hard], ch] = True
        for c, t in zip(sb.cust.tolist(), sb.clicked.tolist(), strict=True):
            if t >= 0:
                cd = (t - w.start_ms) // DAY_MS
                if cd < cfg.days:
                    pending.setdefault(cd, []).append((c, camp, t))

    cart_flows = [w.campaigns[w.flow_ids["cart-email"]], w.campaigns[w.flow_ids["cart-push"]]]
    for d in range(cfg.days):
        reg = _REGIME_A
        if cfg.regime_change and d >= w.mid:
            reg = _REGIME_PRIVACY if cfg.regime == "privacy" else _REGIME_B
        day_ms = w.start_ms + d * DAY_MS
        s = float(w.season[d] * w.weekly[d])

        # 1. Campaign sends scheduled today (state as of this morning).
        sends: list[_Sends] = []

        reachable = arrived & (w.arrival_day < d)
        # In time order and in windows that never overlap, so no customer gets a
        # send after unsubscribing from an earlier one.
        today = sorted(w.by_day.get(d, []) + cart_flows, key=lambda c: (c.hour, c.idx))
        cursor = day_ms
        for camp in today:
            base_ms = max(day_ms + int(camp.hour * HOUR_MS), cursor)
            window = 30 * MIN_MS if camp.kind == "flow" else HOUR_MS
            cursor = base_ms + window
            ok = reachable & (unsub_ms > cursor)
            if camp.kind == "flow":  # the day after a cart was abandoned
                ch = camp.channel
                ok &= (abandon_day == d - 1) & (last_order < d - 1)
                ok &= w.optin[:, ch] & ~channel_dead[:, ch]
                idx = np.flatnonzero(ok)
                idx = idx[rng.random(idx.size) < 0.85]
            else:
                if camp.channel < 3:
                    ok &= w.optin[:, camp.channel] & ~channel_dead[:, camp.channel]
                if camp.segment >= 0:
                    ok &= w.segment == camp.segment
                if camp.kind == "reactivation":
                    ok &= (d - last_order > 90) & (d - w.arrival_day > 45)
                idx = np.flatnonzero(ok)
                if camp.share < 1.0:
                    idx = idx[rng.random(idx.size) < camp.share]
            send(reg, sends, camp.idx, idx, base_ms + rng.integers(0, window, size=idx.size))
        # Retargeting ads for three days after an abandoned cart (never unsubscribes).
        ok = reachable & (unsub_ms > day_ms + DAY_MS) & (d - abandon_day >= 1)
        ok &= (d - abandon_day <= 3) & (last_order < abandon_day)
        idx = np.flatnonzero(ok & (rng.random(n) < 0.6))
        send(reg, sends, w.flow_ids["retarget-ads"], idx, day_ms + _diurnal_ms(rng, idx.size))

        # 2. Arrivals: a first visit, often with intent.
        arrivals = np.flatnonzero(w.arrival_day == d)
        arrived[arrivals] = True
        alive[arrivals] = True
        mission[arrivals[rng.random(arrivals.size) < reg.arrival_mission]] = True

        # 3. Click-throughs landing today wake customers and may start a mission.
        landings = pending.pop(d, [])
        if landings:
            lc = np.array([c for c, _, _ in landings], dtype=np.int64)
            lcamp = np.array([k for _, k, _ in landings], dtype=np.int64)
            wake(lc[~alive[lc]], d)
            alive[lc] = True
            arrived[lc] = True
            lch = w.campaign_channel[lcamp]
            p = np.minimum(
                np.asarray(reg.click_mission)[lch] * (0.5 + 2.0 * w.propensity[lc]), 0.95
            )
            mission[lc[rng.random(lc.size) < p]] = True
            click_day[lc] = d
            click_camp[lc] = lcamp

        # 4. Missions start from propensity, season and segment.
        seg_mult = np.exp(np.asarray(reg.seg_shift))[w.segment]
        p_start = np.minimum(reg.mission_rate * w.propensity * s * seg_mult, 0.5)
        mission |= alive & ~mission & (rng.random(n) < p_start)

        # 5. Visits and carts.
        bg = reg.bg_sessions * np.exp(0.7 * w.engagement + reg.bg_zc * zc - 0.245)
        lam = np.where(mission, reg.mission_sessions, bg) * s
        lam[~alive] = 0.0
        sessions = rng.poisson(lam).astype(np.int64)
        sessions[arrivals] = np.maximum(sessions[arrivals], 1)
        carts = rng.binomial(sessions, np.where(mission, reg.cart_mission, reg.cart_bg)).astype(
            np.int64
        )
        mcart |= mission & (carts > 0)
        on_mission = mission.copy()  # how today's visits look (buying ends a mission)

        # 6. On-site pop-ups for today's visitors (also a click channel).
        onsite: list[tuple[int, bool]] = []
        shown = np.flatnonzero((sessions > 0) & (unsub_ms > day_ms + DAY_MS))
        shown = shown[rng.random(shown.size) < 0.05]
        if shown.size:
            logit = (
                -2.8 + reg.click_zc[_WEB] * zc[shown] + 0.6 * mission[shown] + reg.click_shift[_WEB]
            )
            clicked = rng.random(shown.size) < _sigmoid(logit)
            cl = shown[clicked]
            mission[cl[rng.random(cl.size) < reg.click_mission[_WEB]]] = True
            click_day[cl] = d
            click_camp[cl] = w.flow_ids["onsite-popup"]
            onsite = list(zip(shown.tolist(), clicked.tolist(), strict=True))

        # 7. Purchases.
        recent = (d - click_day <= 2) & (click_camp >= 0)
        a_click = np.asarray(reg.a_click)[w.campaign_channel[np.maximum(click_camp, 0)]] * recent
        logit = (
            reg.m0
            + reg.a_sess * (sessions > 0)
            + reg.a_cart * mcart
            + reg.a_prop * zc
            + a_click
            + 0.5 * math.log(s)
        )
        p_buy = np.where(mission, _sigmoid(logit), reg.direct_rate * w.propensity * 4.0 * s)
        p_buy[~alive] = 0.0
        buy = rng.random(n) < p_buy
        buyers = np.flatnonzero(buy)
        attributed = np.where(
            (d - click_day[buyers] <= 7) & (click_camp[buyers] >= 0), click_camp[buyers], -1
        )
        click_camp[buyers] = -1  # one conversion per click
        last_order[buyers] = d
        mission[buyers] = False
        mcart[buyers] = False

        # 8. Missions fade; a filled cart left behind triggers the abandon flows.
        ab = mission & (rng.random(n) < reg.abandon)
        abandon_day[ab & mcart] = d
        mission[ab] = False
        mcart[ab] = False

        # 9. Dormancy: churn hazard, often right after a purchase; some wake up.
        u = rng.random(n)
        woke = arrived & ~alive & (u < w.wake_rate)
        hazard = np.where(buy, w.one_shot, np.where(mission, 0.3 * w.churn_hazard, w.churn_hazard))
        sleep = alive & (u < hazard)
        go_dormant(np.flatnonzero(sleep), d)
        alive[sleep] = False
        mission[sleep] = False
        mcart[sleep] = False
        wake(np.flatnonzero(woke), d)
        alive[woke] = True
        mission[woke & (rng.random(n) < 0.35)] = True

        yield _DayPlan(
            day=d,
            day_ms=day_ms,
            mission=on_mission,
            sessions=sessions,
            carts=carts,
            arrivals=arrivals,
            landings=landings,
            buyers=buyers,
            attributed=attributed,
            sends=sends,
            onsite=onsite,
        )


def _send_outcomes(
    w: _World,
    reg: _Regime,
    rng: np.random.Generator,
    camp: int,
    cust: IntArray,
    sent_ms: IntArray,
    alive: BoolArray,
    mission: BoolArray,
    unsub_ms: IntArray,
) -> _Sends:
    """Delivery, opens, clicks and unsubscribes of one campaign's sends."""
    ch = int(w.campaign_channel[camp])
    m = cust.size
    none = np.full(m, -1, dtype=np.int64)
    zc, resp, eng = w.zc[cust], w.responsiveness[cust], w.engagement[cust]
    asleep = ~alive[cust]
    intent = mission[cust].astype(np.float64)
    # Nobody unsubscribes twice.
    can_unsub = unsub_ms[cust] == np.iinfo(np.int64).max
    u = rng.random((m, 4))
    normals = rng.standard_normal((m, 3))
    if ch == _ADS:
        # An impression; a click comes seconds later or not at all.
        logit = -4.1 + reg.click_zc[_ADS] * zc + 0.7 * intent + 0.3 * resp + reg.click_shift[_ADS]
        click = u[:, 0] < _sigmoid(logit)
        clicked = np.where(
            click, sent_ms + (5_000 * np.exp(0.8 * normals[:, 0])).astype(np.int64), none
        )
        return _Sends(camp, cust, sent_ms, none, none, none, clicked, none)
    bounce_p = {_EMAIL: 0.008, _SMS: 0.01, _PUSH: 0.02}[ch] + (
        0.9 * w.bad_email[cust] if ch == _EMAIL else 0.0
    )
    bounced_b = u[:, 0] < bounce_p
    lag = {_EMAIL: 8_000.0, _SMS: 3_000.0, _PUSH: 1_500.0}[ch]
    delivered = np.where(
        bounced_b, none, sent_ms + (lag * np.exp(0.9 * normals[:, 0])).astype(np.int64)
    )
    bounced = np.where(
        bounced_b, sent_ms + (lag * 3 * np.exp(0.5 * normals[:, 0])).astype(np.int64), none
    )
    ok = ~bounced_b
    sleepy = np.where(asleep, 0.15, 1.0)
    if ch == _SMS:
        # SMS opens are not observable: delivered, then maybe a click on the link.
        opened = none
        logit = -3.3 + 0.5 * resp + reg.click_zc[_SMS] * zc + 0.8 * intent + reg.click_shift[_SMS]
        click = ok & (u[:, 1] < _sigmoid(logit) * sleepy)
        delay = (10 * MIN_MS * np.exp(1.2 * normals[:, 1])).astype(np.int64)
        clicked = np.where(click, delivered + delay, none)
        unsub_b = ok & can_unsub & (u[:, 2] < 0.004 * np.exp(-0.4 * resp))
        unsub = np.where(
            unsub_b, delivered + (20 * MIN_MS * np.exp(normals[:, 2])).astype(np.int64), none
        )
    else:
        if ch == _EMAIL:
            open_logit = -1.35 + 0.7 * resp + 0.2 * eng + 0.6 * intent
            click_logit = (
                -1.9
                + 0.5 * resp
                + reg.click_zc[_EMAIL] * zc
                + 0.5 * intent
                + reg.click_shift[_EMAIL]
            )
            open_median, sigma = 2 * HOUR_MS, 1.4
        else:
            open_logit = -2.4 + 0.6 * resp + 0.3 * eng + 0.6 * intent
            click_logit = -0.3 + 0.4 * resp + reg.click_zc[_PUSH] * zc + reg.click_shift[_PUSH]
            open_median, sigma = 20 * MIN_MS, 1.2
        open_b = ok & (u[:, 1] < _sigmoid(open_logit) * sleepy)
        opened = np.where(
            open_b, delivered + (open_median * np.exp(sigma * normals[:, 1])).astype(np.int64), none
        )
        click = open_b & (u[:, 2] < _sigmoid(click_logit))
        clicked = np.where(
            click, opened + (40_000 * np.exp(0.8 * normals[:, 2])).astype(np.int64), none
        )
        base_unsub = 0.012 if ch == _EMAIL else 0.003
        unsub_p = np.where(open_b, base_unsub * np.exp(-0.5 * resp), 0.0006)
        unsub_b = ok & can_unsub & ~click & (u[:, 3] < unsub_p)
        after = np.where(open_b, opened, delivered)
        unsub = np.where(unsub_b, after + (90_000 * np.exp(normals[:, 2])).astype(np.int64), none)
        if ch == _EMAIL and reg.proxy_opens:
            # The mail app fetches the message (and its tracking pixel) on delivery: the
            # tool records that first open, read or not. Clicks and unsubscribes above
            # come from real reads.
            proxy = ok & w.mail_proxy[cust]
            fetched = delivered + (20_000 * np.exp(0.6 * normals[:, 2])).astype(np.int64)
            first = np.where(open_b, np.minimum(opened, fetched), fetched)
            opened = np.where(proxy, first, opened)
    return _Sends(camp, cust, sent_ms, delivered, bounced, opened, clicked, unsub)


# --------------------------------------------------------------------------- events


class _Emitter:
    """Turns day plans into event dicts, bucketed by day of ``ts``."""

    def __init__(self, w: _World) -> None:
        cfg = w.config
        self.w = w
        self.r = _Draws(_rng(cfg.seed, _S_DETAILS))
        self.clock = _Clock()
        self.keep = {"web": cfg.web, "purchase": True, "campaign": cfg.campaigns}
        self.buckets: dict[int, list[tuple[int, int, dict[str, Any]]]] = {}
        self.seq = 0
        self.salt = (cfg.seed & 0xFFFFFFFF) << 32
        self.order_seq = 0
        self.session_seq = 0
        n = cfg.customers
        self.cid = [f"c{i:06d}" for i in range(n)]
        self.seg = [SEGMENTS[s] for s in w.segment.tolist()]
        self.reg = [REGIONS[r] for r in w.region.tolist()]
        self.registered = [False] * n
        self.seen = [False] * n
        self.cart: dict[int, list[int]] = {}
        self.price = w.product_price.tolist()
        self.pcat = w.product_cat.tolist()
        self.pid = [f"p{i:04d}" for i in range(len(self.price))]
        self.fav = w.fav.tolist()
        self.basket_mu = w.basket_mu.tolist()
        self.qty_mean = w.qty_mean.tolist()
        # A few percent of events reach the collector late (never more than the bound).
        pool_rng = _rng(cfg.seed, _S_DETAILS + 100)
        late = pool_rng.random(4096) < 0.04
        self.delay = np.where(
            late, pool_rng.integers(0, MAX_DISORDER_SECONDS * 1000, 4096), 0
        ).tolist()

    # -- plumbing

    def _id(self, prefix: str, counter: int, salt: int) -> str:
        return f"{prefix}{_mix64(self.salt ^ (salt << 56) ^ counter):016x}"

    def add(self, ms: int, kind: str, cust: int, offset: int, body: dict[str, Any]) -> None:
        seq = self.seq
        self.seq += 1
        if ms >= self.w.end_ms or not self.keep[kind]:
            return
        event: dict[str, Any] = {
            "event_id": self._id("e", seq, 1),
            "customer_id": self.cid[cust],
            "ts": self.clock.fmt(ms, offset),
            "type": kind,
        }
        event.update(body)
        event["segment"] = self.seg[cust]
        event["region"] = self.reg[cust]
        day = (ms - self.w.start_ms) // DAY_MS
        key = ms + self.delay[seq & 4095]
        self.buckets.setdefault(day, []).append((key, seq, event))

    def flush(self, day: int) -> list[dict[str, Any]]:
        bucket = self.buckets.pop(day, [])
        bucket.sort(key=lambda t: (t[0], t[1]))
        return [e for _, _, e in bucket]

    # -- products

    def product(self, cust: int) -> int:
        r = self.r
        cat = self.fav[cust][r.below(2)] if r.u() < 0.7 else r.below(len(CATEGORIES))
        prods = self.w.products_by_cat[cat]
        if prods.size == 0:
            return r.below(len(self.price))
        cdf = self.w.product_weight_by_cat[cat]
        return int(prods[min(int(np.searchsorted(cdf, r.u())), prods.size - 1)])

    # -- web

    def session(self, cust: int, start: int, carts: int, mission: bool, landing: str | None) -> int:
        """Emit one visit; return the time of its last event."""
        r = self.r
        self.session_seq += 1
        sid = self._id("s", self.session_seq, 2)
        t = start

        def web(action: str, **extra: Any) -> None:
            body: dict[str, Any] = {"action": action, "session_id": sid}
            body.update(extra)
            self.add(t, "web", cust, _WEB_OFFSET_MIN, body)

        def step() -> int:
            return max(1_000, r.lognormal_ms(25_000, 0.9))

        if self.registered[cust] and r.u() < 0.45:
            web("login", url="/account/login")
            t += step()
        first_cat = CATEGORIES[self.fav[cust][0]]
        url = f"/lp/{landing}" if landing else ("/" if r.u() < 0.6 else f"/c/{first_cat}")
        web("page_view", url=url)
        if not self.seen[cust]:
            self.seen[cust] = True
            if r.u() < 0.35:
                t += step()
                web("signup", url="/account/signup")
                self.registered[cust] = True
        views = r.poisson(2.6 if mission else 1.1) + (1 if carts else 0)
        viewed: list[int] = []
        for _ in range(views):
            t += step()
            p = self.product(cust)
            cat = CATEGORIES[self.pcat[p]]
            if r.u() < 0.25:
                web("search", url="/search", category=cat)
                t += step()
            web("product_view", url=f"/c/{cat}/{self.pid[p]}", product_id=self.pid[p], category=cat)
            viewed.append(p)
        for _ in range(carts):
            t += step()
            p = viewed[r.below(len(viewed))] if viewed else self.product(cust)
            cat = CATEGORIES[self.pcat[p]]
            web("add_to_cart", url="/cart", product_id=self.pid[p], category=cat)
            basket = self.cart.setdefault(cust, [])
            basket.append(p)
            if r.u() < 0.12 and basket:
                t += step()
                q = basket.pop(r.below(len(basket)))
                web(
                    "remove_from_cart",
                    url="/cart",
                    product_id=self.pid[q],
                    category=CATEGORIES[self.pcat[q]],
                )
        for _ in range(r.poisson(0.8)):
            t += step()
            web("page_view", url=f"/c/{CATEGORIES[self.fav[cust][r.below(2)]]}")
        return t

    # -- purchases

    def purchase(self, cust: int, ms: int, attributed: int) -> None:
        r = self.r
        basket = self.cart.pop(cust, [])[-5:]
        if not basket or r.u() < 0.15:
            basket = basket + [self.product(cust) for _ in range(1 + r.poisson(0.5))]
        items = []
        amount = 0.0
        mu = self.basket_mu[cust]
        for p in basket:
            qty = 1 + r.poisson(self.qty_mean[cust] * math.exp(mu))
            price = round(self.price[p] * (0.85 + 0.3 * r.u()), 2)
            amount += qty * price
            items.append(
                {
                    "product_id": self.pid[p],
                    "category": CATEGORIES[self.pcat[p]],
                    "quantity": qty,
                    "price": price,
                }
            )
        amount = round(amount, 2)
        self.order_seq += 1
        oid = self._id("o", self.order_seq, 3)
        body: dict[str, Any] = {
            "order_id": oid,
            "amount": amount,
            "currency": "EUR",
            "status": "completed",
        }
        if r.u() < 0.9:  # legacy / phone orders come without line items
            body["items"] = items
        self.add(ms, "purchase", cust, _UTC_OFFSET_MIN, body)
        if attributed >= 0:
            cid = self.w.campaign_ids[attributed]
            ch = CHANNELS[int(self.w.campaign_channel[attributed])]
            t = ms + 1_000 + r.below(60_000)
            self.add(
                t,
                "campaign",
                cust,
                _UTC_OFFSET_MIN,
                {"campaign_id": cid, "channel": ch, "action": "converted"},
            )
        if r.u() < 0.04:  # a later refund of the whole order
            t = ms + (2 + r.below(24)) * DAY_MS + r.below(DAY_MS)
            refund = {"order_id": oid, "amount": amount, "currency": "EUR", "status": "refunded"}
            self.add(t, "purchase", cust, _UTC_OFFSET_MIN, refund)

    # -- campaigns

    def sends(self, sb: _Sends) -> None:
        cid = self.w.campaign_ids[sb.campaign]
        ch = CHANNELS[int(self.w.campaign_channel[sb.campaign])]
        cols = (
            ("sent", sb.sent),
            ("delivered", sb.delivered),
            ("bounced", sb.bounced),
            ("opened", sb.opened),
            ("clicked", sb.clicked),
            ("unsubscribed", sb.unsub),
        )
        lists = [(a, col.tolist()) for a, col in cols]
        for i, cust in enumerate(sb.cust.tolist()):
            for action, times in lists:
                t = times[i]
                if t >= 0:
                    body = {"campaign_id": cid, "channel": ch, "action": action}
                    self.add(t, "campaign", cust, _UTC_OFFSET_MIN, body)

    # -- one day

    def day(self, plan: _DayPlan) -> None:
        w, r = self.w, self.r
        for sb in plan.sends:
            self.sends(sb)
        arrival_today = set(plan.arrivals.tolist())
        landing_by: dict[int, list[tuple[int, int]]] = {}
        for c, k, t in plan.landings:
            landing_by.setdefault(c, []).append((t, k))
        onsite_by = dict(plan.onsite)
        buyer_attr = dict(zip(plan.buyers.tolist(), plan.attributed.tolist(), strict=True))
        active = set(np.flatnonzero(plan.sessions).tolist()) | set(landing_by) | set(buyer_attr)
        sessions = plan.sessions.tolist()
        carts = plan.carts.tolist()
        mission = plan.mission.tolist()
        for c in sorted(active):
            earliest = plan.day_ms
            if c in arrival_today:
                earliest = int(w.arrival_ms[c])
            n_sess = sessions[c]
            starts: list[tuple[int, str | None]] = []
            for j in range(n_sess):
                if j == 0 and c in arrival_today:
                    starts.append((earliest, None))
                    continue
                ofs = self._intraday()
                t = plan.day_ms + ofs
                if t < earliest:
                    t = earliest + int(r.u() * (plan.day_ms + DAY_MS - earliest))
                starts.append((t, None))
            for t, k in landing_by.get(c, []):
                starts.append((t + 2_000 + r.below(20_000), w.campaign_ids[k]))
            starts.sort(key=lambda x: x[0])
            # Spread today's carts over the visits.
            cart_left = carts[c]
            last = earliest
            for j, (t, landing) in enumerate(starts):
                k = (
                    cart_left
                    if j == len(starts) - 1
                    else sum(1 for _ in range(cart_left) if r.u() < 0.5)
                )
                cart_left -= k
                t = max(t, last + MIN_MS)
                end = self.session(c, t, k, bool(mission[c]) or c in buyer_attr, landing)
                if j == 0 and c in onsite_by:
                    shown = t + 15_000 + r.below(60_000)
                    body = {
                        "campaign_id": w.campaign_ids[w.flow_ids["onsite-popup"]],
                        "channel": "web",
                    }
                    self.add(shown, "campaign", c, _UTC_OFFSET_MIN, {**body, "action": "sent"})
                    if onsite_by[c]:
                        self.add(
                            shown + 3_000 + r.below(30_000),
                            "campaign",
                            c,
                            _UTC_OFFSET_MIN,
                            {**body, "action": "clicked"},
                        )
                last = end
            if c in buyer_attr:
                if starts:
                    t = last + max(20_000, r.lognormal_ms(90_000, 0.7))
                    self.purchase(c, t, buyer_attr[c])
                else:
                    ofs = self._intraday()
                    t = plan.day_ms + ofs
                    if t < earliest:
                        t = earliest + int(r.u() * (plan.day_ms + DAY_MS - earliest))
                    self.purchase(c, t, buyer_attr[c])

    def _intraday(self) -> int:
        r = self.r
        hour = int(np.searchsorted(_HOURLY_CDF, r.u(), side="right"))
        return min(hour, 23) * HOUR_MS + r.below(HOUR_MS)


# --------------------------------------------------------------------------- public API


def simulate(config: SimulationConfig) -> Iterator[dict[str, Any]]:
    """Generate the clean event stream, ordered by ``ts`` up to :data:`MAX_DISORDER_SECONDS`.

    Lazy: memory stays around one simulated day of events.

    >>> events = list(simulate(SimulationConfig(customers=5, days=10, seed=1)))
    >>> sorted({e["type"] for e in events}) <= ["campaign", "purchase", "web"]
    True
    >>> all(e["customer_id"].startswith("c") and "segment" in e for e in events)
    True
    """
    w = _world(config)
    emitter = _Emitter(w)
    for plan in _dynamics(w):
        emitter.day(plan)
        yield from emitter.flush(plan.day)
    for day in sorted(emitter.buckets):  # nothing should remain, but never lose events
        yield from emitter.flush(day)


def ground_truth(config: SimulationConfig) -> dict[str, dict[str, Any]]:
    """Latent per-customer parameters and realised dormancy, keyed by ``customer_id``.

    Computed from the same random streams as :func:`simulate` (without emitting
    events), so it is exactly the truth behind that stream.

    >>> truth = ground_truth(SimulationConfig(customers=5, days=10, seed=1))
    >>> sorted(truth)[:2]
    ['c000000', 'c000001']
    >>> 0.0 < truth["c000000"]["propensity"] < 1.0
    True
    """
    w = _world(config)
    record = _Record()
    for _ in _dynamics(w, record):
        pass
    clock = _Clock()

    def day_iso(d: int) -> str:
        return clock.fmt(w.start_ms + d * DAY_MS, 0)

    out: dict[str, dict[str, Any]] = {}
    for i in range(config.customers):
        spells = [(a, b) for a, b in record.spells.get(i, [])]
        if i in record.dormant_from:
            spells.append((record.dormant_from[i], None))
        unsub = record.unsubscribed_ms.get(i)
        out[f"c{i:06d}"] = {
            "segment": SEGMENTS[int(w.segment[i])],
            "region": REGIONS[int(w.region[i])],
            "arrival": clock.fmt(int(w.arrival_ms[i]), 0),
            "propensity": round(float(w.propensity[i]), 6),
            "engagement": round(float(w.engagement[i]), 6),
            "responsiveness": round(float(w.responsiveness[i]), 6),
            "churn_hazard": round(float(w.churn_hazard[i]), 6),
            "one_shot": round(float(w.one_shot[i]), 6),
            "wake_rate": round(float(w.wake_rate[i]), 6),
            "basket_scale": round(float(math.exp(w.basket_mu[i])), 6),
            "optin": {
                "email": bool(w.optin[i, 0]),
                "sms": bool(w.optin[i, 1]),
                "push": bool(w.optin[i, 2]),
            },
            "favorite_categories": [CATEGORIES[int(c)] for c in w.fav[i]],
            "dormant_spells": [
                [day_iso(a), None if b is None else day_iso(b)]
                for a, b in spells
                if a < config.days
            ],
            "dormant_at_end": i in record.dormant_from and record.dormant_from[i] < config.days,
            "unsubscribed": None if unsub is None or unsub >= w.end_ms else clock.fmt(unsub, 0),
        }
    return out


# --------------------------------------------------------------------------- dirt

_DIRT_KINDS = (
    ("duplicate", 0.3),
    ("truncated_json", 0.1),
    ("not_json", 0.05),
    ("missing_field", 0.15),
    ("wrong_type", 0.12),
    ("negative_amount", 0.08),
    ("absurd_ts", 0.1),
    ("unknown_type", 0.1),
)
_GARBAGE = (
    "GET /health HTTP/1.1",
    "null",
    "[]",
    '{"event_id": }',
    "\ufeff",
    "<html><body>502 Bad Gateway</body></html>",
    "event_id=123&type=web",
)


def _dump(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def _corrupt(kind: str, event: dict[str, Any], line: str, r: _Draws) -> tuple[str, str]:
    """A malformed variant of a valid line (never a valid event) and the kind applied."""
    bad = dict(event)
    if kind == "negative_amount" and bad["type"] != "purchase":
        # A refund booked upstream as a negative order, in place of this line.
        bad = {k: event[k] for k in ("event_id", "customer_id", "ts")}
        bad["type"] = "purchase"
        bad["order_id"] = f"o{int(r.u() * 2**52):013x}"
        bad["amount"] = round(-math.exp(3.5 + r.normal()), 2)
        bad["currency"] = "EUR"
        bad["status"] = "refunded"
        bad.update(segment=event["segment"], region=event["region"])
        return kind, _dump(bad)
    if kind == "truncated_json":
        return kind, line[: 1 + r.below(max(1, len(line) - 2))]
    if kind == "not_json":
        return kind, _GARBAGE[r.below(len(_GARBAGE))]
    if kind == "missing_field":
        required = REQUIRED_FIELDS.get(bad["type"], REQUIRED_FIELDS["web"])
        bad.pop(required[r.below(len(required))], None)
    elif kind == "wrong_type":
        if bad["type"] == "purchase":
            bad["amount"] = ("abc", "twelve", None, [12.5])[r.below(4)]
        elif bad["type"] == "web":
            bad["action"] = (42, "click!", None)[r.below(3)]
        else:
            bad["channel"] = (["email"], 7, "carrier-pigeon")[r.below(3)]
    elif kind == "negative_amount":
        bad["amount"] = -abs(float(bad["amount"])) - 0.01
    elif kind == "absurd_ts":
        year = "1200" if r.u() < 0.5 else "9999"
        bad["ts"] = year + str(bad["ts"])[4:]
    elif kind == "unknown_type":
        bad["type"] = ("pageview", "call_center", "", "WEB")[r.below(4)]
    return kind, _dump(bad)


def write_jsonl(config: SimulationConfig, path: str | Path) -> SimulationSummary:
    """Write the simulated stream as JSON Lines (dirty lines included); return the counts.

    With ``config.dirty = f`` about a fraction ``f`` of the lines are dirty:
    exact duplicates of recent lines are inserted, the other kinds replace the
    line they corrupt.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     summary = write_jsonl(SimulationConfig(customers=5, days=10, dirty=0.2), os.path.join(tmp, "e.jsonl"))
    >>> summary.lines == summary.events + summary.malformed + summary.duplicates
    True
    """
    r = _Draws(_rng(config.seed, _S_DIRT))
    total_w = sum(wt for _, wt in _DIRT_KINDS)
    kinds = [(k, wt / total_w) for k, wt in _DIRT_KINDS]
    insert_share = dict(kinds)["duplicate"]
    f = config.dirty
    p_dirty = f / (1.0 - f * insert_share) if f > 0 else 0.0
    counts = {"web": 0, "purchase": 0, "campaign": 0}
    kind_counts: dict[str, int] = {}
    customers: set[str] = set()
    orders: dict[str, set[str]] = {}
    recent: deque[str] = deque(maxlen=64)
    malformed = duplicates = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for event in simulate(config):
            line = _dump(event)
            if p_dirty and r.u() < p_dirty:
                u = r.u()
                acc = 0.0
                kind = kinds[-1][0]
                for k, share in kinds:
                    acc += share
                    if u < acc:
                        kind = k
                        break
                if kind == "duplicate":
                    if recent:
                        out.write(line + "\n")
                        _count(event, counts, customers, orders)
                        recent.append(line)
                        out.write(recent[r.below(len(recent))] + "\n")
                        duplicates += 1
                        kind_counts[kind] = kind_counts.get(kind, 0) + 1
                        continue
                else:
                    kind, bad = _corrupt(kind, event, line, r)
                    out.write(bad + "\n")
                    malformed += 1
                    kind_counts[kind] = kind_counts.get(kind, 0) + 1
                    continue
            out.write(line + "\n")
            _count(event, counts, customers, orders)
            recent.append(line)
    events = sum(counts.values())
    buyers = sum(1 for o in orders.values() if o)
    repeat = sum(1 for o in orders.values() if len(o) >= 2)
    return SimulationSummary(
        events=events,
        web=counts["web"],
        purchase=counts["purchase"],
        campaign=counts["campaign"],
        malformed=malformed,
        duplicates=duplicates,
        customers=len(customers),
        buyers=buyers,
        repeat_buyers=repeat,
        lines=events + malformed + duplicates,
        dirty_kinds=dict(sorted(kind_counts.items())),
    )


def _count(
    event: dict[str, Any],
    counts: dict[str, int],
    customers: set[str],
    orders: dict[str, set[str]],
) -> None:
    counts[event["type"]] += 1
    cust = event["customer_id"]
    customers.add(cust)
    if event["type"] == "purchase" and event.get("status") == "completed":
        orders.setdefault(cust, set()).add(event["order_id"])

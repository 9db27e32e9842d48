"""The pure engine: every aggregation, windows, derived features, lateness. No services."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from features.engine import TIME_FIELD, FeatureEngine, State, apply_ops
from features.events import AnyEvent, decode
from features.spec import DAY_MS, Catalog, DerivedSpec, FeatureSpec, default_catalog
from features.store import InMemoryFeatureStore, Update

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000
_ids = itertools.count()


def ev(kind: str, ts: int, customer: str = "c1", **fields: Any) -> AnyEvent:
    body: dict[str, Any] = {"event_id": f"e{next(_ids)}", "customer_id": customer, "ts": ts}
    if kind == "purchase":
        body |= {"type": "purchase", "order_id": "o", "amount": 10.0, "currency": "EUR"}
    elif kind == "campaign":
        body |= {"type": "campaign", "campaign_id": "k1", "channel": "email", "action": "sent"}
    else:
        body |= {"type": "web", "action": "page_view"}
    body |= fields
    event = decode(orjson.dumps(body))
    assert not hasattr(event, "reason"), event
    return event


def feed(engine: FeatureEngine, events: list[AnyEvent], state: State | None = None) -> State:
    state = {} if state is None else state
    for e in events:
        apply_ops(state, engine.ops_for(e))
    return state


@pytest.fixture(scope="module")
def engine() -> FeatureEngine:
    return FeatureEngine(default_catalog())


# -- aggregations ---------------------------------------------------------------------


def test_count_and_sum_totals(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("purchase", T0, amount=80), ev("purchase", T0 + HOUR, amount=20.5)])
    v = engine.vector(s, T0 + 2 * HOUR)
    assert v["orders_total"] == 2.0
    assert v["spend_total"] == 100.5
    assert v["avg_basket"] == pytest.approx(50.25)


def test_refund_is_not_an_order_and_spend_is_net_of_refunds(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("purchase", T0, amount=80, status="refunded")])
    v = engine.vector(s, T0)
    # A refund of an order from before the history: no order, and money given back.
    assert v["orders_total"] == 0.0 and v["spend_total"] == -80.0 and v["spend_365d"] == -80.0
    assert v["refunds_365d"] == 1.0
    # Before: spend counted completed purchases only, so a customer who refunded every order
    # (an import makes a refunded order its purchase and its refund) ranked as a big spender.
    s = feed(engine, [ev("purchase", T0, amount=80), ev("purchase", T0 + HOUR, amount=30),
                      ev("purchase", T0 + 2 * HOUR, amount=80, status="refunded")])
    v = engine.vector(s, T0 + 3 * HOUR)
    assert (v["orders_total"], v["spend_total"], v["spend_90d"], v["refunds_365d"]) == (2.0, 30.0, 30.0, 1.0)


def test_max_and_min(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("purchase", T0, amount=5), ev("purchase", T0 + 1, amount=50),
                      ev("purchase", T0 + 2, amount=7)])
    assert engine.vector(s, T0 + 3)["max_order_amount"] == 50.0
    cat = Catalog((FeatureSpec("min_amount", "purchase:completed", "min", field="amount", default=None),))
    small = FeatureEngine(cat)
    s2 = feed(small, [ev("purchase", T0, amount=5), ev("purchase", T0 + 1, amount=3),
                      ev("purchase", T0 + 2, amount=9)])
    assert small.vector(s2, T0 + 3)["min_amount"] == 3.0
    assert small.vector({}, T0)["min_amount"] is None


def test_first_and_last_time_regardless_of_order(engine: FeatureEngine) -> None:
    events = [ev("web", T0 + 5 * HOUR), ev("web", T0 + HOUR), ev("web", T0 + 3 * HOUR)]
    s = feed(engine, events)
    v = engine.vector(s, T0 + 6 * HOUR)
    assert v["first_seen_at"] == float(T0 + HOUR)
    assert v["last_seen_at"] == float(T0 + 5 * HOUR)
    assert v["tenure_days"] == pytest.approx(5 / 24)


def test_distinct_sessions_per_window(engine: FeatureEngine) -> None:
    events = [
        ev("web", T0, session_id="s1"),
        ev("web", T0 + 10, session_id="s1"),
        ev("web", T0 + 2 * HOUR, session_id="s2"),
        ev("web", T0 + 3 * DAY_MS, session_id="s3"),
        ev("web", T0 + 3 * DAY_MS + 5, action="login"),  # no session id: not counted
    ]
    s = feed(engine, events)
    v = engine.vector(s, T0 + 3 * DAY_MS + 10)
    assert v["sessions_1h"] == 1.0
    assert v["sessions_24h"] == 1.0
    assert v["sessions_7d"] == 3.0
    assert v["sessions_30d"] == 3.0
    # s1 seen again later moves its "last seen" forward
    feed(engine, [ev("web", T0 + 3 * DAY_MS + 20, session_id="s1")], s)
    assert engine.vector(s, T0 + 3 * DAY_MS + 30)["sessions_1h"] == 2.0


def test_distinct_cap_evicts_oldest() -> None:
    cat = Catalog((FeatureSpec("cats_7d", "web", "distinct", window="7d", field="category", cap=3),))
    eng = FeatureEngine(cat)
    s = feed(eng, [ev("web", T0 + i, category=f"k{i}") for i in range(5)])
    kept = sorted(k for k in s if "|d|" in k)
    assert kept == ["web:category|d|k2", "web:category|d|k3", "web:category|d|k4"]
    assert s["web:category|n"] == 3.0
    assert eng.vector(s, T0 + 10)["cats_7d"] == 3.0


def test_distinct_eviction_tie_breaks_on_value() -> None:
    cat = Catalog((FeatureSpec("cats_7d", "web", "distinct", window="7d", field="category", cap=2),))
    eng = FeatureEngine(cat)
    s = feed(eng, [ev("web", T0, category="b"), ev("web", T0, category="a"),
                   ev("web", T0, category="c")])
    assert sorted(k.rsplit("|", 1)[1] for k in s if "|d|" in k) == ["b", "c"]


@pytest.mark.parametrize("seed", range(6))
def test_distinct_features_sharing_a_field_each_read_their_own_cap(seed: int) -> None:
    """Features over one source and field share one map, kept to the largest cap: each
    still reads what it would alone (its cap most recent values), late events and ties included."""
    import random

    rng = random.Random(seed)
    small = FeatureSpec("cats_small_7d", "web", "distinct", window="7d", field="category", cap=3)
    mid = FeatureSpec("cats_mid_1d", "web", "distinct", window="1d", field="category", cap=5)
    big = FeatureSpec("cats_30d", "web", "distinct", window="30d", field="category", cap=40)
    shared = FeatureEngine(Catalog((small, mid, big)))
    alone = {spec.name: FeatureEngine(Catalog((spec,))) for spec in (small, mid, big)}
    states: dict[str, State] = {name: {} for name in [*alone, "shared"]}
    newest = T0
    for _ in range(120):
        ts = newest + rng.choice((0, 0, HOUR, 5 * HOUR, DAY_MS)) - rng.choice((0, 0, 0, 3 * HOUR))
        newest = max(newest, ts)
        event = ev("web", ts, category=f"k{rng.randrange(12)}")
        apply_ops(states["shared"], shared.ops_for(event))
        for name, eng in alone.items():
            apply_ops(states[name], eng.ops_for(event))
        for as_of in (newest, newest + 2 * DAY_MS):
            got = shared.vector(states["shared"], as_of)
            want = {name: eng.vector(states[name], as_of)[name] for name, eng in alone.items()}
            assert {name: got[name] for name in want} == want


def test_decayed_sum_halves_per_half_life(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("web", T0, action="add_to_cart")])  # weight 5
    assert engine.vector(s, T0)["web_engagement"] == 5.0
    assert engine.vector(s, T0 + 7 * DAY_MS)["web_engagement"] == pytest.approx(2.5)
    assert engine.vector(s, T0 + 14 * DAY_MS)["web_engagement"] == pytest.approx(1.25)
    # reading before the last event does not grow the value
    assert engine.vector(s, T0 - DAY_MS)["web_engagement"] == 5.0


def test_decayed_out_of_order_equals_in_order(engine: FeatureEngine) -> None:
    a = ev("web", T0, action="page_view")
    b = ev("web", T0 + 3 * DAY_MS, action="product_view")
    forward, backward = feed(engine, [a, b]), feed(engine, [b, a])
    at = T0 + 4 * DAY_MS
    assert engine.vector(backward, at)["web_engagement"] == pytest.approx(
        engine.vector(forward, at)["web_engagement"], rel=1e-12
    )
    expected = 1 * 2 ** (-4 / 7) + 2 * 2 ** (-1 / 7)
    assert engine.vector(forward, at)["web_engagement"] == pytest.approx(expected, rel=1e-12)


def test_decayed_with_field_amount(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("purchase", T0, amount=100)])
    assert engine.vector(s, T0 + 30 * DAY_MS)["spend_decayed"] == pytest.approx(50.0)


def test_campaign_weights_zero_still_recorded(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("campaign", T0, action="sent"), ev("campaign", T0 + 1, action="opened"),
                      ev("campaign", T0 + 2, action="clicked")])
    v = engine.vector(s, T0 + 3)
    assert v["sends_30d"] == 1.0 and v["opens_90d"] == 1.0 and v["clicks_30d"] == 1.0
    assert v["campaign_engagement"] == pytest.approx(4.0, rel=1e-9)
    assert v["last_click_at"] == float(T0 + 2)


# -- windows --------------------------------------------------------------------------


def test_window_slides_out(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("web", T0), ev("web", T0 + 30 * 60_000)])
    assert engine.vector(s, T0 + 30 * 60_000)["page_views_1h"] == 2.0
    # 1h window, 12 buckets of 5 minutes: the first event's bucket leaves after an hour
    assert engine.vector(s, T0 + HOUR + 5 * 60_000)["page_views_1h"] == 1.0
    assert engine.vector(s, T0 + 2 * HOUR)["page_views_1h"] == 0.0
    assert engine.vector(s, T0 + 2 * HOUR)["page_views_24h"] == 2.0


def test_ring_slot_reused_by_newer_bucket(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("web", T0)])
    # 13 slots of 5 minutes: 65 minutes later the same slot serves a new bucket
    feed(engine, [ev("web", T0 + 65 * 60_000)], s)
    assert engine.vector(s, T0 + 65 * 60_000)["page_views_1h"] == 1.0
    slots = [k for k in s if k.startswith("page_views_1h|") and k.endswith("i")]
    assert len(slots) == 1
    # an event for the evicted (older) bucket cannot take the slot back
    feed(engine, [ev("web", T0 + 1)], s)
    assert engine.vector(s, T0 + 65 * 60_000)["page_views_1h"] == 1.0


def test_late_event_lands_in_its_bucket(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("web", T0 + 2 * DAY_MS)])
    feed(engine, [ev("web", T0 + DAY_MS)], s)  # a day late, still inside 7d
    v = engine.vector(s, T0 + 2 * DAY_MS)
    assert v["page_views_7d"] == 2.0 and v["page_views_24h"] == 1.0


def test_windowed_sum_and_max_modes() -> None:
    cat = Catalog((
        FeatureSpec("spend_1d", "purchase:completed", "sum", window="1d", field="amount"),
        FeatureSpec("big_1d", "purchase:completed", "max", window="1d", field="amount", default=None),
    ))
    eng = FeatureEngine(cat)
    s = feed(eng, [ev("purchase", T0, amount=3), ev("purchase", T0 + 1, amount=9),
                   ev("purchase", T0 + HOUR * 5, amount=4)])
    v = eng.vector(s, T0 + HOUR * 6)
    assert v["spend_1d"] == 16.0 and v["big_1d"] == 9.0
    v2 = eng.vector(s, T0 + 3 * DAY_MS)
    assert v2["spend_1d"] == 0.0 and v2["big_1d"] is None


def test_weights_and_extra_field() -> None:
    cat = Catalog((
        FeatureSpec("weighted", "web", "count", weights={"add_to_cart": 3, "page_view": 0.5}),
        FeatureSpec("score_sum", "web", "sum", field="score"),
    ))
    eng = FeatureEngine(cat)
    s = feed(eng, [ev("web", T0, action="add_to_cart", score=2), ev("web", T0 + 1, score="x"),
                   ev("web", T0 + 2, action="login")])
    v = eng.vector(s, T0 + 3)
    assert v["weighted"] == 4.5
    assert v["score_sum"] == 2.0  # a non-numeric extra value is skipped


def test_extra_fields_named_as_pydantic_methods() -> None:
    # `copy`, `json`, `model_dump` are BaseModel methods: the event's extra field is read, not them.
    cat = Catalog((
        FeatureSpec("copies_30d", "campaign", "distinct", window="30d", field="copy"),
        FeatureSpec("json_sum", "campaign", "sum", field="json"),
        FeatureSpec("dump_max", "campaign", "max", field="model_dump"),
        FeatureSpec("validate_30d", "campaign", "distinct", window="30d", field="validate"),
    ))
    eng = FeatureEngine(cat)
    s = feed(eng, [ev("campaign", T0 + i, copy="A", json=2, model_dump=5 - i) for i in range(4)])
    v = eng.vector(s, T0 + 10)
    assert v["copies_30d"] == 1.0 and v["json_sum"] == 8.0 and v["dump_max"] == 5.0
    assert v["validate_30d"] == 0.0  # absent: not the method, counted once per event


# -- derived --------------------------------------------------------------------------


def test_derived_features(engine: FeatureEngine) -> None:
    empty = engine.vector({}, T0)
    assert empty["open_rate_90d"] == pytest.approx(0.2)  # Beta(1, 4) prior
    assert empty["click_rate_90d"] == pytest.approx(0.05)
    assert empty["avg_basket"] is None
    assert empty["days_since_last_purchase"] is None
    assert empty["tenure_days"] == 0.0
    assert empty["cart_without_purchase"] == 0.0
    assert empty["unsubscribed"] == 0.0

    s = feed(engine, [ev("campaign", T0, action="sent"), ev("campaign", T0 + 1, action="opened"),
                      ev("web", T0 + 2, action="add_to_cart")])
    v = engine.vector(s, T0 + 2 * DAY_MS)
    assert v["open_rate_90d"] == pytest.approx(2 / 6)
    assert v["cart_without_purchase"] == 1.0
    feed(engine, [ev("purchase", T0 + 3), ev("campaign", T0 + 4, action="unsubscribed")], s)
    v = engine.vector(s, T0 + 2 * DAY_MS)
    assert v["cart_without_purchase"] == 0.0
    assert v["unsubscribed"] == 1.0
    assert v["days_since_last_purchase"] == pytest.approx(2.0, abs=1e-6)


def test_activity_is_the_customers_own_not_our_sends(engine: FeatureEngine) -> None:
    s = feed(engine, [ev("web", T0), ev("campaign", T0 + 5 * DAY_MS, action="sent"),
                      ev("campaign", T0 + 6 * DAY_MS, action="delivered")])
    v = engine.vector(s, T0 + 10 * DAY_MS)
    assert v["days_since_last_event"] == pytest.approx(4.0)  # a send is an event...
    assert v["days_since_last_active"] == pytest.approx(10.0)  # ...but not the customer's doing
    feed(engine, [ev("campaign", T0 + 8 * DAY_MS, action="clicked"), ev("purchase", T0 + 7 * DAY_MS)], s)
    assert engine.vector(s, T0 + 10 * DAY_MS)["days_since_last_active"] == pytest.approx(2.0)


def test_a_source_joins_several_selectors() -> None:
    spec = FeatureSpec("acts", "web:login+campaign:clicked|opened", "count")
    assert spec.selectors() == [("web", ("login",)), ("campaign", ("clicked", "opened"))]
    engine = FeatureEngine(Catalog((spec,)))
    s = feed(engine, [ev("web", T0, action="login"), ev("web", T0, action="page_view"),
                      ev("campaign", T0, action="opened"), ev("campaign", T0, action="sent")])
    assert engine.vector(s, T0)["acts"] == 2.0
    with pytest.raises(ValueError, match="unknown action"):
        FeatureSpec("bad", "web:login+campaign:teleported", "count")


def test_catalog_validation() -> None:
    with pytest.raises(ValueError, match="sensitive"):
        FeatureEngine(Catalog((FeatureSpec("age_sum", "web", "sum", field="age"),)), sensitive=("age",))
    with pytest.raises(ValueError, match="unknown inputs"):
        Catalog((), (DerivedSpec("x", "present", ("nope",)),))
    with pytest.raises(ValueError, match="duplicate"):
        Catalog((FeatureSpec("a", "web", "count"), FeatureSpec("a", "web", "count")))
    with pytest.raises(ValueError, match="half_life"):
        FeatureSpec("d", "web", "decayed")


def test_unknown_op_raises() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        apply_ops({}, [("?", "x")])


def test_ops_are_json_plain_tuples(engine: FeatureEngine) -> None:
    ops = engine.ops_for(ev("web", T0, session_id="s1", action="add_to_cart"))
    assert ops and all(isinstance(op, tuple) for op in ops)
    assert orjson.loads(orjson.dumps(ops)) == [list(op) for op in ops]
    assert engine.ops_for(ev("campaign", T0, action="bounced"))  # last_seen_at etc.


def test_values_equal_the_vectors_for_the_names_asked(engine: FeatureEngine) -> None:
    from scoring.simulator import SimulationConfig, simulate

    states: dict[str, State] = {}
    checked = 0
    names = ("orders_total", "spend_total", "days_since_last_purchase", "days_since_last_event",
             "days_between_purchases", "page_views_24h", "web_engagement")
    for i, raw in enumerate(simulate(SimulationConfig(customers=40, days=60, seed=7))):
        e = decode(orjson.dumps(raw))
        assert not isinstance(e, str) and hasattr(e, "customer_id")
        state = states.setdefault(e.customer_id, {})
        apply_ops(state, engine.ops_for(e))
        if i % 7 == 0:  # now, and weeks later (windows slide out, recency grows)
            for as_of in (e.ts_ms, e.ts_ms + 20 * DAY_MS):
                vector = engine.vector(state, as_of)
                assert engine.values(state, as_of, names) == {n: vector[n] for n in names}
                checked += 1
    assert checked > 200
    with pytest.raises(ValueError, match="sessions_7d"):
        engine.values({}, T0, ("sessions_7d",))  # a distinct count needs the whole vector


# -- lateness and idempotency in the reference store ----------------------------------


def test_lateness_duplicate_order(engine: FeatureEngine) -> None:
    store = InMemoryFeatureStore(lateness_ms=HOUR)
    a, late, ok = ev("web", T0 + 3 * HOUR), ev("web", T0), ev("web", T0 + 2 * HOUR + 1)
    ups = [Update.of(e, engine.ops_for(e)) for e in (a, late, ok, a)]
    res = store.apply(ups)
    assert res.statuses == ["applied", "late", "applied", "duplicate"]
    assert res.before == {"c1": {}}
    state = store.read(["c1"])["c1"]
    assert state[TIME_FIELD] == float(T0 + 3 * HOUR)
    assert engine.vector(state, T0 + 3 * HOUR)["page_views_24h"] == 2.0
    # a late redelivery of an applied event is a duplicate, not late: its id is checked first
    later = ev("web", T0 + 10 * HOUR)
    store.apply([Update.of(later, engine.ops_for(later))])
    assert store.apply([ups[2], ups[1]]).statuses == ["duplicate", "late"]


def test_old_ids_forgotten_beyond_lateness(engine: FeatureEngine) -> None:
    store = InMemoryFeatureStore(lateness_ms=HOUR)
    events = [ev("web", T0 + i * 10 * 60_000) for i in range(100)]
    store.apply([Update.of(e, engine.ops_for(e)) for e in events])
    ids = store.remembered_ids("c1")
    assert len(ids) < 100
    assert {e.event_id for e in events[-6:]} <= ids

"""One suite, two stores: InMemoryFeatureStore and RedisFeatureStore must agree exactly.

The Redis half runs against the real redis-server started by the test fixtures
(``FLUSHALL`` between tests). Hypothesis feeds random event streams to both.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.engine import TIME_FIELD, FeatureEngine, State
from features.events import AnyEvent, EventError, decode
from features.redis_batch import CommandBatch
from features.redis_store import RedisFeatureStore, key_tag
from features.spec import DAY_MS, Catalog, FeatureSpec, default_catalog
from features.store import FeatureStore, InMemoryFeatureStore, Update

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
HOUR = 3_600_000
LATENESS = 6 * HOUR

# The default catalogue plus features that exercise every operation hard:
# a tiny distinct cap (evictions), windowed max, plain min; a distinct feature whose cap is
# below that of the sessions_* it shares its values with.
CATALOG = Catalog(
    default_catalog().features
    + (
        FeatureSpec("categories_7d", "web", "distinct", window="7d", field="category", cap=3),
        FeatureSpec("recent_sessions_30d", "web", "distinct", window="30d", field="session_id", cap=2),
        FeatureSpec("big_order_7d", "purchase:completed", "max", window="7d", field="amount",
                    default=None, buckets=7),
        FeatureSpec("min_order_amount", "purchase:completed", "min", field="amount", default=None),
        FeatureSpec("score_sum_2h", "any", "sum", window="2h", field="score", buckets=4),
    ),
    default_catalog().derived,
)
ENGINE = FeatureEngine(CATALOG)
EXACT = {f.name for f in CATALOG.features if f.agg in ("count", "distinct", "max", "min",
                                                        "first_time", "last_time")}


# -- stores ---------------------------------------------------------------------------


class Stores:
    """Builds stores of one kind with the same knobs; Redis ones share the test's server."""

    def __init__(self, kind: str, client: redis.Redis | None) -> None:
        self.kind, self.client = kind, client

    def make(self, lateness_ms: int = LATENESS, **kw: Any) -> InMemoryFeatureStore | RedisFeatureStore:
        if self.kind == "memory":
            return InMemoryFeatureStore(lateness_ms=lateness_ms)
        assert self.client is not None
        return RedisFeatureStore(self.client, lateness_ms=lateness_ms, **kw)


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest) -> Stores:
    if request.param == "memory":
        return Stores("memory", None)
    return Stores("redis", request.getfixturevalue("redis_client"))


Store = InMemoryFeatureStore | RedisFeatureStore


def _both_satisfy_the_protocol(a: InMemoryFeatureStore, b: RedisFeatureStore) -> list[FeatureStore]:
    return [a, b]  # checked by mypy


# -- event helpers --------------------------------------------------------------------

_n = iter(range(10**9))


def ev(kind: str, ts: int, customer: str = "c1", event_id: str | None = None, **fields: Any) -> AnyEvent:
    body: dict[str, Any] = {"event_id": event_id or f"e{next(_n)}", "customer_id": customer, "ts": ts}
    if kind == "purchase":
        body |= {"type": "purchase", "order_id": "o", "amount": 10.0, "currency": "EUR"}
    elif kind == "campaign":
        body |= {"type": "campaign", "campaign_id": "k", "channel": "email", "action": "opened"}
    else:
        body |= {"type": "web", "action": "page_view", "session_id": "s1"}
    out = decode(orjson.dumps(body | fields))
    assert not isinstance(out, EventError), out.reason
    return out


def up(event: AnyEvent) -> Update:
    return Update.of(event, ENGINE.ops_for(event))


def state(store: Store, cid: str = "c1") -> State:
    return store.read([cid])[cid]


def vec(store: Store, as_of: int, cid: str = "c1") -> dict[str, float | None]:
    return ENGINE.vector(state(store, cid), as_of)


# -- example-based, both stores -------------------------------------------------------


def test_duplicates_in_one_batch_and_across_batches(stores: Stores) -> None:
    store = stores.make()
    a, b = ev("web", T0), ev("purchase", T0 + 1, amount=80)
    res = store.apply([up(a), up(b), up(a), up(b), up(a)])
    assert res.statuses == ["applied", "applied", "duplicate", "duplicate", "duplicate"]
    assert res.before == {"c1": {}}
    first = state(store)
    c = ev("web", T0 + 2)
    res2 = store.apply([up(b), up(a), up(c)])
    assert res2.statuses == ["duplicate", "duplicate", "applied"]
    assert res2.before == {"c1": first}
    v = vec(store, T0 + 3)
    assert v["page_views_24h"] == 2.0 and v["orders_total"] == 1.0 and v["spend_total"] == 80.0
    assert store.remembered_ids("c1") == {a.event_id, b.event_id, c.event_id}


def test_same_batch_twice_changes_nothing(stores: Stores) -> None:
    store = stores.make()
    batch = [up(ev("web", T0 + i * 600_000, customer=f"c{i % 3}", category=f"k{i}")) for i in range(30)]
    assert set(store.apply(batch).statuses) == {"applied"}
    cids = ["c0", "c1", "c2"]
    before = store.read(cids), {c: store.remembered_ids(c) for c in cids}
    raw_before = _raw_dump(stores, cids)
    res = store.apply(batch)
    assert set(res.statuses) == {"duplicate"}
    assert res.before == before[0]
    assert (store.read(cids), {c: store.remembered_ids(c) for c in cids}) == before
    assert _raw_dump(stores, cids) == raw_before


def _raw_dump(stores: Stores, cids: list[str]) -> Any:
    """Every stored byte of the customers (hash and ids zset with scores), Redis only."""
    if stores.client is None:
        return None
    store = stores.make()
    assert isinstance(store, RedisFeatureStore)
    out = {}
    for cid in cids:
        fkey, idkey = store.keys_for(cid)
        out[cid] = (stores.client.hgetall(fkey), stores.client.zrange(idkey, 0, -1, withscores=True))
    return out


def test_out_of_order_within_lateness_is_applied(stores: Stores) -> None:
    store = stores.make()
    times = [T0 + 5 * HOUR, T0 + 2 * HOUR, T0 + 4 * HOUR, T0 + HOUR - 1]
    res = store.apply([up(ev("web", t)) for t in times])
    assert res.statuses == ["applied"] * 4
    s = state(store)
    assert s[TIME_FIELD] == float(T0 + 5 * HOUR)
    v = ENGINE.vector(s, T0 + 5 * HOUR)
    assert v["page_views_24h"] == 4.0 and v["first_seen_at"] == float(T0 + HOUR - 1)


def test_older_than_lateness_is_late(stores: Stores) -> None:
    store = stores.make(lateness_ms=HOUR)
    newest = ev("web", T0 + 10 * HOUR)
    edge, late = ev("web", T0 + 9 * HOUR), ev("web", T0 + 9 * HOUR - 1)
    assert store.apply([up(newest)]).statuses == ["applied"]
    before = state(store)
    assert store.apply([up(late)]).statuses == ["late"]
    assert state(store) == before
    assert store.apply([up(edge)]).statuses == ["applied"]  # exactly at the bound is on time
    # duplicate is checked before late: an old redelivery, its id remembered, is a duplicate
    store.apply([up(ev("web", T0 + 20 * HOUR))])
    assert store.apply([up(edge)]).statuses == ["duplicate"]
    assert store.apply([up(edge), up(late)]).statuses == ["duplicate", "late"]
    assert late.event_id not in store.remembered_ids("c1")


def test_a_redelivery_whose_id_was_forgotten_is_late(stores: Stores) -> None:
    store = stores.make(lateness_ms=HOUR)
    events = [ev("web", T0 + i * 60_000) for i in range(70)]
    store.apply([up(e) for e in events])
    store.apply([up(ev("web", T0 + 10 * HOUR))])  # past the soft limit: the old ids go
    forgotten = [e for e in events if e.event_id not in store.remembered_ids("c1")]
    kept = [e for e in events if e.event_id in store.remembered_ids("c1")]
    assert forgotten and kept
    assert store.apply([up(forgotten[0]), up(kept[0])]).statuses == ["late", "duplicate"]


def test_ids_forgotten_like_the_reference(stores: Stores) -> None:
    store = stores.make(lateness_ms=HOUR)
    events = [ev("web", T0 + i * 60_000) for i in range(200)]
    for k in range(0, 200, 37):
        store.apply([up(e) for e in events[k:k + 37]])
    ref = InMemoryFeatureStore(lateness_ms=HOUR)
    ref.apply([up(e) for e in events])
    assert store.remembered_ids("c1") == ref.remembered_ids("c1")
    assert 60 <= len(store.remembered_ids("c1")) <= 65


def test_window_expiry_and_ring_slot_reuse(stores: Stores) -> None:
    store = stores.make()
    store.apply([up(ev("web", T0)), up(ev("web", T0 + 60_000))])
    assert vec(store, T0 + 60_000)["page_views_1h"] == 2.0
    assert vec(store, T0 + 2 * HOUR)["page_views_1h"] == 0.0  # read later: expired
    assert vec(store, T0 + 2 * DAY_MS)["page_views_24h"] == 0.0
    # 1h = 12 buckets of 5 min in 13 slots: 65 min later the same slot is reused
    store.apply([up(ev("web", T0 + 65 * 60_000))])
    s = state(store)
    slots = [k for k in s if k.startswith("page_views_1h|")]
    assert len(slots) == 2  # one slot (index and value), reused
    assert s[slots[0][:-1] + "v"] == 1.0
    assert ENGINE.vector(s, T0 + 65 * 60_000)["page_views_1h"] == 1.0
    assert ENGINE.vector(s, T0 + 65 * 60_000)["page_views_7d"] == 3.0
    assert ENGINE.vector(s, T0 + 30 * DAY_MS)["page_views_30d"] == 0.0


def test_distinct_cap_eviction(stores: Stores) -> None:
    store = stores.make()
    store.apply([up(ev("web", T0 + i, category=c)) for i, c in enumerate("abcde")])
    # two at the same time: the tie breaks on the value, as Python tuples compare
    store.apply([up(ev("web", T0 + 10, category="z")), up(ev("web", T0 + 10, category="y"))])
    s = state(store)
    kept = sorted(k.rsplit("|", 1)[1] for k in s if k.startswith("web:category|d|"))
    assert kept == ["e", "y", "z"]
    assert s["web:category|n"] == 3.0
    assert vec(store, T0 + 11)["categories_7d"] == 3.0


def test_distinct_features_sharing_values_read_their_own_caps(stores: Stores) -> None:
    store = stores.make()
    store.apply([up(ev("web", T0 + i * HOUR, session_id=f"s{i}")) for i in range(5)])
    store.apply([up(ev("web", T0 + 2 * HOUR + 1, session_id="s0"))])  # s0 seen again: recent
    v = vec(store, T0 + 5 * HOUR)
    assert v["sessions_30d"] == 5.0 and v["recent_sessions_30d"] == 2.0  # s4 and s3, as alone
    assert vec(store, T0 + 30 * DAY_MS + 3 * HOUR + 1)["recent_sessions_30d"] == 1.0  # s4 left


def test_distinct_eviction_compares_bytes_not_locale(stores: Stores) -> None:
    store = stores.make()
    values = ["B", "a", "é", "Z", "_", "ä"]
    store.apply([up(ev("web", T0, category=v)) for v in values])
    kept = sorted(k.rsplit("|", 1)[1] for k in state(store) if k.startswith("web:category|d|"))
    assert kept == sorted(values)[-3:]


def test_decayed_sums(stores: Stores) -> None:
    store = stores.make()
    store.apply([up(ev("web", T0 + 3 * HOUR, action="add_to_cart"))])
    store.apply([up(ev("web", T0, action="product_view")), up(ev("web", T0 + 7 * DAY_MS, action="login"))])
    s = state(store)
    at = T0 + 7 * DAY_MS
    expected = (5 * 2.0 ** (-(7 * DAY_MS - 3 * HOUR) / (7 * DAY_MS)) + 2 * 2.0 ** -1.0) + 1
    assert ENGINE.vector(s, at)["web_engagement"] == pytest.approx(expected, rel=1e-12)
    assert s["web_engagement|t"] == float(at)
    store.apply([up(ev("purchase", T0 + 7 * DAY_MS, amount=100))])
    assert vec(store, T0 + 37 * DAY_MS)["spend_decayed"] == pytest.approx(50.0, rel=1e-12)


def test_erase(stores: Stores) -> None:
    store = stores.make()
    store.apply([up(ev("web", T0)), up(ev("web", T0, customer="c2"))])
    if stores.client is not None:
        assert isinstance(store, RedisFeatureStore)
        tag = key_tag("c1")
        stores.client.set(f"lp:{{{tag}}}:pending", b"x")  # a key another module added
        stores.client.hset(f"lp:{{{tag}}}:pending:0", "k", "v")
    removed = store.erase("c1")
    assert removed == (4 if stores.client is not None else 1)
    assert state(store) == {} and store.remembered_ids("c1") == set()
    assert state(store, "c2") != {}
    assert store.erase("c1") == 0
    assert store.erase("nobody") == 0
    if stores.client is not None:
        left = list(stores.client.scan_iter(match=f"lp:{{{key_tag('c1')}}}*"))
        assert left == []
        assert len(list(stores.client.scan_iter(match="lp:{c2}:*"))) == 2
    # a returning customer starts from scratch
    assert store.apply([up(ev("web", T0 - 30 * DAY_MS))]).statuses == ["applied"]


@pytest.mark.parametrize("cid", ["a{b}", "}", "{", "~x", "a*b", "[ab]", "x\\y", "ümlaut ✓", "1"])
def test_awkward_customer_ids(stores: Stores, cid: str) -> None:
    store = stores.make()
    neighbours = ["ab", "a", "b", "x", "~"]
    store.apply([up(ev("web", T0, customer=c)) for c in [cid, *neighbours] if c != cid])
    res = store.apply([up(ev("web", T0 + 1, customer=cid))])
    assert res.statuses == ["applied"] and res.before == {cid: {}}
    assert vec(store, T0 + 1, cid)["page_views_1h"] == 1.0
    assert store.erase(cid) > 0
    assert state(store, cid) == {}
    others = store.read([c for c in neighbours if c != cid])
    assert all(others.values())
    if stores.client is not None:
        assert isinstance(store, RedisFeatureStore)
        fkey, idkey = store.keys_for(cid)
        assert redis_cluster_slot(fkey) == redis_cluster_slot(idkey)
        assert stores.client.dbsize() == 2 * len([c for c in neighbours if c != cid])


def redis_cluster_slot(key: str) -> str:
    """The part of a key Redis Cluster hashes (the first non-empty {...} tag)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def test_read_many_and_unknown(stores: Stores) -> None:
    store = stores.make()
    store.apply([up(ev("web", T0, customer="c1")), up(ev("campaign", T0, customer="c2"))])
    got = store.read(["c2", "nobody", "c1"])
    assert list(got) == ["c2", "nobody", "c1"]
    assert got["nobody"] == {} and TIME_FIELD in got["c1"] and TIME_FIELD in got["c2"]
    assert all(isinstance(v, float) for s in got.values() for v in s.values())


def test_before_states_per_customer(stores: Stores) -> None:
    store = stores.make()
    store.apply([up(ev("web", T0, customer="c1"))])
    s1 = state(store, "c1")
    res = store.apply([up(ev("web", T0 + 1, customer="c2")), up(ev("web", T0 + 2, customer="c1")),
                       up(ev("web", T0 + 3, customer="c2"))])
    assert res.statuses == ["applied"] * 3
    assert res.before == {"c2": {}, "c1": s1}


def test_malformed_operation_raises_and_changes_nothing(stores: Stores) -> None:
    store = stores.make()
    good = up(ev("web", T0))
    with pytest.raises(ValueError):
        store.apply([Update("c1", "bad", T0, (("?", "x", 1.0),))])
    if stores.kind == "redis":
        # Redis refuses the whole batch before sending anything
        with pytest.raises(ValueError):
            store.apply([good, Update("c1", "bad", T0, (("a", "x"),))])
        assert state(store) == {}


# -- Redis specifics ------------------------------------------------------------------


@pytest.fixture
def rstore(redis_client: redis.Redis) -> RedisFeatureStore:
    return RedisFeatureStore(redis_client, lateness_ms=LATENESS)


def test_ttl_on_both_keys(redis_client: redis.Redis) -> None:
    store = RedisFeatureStore(redis_client, ttl_seconds=1000)
    store.apply([up(ev("web", T0))])
    for key in store.keys_for("c1"):
        assert 990 <= redis_client.ttl(key) <= 1000
    default = RedisFeatureStore(redis_client)
    default.apply([up(ev("web", T0, customer="c2"))])
    assert redis_client.ttl(default.keys_for("c2")[0]) > 399 * 86_400
    none = RedisFeatureStore(redis_client, ttl_seconds=0)
    none.apply([up(ev("web", T0, customer="c3"))])
    assert [redis_client.ttl(k) for k in none.keys_for("c3")] == [-1, -1]


def test_one_round_trip_per_batch(rstore: RedisFeatureStore, redis_client: redis.Redis,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    rstore.apply([up(ev("web", T0))])  # script cached
    calls: list[int] = []
    real = CommandBatch.execute

    def counting(self: Any, *a: Any, **kw: Any) -> Any:
        calls.append(len(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(CommandBatch, "execute", counting)
    redis_client.config_resetstat()
    batch = [up(ev("web", T0 + i, customer=f"c{i % 7}")) for i in range(100)]
    rstore.apply(batch)
    rstore.read([f"c{i}" for i in range(7)])
    assert calls == [7, 7]
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 7
    assert "cmdstat_script" not in stats and "cmdstat_eval" not in stats


def test_noscript_fallback(rstore: RedisFeatureStore, redis_client: redis.Redis) -> None:
    rstore.apply([up(ev("web", T0))])
    redis_client.script_flush()
    res = rstore.apply([up(ev("web", T0 + 1)), up(ev("web", T0 + 2, customer="c2"))])
    assert res.statuses == ["applied", "applied"]
    assert vec(rstore, T0 + 2)["page_views_1h"] == 2.0


def test_decode_responses_client_and_prefix(redis_client: redis.Redis) -> None:
    pool = redis_client.connection_pool
    text_client = redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=pool.connection_class,
        **{**pool.connection_kwargs, "decode_responses": True}))
    try:
        store = RedisFeatureStore(text_client, prefix="other")
        ref = RedisFeatureStore(redis_client)
        batch = [up(ev("web", T0 + i, category=f"k{i}")) for i in range(5)]
        assert store.apply(batch).statuses == ref.apply(batch).statuses
        assert store.read(["c1"]) == ref.read(["c1"])
        assert store.keys_for("c1")[0] == "other:{c1}:f"
        assert store.erase("c1") == 2
        assert ref.read(["c1"])["c1"] != {}
    finally:
        text_client.close()


def test_large_single_customer_batch(rstore: RedisFeatureStore) -> None:
    events = [ev("web", T0 + i * 1000, category=f"k{i}", session_id=f"s{i}") for i in range(3000)]
    mem = InMemoryFeatureStore(lateness_ms=LATENESS)
    batch = [up(e) for e in events]
    assert rstore.apply(batch).statuses == mem.apply(batch).statuses
    assert state(rstore) == state(mem)
    assert rstore.remembered_ids("c1") == mem.remembered_ids("c1")


def test_a_burst_out_of_order_forgets_ids_as_redis_does(rstore: RedisFeatureStore) -> None:
    """Thousands of one customer's events within the lateness, shuffled, redelivered, in
    batches: the in-process store forgets expired ids from a heap (it scanned them all at
    each event), and must keep exactly the ids Redis keeps."""
    rnd = random.Random(5)
    events = [ev("web", T0 + i * 20_000 + rnd.randrange(LATENESS // 2)) for i in range(4000)]
    events.sort(key=lambda e: e.ts_ms + rnd.randrange(LATENESS // 3))
    events[1000:1000] = events[900:950]  # redeliveries
    mem = InMemoryFeatureStore(lateness_ms=LATENESS)
    for batch in _batches(events, list(range(0, len(events), 333))):
        assert rstore.apply(batch).statuses == mem.apply(batch).statuses
        assert rstore.remembered_ids("c1") == mem.remembered_ids("c1")
    assert state(rstore) == state(mem)
    assert 64 < len(mem.remembered_ids("c1")) < 4000


def test_numbers_round_trip_exactly(rstore: RedisFeatureStore) -> None:
    tricky = [0.1, 1 / 3, 1e-300, 5e-324, 1.7976931348623157e308, 123456789.12345679, 2.0**53 + 2]
    ops = tuple(("x", f"f{i}", v) for i, v in enumerate(tricky))
    rstore.apply([Update("c1", "e", T0, ops)])
    s = state(rstore)
    assert [s[f"f{i}"] for i in range(len(tricky))] == tricky


# -- properties -----------------------------------------------------------------------

CUSTOMERS = ["c0", "c1", "c2", "a{b}", "~t"]
WEB_ACTIONS = ["page_view", "product_view", "add_to_cart", "remove_from_cart", "search", "signup", "login"]
CAMPAIGN_ACTIONS = ["sent", "delivered", "opened", "clicked", "converted", "unsubscribed", "bounced"]


@st.composite
def event_dicts(draw: st.DrawFn, span_ms: int = 6 * 7 * DAY_MS, grid_ms: int = 1) -> dict[str, Any]:
    kind = draw(st.sampled_from(["web", "web", "purchase", "campaign"]))
    body: dict[str, Any] = {
        "event_id": f"e{draw(st.integers(0, 10**6))}",
        "customer_id": draw(st.sampled_from(CUSTOMERS)),
        "ts": T0 + draw(st.integers(0, span_ms // grid_ms)) * grid_ms,
        "type": kind,
    }
    if draw(st.booleans()):
        body["score"] = draw(st.floats(0, 1e6, allow_nan=False))
    if kind == "web":
        body["action"] = draw(st.sampled_from(WEB_ACTIONS))
        body["session_id"] = draw(st.sampled_from([None, "s1", "s2", "s3", "s4"]))
        body["category"] = draw(st.sampled_from(["shoes", "hats", "bags", "é", "Z", "a"]))
    elif kind == "purchase":
        body |= {"order_id": "o", "currency": "EUR",
                 "amount": draw(st.floats(0, 1e5, allow_nan=False, allow_infinity=False)),
                 "status": draw(st.sampled_from(["completed", "completed", "refunded"]))}
    else:
        body |= {"campaign_id": "k", "channel": "email",
                 "action": draw(st.sampled_from(CAMPAIGN_ACTIONS))}
    return body


def _decode_all(dicts: list[dict[str, Any]]) -> list[AnyEvent]:
    out = []
    for d in dicts:
        e = decode(orjson.dumps({k: v for k, v in d.items() if v is not None}))
        assert not isinstance(e, EventError), e.reason
        out.append(e)
    return out


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[AnyEvent], list[int]]:
    """Events in a mostly time-ordered, partly shuffled order with redeliveries, cut in batches."""
    # Any millisecond over weeks, or a coarse grid over days so that equal times (ties
    # in evictions) and events exactly at the lateness bound happen often.
    span, grid = draw(st.sampled_from([(6 * 7 * DAY_MS, 1), (2 * DAY_MS, HOUR // 2)]))
    dicts = draw(st.lists(event_dicts(span, grid), min_size=25, max_size=150))
    # Mostly forward in time, shuffled within (and sometimes beyond) the lateness bound.
    jitter = draw(st.sampled_from([0, HOUR, LATENESS, 3 * LATENESS, 10 * DAY_MS]))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    dicts.sort(key=lambda d: d["ts"] + rnd.randrange(jitter + 1))
    # Redeliveries (same event again) and reused ids (different event, same id).
    for _ in range(draw(st.integers(0, 20))):
        i = rnd.randrange(len(dicts))
        dicts.insert(min(len(dicts), i + rnd.randrange(10)), dict(dicts[i]))
    for _ in range(draw(st.integers(0, 5))):
        i, j = rnd.randrange(len(dicts)), rnd.randrange(len(dicts))
        dicts[j] = dicts[j] | {"event_id": dicts[i]["event_id"]}
    events = _decode_all(dicts)
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=8)))
    return events, cuts


def _batches(events: list[AnyEvent], cuts: list[int]) -> Iterator[list[Update]]:
    bounds = [0, *cuts, len(events)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if b > a:
            yield [up(e) for e in events[a:b]]


PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(streams())
def test_property_redis_equals_memory(redis_client: redis.Redis,
                                      stream: tuple[list[AnyEvent], list[int]]) -> None:
    redis_client.flushall()
    events, cuts = stream
    mem = InMemoryFeatureStore(lateness_ms=LATENESS)
    red = RedisFeatureStore(redis_client, lateness_ms=LATENESS)
    for batch in _batches(events, cuts):
        rm, rr = mem.apply(batch), red.apply(batch)
        assert rr.statuses == rm.statuses
        assert rr.before == rm.before  # exact, decayed fields included
    as_of = max(e.ts_ms for e in events)
    sm, sr = mem.read(CUSTOMERS), red.read(CUSTOMERS)
    assert sr == sm
    for cid in CUSTOMERS:
        assert red.remembered_ids(cid) == mem.remembered_ids(cid)
        for at in (as_of, as_of + 3 * DAY_MS):
            assert ENGINE.vector(sr[cid], at) == ENGINE.vector(sm[cid], at)


@st.composite
def on_time_streams(draw: st.DrawFn) -> tuple[list[AnyEvent], list[AnyEvent]]:
    """(sorted events, the same events shuffled so that none is late)."""
    dicts = draw(st.lists(event_dicts(), min_size=25, max_size=150))
    for i, d in enumerate(dicts):
        d["event_id"] = f"u{i}"
    rnd = random.Random(draw(st.integers(0, 2**32)))
    ordered = sorted(dicts, key=lambda d: d["ts"])
    # Sorting by ts + jitter with jitter < lateness: every event arrives after at most
    # events newer than it by less than the lateness, so none is late.
    shuffled = sorted(dicts, key=lambda d: d["ts"] + rnd.randrange(LATENESS))
    return _decode_all(ordered), _decode_all(shuffled)


def _close(a: float | None, b: float | None, rel: float) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


@PROPERTY
@given(on_time_streams())
def test_property_shuffle_within_lateness_same_vector(
    stores: Stores, pair: tuple[list[AnyEvent], list[AnyEvent]]
) -> None:
    if stores.client is not None:
        stores.client.flushall()
    ordered, shuffled = pair
    a = stores.make()
    b = stores.make(prefix="shuffled") if stores.client else stores.make()
    assert set(a.apply([up(e) for e in ordered]).statuses) == {"applied"}
    assert set(b.apply([up(e) for e in shuffled]).statuses) == {"applied"}
    as_of = max(e.ts_ms for e in ordered)
    for cid in CUSTOMERS:
        sa, sb = state(a, cid), state(b, cid)
        for at in (as_of, as_of + DAY_MS):
            va, vb = ENGINE.vector(sa, at), ENGINE.vector(sb, at)
            for name in va:
                if name in EXACT:
                    assert va[name] == vb[name], name
                else:  # float sums and decays depend on the order of additions
                    assert _close(va[name], vb[name], 1e-9), (name, va[name], vb[name])


# -- the Redis store's state cache --------------------------------------------------


@PROPERTY
@given(streams(), st.lists(st.integers(0, 2), min_size=1, max_size=40))
def test_property_two_cached_writers_equal_memory(
    redis_client: redis.Redis, stream: tuple[list[AnyEvent], list[int]], turns: list[int]
) -> None:
    """Batches shared between two workers' stores (one with a one-customer cache) and
    an occasional erase by a third: every reply and read still equals the in-memory
    store's, because a state changed elsewhere has another version and is fetched."""
    redis_client.flushall()
    events, cuts = stream
    mem = InMemoryFeatureStore(lateness_ms=LATENESS)
    workers = [RedisFeatureStore(redis_client, lateness_ms=LATENESS),
               RedisFeatureStore(redis_client, lateness_ms=LATENESS, cache_size=1)]
    for n, batch in enumerate(_batches(events, cuts)):
        turn = turns[n % len(turns)]
        if turn == 2 and n % 5 == 4:  # deletion on request, through another instance
            victim = batch[0].customer_id
            RedisFeatureStore(redis_client).erase(victim)
            mem.erase(victim)
        red = workers[turn % 2]
        rm, rr = mem.apply(batch), red.apply(batch)
        assert rr.statuses == rm.statuses
        assert rr.before == rm.before
        assert red.read(CUSTOMERS) == mem.read(CUSTOMERS)
    for red in workers:
        assert red.read(CUSTOMERS) == mem.read(CUSTOMERS)


def test_cached_state_is_not_sent_back(rstore: RedisFeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import features.redis_store as module

    decoded: list[int] = []
    real = module._state_from_json
    monkeypatch.setattr(module, "_state_from_json", lambda blob: decoded.append(1) or real(blob))
    rstore.apply([up(ev("web", T0))])
    assert decoded == [1]  # a customer the store has not seen: the state comes back
    first = state(rstore)
    res = rstore.apply([up(ev("web", T0 + 1)), up(ev("purchase", T0 + 2, amount=5))])
    assert decoded == [1] and res.before == {"c1": first}
    assert state(rstore)["spend_total"] == 5.0


def test_state_changed_elsewhere_is_fetched(redis_client: redis.Redis) -> None:
    a, b = (RedisFeatureStore(redis_client, lateness_ms=LATENESS) for _ in range(2))
    a.apply([up(ev("web", T0))])
    b.apply([up(ev("purchase", T0 + 1, amount=7))])  # another worker, after a rebalance
    res = a.apply([up(ev("web", T0 + 2))])
    assert res.before["c1"]["spend_total"] == 7.0
    assert vec(a, T0 + 2)["page_views_1h"] == 2.0
    redis_client.delete(a.keys_for("c1")[0])  # the key expired
    assert state(a) == {}
    assert a.apply([up(ev("web", T0 + 3))]).before == {"c1": {}}


def test_cache_is_bounded_and_can_be_off(redis_client: redis.Redis) -> None:
    small = RedisFeatureStore(redis_client, cache_size=2)
    off = RedisFeatureStore(redis_client, cache_size=0, prefix="off")
    for store in (small, off):
        store.apply([up(ev("web", T0 + i, customer=f"c{i}")) for i in range(5)])
    assert len(small._cache) == 2 and not off._cache
    assert small.read(["c0", "c4"]) == off.read(["c0", "c4"])
    with pytest.raises(ValueError):
        RedisFeatureStore(redis_client, cache_size=-1)


def _stored(client: redis.Redis, store: RedisFeatureStore, cid: str) -> Any:
    """Every stored byte of a customer but the version (it follows the server clock)."""
    fkey, idkey = store.keys_for(cid)
    fields = {k: v for k, v in client.hgetall(fkey).items() if k != b"_v"}
    return fields, client.zrange(idkey, 0, -1, withscores=True)


def test_a_held_state_is_written_by_apply_known_to_the_same_bytes(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = RedisFeatureStore(redis_client, lateness_ms=LATENESS, prefix="held")
    scripted = RedisFeatureStore(redis_client, lateness_ms=LATENESS, prefix="plain", cache_size=0)
    used: list[str] = []
    real = RedisFeatureStore._run_scripts

    def spy(self: RedisFeatureStore, calls: list[Any]) -> list[Any]:
        if self is cached:
            used.extend("known" if script is cached._known else "full" for script, _ in calls)
        return real(self, calls)

    monkeypatch.setattr(RedisFeatureStore, "_run_scripts", spy)
    rng = random.Random(5)
    batches = [[up(ev("web", T0, category="a"))]]
    for b in range(1, 30):
        t = T0 + b * 600_000
        batch = [up(ev(rng.choice(["web", "purchase", "campaign"]), t + rng.randint(-LATENESS, 60_000),
                       category=rng.choice("abcdefg"))) for _ in range(rng.randint(1, 6))]
        if b % 3 == 0:
            batch.append(up(ev("web", t - 3 * LATENESS)))  # late
        batch.append(batch[0])  # a duplicate inside the batch
        batches.append(batch)
    for batch in batches:
        a, b = cached.apply(batch), scripted.apply(batch)
        assert a.statuses == b.statuses
        assert a.before == b.before
    # A batch with a late event goes to apply.lua: only the stored ids tell a redelivery.
    assert used == ["full"] + ["full" if b % 3 == 0 else "known" for b in range(1, 30)]
    assert _stored(redis_client, cached, "c1") == _stored(redis_client, scripted, "c1")
    assert state(cached) == state(scripted)

    # A redelivery: apply_known.lua refuses (the ids are stored), apply.lua decides.
    used.clear()
    again = cached.apply(batches[-1])
    assert used == ["known", "full"]
    assert set(again.statuses) <= {"duplicate", "late"} and "duplicate" in again.statuses
    assert _stored(redis_client, cached, "c1") == _stored(redis_client, scripted, "c1")

    # Another writer moved the version: refused as stale, then decided by apply.lua.
    other = RedisFeatureStore(redis_client, lateness_ms=LATENESS, prefix="held")
    late_batch = [up(ev("purchase", T0 + 40 * 600_000, amount=3))]
    other.apply(late_batch)
    scripted.apply(late_batch)
    used.clear()
    final = [up(ev("web", T0 + 41 * 600_000))]
    assert cached.apply(final).statuses == scripted.apply(final).statuses == ["applied"]
    assert used == ["known", "full"]
    assert _stored(redis_client, cached, "c1") == _stored(redis_client, scripted, "c1")

"""A customer whose events arrive on another shard (partition) than before.

Every event of one customer must come on one partition (co-partitioning). A producer
with another partitioner, a changed key or more partitions breaks that: two shards then
read-modify-write one customer's record, both rescore it when idle and both count it in
their RFM base. The core notices the move, counts it and lets the new shard take over.
"""

from __future__ import annotations

from collections import Counter

import orjson
import redis

from features.engine import FeatureEngine
from features.redis_store import RedisFeatureStore
from scoring.core import ScoringCore
from scoring.state import CustomerScoring, ShardSave
from streams.pipeline import Incoming, Pipeline
from streams.redis_state import RedisStateStore

T0 = 1_709_287_200_000  # 2024-03-01T10:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR


def _event(eid: str, cid: str, ts_ms: int, kind: str = "purchase") -> bytes:
    if kind == "purchase":
        return orjson.dumps({"event_id": eid, "customer_id": cid, "ts": ts_ms, "type": "purchase",
                             "order_id": f"o-{eid}", "amount": 80, "currency": "EUR"})
    return orjson.dumps({"event_id": eid, "customer_id": cid, "ts": ts_ms, "type": "web",
                         "action": "page_view", "session_id": f"s-{eid}"})


def _msg(partition: int, offset: int, eid: str, cid: str, ts_ms: int, kind: str = "purchase") -> Incoming:
    topic = f"leadpulse.events.{'purchase' if kind == 'purchase' else 'web'}"
    return Incoming(topic, partition, offset, cid.encode(), _event(eid, cid, ts_ms, kind), ts_ms)


def _idle_rescores(records: list, cid: str) -> int:
    n = 0
    for r in records:
        if r.topic.endswith("scores") and r.value:
            rec = orjson.loads(r.value)
            n += rec["customer_id"] == cid and rec["cause"] == "idle_rescore"
    return n


def test_a_customer_on_another_shard_is_counted_and_taken_over() -> None:
    core = ScoringCore.in_memory(learn_inline=False)
    pipe = Pipeline(core)
    first = pipe.process([_msg(0, 0, "e1", "c1", T0), _msg(0, 1, "e2", "c2", T0)])
    assert first.counts["shard_changes"] == 0
    moved = pipe.process([_msg(1, 0, "e3", "c1", T0 + HOUR, "web")])
    assert moved.counts["shard_changes"] == 1
    assert core.state.load(["c1"])["c1"].shard == "1"
    again = pipe.process([_msg(1, 1, "e4", "c1", T0 + 2 * HOUR, "web")])  # counted once, not per event
    assert again.counts["shard_changes"] == 0


def test_the_record_names_its_shard_only_once_set() -> None:
    rec = CustomerScoring()
    assert b"shard" not in rec.to_json()
    rec.shard = "3"
    assert CustomerScoring.from_json(rec.to_json()).shard == "3"
    assert CustomerScoring.from_json(b'{"kinds":{},"pending":[]}').shard is None  # written before


def test_the_new_shard_counts_the_customer_in_its_rfm_base() -> None:
    core = ScoringCore.in_memory(learn_inline=False)
    pipe = Pipeline(core)
    pipe.process([_msg(0, 0, "e1", "c1", T0)])
    pipe.process([_msg(1, 0, "e2", "c1", T0 + DAY)])  # a second purchase, on shard 1
    grader = core.state.shard_states(["1"])["1"].grader
    assert grader is not None
    # Counted once, under its key now: not minus its old key (counted on shard 0) plus the new one.
    for counts in grader.counts.values():
        assert all(n > 0 for n in counts.values()), counts
        assert sum(counts.values()) == 1


def test_the_old_shard_no_longer_rescores_a_customer_taken_over(redis_client: redis.Redis) -> None:
    state = RedisStateStore(redis_client)
    core = ScoringCore(FeatureEngine(), RedisFeatureStore(redis_client), state, learn_inline=False)
    pipe = Pipeline(core)
    out = pipe.process([_msg(0, 0, "e1", "c1", T0)]).records
    out += pipe.process([_msg(1, 0, "e2", "c1", T0 + HOUR, "web")]).records
    assert redis_client.zscore("lp:due:0", "c1") is not None  # scheduled there before it moved
    # Both shards go on for weeks with other customers: only shard 1 rescores c1 now.
    by_shard: Counter[str] = Counter()
    for day in range(1, 40, 3):
        for p in (0, 1):
            batch = pipe.process([_msg(p, 10 + day, f"x{p}-{day}", f"other{p}", T0 + day * DAY, "web")])
            by_shard[str(p)] += _idle_rescores(batch.records, "c1")
    assert by_shard["1"] > 0
    assert by_shard["0"] == 0, by_shard
    assert redis_client.zscore("lp:due:0", "c1") is None  # left the old shard's index


def test_a_redelivery_is_a_duplicate_not_late() -> None:
    core = ScoringCore.in_memory(learn_inline=False)
    pipe = Pipeline(core)
    first = [_msg(0, 0, "e1", "c1", T0, "web"), _msg(0, 1, "e2", "c1", T0 + 3 * HOUR, "web")]
    pipe.process(first)
    again = pipe.process(first[:1])  # a crash before the commit: Kafka delivers e1 again
    assert (again.counts["duplicates"], again.counts["late"]) == (1, 0)
    late = pipe.process([_msg(0, 2, "e0", "c1", T0 - HOUR, "web")])  # really late: never applied
    assert (late.counts["duplicates"], late.counts["late"]) == (0, 1)


def test_save_can_drop_customers_from_a_shards_due_index(redis_client: redis.Redis) -> None:
    for store in (RedisStateStore(redis_client),):
        rec = CustomerScoring()
        rec.kind("k").next_tick = 10
        store.save({"0": ShardSave({"c1": rec})})
        assert store.save({"0": ShardSave({}, drop=("c1",), due_until=100)}) == {"0": []}

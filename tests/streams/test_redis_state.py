"""RedisStateStore against a real redis-server: the record cache changes no output."""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import orjson
import pytest
import redis

from features.engine import FeatureEngine
from features.redis_store import RedisFeatureStore
from scoring.core import ScoringCore
from scoring.simulator import SimulationConfig, simulate
from scoring.state import CustomerScoring, KindState, Pending, ShardSave
from streams.pipeline import Incoming, Pipeline
from streams.redis_state import RedisStateStore


def _messages(n: int) -> list[Incoming]:
    out = []
    for i, ev in enumerate(simulate(SimulationConfig(customers=60, days=60, seed=4))):
        if i >= n:
            break
        key = ev["customer_id"].encode()
        out.append(Incoming(ev["type"], zlib.crc32(key) % 3, i, key, orjson.dumps(ev), 0))
    return out


def _run(core: ScoringCore, messages: list[Incoming]) -> list[tuple[str, bytes | None]]:
    pipe = Pipeline(core)
    records = []
    for i in range(0, len(messages), 200):
        records += [(r.topic, r.value) for r in pipe.process(messages[i:i + 200]).records]
    return records


def test_cached_records_change_no_output(redis_client: redis.Redis) -> None:
    messages = _messages(4000)
    reference = _run(ScoringCore.in_memory(), messages)
    outputs = {}
    for size in (5_000, 3, 0):
        redis_client.flushall()
        state = RedisStateStore(redis_client, cache_size=size)
        core = ScoringCore(FeatureEngine(), RedisFeatureStore(redis_client), state)
        outputs[size] = _run(core, messages)
        assert len(state._cache) <= size
    assert len(reference) > 1000
    assert outputs[5_000] == outputs[3] == outputs[0] == reference


def _record(value: float) -> CustomerScoring:
    return CustomerScoring({"k": KindState(value=value)}, [Pending("k", "e1", 1, 2, {"a": 1.0}, 0.5, "model")])


def test_a_record_saved_elsewhere_is_read_again(redis_client: redis.Redis) -> None:
    a, b = RedisStateStore(redis_client), RedisStateStore(redis_client)
    a.save({"0": ShardSave({"c1": _record(1.0)})})
    mine = a.load(["c1"])["c1"]
    a.save({"0": ShardSave({"c1": mine})})
    b.save({"0": ShardSave({"c1": _record(2.0)})})  # another worker, after a rebalance
    assert a.load(["c1"])["c1"].kinds["k"].value == 2.0
    b.erase("c1")
    assert a.load(["c1"])["c1"] == CustomerScoring()


def test_a_failed_batch_leaves_nothing_cached(redis_client: redis.Redis) -> None:
    store = RedisStateStore(redis_client)
    store.save({"0": ShardSave({"c1": _record(1.0)})})
    rec = store.load(["c1"])["c1"]
    rec.kinds["k"].value = 99.0  # changed, then the batch fails before its save
    again = store.load(["c1"])["c1"]
    assert again is not rec and again.kinds["k"].value == 1.0


def test_records_without_a_version_still_load(redis_client: redis.Redis) -> None:
    store = RedisStateStore(redis_client)
    redis_client.set(store._key("c1"), _record(3.0).to_json())  # written before versions
    assert store.load(["c1"])["c1"] == _record(3.0)
    with pytest.raises(ValueError):
        RedisStateStore(redis_client, cache_size=-1)


def _rfm_grades(records: list[tuple[str, bytes | None]]) -> list[tuple[str, str, str]]:
    out = []
    for topic, value in records:
        rec = orjson.loads(value or b"{}")
        if topic.endswith("scores") and rec.get("kind") == "rfm_segment":
            out.append((rec["customer_id"], rec["ts"], rec["rfm"]))
    return out


def test_a_new_worker_grades_rfm_on_from_the_shards_saved_counts(redis_client: redis.Redis) -> None:
    messages = _messages(4000)

    def core() -> ScoringCore:  # new objects each time: nothing in memory carries over
        return ScoringCore(FeatureEngine(), RedisFeatureStore(redis_client), RedisStateStore(redis_client))

    redis_client.flushall()
    straight = _rfm_grades(_run(core(), messages))
    redis_client.flushall()
    half = 2000
    restarted = _rfm_grades(_run(core(), messages[:half]) + _run(core(), messages[half:]))
    # 20 customers a shard: a grade is published when it changes, about once per buyer.
    assert len(straight) >= 20 and {g[2][0] for g in straight} >= {"1", "5"}
    # One process that never let go of its counts grades the same: each shard's customers
    # were counted on across batches and the restart, not begun again.
    assert restarted == straight == _rfm_grades(_run(ScoringCore.in_memory(), messages))
    assert redis_client.exists("lp:rfm:0") and redis_client.exists("lp:rfm:2")


def _by_shard_outputs(core: ScoringCore, messages: list[Incoming], together: bool) -> list[Any]:
    """Each shard's outputs, batch by batch: the core given a batch's shards at once or one by one."""
    pipe = Pipeline(core)
    got: list[Any] = []
    for i in range(0, len(messages), 200):
        by_shard, _, _ = pipe.split(messages[i:i + 200])
        shards = sorted(by_shard)
        batches = [(s, sorted((ev for _, ev in by_shard[s]), key=lambda ev: ev.ts_ms), None) for s in shards]
        if together:
            results = core.process_shards(batches)
        else:
            results = [core.process(events, shard) for shard, events, _ in batches]
        got += [(s, r.scores, r.alerts, r.triggers, r.labelled, dict(r.counts))
                for s, r in zip(shards, results, strict=True)]
    return got


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_shards_together_give_the_outputs_of_one_shard_at_a_time(store: str, redis_url: str) -> None:
    messages = _messages(4000)

    def core() -> ScoringCore:
        if store == "memory":
            return ScoringCore.in_memory(learn_inline=False)
        client = redis.Redis.from_url(redis_url)
        client.flushall()
        return ScoringCore(FeatureEngine(), RedisFeatureStore(client), RedisStateStore(client), learn_inline=False)

    one_by_one = _by_shard_outputs(core(), messages, together=False)
    together = _by_shard_outputs(core(), messages, together=True)
    assert together == one_by_one
    counts: Counter[str] = Counter()
    for *_, c in together:
        counts.update(c)
    # Every path was taken: events scored, examples matured and idle customers rescored.
    assert counts["applied"] == len(messages) and counts["labelled"] > 100 and counts["idle_rescores"] > 100
    assert len({s for s, *_ in together}) == 3


def test_customers_due_when_their_round_fails_stay_due(redis_client: redis.Redis) -> None:
    """A round of due customers whose save fails (Redis away, a crash) leaves them in the due
    index, so the retry or the next batch rescores them and matures their examples."""
    state = RedisStateStore(redis_client)
    pipe = Pipeline(ScoringCore(FeatureEngine(), RedisFeatureStore(redis_client), state, learn_inline=False))
    save, failed, batches = state.save, [], [0]

    def flaky(shards: dict[str, ShardSave], token: str | None = None) -> dict[str, list[str]]:
        # A round of due customers saves no watermark: fail the first one after a few batches.
        if not failed and batches[0] >= 5 and all(s.watermark is None and s.records for s in shards.values()):
            failed.extend((shard, c) for shard, s in shards.items() for c in s.records)
            raise ConnectionError("redis went away")
        return save(shards, token)

    state.save = flaky  # type: ignore[method-assign]
    messages = _messages(4000)
    for i in range(0, len(messages), 200):
        try:
            pipe.process(messages[i:i + 200])
        except ConnectionError:
            break
        batches[0] += 1
    assert len(failed) > 3, "no round of due customers failed"
    for shard, cid in failed:
        assert redis_client.zscore(f"lp:due:{shard}", cid) is not None, cid


@pytest.mark.parametrize("where", ["records", "records twice", "save", "due round"])
def test_a_batch_retried_after_a_redis_failure_gives_every_output_once(redis_client: redis.Redis, where: str) -> None:
    """Redis fails in the middle of a batch, after the features took it (twice: the retry fails
    too, at its first step); the worker retries the same batch. The outputs are those of a run
    without the failure: nothing lost as a duplicate, no round of due customers redone twice."""
    times = 2 if where.endswith("twice") else 1
    messages = _messages(4000)

    def run(fail: bool) -> tuple[list[tuple[str, bytes | None]], int]:
        redis_client.flushall()
        state = RedisStateStore(redis_client)
        pipe = Pipeline(ScoringCore(FeatureEngine(), RedisFeatureStore(redis_client), state, learn_inline=False))
        load, save, heads, failed, batch = state.load, state.save, state.shard_states, [], [0]

        def should_fail(step: str, shards: dict[str, ShardSave] | None = None) -> bool:
            if not fail or len(failed) >= times or batch[0] < 5:
                return False
            if step != (where.split()[0] if not failed else "heads"):  # the retry fails at its first step
                return False
            if shards is not None and (where == "due round") != all(s.watermark is None for s in shards.values()):
                return False
            failed.append(batch[0])
            return True

        def flaky_load(cids: Any) -> Any:
            if should_fail("records"):
                raise ConnectionError("redis went away")
            return load(cids)

        def flaky_save(shards: dict[str, ShardSave], token: str | None = None) -> dict[str, list[str]]:
            if should_fail("save" if where == "save" else "due", shards):
                raise ConnectionError("redis went away")
            return save(shards, token)

        def flaky_heads(shards: Any) -> Any:
            if should_fail("heads"):
                raise ConnectionError("redis went away")
            return heads(shards)

        state.load, state.save, state.shard_states = flaky_load, flaky_save, flaky_heads  # type: ignore[method-assign]
        records: list[tuple[str, bytes | None]] = []
        for i in range(0, len(messages), 200):
            done: dict[str, Any] = {}
            for _attempt in range(3):  # the worker retries the same batch
                try:
                    out = pipe.process(messages[i:i + 200], done=done)
                    break
                except ConnectionError:
                    assert fail
            records += [(r.topic, r.value) for r in out.records]
            batch[0] += 1
        return records, len(failed)

    expected, _ = run(fail=False)
    got, failures = run(fail=True)
    assert failures == times and len(expected) > 1000
    assert got == expected

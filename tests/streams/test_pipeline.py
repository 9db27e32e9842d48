"""Unit tests of the Kafka-free glue (streams/pipeline.py) with in-process stores."""

from __future__ import annotations

import json
import zlib

import orjson
import pytest

from features.events import decode, parse_ts_ms
from scoring.core import Labelled, ModelRegistry, ScoringCore
from scoring.kinds import default_kinds
from scoring.simulator import MAX_DISORDER_SECONDS, SimulationConfig, simulate
from scoring.state import InMemoryModelStore
from streams.live_cli import _route
from streams.metrics import LatencyWindow, Metrics
from streams.pipeline import (
    CheckpointStore,
    EventTimeAligner,
    Incoming,
    Learner,
    ModelRefresher,
    Pipeline,
    input_caught_up,
    labelled_to_json,
    labels_from_record,
    labels_to_records,
)
from streams.settings import Topics

T = Topics()
SCORE_FIELDS = {
    "customer_id", "kind", "old_value", "value", "probability", "band", "old_band", "grade",
    "model_version", "source", "reasons", "event_id", "cause", "ts",
}


def purchase(eid: str, cid: str = "c1", ts: str = "2024-03-01T10:00:00Z", amount: float = 80) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": cid, "ts": ts, "type": "purchase",
                         "order_id": f"o-{eid}", "amount": amount, "currency": "EUR"})


def web(eid: str, cid: str = "c1", ts: str = "2024-03-01T09:00:00Z", action: str = "product_view") -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": cid, "ts": ts, "type": "web",
                         "action": action, "session_id": "s1"})


def msg(value: bytes | None, partition: int = 0, offset: int = 0, key: bytes | None = b"c1",
        topic: str = T.purchase, ts: int | None = None) -> Incoming:
    return Incoming(topic, partition, offset, key, value, ts)


@pytest.fixture
def pipe() -> Pipeline:
    return Pipeline(ScoringCore.in_memory(learn_inline=False))


def test_invalid_records_are_dead_lettered_with_connect_headers(pipe: Pipeline) -> None:
    batch = pipe.process([
        msg(b"{not json", offset=3, topic=T.web),
        msg(None, offset=4),
        msg(b'{"event_id":"e","type":"purchase"}', offset=5),
        msg(purchase("e1"), offset=6),
    ])
    dead = [r for r in batch.records if r.topic == T.dlq]
    assert [r.value for r in dead] == [b"{not json", b"", b'{"event_id":"e","type":"purchase"}']
    headers = [dict(r.headers) for r in dead]
    assert [h["__connect.errors.offset"] for h in headers] == [b"3", b"4", b"5"]
    assert headers[0]["__connect.errors.topic"] == T.web.encode()
    assert headers[0]["__connect.errors.partition"] == b"0"
    assert headers[0]["__connect.errors.exception.message"].startswith(b"invalid JSON")
    assert headers[1]["__connect.errors.exception.message"] == b"empty message (null value)"
    assert headers[2]["__connect.errors.exception.message"].startswith(b"validation: ")
    assert all(r.key == b"c1" for r in dead)
    assert batch.counts["invalid"] == 3 and batch.counts["applied"] == 1


def test_an_event_from_a_clock_years_ahead_is_dead_lettered_and_loses_nothing_after_it(pipe: Pipeline) -> None:
    # Taken as valid, it would move c1's clock to 2090 and the real events after it would
    # all be dropped as late: lost, not dead-lettered.
    batch = pipe.process([
        msg(purchase("p-ahead", ts="2090-03-01T10:00:00Z"), offset=1),
        msg(purchase("p1", ts="2024-03-01T10:00:00Z"), offset=2),
        msg(web("w1", ts="2024-03-01T11:00:00Z"), offset=3, topic=T.web),
    ])
    [dead] = [r for r in batch.records if r.topic == T.dlq]
    assert orjson.loads(dead.value)["event_id"] == "p-ahead"
    assert b"ahead of the clock" in dict(dead.headers)["__connect.errors.exception.message"]
    assert batch.counts["applied"] == 2 and batch.counts["late"] == 0


def test_live_an_event_more_than_the_lateness_ahead_of_the_wall_clock_is_dead_lettered() -> None:
    # Within decode's one-day bound, an event 5 h ahead moved c1's clock, and c1's real events
    # after it were dropped as late (lateness 1 h): nothing dead-lettered, only a counter.
    now_ms = parse_ts_ms("2024-03-01T10:00:00Z")
    live = Pipeline(ScoringCore.in_memory(learn_inline=False), max_ahead_ms=3_600_000,
                    clock=lambda: now_ms / 1000)
    batch = live.process([
        msg(purchase("p-ahead", ts="2024-03-01T15:00:00Z"), offset=1),
        msg(purchase("p-near", ts="2024-03-01T10:59:00Z"), offset=2),
    ])
    [dead] = [r for r in batch.records if r.topic == T.dlq]
    assert orjson.loads(dead.value)["event_id"] == "p-ahead" and dead.key == b"c1"
    h = dict(dead.headers)
    assert h["__connect.errors.stage"] == b"event_time" and h["__connect.errors.offset"] == b"1"
    assert h["__connect.errors.exception.message"].startswith(b"event time 5.00 h ahead of the worker's clock")
    assert batch.counts["ahead_of_clock"] == 1 and batch.counts["invalid"] == 1
    later = live.process([msg(web("w1", ts="2024-03-01T10:00:30Z"), offset=3, topic=T.web)])
    assert later.counts["applied"] == 1 and later.counts["late"] == 0, "the real event still counts"
    # Without it (backtests, replays of history: no relation to the wall clock), only decode's bound.
    history = Pipeline(ScoringCore.in_memory(learn_inline=False))
    assert history.process([msg(purchase("p-ahead", ts="2024-03-01T15:00:00Z"))]).counts["applied"] == 1


def test_events_later_than_the_lateness_are_kept_on_the_late_topic_as_received() -> None:
    pipe = Pipeline(ScoringCore.in_memory(learn_inline=False), keep_late=True)
    first = pipe.process([msg(purchase("p1", ts="2024-03-01T10:00:00Z"), offset=1)])
    assert not [r for r in first.records if r.topic == T.late]
    late_line = web("w-old", ts="2024-03-01T08:00:00Z")  # two hours behind c1's clock (lateness 1 h)
    batch = pipe.process([
        msg(late_line, offset=2, topic=T.web),
        msg(web("w-ok", ts="2024-03-01T09:30:00Z"), offset=3, topic=T.web),  # inside the lateness
        msg(purchase("p1", ts="2024-03-01T10:00:00Z"), offset=4),  # a duplicate: counted, not kept
    ])
    [kept] = [r for r in batch.records if r.topic == T.late]
    assert kept.value == late_line and kept.key == b"c1"
    h = dict(kept.headers)
    assert h["__connect.errors.stage"] == b"lateness" and h["__connect.errors.offset"] == b"2"
    assert h["__connect.errors.topic"] == T.web.encode()
    assert b"lateness" in h["__connect.errors.exception.message"] and b"c1" not in h["__connect.errors.exception.message"]
    assert (batch.counts["late"], batch.counts["applied"], batch.counts["duplicates"]) == (1, 1, 1)
    assert not [r for r in batch.records if r.topic == T.dlq], "late is not invalid"
    # Off (the default), they are counted only.
    default = Pipeline(ScoringCore.in_memory(learn_inline=False))
    default.process([msg(purchase("p1", ts="2024-03-01T10:00:00Z"), offset=1)])
    off = default.process([msg(late_line, offset=2, topic=T.web)])
    assert off.counts["late"] == 1 and not [r for r in off.records if r.topic == T.late]


def test_key_must_be_the_customer_id_unless_disabled() -> None:
    strict = Pipeline(ScoringCore.in_memory(learn_inline=False))
    out = strict.process([msg(purchase("e1"), key=b"someone-else"), msg(purchase("e2"), key=None)])
    assert out.counts["key_mismatch"] == 2 and out.counts.get("applied", 0) == 0
    assert {dict(r.headers)["__connect.errors.stage"] for r in out.records} == {b"key_check"}
    lax = Pipeline(ScoringCore.in_memory(learn_inline=False), require_key_match=False)
    assert lax.process([msg(purchase("e1"), key=None)]).counts["applied"] == 1


def test_a_key_matches_its_id_in_either_unicode_form() -> None:
    """Ids are read in composed form (NFC); a producer keys by the id as it has it, perhaps
    decomposed: its key is still the customer's. Another name is still no match."""
    strict = Pipeline(ScoringCore.in_memory(learn_inline=False))
    decomposed = "Zoe\u0308"
    out = strict.process([msg(purchase("e1", cid=decomposed), key=decomposed.encode()),
                          msg(purchase("e2", cid="Zo\u00eb"), key=decomposed.encode()),
                          msg(purchase("e3", cid=decomposed), key=b"Zoe")])
    assert out.counts["applied"] == 2 and out.counts["key_mismatch"] == 1


def test_score_records_are_keyed_json_with_the_documented_fields(pipe: Pipeline) -> None:
    batch = pipe.process([msg(web("e0"), topic=T.web, ts=1), msg(purchase("e1"), ts=2)])
    scores = [r for r in batch.records if r.topic == T.scores]
    assert scores, "a first event publishes first scores"
    for r in scores:
        rec = json.loads(r.value)
        assert set(rec) >= SCORE_FIELDS
        assert r.key == rec["customer_id"].encode() == b"c1"
        assert rec["source"] in {"model", "cold_start", "rule"}
        assert 0 <= rec["value"] <= 100 and 0 <= rec["grade"] <= 10
    assert batch.counts["scores_published"] == len(scores)
    assert sorted(batch.score_event_ts_ms) == sorted(
        {"e0": 1, "e1": 2}[json.loads(r.value)["event_id"]] for r in scores
    )


def test_redelivered_events_change_nothing_and_alert_nothing(pipe: Pipeline) -> None:
    events = [dict(e) for e in simulate(SimulationConfig(customers=30, days=30, seed=4))]
    messages = [
        msg(orjson.dumps(e), partition=zlib.crc32(e["customer_id"].encode()) % 3, offset=i,
            key=e["customer_id"].encode(),
            topic=T.inputs[e["type"]])
        for i, e in enumerate(events)
    ]
    first = [pipe.process(messages[i:i + 100]) for i in range(0, len(messages), 100)]
    assert sum(b.counts["alerts"] for b in first) > 0
    again = [pipe.process(messages[i:i + 100]) for i in range(0, len(messages), 100)]
    # Each redelivered event is a duplicate, or older than the allowed lateness: never applied.
    assert sum(b.counts["duplicates"] + b.counts["late"] for b in again) == len(messages)
    assert sum(b.counts.get("applied", 0) for b in again) == 0
    assert sum(b.counts.get("alerts", 0) for b in again) == 0
    assert not any(r.topic in (T.scores, T.alerts, T.triggers) and json.loads(r.value).get("event_id")
                   for b in again for r in b.records)


def test_batches_are_split_by_source_partition_into_shards(pipe: Pipeline) -> None:
    out = pipe.process([
        msg(purchase("a", cid="c1", ts="2024-03-02T00:00:00Z"), partition=1, key=b"c1"),
        msg(purchase("b", cid="c2", ts="2024-03-05T00:00:00Z"), partition=2, key=b"c2"),
    ])
    assert out.shards == ["1", "2"]
    state = pipe.core.state
    # Each shard keeps its own watermark (newest event of the shard minus lateness).
    heads = state.shard_states(["1", "2"])
    assert heads["2"].watermark - heads["1"].watermark == 3 * 86_400_000


def test_a_shards_events_are_applied_in_event_time_within_a_batch(pipe: Pipeline) -> None:
    # Arrival order: purchase (10:00) before the web view (09:00) from another topic.
    out = pipe.process([msg(purchase("p", ts="2024-03-01T10:00:00Z")),
                        msg(web("w", ts="2024-03-01T09:00:00Z"), topic=T.web)])
    first = [json.loads(r.value) for r in out.records if r.topic == T.scores]
    assert first[0]["event_id"] == "w"


def test_matured_examples_go_to_the_labels_topic_and_are_not_learned_inline() -> None:
    core = ScoringCore.in_memory(learn_inline=False)
    pipe = Pipeline(core)
    events = [dict(e) for e in simulate(SimulationConfig(customers=30, days=60, seed=2))]
    labels = []
    records = 0
    for i in range(0, len(events), 200):
        chunk = events[i:i + 200]
        out = pipe.process([msg(orjson.dumps(e), key=e["customer_id"].encode(), topic=T.inputs[e["type"]])
                            for e in chunk])
        mine = [r for r in out.records if r.topic == T.labels]
        records += len(mine)
        labels += [ex for r in mine for ex in labels_from_record(r.value)]
        assert len(mine) <= 1, "a batch's examples travel together (they fit one record here)"
        assert sum(len(labels_from_record(r.value)) for r in mine) == out.counts["labels"]
    assert labels and all(isinstance(x, Labelled) and x.x for x in labels)
    assert records < len(labels) / 5
    assert all(m.version == 0 for m in core.registry.models.values())


def test_labels_records_keep_order_and_stay_under_their_size_limit() -> None:
    examples = [_example(i, i % 2) for i in range(300)]
    records = labels_to_records(examples, T.labels, max_bytes=4096)
    assert len(records) > 1 and all(r.topic == T.labels and len(r.value) <= 4096 for r in records)
    assert [ex for r in records for ex in labels_from_record(r.value)] == examples
    # A worker from before labels were batched wrote one object per record.
    assert labels_from_record(labelled_to_json(examples[3])) == [examples[3]]
    with pytest.raises(ValueError):
        labels_from_record(b'[{"kind": "x"}]')
    with pytest.raises(ValueError):
        labels_from_record(b"not json")


def test_learner_learns_a_records_examples_together_and_skips_them_together() -> None:
    learner = Learner(ModelRegistry(default_kinds()), CheckpointStore(InMemoryModelStore()), every_labels=5)
    batch = [(0, _example(i, i % 2)) for i in range(3)] + [(1, _example(i, i % 2)) for i in range(3, 8)]
    learner.learn(batch)
    assert learner.learned == 8 and learner.next_offset == 2
    learner.learn(batch + [(2, _example(9, 1))])  # records 0 and 1 again, then a new one
    assert learner.learned == 9 and learner.skipped == 8
    assert learner.registry.models["churn_risk"].version == 9


def test_labelled_round_trip_and_bad_records() -> None:
    ex = Labelled("churn_risk", "c1", "x1", 1, 2, 0.25, 0.5, "model", 1, {"a": 1.5})
    assert labels_from_record(labelled_to_json(ex)) == [ex]
    with pytest.raises(ValueError):
        labels_from_record(b'{"kind": "x"}')


def _example(i: int, label: int) -> Labelled:
    return Labelled("churn_risk", f"c{i}", f"x{i}", i, i + 1, 0.5, 0.5, "cold_start", label,
                    {"orders_total": float(label), "f": float(i % 7)})


def test_learner_is_exactly_once_across_redelivery_restart_and_handover() -> None:
    store = CheckpointStore(InMemoryModelStore())
    clock = [0.0]
    a = Learner(ModelRegistry(default_kinds()), store, every_labels=10, every_s=60, clock=lambda: clock[0])
    items = [(i, _example(i, i % 2)) for i in range(25)]
    a.learn(items[:12])
    assert a.due() and a.checkpoint() == 12
    a.learn(items[5:20])  # redelivery of 5..11 is skipped
    assert a.registry.models["churn_risk"].version == 20 and a.skipped == 7
    # Crash before the next snapshot: a new learner resumes at offset 12 and relearns 12..24.
    b = Learner(ModelRegistry(default_kinds()), store, every_labels=10, every_s=60)
    b.learn(items)
    assert b.registry.models["churn_risk"].version == 25
    b.checkpoint()
    # The first learner comes back (partition handed back): it restores b's snapshot first.
    a.learn([(25, _example(25, 1))])
    assert a.registry.models["churn_risk"].version == 26 and a.next_offset == 26
    # Time-based snapshot.
    c = Learner(ModelRegistry(default_kinds()), store, every_labels=1000, every_s=30, clock=lambda: clock[0])
    c.learn([(26, _example(26, 0))])
    assert not c.due()
    clock[0] = 31.0
    assert c.due()


def test_model_refresher_hot_swaps_newer_snapshots_at_most_every_interval() -> None:
    store = InMemoryModelStore()
    learner = ModelRegistry(default_kinds())
    learner.learn([_example(i, i % 2) for i in range(30)])
    scorer = ModelRegistry(default_kinds())
    now = [0.0]
    refresher = ModelRefresher(scorer, store, every_s=5, clock=lambda: now[0])
    assert refresher.maybe_refresh() == []
    learner.save(store)
    assert refresher.maybe_refresh() == []  # too soon
    now[0] = 5.0
    assert "churn_risk" in refresher.maybe_refresh()
    assert refresher.versions()["churn_risk"] == 30
    # A snapshot is megabytes (its refit window): one that did not change is not fetched again.
    fetched = []
    load = store.load_model
    store.load_model = lambda kind: fetched.append(kind) or load(kind)  # type: ignore[method-assign]
    now[0] = 10.0
    assert refresher.maybe_refresh() == [] and fetched == []
    learner.learn([_example(30, 1)])
    learner.save(store)
    now[0] = 15.0
    assert refresher.maybe_refresh() == ["churn_risk"] and fetched == ["churn_risk"]


def test_aligner_releases_in_event_time_and_bounds_memory() -> None:
    a: EventTimeAligner[str] = EventTimeAligner([T.web, T.purchase], max_held=3)
    a.add([(msg(b"", topic=T.purchase, partition=0), 100, "p100"),
           (msg(b"", topic=T.web, partition=0), 10, "w10"),
           (msg(b"", topic=T.web, partition=1), 5, "other-shard")])
    lagging = {(T.web, 0), (T.purchase, 0), (T.web, 1), (T.purchase, 1)}
    out = a.release(lambda t, p: (t, p) not in lagging)
    assert [x[2] for x in out] == ["w10"]  # shard 1 waits for its purchase partition
    a.add([(msg(b"", topic=T.web), ts, f"w{ts}") for ts in (20, 30, 40)])
    out = a.release(lambda t, p: (t, p) not in lagging)
    # Web reached 40 < purchase 100: web events go; past max_held the oldest goes anyway.
    assert [x[2] for x in out] == ["w20", "w30", "w40"]
    assert len(a) == 2
    assert sorted(x[2] for x in a.flush()) == ["other-shard", "p100"] and len(a) == 0


def test_a_partition_is_caught_up_only_on_a_fresh_high_watermark_and_after_idling() -> None:
    # Recorded in the two-worker test's failures: web received up to its high watermark, but
    # that came with a fetch 162 ms older than purchase's, which had brought a newer event.
    web, purchase, campaign = 85_814, 85_976, 85_976  # poll times (ms)
    shard = [web, purchase, campaign]
    assert not input_caught_up(169, 169, web, shard, idle_s=5.0, align_idle_s=0.5)
    assert input_caught_up(169, 169, 86_000, [86_000, purchase, campaign], idle_s=5.0, align_idle_s=0.5)
    assert not input_caught_up(168, 169, 86_000, [86_000], idle_s=5.0, align_idle_s=0.5)  # unread
    assert not input_caught_up(0, None, None, [None], idle_s=5.0, align_idle_s=0.5)  # not fetched
    assert not input_caught_up(169, 169, 86_000, [86_000], idle_s=0.2, align_idle_s=0.5)  # just delivered
    assert input_caught_up(169, 169, 86_000, [86_000, None], idle_s=0.0, align_idle_s=0.0)


def test_erase_publishes_a_tombstone_on_the_compacted_scores_topic(pipe: Pipeline) -> None:
    (rec,) = pipe.erase_records("c9")
    assert (rec.topic, rec.key, rec.value) == (T.scores, b"c9", None)


def test_replay_routing() -> None:
    assert _route(purchase("e1"), T.inputs) == (T.purchase, b"c1", 1709287200000)
    # An integer id is the customer "7", as the worker decodes it; a bad ts leaves Kafka's own.
    assert _route(b'{"type":"web","customer_id":7,"ts":"nope"}', T.inputs) == (T.web, b"7", None)
    assert _route(b'{"type":"web","customer_id":7.5,"ts":"nope"}', T.inputs) == (T.web, None, None)
    assert _route(b'{"type":"call_center"}', T.inputs)[0] is None
    assert _route(b"{oops", T.inputs)[0] is None


def test_metrics_never_label_customers() -> None:
    m = Metrics()
    m.count({"invalid": 2, "alerts": 1}, {T.web: 5})
    m.observe_event_to_score([1_000], now=1.5)  # 0.5 s
    m.observe_event_to_score([0], now=10_000.0)  # replayed history: ignored
    text = m.render().decode()
    assert 'leadpulse_events_in_total{topic="leadpulse.events.web"} 5.0' in text
    assert "leadpulse_event_to_score_seconds_count 1.0" in text
    assert "c1" not in text
    w = LatencyWindow(10)
    w.extend([0.1] * 20)
    assert w.summary()["samples"] == 10


def test_decode_reason_is_what_the_dead_letter_carries() -> None:
    bad = b'{"event_id":"e","customer_id":"c","ts":"2024-01-01T00:00:00Z","type":"purchase","order_id":"o","amount":-1,"currency":"EUR"}'
    out = Pipeline(ScoringCore.in_memory()).process([msg(bad, key=b"c")])
    reason = dict(out.records[0].headers)["__connect.errors.exception.message"].decode()
    assert reason == decode(bad).reason  # type: ignore[union-attr]


def test_replay_flushes_at_event_time_boundaries_so_topics_stay_in_step() -> None:
    from streams.live_cli import replay_lines

    class Recorder:  # records the calls a kafka-python producer would get
        def __init__(self) -> None:
            self.calls: list[tuple[str, int | None]] = []

        def send(self, topic: str, key: bytes | None = None, value: bytes | None = None,
                 timestamp_ms: int | None = None, headers: object = None) -> None:
            self.calls.append(("send", timestamp_ms))

        def flush(self) -> None:
            self.calls.append(("flush", None))

    lines = [orjson.dumps(ev) for ev in simulate(SimulationConfig(customers=30, days=3, seed=4))]
    producer = Recorder()
    stats = replay_lines(lines, producer, Topics(), align_ms=3_600_000)
    assert sum(stats.sent.values()) == len(lines)
    # Between two flushes, every event time lies in one hour (up to the file's own disorder).
    windows: list[list[int]] = [[]]
    for call, ts in producer.calls:
        if call == "flush":
            windows.append([])
        else:
            assert ts is not None
            windows[-1].append(ts)
    filled = [w for w in windows if w]
    assert len(filled) > 24
    for w in filled:
        assert max(w) - min(w) < 3_600_000 + MAX_DISORDER_SECONDS * 1000


class _FlakyOnce:
    """A feature store whose ``apply`` fails once, on its ``fail_at``-th call (Redis away)."""

    def __init__(self, inner: object, fail_at: int) -> None:
        self.inner, self.calls, self.fail_at = inner, 0, fail_at

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def apply(self, updates: object) -> object:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("redis went away")
        return self.inner.apply(updates)  # type: ignore[attr-defined]


@pytest.mark.parametrize("learn_inline", [True, False], ids=["one-shard-at-a-time", "shards-together"])
def test_a_retried_batch_loses_no_outputs_of_the_shards_it_had_scored(learn_inline: bool) -> None:
    # Learning inline, the core takes a batch's shards one by one (a feature apply each): the
    # third shard's apply fails and the two before it are kept. Otherwise one apply serves
    # the whole batch: it fails before anything is applied and the retry runs it all.
    fail_at, kept = (6, 2) if learn_inline else (2, 0)
    messages = []
    for i, ev in enumerate(simulate(SimulationConfig(customers=40, days=20, seed=2))):
        key = ev["customer_id"].encode()
        messages.append(Incoming(T.purchase, zlib.crc32(key) % 3, i, key, orjson.dumps(ev)))
    batches = [messages[i:i + 300] for i in range(0, len(messages), 300)]
    assert len(batches) >= 3

    def run(flaky: bool, memo: bool = True) -> list[tuple[str, bytes | None]]:
        core = ScoringCore.in_memory(learn_inline=learn_inline)
        if flaky:  # the second batch fails once
            core.features = _FlakyOnce(core.features, fail_at=fail_at)  # type: ignore[assignment]
        pipe = Pipeline(core)
        records = []
        for batch in batches:
            by_shard, dead, _ = pipe.split(batch)
            pairs = [p for ps in by_shard.values() for p in ps]
            done: dict = {}
            for _attempt in range(2):
                try:
                    out = pipe.score(pairs, done=done if memo else None)
                    break
                except ConnectionError:
                    assert flaky and len(done) == (kept if memo else 0)  # shards scored before it
            records += [(r.topic, r.value) for r in dead + out.records]
        return records

    expected = run(flaky=False)
    assert run(flaky=True) == expected
    assert any(topic == T.scores for topic, _ in expected)
    if kept:
        # Without the memo the retry applies those two shards again: duplicates, no outputs.
        assert len(run(flaky=True, memo=False)) < len(expected)


def test_label_count_snapshots_keep_the_minimum_interval_and_time_based_ones_do_not() -> None:
    clock = [0.0]
    learner = Learner(ModelRegistry(default_kinds()), CheckpointStore(InMemoryModelStore()), every_labels=3,
                      every_s=2, clock=lambda: clock[0], min_interval_s=5)
    items = [(i, _example(i, i % 2)) for i in range(20)]
    learner.learn(items[:3])
    assert learner.due() and learner.checkpoint() == 3  # the first is not held back
    learner.learn(items[3:15])  # four times the label count, at once
    assert not learner.due()
    clock[0] = 2.0  # snapshot_every_s comes first: a time-based snapshot is never held back
    assert learner.due() and learner.checkpoint() == 15
    learner.learn(items[15:18])
    clock[0] = 3.0
    assert not learner.due()
    learner_zero = Learner(ModelRegistry(default_kinds()), CheckpointStore(InMemoryModelStore()), every_labels=3,
                           every_s=30, clock=lambda: clock[0])
    learner_zero.learn(items[:3])
    learner_zero.checkpoint()
    learner_zero.learn(items[3:6])
    assert learner_zero.due()  # min_interval_s 0 (the class default): every 3 labels, as before


def test_the_live_learner_puts_refits_off_to_its_minimum_interval_and_makes_them_later() -> None:
    now = [0.0]
    kinds = [k for k in default_kinds() if k.name == "churn_risk"]
    learner = Learner(ModelRegistry(kinds), CheckpointStore(InMemoryModelStore()), clock=lambda: now[0],
                      refit_min_interval_s=5.0)
    model = learner.registry.models["churn_risk"]

    def learn(first: int, n: int) -> None:
        learner.learn([(i, Labelled("churn_risk", f"c{i}", f"x{i}", i, i + 1, 0.5, 0.5, "model", int(i % 3 == 0),
                                    {"a": float(i % 7), "b": float(i % 5)}))
                       for i in range(first, first + n)])

    learn(0, 3_000)  # the schedule comes due about ten times; the clock stands still
    assert model.consolidations == 1
    now[0] = 4.9
    learn(3_000, 1_000)
    assert model.consolidations == 1
    now[0] = 5.0
    learn(4_000, 1)  # overdue since long: the next label refits
    assert model.consolidations == 2 and model.since_consolidation == 0

    on_schedule = Learner(ModelRegistry(kinds), CheckpointStore(InMemoryModelStore()), clock=lambda: 0.0)
    on_schedule.learn([(i, Labelled("churn_risk", f"c{i}", f"x{i}", i, i + 1, 0.5, 0.5, "model", int(i % 3 == 0),
                                    {"a": float(i % 7)})) for i in range(3_000)])
    assert on_schedule.registry.models["churn_risk"].consolidations > 5

"""Integration: the live worker through a real Kafka-protocol broker and a real Redis.

Every test gets its own topics, consumer group and Redis key prefix on the
session's embedded servers; workers run as ``leadpulse worker`` subprocesses
(:class:`streams.live_cli.WorkerProcess`) and are stopped at the end of the
test, whatever happens. Nothing is mocked.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from features.engine import FeatureEngine
from features.events import EventError, read_jsonl_file
from features.redis_store import RedisFeatureStore
from features.store import InMemoryFeatureStore, Update
from scoring.simulator import SimulationConfig, write_jsonl
from streams.app import ensure_topics
from streams.embedded import free_port
from streams.live_cli import (
    HTTP_TIMEOUT_S,
    WorkerProcess,
    load_settings,
    make_producer,
    replay_lines,
)
from streams.pipeline import labels_from_record
from streams.settings import Topics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

PARTITIONS = 4
LATENESS_MS = 3_600_000



def read_topic(bootstrap: str, topic: str, partitions: int | None = None) -> list[Any]:
    """Every record of a topic (its first ``partitions``, or all), from the beginning to its current end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    numbers = range(partitions) if partitions is not None else sorted(consumer.partitions_for_topic(topic) or ())
    tps = [TopicPartition(topic, p) for p in numbers]
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                out.extend(records)
            assert time.monotonic() < deadline, "could not read the topic to its end"
        return out
    finally:
        consumer.close()

class Deployment:
    """Topics, group and Redis prefix of one test; starts and always stops its workers."""

    def __init__(self, bootstrap: str, redis_url: str, name: str) -> None:
        self.name = name
        self.topics = Topics(**{k: f"{name}.{v}" for k, v in Topics().model_dump().items()})
        self.env = {
            "kafka_bootstrap": bootstrap, "redis_url": redis_url, "partitions": PARTITIONS,
            "app_id": name, "redis_prefix": name, "broker_session_timeout_s": 10,
            "broker_rebalance_timeout_s": 3, "snapshot_every_labels": 50, "snapshot_every_s": 2,
            "snapshot_min_interval_s": 0.5,  # the first snapshot early in a backlog, well before its end
            "model_refresh_s": 1, "batch_size": 200, "keep_late": True,
            **{f"topics__{k}": v for k, v in self.topics.model_dump().items()},
        }
        self.settings = load_settings(
            **{k: v for k, v in self.env.items() if not k.startswith("topics__")}, topics=self.topics
        )
        ensure_topics(self.settings)
        self.workers: list[WorkerProcess] = []
        self.redis = redis.Redis.from_url(redis_url)
        self.logdir: Path | None = None  # keep worker logs here (pytest's tmp_path)
        self.produced = 0  # input records replayed so far

    def start_worker(self) -> WorkerProcess:
        log = self.logdir / f"worker-{len(self.workers)}.log" if self.logdir else None
        w = WorkerProcess({**self.env, "web_port": free_port()}, log_path=log, loglevel="info").start()
        self.workers.append(w)
        return w

    def replay(self, path: Path) -> dict[str, Any]:
        producer = make_producer(self.settings)
        try:
            with open(path, "rb") as lines:
                stats = replay_lines(lines, producer, self.topics).as_dict()
            self.produced += sum(stats["sent"].values())
            return stats
        finally:
            producer.close()

    def wait_drained(self, timeout: float = 120.0) -> None:
        """Until the group has committed every input record replayed (and each partition's end).

        The count matters: the broker's end offsets were seen lagging behind offsets
        already committed, and a check on them alone returned while a shard's last
        events were still being processed (the test then read the features too early).
        """
        tps = [TopicPartition(t, p) for t in self.topics.inputs.values() for p in range(PARTITIONS)]
        consumer = KafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap)
        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        deadline = time.monotonic() + timeout
        try:
            while True:
                ends = consumer.end_offsets(tps)
                committed = admin.list_group_offsets({self.name: tps}).get(self.name, {})
                behind = {tp: ends[tp] - max(0, committed[tp].offset if tp in committed else 0)
                          for tp in tps if ends[tp] > 0}
                done = sum(max(0, c.offset) for c in committed.values())
                if all(v <= 0 for v in behind.values()) and done >= self.produced:
                    return
                for w in self.workers:
                    if w.proc is not None and w.proc.returncode is None and not w.alive():
                        raise AssertionError(f"worker died:\n{w.log_tail()}")
                if time.monotonic() > deadline:
                    tails = "\n---\n".join(w.log_tail(15) for w in self.workers)
                    raise AssertionError(f"not drained after {timeout}s: {behind}\n{tails}")
                time.sleep(0.5)
        finally:
            consumer.close()
            admin.close()

    def read(self, topic: str, partitions: int = PARTITIONS) -> list[Any]:
        """Every record of a topic, from the beginning to its current end."""
        return read_topic(self.settings.kafka_bootstrap, topic, partitions)

    def features(self, customers: list[str]) -> dict[str, dict[str, float]]:
        return RedisFeatureStore(self.redis, prefix=self.name).read(customers)

    def close(self) -> None:
        for w in self.workers:
            w.stop(timeout=20)
        self.redis.close()


@pytest.fixture
def deploy(
    kafka_bootstrap: str, redis_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Any]:
    made: list[Deployment] = []

    def make(suffix: str = "") -> Deployment:
        stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40]
        d = Deployment(kafka_bootstrap, redis_url, f"t-{stem}-{suffix}{time.monotonic_ns() % 10**9}")
        d.logdir = tmp_path
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()
    for d in made:  # every process a test started is gone
        assert all(not w.alive() for w in d.workers)


def reference_features(path: Path) -> tuple[dict[str, dict[str, float]], Counter[str]]:
    """Features of the same file through the in-process store (a run with no Kafka at all)."""
    engine, store = FeatureEngine(), InMemoryFeatureStore(LATENESS_MS)
    statuses: Counter[str] = Counter()
    for _, ev in read_jsonl_file(path):
        if not isinstance(ev, EventError):
            statuses.update(store.apply([Update.of(ev, engine.ops_for(ev))]).statuses)
    customers = sorted(store._states)
    return store.read(customers), statuses


def assert_same_features(got: dict[str, dict[str, float]], want: dict[str, dict[str, float]]) -> None:
    assert set(got) == set(want)
    for cid, state in want.items():
        assert set(got[cid]) == set(state), cid
        for k, v in state.items():
            assert math.isclose(got[cid][k], v, rel_tol=1e-9, abs_tol=1e-9), (cid, k, got[cid][k], v)


def metric(worker: WorkerProcess, name: str) -> float:
    for line in worker.get_text("/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def _counters(worker: WorkerProcess) -> dict[str, float | None]:
    """The counters that tell lost events from unfinished ones (None if not exported yet)."""
    out: dict[str, float | None] = {}
    for name in ("leadpulse_events_late_total", "leadpulse_events_duplicate_total",
                 "leadpulse_events_held_dropped_total"):
        try:
            out[name.removeprefix("leadpulse_events_")] = metric(worker, name)
        except KeyError:
            out[name.removeprefix("leadpulse_events_")] = None
    return out


def test_events_in_scores_alerts_triggers_and_dead_letters_out(deploy: Any, tmp_path: Path) -> None:
    d = deploy()
    path = tmp_path / "events.jsonl"
    summary = write_jsonl(SimulationConfig(customers=60, days=45, seed=11, dirty=0.03), path)
    assert summary.malformed > 5 and summary.duplicates > 0
    worker = d.start_worker()
    worker.wait_ready()
    sent = d.replay(path)
    d.wait_drained()

    # Dead letters: one per malformed line, each with its reason.
    dlq = d.read(d.topics.dlq)
    assert len(dlq) == summary.malformed
    for rec in dlq:
        h = dict(rec.headers)
        assert h["__connect.errors.exception.message"]
        if h["__connect.errors.stage"] != b"replay":  # dead-lettered by the worker
            assert h["__connect.errors.topic"].decode() in d.topics.inputs.values()
            assert int(h["__connect.errors.offset"]) >= 0
    assert sum(1 for r in dlq if dict(r.headers)["__connect.errors.stage"] == b"replay") == sent["unroutable"]

    # Features equal a run of the same file with no Kafka: nothing lost, late or doubled.
    want, statuses = reference_features(path)
    assert_same_features(d.features(sorted(want)), want)
    # The copied lines, and only they, were not applied (as duplicates, or as late when the
    # customer had moved on by more than the lateness: that depends on arrival order).
    not_applied = metric(worker, "leadpulse_events_late_total") + metric(worker, "leadpulse_events_duplicate_total")
    assert not_applied == statuses["duplicate"] + statuses["late"] == summary.duplicates
    # What came later than the lateness is kept as received, not lost.
    late = d.read(d.topics.late)
    assert len(late) == metric(worker, "leadpulse_events_late_total")
    assert all(dict(r.headers)["__connect.errors.stage"] == b"lateness" for r in late)

    scores, alerts, triggers = (d.read(t) for t in (d.topics.scores, d.topics.alerts, d.topics.triggers))
    assert scores and alerts and triggers
    for rec in scores:
        body = json.loads(rec.value)
        assert rec.key.decode() == body["customer_id"]
        assert {"old_value", "value", "band", "grade", "model_version", "source", "reasons",
                "event_id", "ts"} <= set(body)
    assert all(isinstance(json.loads(r.value)["control"], bool) for r in triggers)
    assert metric(worker, "leadpulse_scores_published_total") == len(scores)
    assert metric(worker, "leadpulse_alerts_total") == len(alerts)
    # Matured examples reach the learner, a batch's in one record, and it learns every one.
    label_records = d.read(d.topics.labels, partitions=1)
    examples = sum(len(labels_from_record(r.value)) for r in label_records)
    assert examples == metric(worker, "leadpulse_labels_total") > 5 * len(label_records) > 0
    deadline = time.monotonic() + 60
    while metric(worker, "leadpulse_labels_learned_total") < examples:
        assert time.monotonic() < deadline, "the learner fell behind the labels topic"
        time.sleep(0.5)
    assert metric(worker, "leadpulse_labels_learned_total") == examples

    # Redelivery of everything (a replay after a crash): features unchanged, and no redelivered
    # event publishes anything. (Batches still move the watermark's due work along: idle
    # rescores whose time had already passed may appear; they carry no event id.)
    before = d.features(sorted(want))
    d.replay(path)
    d.wait_drained()
    assert d.features(sorted(want)) == before
    def new(topic: str, old: list[Any]) -> list[dict[str, Any]]:
        seen = {(r.partition, r.offset) for r in old}
        return [json.loads(r.value) for r in d.read(topic) if (r.partition, r.offset) not in seen]

    new_scores, new_alerts = new(d.topics.scores, scores), new(d.topics.alerts, alerts)
    assert all(s["cause"] == "idle_rescore" and s["event_id"] is None for s in new_scores)
    assert all(a["event_id"] is None for a in new_alerts)
    keys = [(a["customer_id"], a["kind"], a["event_id"]) for a in map(json.loads, (r.value for r in alerts))]
    keyed = [k for k in keys if k[2] is not None]
    assert len(keyed) == len(set(keyed)), "an event alerts at most once per score kind"

    # HTTP API: a customer's scores with reasons, then erasure on request.
    cid = json.loads(scores[-1].value)["customer_id"]
    body = worker.get_json(f"/customers/{cid}/scores")
    assert body["customer_id"] == cid and body["scores"]
    assert any("reasons" in s.get("now", {}) for s in body["scores"].values())
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{worker.port}/customers/{cid}", method="DELETE")
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
        assert json.loads(resp.read()) == {"erased": True}
    assert worker.get_json(f"/customers/{cid}/scores").get("error")
    assert d.features([cid]) == {cid: {}}
    tombstones = [r for r in d.read(d.topics.scores) if r.key == cid.encode() and r.value is None]
    assert len(tombstones) == 1
    health = worker.get_json("/health")
    assert health["status"] == "ok" and health["lag_total"] == 0
    # One worker holds the labels partition: it learns, and says what its models weigh.
    models = worker.get_json("/models")
    assert models["learner_here"] is True
    learned = {name: m for name, m in models["models"].items() if m["labels"]}
    assert learned and all(m["weights"] and m["labels"] >= m["positives"] for m in learned.values())
    # Scorers serve snapshots, which lag behind the learner, never ahead of it.
    assert all(models["models"][k]["labels"] >= v for k, v in models["model_versions"].items())
    text = worker.get_text("/metrics")
    for name in ("leadpulse_events_in_total", "leadpulse_events_invalid_total", "leadpulse_batch_seconds_bucket",
                 "leadpulse_event_to_score_seconds_bucket", "leadpulse_consumer_lag", "leadpulse_triggers_total",
                 "leadpulse_labels_total"):
        assert name in text
    assert cid not in worker.log_path.read_text(), "customer ids never reach the logs"


# Formerly a non-strict xfail "known bug" (failed 3 of 6 whole-suite runs, under CPU load):
# either run, single or pair, dropped 4-28 events as late. A partition's high watermark from
# an older fetch than its siblings' made it look read to its end while the replay was still
# producing; the aligner let the siblings' newer events through. Fixed in
# streams.app.LiveWorker._caught_up (fresh high watermark, align_idle_s).
def test_two_workers_in_one_group_match_a_single_worker(deploy: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_jsonl(SimulationConfig(customers=80, days=40, seed=5), path)
    want, _ = reference_features(path)
    customers = sorted(want)

    single = deploy("one-")
    single.start_worker().wait_ready()
    single.replay(path)
    single.wait_drained()
    one = single.features(customers)
    seen = {"one": [_counters(w) for w in single.workers]}
    single.close()

    pair = deploy("two-")
    a, b = pair.start_worker(), pair.start_worker()
    for w in (a, b):
        w.wait_ready()
    deadline = time.monotonic() + 60
    while True:  # both members of the group own input partitions
        owned = [{x for x in w.get_json("/health")["assigned"] if ".events." in x} for w in (a, b)]
        if all(owned) and not owned[0] & owned[1]:
            break
        assert time.monotonic() < deadline, owned
        time.sleep(0.5)
    pair.replay(path)
    pair.wait_drained()
    seen["two"] = [_counters(w) for w in (a, b)]
    try:
        assert_same_features(pair.features(customers), one)
        assert_same_features(one, want)
    except AssertionError as exc:  # what each worker counted: lost (late) or unfinished events
        raise AssertionError(f"{exc}\nworker counters: {seen}") from exc
    shards = [{x.rsplit("/", 1)[1] for x in o} for o in owned]
    assert not shards[0] & shards[1], "a shard (partition number) lives on one worker"


def test_kill_9_mid_stream_then_restart_counts_nothing_twice_and_loses_nothing(
    deploy: Any, tmp_path: Path
) -> None:
    import threading

    d = deploy()
    path = tmp_path / "events.jsonl"
    summary = write_jsonl(SimulationConfig(customers=150, days=60, seed=9), path)
    want, statuses = reference_features(path)
    # The history in two parts: the second arrives while the worker is killed, so it dies
    # busy however fast it went through the first (under load, the learner's first snapshot
    # once came after the whole backlog was done: nothing was left to redeliver or learn).
    lines = path.read_bytes().splitlines(keepends=True)
    first_part, rest = tmp_path / "first.jsonl", tmp_path / "rest.jsonl"
    first_part.write_bytes(b"".join(lines[:len(lines) // 2]))
    rest.write_bytes(b"".join(lines[len(lines) // 2:]))
    d.replay(first_part)  # a backlog
    first = d.start_worker()
    first.wait_ready()
    model_key = f"{d.name}:model:purchase_propensity"
    deadline = time.monotonic() + 120
    # Mid-stream, and after the learner's first snapshot: the restart must resume from it.
    while first.get_json("/health")["events"] < summary.events * 0.3 or not d.redis.hget(model_key, "version"):
        assert time.monotonic() < deadline and first.alive(), first.log_tail()
        time.sleep(0.05)
    # A worker started on a backlog drops nothing as late (its partitions were assigned with
    # nothing committed: a partition counted as caught up too early let the others run ahead).
    assert metric(first, "leadpulse_events_late_total") == 0
    worker_tmp = Path(first._tmp or "")
    assert worker_tmp.is_dir() and any(worker_tmp.glob("leadpulse-faust-*"))  # Faust's data directory
    seen = first.get_json("/health")["events"]
    producing = threading.Thread(target=d.replay, args=(rest,))
    producing.start()
    while first.get_json("/health")["events"] <= seen:  # at work on the second part
        assert time.monotonic() < deadline + 60 and first.alive(), first.log_tail()
        time.sleep(0.02)
    first.kill()
    producing.join(timeout=120)
    assert not producing.is_alive()
    assert not first.alive()
    assert not worker_tmp.exists()  # a killed worker leaves no temporary files behind
    version_at_kill = int(d.redis.hget(model_key, "version") or 0)
    assert version_at_kill > 0

    second = d.start_worker()
    second.wait_ready()
    d.wait_drained()
    assert_same_features(d.features(sorted(want)), want)
    health = second.get_json("/health")
    # Resumed from the snapshot, and learned on: every label the first worker had not
    # snapshotted came again from the labels topic.
    assert health["model_versions"]["purchase_propensity"] >= version_at_kill
    deadline = time.monotonic() + 60
    while int(d.redis.hget(model_key, "version") or 0) <= version_at_kill:
        assert time.monotonic() < deadline, "the restarted learner took no snapshot"
        time.sleep(0.5)
    # Work done after the last commit came again: not applied a second time (duplicate, or late).
    redelivered = metric(second, "leadpulse_events_late_total") + metric(second, "leadpulse_events_duplicate_total")
    assert redelivered > 0 and statuses["late"] == statuses["duplicate"] == 0

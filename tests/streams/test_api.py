"""The worker's HTTP API and Prometheus metrics, as an operator and a scraper meet them.

Workers run as ``leadpulse worker`` subprocesses on the session's real redis-server and
Kafka-protocol broker (each test with its own topics, group and key prefix); nothing is mocked.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from features.engine import FeatureEngine
from features.events import EventError, decode
from features.redis_store import RedisFeatureStore
from features.store import Update
from scoring.simulator import SimulationConfig, write_jsonl
from streams.app import API_WAIT_S, ensure_topics
from streams.embedded import EmbeddedRedis, free_port
from streams.live_cli import (
    HTTP_TIMEOUT_S,
    WorkerProcess,
    load_settings,
    make_producer,
    replay_lines,
)
from streams.metrics import Metrics
from streams.settings import Settings, Topics
from tests.streams.test_live import read_topic

PARTITIONS = 2
TOKEN = "s3cret"


def http(port: int, method: str, path: str, token: str | None = None,
         timeout: float = HTTP_TIMEOUT_S) -> tuple[int, str, bytes]:
    """Status, Content-Type and body of one request (error statuses too)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def until(check: Callable[[], Any], what: str, timeout: float = 90.0, worker: WorkerProcess | None = None) -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}; log:\n{worker.log_tail() if worker else ''}"
        time.sleep(0.3)


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, read with the official parser."""
    status, _, body = http(port, "GET", "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(port: int, name: str) -> float:
    return sum(v for (n, _), v in samples(port).items() if n == name)


class Deployment:
    """Topics, group and Redis prefix of one test, and the settings of its workers."""

    def __init__(self, bootstrap: str, redis_url: str, name: str, **extra: Any) -> None:
        self.name = name
        self.topics = Topics(**{k: f"{name}.{v}" for k, v in Topics().model_dump().items()})
        self.env: dict[str, Any] = {
            "kafka_bootstrap": bootstrap, "redis_url": redis_url, "partitions": PARTITIONS,
            "app_id": name, "redis_prefix": name, "broker_session_timeout_s": 10,
            "broker_rebalance_timeout_s": 3, "model_refresh_s": 1, "snapshot_every_labels": 50,
            "snapshot_every_s": 1, "snapshot_min_interval_s": 0.5,
            **extra, **{f"topics__{k}": v for k, v in self.topics.model_dump().items()},
        }
        self.settings: Settings = load_settings(
            **{k: v for k, v in self.env.items() if not k.startswith("topics__")}, topics=self.topics
        )
        ensure_topics(self.settings)

    def worker(self, log: Path) -> WorkerProcess:
        return WorkerProcess({**self.env, "web_port": free_port()}, log_path=log, loglevel="info")

    def send(self, lines: list[bytes]) -> None:
        producer = make_producer(self.settings)
        try:
            replay_lines(io.BytesIO(b"".join(lines)), producer, self.topics)
        finally:
            producer.close()

    def read(self, topic: str) -> list[Any]:
        """Every record of a topic, from the beginning to its current end."""
        return read_topic(self.settings.kafka_bootstrap, topic)


@pytest.fixture
def deployment(kafka_bootstrap: str, redis_url: str, unique_topic: str) -> Iterator[Callable[..., Deployment]]:
    def make(redis_url: str = redis_url, **extra: Any) -> Deployment:
        return Deployment(kafka_bootstrap, redis_url, unique_topic, **extra)

    yield make


def now_events(customer_ids: list[Any], tag: str) -> list[bytes]:
    """A page view and a purchase for each customer, stamped a minute ago (ids as given: ints stay ints)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 60)) + ".000+00:00"
    lines = []
    for i, cid in enumerate(customer_ids):
        lines.append(json.dumps({"event_id": f"{tag}-w{i}", "customer_id": cid, "ts": stamp, "type": "web",
                                 "action": "page_view", "session_id": f"s{i}", "url": "/"}).encode() + b"\n")
        lines.append(json.dumps({"event_id": f"{tag}-p{i}", "customer_id": cid, "ts": stamp, "type": "purchase",
                                 "order_id": f"o{i}", "amount": 25.0, "currency": "EUR"}).encode() + b"\n")
    return lines


# Ids a URL has to encode: a space, "/", "%", "?" and "#", "{}" (hashed to a Redis tag), unicode,
# the longest id an event may carry (200 characters, 1,600 bytes encoded), an integer in JSON.
ODD_IDS: list[Any] = [
    "qa user 1", "qa/user/2", "qa-50%-3", "qa?x=4#frag", "{qa-brace-5}", "été-ü-6",
    "qa-long-" + "é/" * 96, 987654321,
]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_customer_ids_that_need_url_encoding_are_read_and_erased_without_reaching_the_logs(
    deployment: Callable[..., Deployment], redis_client: redis.Redis, tmp_path: Path
) -> None:
    d = deployment(web_api_token=TOKEN)
    store = RedisFeatureStore(redis_client, prefix=d.name)
    # Known by its features only, never scored (written as the scorer would, then nothing else).
    ev = decode(now_events(["qa-features-only"], "f")[0])
    assert not isinstance(ev, EventError)
    store.apply([Update.of(ev, FeatureEngine().ops_for(ev))])
    ids = [str(cid) for cid in ODD_IDS] + ["qa-features-only"]
    assert all(list(redis_client.scan_iter(match=store.customer_pattern(cid))) for cid in ids[-1:])

    with d.worker(tmp_path / "worker.log") as w:
        w.wait_ready(timeout=120)
        d.send(now_events(ODD_IDS, "odd"))

        def path(cid: str, tail: str = "") -> str:
            return "/customers/" + urllib.parse.quote(cid, safe="") + tail

        def scores(cid: str) -> tuple[int, str, Any]:
            status, ctype, body = http(w.port, "GET", path(cid, "/scores"), TOKEN)
            return status, ctype, json.loads(body) if ctype.startswith("application/json") else body

        for cid in ids[:-1]:
            status, _, body = until(lambda cid=cid: (got := scores(cid))[0] == 200 and got,
                                    f"no scores for {cid!r}: {scores(cid)}", worker=w)
            # The shape the README documents.
            assert body["customer_id"] == cid and set(body) == {"customer_id", "as_of", "scores"}
            assert body["scores"] and all({"value", "band", "scored_at"} <= set(s) for s in body["scores"].values())

        # Unknown, and known by features only: 404 with a JSON body.
        for cid in ("qa-nobody", "qa-features-only"):
            assert scores(cid) == (404, "application/json; charset=utf-8", {"error": "no scores for this customer"})
        # The token guards reads and erasures, and says so in JSON.
        for method, p in (("GET", path(ids[0], "/scores")), ("DELETE", path(ids[0]))):
            status, ctype, body = http(w.port, method, p)
            assert (status, ctype, json.loads(body)) == (401, "application/json; charset=utf-8",
                                                          {"error": "unauthorized"})

        for cid in ids:
            for _ in range(2):  # twice: the second finds nothing, and is fine
                status, _, body = http(w.port, "DELETE", path(cid), TOKEN)
                assert (status, json.loads(body)) == (200, {"erased": True}), cid
            assert scores(cid)[0] == 404
            assert not list(redis_client.scan_iter(match=store.customer_pattern(cid), count=1000)), cid
            due = [k for k in redis_client.scan_iter(match=f"{d.name}:due:*") if redis_client.zscore(k, cid)]
            assert not due, cid
        # Each erasure's tombstone is the last word of its key on the compacted scores topic.
        last: dict[bytes, Any] = {}
        for rec in d.read(d.topics.scores):
            last[rec.key] = rec.value
        assert all(last[cid.encode()] is None for cid in ids)

        # A request line too long for the server (an id far past the 200 characters events may
        # carry) is refused before any view; the log says so without quoting the line.
        status, _, body = http(w.port, "GET", path("qa-oversize-" + "x" * 9000, "/scores"), TOKEN)
        assert status == 400 and b"Traceback" not in body
        # Unknown paths and methods: plain statuses, never a traceback.
        for method, p, code in (("GET", "/nowhere", 404), ("POST", "/health", 405), ("PUT", path(ids[0]), 405)):
            status, _, body = http(w.port, method, p, TOKEN)
            assert status == code and b"Traceback" not in body
    log = (tmp_path / "worker.log").read_text()
    assert "erased a customer" in log
    assert "Error handling request" in log  # the over-long request, logged ...
    assert not [cid for cid in [*ids, "qa-oversize-"] if cid in log], "... but customer ids never reach the logs"


def test_event_to_score_buckets_resolve_the_live_latencies() -> None:
    # Live latencies sit between 60 and 140 ms: histogram_quantile(0.99) over the exported
    # buckets must land near the true p99 (the former 100-250 ms bucket put it at 247 ms).
    m = Metrics()
    lat = [0.06 + 0.08 * i / 999 for i in range(1000)]
    for x in lat:
        m.event_to_score.observe(x)
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for f in text_string_to_metric_families(m.render().decode())
        for s in f.samples if s.name == "leadpulse_event_to_score_seconds_bucket"
    )
    rank, lower, below = 0.99 * len(lat), 0.0, 0.0
    for upper, count in buckets:  # Prometheus's linear interpolation inside the bucket
        if count >= rank:
            estimate = lower + (upper - lower) * (rank - below) / (count - below)
            break
        lower, below = upper, count
    true_p99 = sorted(lat)[989]
    assert abs(estimate - true_p99) / true_p99 < 0.1, (estimate, true_p99)


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_metrics_parse_follow_prometheus_conventions_and_count_model_swaps(
    deployment: Callable[..., Deployment], tmp_path: Path
) -> None:
    d = deployment()
    sim = tmp_path / "sim.jsonl"
    write_jsonl(SimulationConfig(customers=40, days=30, seed=3), sim)
    with d.worker(tmp_path / "worker.log") as w:
        w.wait_ready(timeout=120)
        d.send(sim.read_bytes().splitlines(keepends=True))
        until(lambda: value(w.port, "leadpulse_model_snapshots_total") >= 1, "no snapshot", worker=w)
        # Scorers swap in the learner's snapshot at their next batch (at most every second here).
        nudge = iter(range(1000))

        def swapped() -> bool:
            d.send(now_events([f"qa-nudge-{next(nudge)}"], f"n{time.monotonic_ns()}"))
            time.sleep(1)
            return value(w.port, "leadpulse_model_swaps_total") > 0

        until(swapped, "no model swap counted", worker=w)

        status, ctype, body = http(w.port, "GET", "/metrics")
        assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
        families = list(text_string_to_metric_families(body.decode()))
        names = {f.name for f in families}
        assert not [n for n in names if n.endswith("_created")], "no creation-time series"
        for f in families:
            assert f.name.startswith("leadpulse_") and f.documentation.strip(), f.name
            if f.type == "counter":
                assert all(s.name.endswith("_total") for s in f.samples), f.name
            assert not {"customer_id", "customer"} & {k for s in f.samples for k in s.labels}
        # Every version now in use came from a swap (the kinds start at version 0).
        got = samples(w.port)
        versions = [v for (n, _), v in got.items() if n == "leadpulse_model_version"]
        assert got[("leadpulse_model_swaps_total", ())] >= sum(1 for v in versions if v > 0) > 0
        # Lag: one series per assigned input partition, caught up.
        lag = {dict(labels)["topic"] + "/" + dict(labels)["partition"]: v
               for (n, labels), v in got.items() if n == "leadpulse_consumer_lag"}
        inputs = {f"{t}/{p}" for t in d.topics.inputs.values() for p in range(PARTITIONS)}
        assert set(lag) == inputs and not any(lag.values()), lag


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_worker_whose_batches_wait_shows_its_backlog_as_lag(
    deployment: Callable[..., Deployment], tmp_path: Path
) -> None:
    # Redis comes later: the score agent waits for its first model load and processes nothing.
    redis_port = free_port()
    d = deployment(redis_url=f"redis://127.0.0.1:{redis_port}/0")
    sim = tmp_path / "sim.jsonl"
    write_jsonl(SimulationConfig(customers=20, days=10, seed=5), sim)
    d.send(sim.read_bytes().splitlines(keepends=True))
    sent = sum(r for r in (len(d.read(t)) for t in d.topics.inputs.values()))
    with d.worker(tmp_path / "worker.log") as w:
        w.wait_ready(timeout=120)

        def lags() -> tuple[float, int] | None:
            health = w.get_json("/health")
            got = value(w.port, "leadpulse_consumer_lag"), health["lag_total"]
            return got if got == (sent, sent) else None

        until(lags, f"lag is not the {sent} records waiting: {value(w.port, 'leadpulse_consumer_lag')}, "
                    f"{w.get_json('/health')['lag']}", timeout=60, worker=w)
        with EmbeddedRedis(port=redis_port):
            until(lambda: value(w.port, "leadpulse_consumer_lag") == 0 == w.get_json("/health")["lag_total"],
                  "the backlog was not worked off", worker=w)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_clearing_the_latency_window_leaves_the_health_tally_alone(
    deployment: Callable[..., Deployment], tmp_path: Path
) -> None:
    # A benchmark's DELETE /latency starts its window afresh; /health's events and
    # last_batch_age_s are the operator's and go on (bare: the same views, no Redis).
    d = deployment()
    settings = {**d.env, "web_port": free_port()}
    with WorkerProcess(settings, log_path=tmp_path / "worker.log", bare=True) as w:
        w.wait_ready(timeout=120)
        d.send(now_events([f"qa-{i}" for i in range(5)], "h"))
        until(lambda: w.get_json("/health")["events"] == 10, "events not counted", worker=w)
        status, _, body = http(w.port, "DELETE", "/latency")
        assert (status, json.loads(body)) == (200, {"reset": True})
        assert w.get_json("/latency")["events"] == 0
        health = w.get_json("/health")
        assert health["events"] == 10 and health["last_batch_age_s"] is not None, health


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_customer_read_while_redis_is_down_answers_503_instead_of_hanging(
    deployment: Callable[..., Deployment], tmp_path: Path
) -> None:
    redis_port = free_port()
    d = deployment(redis_url=f"redis://127.0.0.1:{redis_port}/0")
    path = "/customers/qa-down-0/scores"
    with d.worker(tmp_path / "worker.log") as w:
        with EmbeddedRedis(port=redis_port):
            w.wait_ready(timeout=120)
            d.send(now_events(["qa-down-0"], "a"))
            until(lambda: http(w.port, "GET", path)[0] == 200, "the customer was never scored", worker=w)
        # Redis is gone: the next batch fails, and the scoring thread retries it in place for as
        # long as that lasts. A read queued behind it waited as long.
        d.send(now_events(["qa-down-1"], "b"))
        until(lambda: w.get_json("/health")["error"], "no stage failed without Redis", worker=w)
        started = time.monotonic()
        # The client waits far longer than the worker's API_WAIT_S (10 s): the answer, not our timeout.
        status, content_type, body = http(w.port, "GET", path, timeout=6 * API_WAIT_S)
        assert status == 503 and content_type.startswith("application/json"), (status, body)
        assert "try again" in json.loads(body)["error"]
        # Its own wait, not the scoring thread's retries (which go on): bounded by API_WAIT_S, with
        # room for a loaded host's scheduling (a stall of the worker's loop of several seconds).
        assert time.monotonic() - started < 2 * API_WAIT_S

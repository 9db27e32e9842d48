import asyncio
import contextlib
from typing import Any

import pytest
from pydantic import ValidationError

from streams.app import LiveWorker
from streams.live_cli import HTTP_TIMEOUT_S
from streams.settings import Settings


def test_the_fetch_size_per_partition_reaches_the_faust_app_settings():
    worker = LiveWorker(Settings(consumer_max_fetch_bytes=65_536, app_id="fetch-test"), bare=True)
    assert worker.app.conf.consumer_max_fetch_size == 65_536
    default = LiveWorker(Settings(app_id="fetch-default"), bare=True)
    assert default.app.conf.consumer_max_fetch_size == Settings().consumer_max_fetch_bytes == 262_144


def test_a_fetch_size_below_one_kilobyte_is_refused():
    with pytest.raises(ValidationError):
        Settings(consumer_max_fetch_bytes=100)


def test_the_api_token_guards_customer_and_model_views() -> None:
    class Request:
        def __init__(self, headers: dict[str, str]) -> None:
            self.headers = headers

    guarded = LiveWorker(Settings(web_api_token="s3cret", app_id="token-test"), bare=True)
    assert guarded._authorized(Request({"Authorization": "Bearer s3cret"}))
    assert not guarded._authorized(Request({"Authorization": "Bearer wrong"}))
    assert not guarded._authorized(Request({}))
    assert LiveWorker(Settings(app_id="open-test"), bare=True)._authorized(Request({}))


def test_the_fetch_wait_reaches_the_kafka_consumer_faust_builds():
    # Faust builds its aiokafka consumer with a fixed 1.5 s fetch wait; ours comes from settings.
    # The consumer is built but not started: nothing connects.
    from streams.faust_transport import DEFAULT_FETCH_MAX_WAIT_MS, Transport

    for settings, expected in (
        (Settings(app_id="wait-test", consumer_fetch_max_wait_ms=40), 40),
        (Settings(app_id="wait-default"), Settings().consumer_fetch_max_wait_ms),
    ):
        app = LiveWorker(settings, bare=True).app
        assert isinstance(app.transport, Transport)
        thread = app.consumer._new_consumer_thread()

        async def build(thread: Any = thread, app: Any = app) -> Any:
            return thread._create_worker_consumer(app.transport)  # aiokafka wants a running loop

        consumer = asyncio.run(build())
        assert consumer._fetch_max_wait_ms == expected != DEFAULT_FETCH_MAX_WAIT_MS


def test_a_fetch_wait_above_a_minute_is_refused():
    with pytest.raises(ValidationError):
        Settings(consumer_fetch_max_wait_ms=120_000)


@pytest.mark.integration
def test_with_a_token_clearing_the_latency_window_needs_it(kafka_bootstrap: str, unique_topic: str) -> None:
    import urllib.error
    import urllib.request

    from streams.embedded import free_port
    from streams.live_cli import WorkerProcess

    topics = {f"topics__{k}": f"{unique_topic}.{k}" for k in ("web", "purchase", "campaign", "labels")}
    settings = {"kafka_bootstrap": kafka_bootstrap, "web_port": free_port(), "app_id": unique_topic,
                "partitions": 1, "web_api_token": "s3cret", **topics}

    def delete(token: str | None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{settings['web_port']}/latency", method="DELETE")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    with WorkerProcess(settings, bare=True) as worker:  # bare: the same views, no Redis
        worker.wait_ready(timeout=120, partitions=False)
        assert delete(None) == 401 and delete("wrong") == 401
        assert delete("s3cret") == 200
        assert isinstance(worker.get_json("/latency"), dict)  # reading needs no token


def _ready(port: int) -> tuple[int, dict[str, Any]]:
    """``GET /ready``: status and JSON body (503 has one too)."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=HTTP_TIMEOUT_S) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_ready_waits_for_the_first_model_refresh_and_a_rebalance_and_a_standby_is_ready(
    kafka_bootstrap: str, unique_topic: str, tmp_path: Any
) -> None:
    import threading
    import time

    from streams.embedded import EmbeddedRedis, free_port
    from streams.live_cli import WorkerProcess
    from streams.settings import Topics

    redis_port = free_port()  # Redis comes later: the score agent's first refresh waits for it
    topics = {f"topics__{k}": f"{unique_topic}.{v}" for k, v in Topics().model_dump().items()}
    # One partition per topic: every topic is in one co-partitioned group, so a second replica
    # of the group gets nothing (a standby). The token must not guard /ready.
    settings = {"kafka_bootstrap": kafka_bootstrap, "redis_url": f"redis://127.0.0.1:{redis_port}/0",
                "app_id": unique_topic, "redis_prefix": unique_topic, "partitions": 1,
                "broker_session_timeout_s": 10, "broker_rebalance_timeout_s": 3,
                "web_api_token": "s3cret", **topics}
    inputs = {f"{topics[f'topics__{k}']}/0" for k in ("web", "purchase", "campaign")}

    def until(port: int, ok: Any, timeout: float = 120) -> tuple[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = _ready(port)
            except OSError:  # web server not up yet
                got = (0, {})
            if ok(*got):
                return got
            assert time.monotonic() < deadline, got
            time.sleep(0.1)

    def log_of(w: WorkerProcess) -> str:
        return w.log_tail()

    with WorkerProcess({**settings, "web_port": free_port()}, log_path=tmp_path / "a.log") as a:
        # Partitions assigned and handled, models not loaded (no Redis): not ready.
        status, body = until(a.port, lambda s, b: b.get("assigned"))
        assert status == 503 and body["ready"] is False, log_of(a)
        assert body["waiting_for"] == ["models", "redis"] and inputs <= set(body["assigned"])
        with EmbeddedRedis(port=redis_port):
            status, body = until(a.port, lambda s, b: s == 200)
            assert body == {"ready": True, "mode": "pipeline", "waiting_for": [], "error": None,
                            "assigned": sorted(body["assigned"])}
            held = body["assigned"]
            assert inputs <= set(held)

            # A second replica joins: the first goes through a rebalance (not ready meanwhile).
            seen: list[tuple[int, tuple[str, ...]]] = []
            stop = threading.Event()

            def watch() -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError):
                        status, body = _ready(a.port)
                        state = (status, tuple(body["waiting_for"]))
                        if not seen or seen[-1] != state:
                            seen.append(state)
                    time.sleep(0.005)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                with WorkerProcess({**settings, "web_port": free_port()}, log_path=tmp_path / "b.log") as b:
                    until(b.port, lambda s, b: s == 503)  # up, before its first assignment
                    status, standby = until(b.port, lambda s, b: s == 200)
                    deadline = time.monotonic() + 60
                    while seen[-1][0] != 200 or len(seen) < 3:
                        assert time.monotonic() < deadline, (seen, log_of(a), log_of(b))
                        time.sleep(0.1)
                    stop.set()
                    watcher.join()
                    final = _ready(a.port)
            finally:
                stop.set()
        # Redis gone: not ready (and no longer waiting for anything else).
        status, gone = until(a.port, lambda s, b: s == 503)
        assert gone["ready"] is False and gone["waiting_for"] == ["redis"], gone
    # The whole group is one co-partitioned unit: one replica holds it, the other stands by.
    assert standby["ready"] is True and standby["assigned"] == [], standby
    assert final == (200, {"ready": True, "mode": "pipeline", "waiting_for": [], "error": None, "assigned": held})
    assert seen[0] == (200, ()) and (503, ("assignment",)) in seen and seen[-1] == (200, ()), seen


def _read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record of a one-partition topic, from its beginning to its current end."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             fetch_max_bytes=4 << 20, max_partition_fetch_bytes=4 << 20)
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning()
        end = consumer.end_offsets([tp])[tp]
        out: list[Any] = []
        deadline = time.monotonic() + 30
        while consumer.position(tp) < end:
            out += [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
            assert time.monotonic() < deadline, "could not read the topic to its end"
        return out
    finally:
        consumer.close()


def _worker_env(kafka_bootstrap: str, redis_url: str, unique_topic: str, partitions: int) -> tuple[Any, dict[str, Any]]:
    """Topics of the test's own, created, and a worker's settings on them (the broker's quick group joins)."""
    from streams.app import ensure_topics
    from streams.live_cli import load_settings
    from streams.settings import Topics

    topics = Topics(**{k: f"{unique_topic}.{v}" for k, v in Topics().model_dump().items()})
    env = {"kafka_bootstrap": kafka_bootstrap, "redis_url": redis_url, "app_id": unique_topic,
           "redis_prefix": unique_topic, "partitions": partitions, "broker_session_timeout_s": 10,
           "broker_rebalance_timeout_s": 3, **{f"topics__{k}": v for k, v in topics.model_dump().items()}}
    ensure_topics(load_settings(kafka_bootstrap=kafka_bootstrap, partitions=partitions, topics=topics))
    return topics, env


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_1_mb_input_record_is_dead_lettered_truncated_and_a_clock_ahead_does_not_make_events_late(
    kafka_bootstrap: str, redis_url: str, unique_topic: str, tmp_path: Any
) -> None:
    import hashlib
    import time

    import orjson

    from streams.embedded import free_port
    from streams.live_cli import WorkerProcess, load_settings, make_producer

    topics, env = _worker_env(kafka_bootstrap, redis_url, unique_topic, partitions=1)
    now_ms = int(time.time() * 1000)

    def web(eid: str, cid: str, ts_ms: int, **extra: Any) -> bytes:
        return orjson.dumps({"event_id": eid, "customer_id": cid, "ts": ts_ms, "type": "web",
                             "action": "add_to_cart", "session_id": "s1", **extra})

    # What the review sent: 1,000,068 bytes, which the broker takes. Its dead letter was over the
    # producer's 1,000,000-byte request limit: retried every 30 s, every partition blocked.
    big = web("big", "cbig", now_ms, pad="x" * 999_900)
    big += b" " * (1_000_068 - len(big))
    assert len(big) == 1_000_068
    # And one larger than any producer request: its dead letter is its first 64 KiB.
    huge = web("huge", "chuge", now_ms, pad="y" * 1_500_000)
    producer = make_producer(load_settings(kafka_bootstrap=kafka_bootstrap), max_request_size=2 << 20)
    try:
        producer.send(topics.web, key=b"cbig", value=big).get(timeout=30)
        producer.send(topics.web, key=b"chuge", value=huge).get(timeout=30)
        # A client whose clock is 5 h ahead (within decode's one-day bound), then that customer's
        # real events, and another customer's.
        producer.send(topics.web, key=b"cskew", value=web("skewed", "cskew", now_ms + 5 * 3_600_000)).get(timeout=30)
        for i, cid in enumerate(("cskew", "cother")):
            producer.send(topics.web, key=cid.encode(), value=web(f"real-{i}", cid, now_ms + i)).get(timeout=30)
    finally:
        producer.close()

    with WorkerProcess({**env, "web_port": free_port()}, log_path=tmp_path / "w.log") as worker:
        worker.wait_ready(timeout=120)
        deadline = time.monotonic() + 90
        while True:
            dlq = _read_all(kafka_bootstrap, topics.dlq)
            scored = {r.key for r in _read_all(kafka_bootstrap, topics.scores)}
            if len(dlq) >= 3 and {b"cskew", b"cother"} <= scored:
                break
            assert time.monotonic() < deadline, (len(dlq), scored, worker.get_json("/health"), worker.log_tail())
            time.sleep(1)
        health = worker.get_json("/health")
        late = float(next(line.split()[1] for line in worker.get_text("/metrics").splitlines()
                          if line.startswith("leadpulse_events_late_total ")))
    by_key = {r.key: r for r in dlq}
    assert len(dlq) == 3 and set(by_key) == {b"cbig", b"chuge", b"cskew"}
    # Within the producer's limit (now the broker's default message size): whole.
    assert by_key[b"cbig"].value == big
    assert dict(by_key[b"cbig"].headers)["__connect.errors.exception.message"].startswith(b"oversized")
    cut = dict(by_key[b"chuge"].headers)
    assert by_key[b"chuge"].value == huge[:64 * 1024]
    assert cut["leadpulse.truncated_from"] == str(len(huge)).encode()
    assert cut["leadpulse.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert cut["__connect.errors.exception.message"].startswith(b"oversized")
    skew = dict(by_key[b"cskew"].headers)
    assert skew["__connect.errors.stage"] == b"event_time"
    assert b"ahead of the worker's clock" in skew["__connect.errors.exception.message"]
    assert orjson.loads(by_key[b"cskew"].value)["event_id"] == "skewed"
    # The skewed client's real event was scored, not dropped as late; nothing stuck.
    assert late == 0
    assert health["status"] == "ok" and health["error"] is None, health


@pytest.mark.integration
def test_a_record_the_producer_refuses_as_too_large_is_sent_truncated_once_not_retried_forever(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    import hashlib

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from streams.pipeline import Incoming, OutRecord, dead_letter
    from streams.settings import Topics

    topics = Topics(dlq=f"{unique_topic}.dlq", scores=f"{unique_topic}.scores")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(t, 1, 1) for t in (topics.dlq, topics.scores)])
    finally:
        admin.close()
    worker = LiveWorker(Settings(kafka_bootstrap=kafka_bootstrap, app_id=unique_topic, topics=topics,
                                 producer_max_request_bytes=512 * 1024), bare=True)
    original = b"z" * 600_000
    records = [
        OutRecord(topics.scores, b"c1", b'{"value": 1}'),
        dead_letter(Incoming("in", 0, 7, b"c2", original), "oversized", topics.dlq),  # not cut beforehand
        OutRecord(topics.scores, b"c3", b"v" * 600_000),  # an output too large: to the DLQ, cut
    ]

    async def publish() -> None:
        await worker.app.producer.start()
        try:
            # Before: ProducerSendError, retried every 30 s without end.
            await asyncio.wait_for(worker.publish(records), timeout=30)
        finally:
            await worker.app.producer.stop()

    asyncio.run(publish())
    # The batch's other records were sent again with the copies (at least once: keys stay in order).
    assert {r.value for r in _read_all(kafka_bootstrap, topics.scores)} == {b'{"value": 1}'}
    dead = {r.key: (r.value, dict(r.headers)) for r in _read_all(kafka_bootstrap, topics.dlq)}
    assert set(dead) == {b"c2", b"c3"}
    value, headers = dead[b"c2"]
    assert value == original[:64 * 1024] and headers["__connect.errors.offset"] == b"7"
    assert headers["leadpulse.truncated_from"] == b"600000"
    assert headers["leadpulse.sha256"] == hashlib.sha256(original).hexdigest().encode()
    value, headers = dead[b"c3"]
    assert len(value) == 64 * 1024 and headers["__connect.errors.stage"] == b"publish"
    assert headers["__connect.errors.topic"] == topics.scores.encode()
    assert worker.metrics.errors.labels(stage="too_large")._value.get() == 2


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_sigterm_ends_a_worker_whose_broker_is_gone_within_the_shutdown_timeout(
    redis_url: str, unique_topic: str, tmp_path: Any
) -> None:
    # Before: with the broker gone, a SIGTERMed worker stayed alive (stuck in Faust's
    # consumer-thread shutdown, or in wait_empty behind a publish retried without end) until
    # SIGKILL. A broker of its own, so that it can go.
    import os
    import signal
    import subprocess
    import time

    import orjson

    from streams.app import ensure_topics
    from streams.embedded import EmbeddedKafka, free_port
    from streams.live_cli import WorkerProcess, load_settings, make_producer
    from streams.settings import Topics

    topics = Topics(**{k: f"{unique_topic}.{v}" for k, v in Topics().model_dump().items()})
    with EmbeddedKafka() as broker:
        env = {"kafka_bootstrap": broker.bootstrap, "redis_url": redis_url, "app_id": unique_topic,
               "redis_prefix": unique_topic, "partitions": 1, "broker_session_timeout_s": 10,
               "broker_rebalance_timeout_s": 3, "shutdown_timeout_s": 5,
               **{f"topics__{k}": v for k, v in topics.model_dump().items()}}
        ensure_topics(load_settings(kafka_bootstrap=broker.bootstrap, partitions=1, topics=topics))
        worker = WorkerProcess({**env, "web_port": free_port()}, log_path=tmp_path / "w.log")
        try:
            worker.start().wait_ready(timeout=120)
            producer = make_producer(load_settings(kafka_bootstrap=broker.bootstrap))
            try:
                event = {"event_id": "e1", "customer_id": "c1", "ts": int(time.time() * 1000),
                         "type": "web", "action": "product_view", "session_id": "s1"}
                producer.send(topics.web, key=b"c1", value=orjson.dumps(event)).get(timeout=30)
            finally:
                producer.close()
            deadline = time.monotonic() + 60
            while worker.get_json("/health")["events"] < 1:  # scoring and publishing
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.2)
            broker.stop()
            time.sleep(5)  # the worker notices: its consumer and producer fail to reconnect
            started = time.monotonic()
            os.killpg(worker.pid, signal.SIGTERM)
            assert worker.proc is not None
            try:
                code = worker.proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running 60 s after SIGTERM:\n{worker.log_tail()}") from None
            took = time.monotonic() - started
            assert took < 30, (code, took, worker.log_tail())
            if code != 0:  # the clean stop did not finish: the watchdog ended it, and said so
                assert code == 1 and took >= 5, (code, took, worker.log_tail())
                assert "the stop did not finish within 5s (LEADPULSE_SHUTDOWN_TIMEOUT_S)" in worker.log_path.read_text()
            deadline = time.monotonic() + 10
            while True:  # the scoring and learning processes went with it
                try:
                    os.killpg(worker.pid, 0)
                except ProcessLookupError:
                    break
                assert time.monotonic() < deadline, "a child process outlived the worker"
                time.sleep(0.1)
            # The Kafka client's retries: each error once a minute, not at every retry.
            log = worker.log_path.read_text()
            assert log.count("Unable connect to node") <= 1 and log.count("Unable to update metadata") <= 1
        finally:
            worker.stop(timeout=10)


def test_repeated_kafka_client_errors_are_logged_once_a_minute_with_the_count_left_out() -> None:
    import logging

    from streams.app import RepeatFilter

    now = [0.0]
    repeats = RepeatFilter(60.0, clock=lambda: now[0])

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", level, "", 0, msg, ("127.0.0.1",), None)

    passed = [repeats.filter(record("Unable to update metadata from %s")) for _ in range(500)]
    assert passed.count(True) == 1
    assert repeats.filter(record("Unable connect to node %s"))  # another message: its own count
    assert repeats.filter(record("Unable to update metadata from %s", logging.INFO))  # info: not filtered
    now[0] = 60.5
    last = record("Unable to update metadata from %s")
    assert repeats.filter(last) and last.getMessage().endswith("(499 more like it in the last 60s not logged)")


def test_the_broker_counts_as_unreachable_only_after_the_threshold_and_an_answer_clears_it() -> None:
    import time

    worker = LiveWorker(Settings(app_id="broker-contact", broker_unreachable_s=8), bare=True)
    assert worker.broker_probe_s == 2.0
    assert LiveWorker(Settings(app_id="broker-probe-default"), bare=True).broker_probe_s == 5.0
    assert worker.broker_unreachable() is None  # from start (ensure_topics reached it)
    # Before: silence alone counted, so an event loop stalled past the threshold (CI, a loaded
    # host) showed a live broker as unreachable. Nothing asked, nothing unanswered: ok.
    worker.broker_answered_at -= 30
    assert worker.broker_unreachable() is None
    worker.broker_answered()
    worker.broker_unanswered(time.monotonic())  # one unanswered request, just now: not enough
    worker.broker_answered_at -= 7.5  # silent, but within the threshold: an idle broker between probes
    assert worker.broker_unreachable() is None
    worker.broker_answered_at -= 1.7
    worker.broker_answered_wall = 0.0
    assert worker.broker_unreachable() is None  # over the threshold, but unanswered for under half of it
    worker.broker_failing_since -= 4.0
    assert worker.broker_unreachable() == "broker unreachable since 1970-01-01T00:00:00Z (no answer for 9s)"
    body, status = worker.readiness()
    assert status == 503 and "broker" in body["waiting_for"] and body["error"].startswith("broker unreachable")
    worker.broker_answered()  # it answers again: recovered
    assert worker.broker_unreachable() is None
    assert abs(worker.broker_answered_wall - time.time()) < 5
    assert "broker" not in worker.readiness()[0]["waiting_for"]


def test_a_probe_answered_while_the_event_loop_stalled_does_not_show_the_broker_unreachable() -> None:
    # Before: a probe in flight when the worker's event loop stalled (a loaded host) lost to its
    # own timeout when the loop ran again (the timer fires before the answer is read) and counted
    # as unanswered from before the stall: a stall longer than the threshold showed a live broker
    # as unreachable until the next probe. Here the broker answers at once, the loop stalls 2.5 s.
    import time

    worker = LiveWorker(Settings(app_id="broker-stall", broker_unreachable_s=2), bare=True)
    stall_s = 2.5  # over the threshold (2 s), and the probe's timeout (0.5 s) with it
    noted: list[tuple[str, float, str | None]] = []  # (answered?, when, broker_unreachable())

    async def probe() -> bool:
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if len(noted) == 1:  # the second probe: answered at once
            return True
        if len(noted) == 2:  # the third: no answer at all
            return bool(await answer)

        def stall() -> None:  # the loop stands still; the answer comes in meanwhile
            time.sleep(stall_s)
            loop.call_soon(answer.set_result, True)

        loop.call_soon(stall)
        await answer
        await asyncio.sleep(0)  # the client's reader hands it on: a step of its own
        return True

    def note(name: str, method: Any) -> Any:
        def noting(*args: Any) -> None:
            method(*args)
            noted.append((name, time.monotonic(), worker.broker_unreachable()))
        return noting

    worker.probe_broker = probe  # type: ignore[method-assign]
    worker.broker_answered = note("answered", worker.broker_answered)  # type: ignore[method-assign]
    worker.broker_unanswered = note("unanswered", worker.broker_unanswered)  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.ensure_future(worker.watch_broker())
        while len(noted) < 3:
            await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    (first, _, first_unreachable), (second, _, second_unreachable), (third, third_at, _) = noted[:3]
    assert first == "unanswered"  # the timeout won: the stall's answer went unread ...
    assert first_unreachable is None, first_unreachable  # ... but the stall is no evidence
    assert second == "answered" and second_unreachable is None
    # A probe that goes unanswered without a stall counts from when it was asked.
    assert third == "unanswered" and worker.broker_failing_since is not None
    assert third_at - worker.broker_failing_since >= worker.broker_probe_s - 0.01


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_health_turns_degraded_while_the_broker_is_gone_and_ok_once_it_is_back(
    redis_url: str, unique_topic: str, tmp_path: Any
) -> None:
    # Before: /health and /ready answered ok and ready (200) with the broker down. A broker of its
    # own, so that it can go; it comes back on the same port (tansu keeps nothing: topics again).
    import time
    from datetime import UTC, datetime

    from streams.app import ensure_topics
    from streams.embedded import EmbeddedKafka, EmbeddedServerError, free_port
    from streams.live_cli import WorkerProcess, load_settings
    from streams.settings import Topics

    threshold = 4.0
    topics = Topics(**{k: f"{unique_topic}.{v}" for k, v in Topics().model_dump().items()})
    broker = EmbeddedKafka().start()
    port = broker.port
    try:
        env = {"kafka_bootstrap": broker.bootstrap, "redis_url": redis_url, "app_id": unique_topic,
               "redis_prefix": unique_topic, "partitions": 1, "broker_session_timeout_s": 10,
               "broker_rebalance_timeout_s": 3, "shutdown_timeout_s": 5, "broker_unreachable_s": threshold,
               **{f"topics__{k}": v for k, v in topics.model_dump().items()}}
        settings = load_settings(kafka_bootstrap=broker.bootstrap, partitions=1, topics=topics)
        ensure_topics(settings)
        with WorkerProcess({**env, "web_port": free_port()}, log_path=tmp_path / "w.log") as worker:
            worker.wait_ready(timeout=120)
            # Idle (no record flows) for three thresholds: the broker answers, health stays ok.
            deadline = time.monotonic() + 3 * threshold
            while time.monotonic() < deadline:
                health = worker.get_json("/health")
                assert health["status"] == "ok" and health["broker"] == "ok", (health, worker.log_tail())
                time.sleep(0.5)

            broker.stop()
            stopped = time.monotonic()
            while (health := worker.get_json("/health"))["broker"] == "ok":
                assert time.monotonic() - stopped < threshold + 20, (health, worker.log_tail())
                time.sleep(0.2)
            seen = time.time()
            assert health["status"] == "degraded" and health["broker"] == "unreachable", health
            assert health["error"].startswith("broker unreachable since "), health
            # Not before the threshold: that long after the last answer the worker had (its wall time,
            # to the second). Counted from that answer, not from the stop: a loaded host can stall the
            # worker's probes, and its last answer then came more than one probe interval before.
            since = datetime.strptime(health["error"].split()[3], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            assert seen - since.timestamp() >= threshold, (health, seen)
            status, ready = _ready(worker.port)
            assert status == 503 and "broker" in ready["waiting_for"], ready

            restart = time.monotonic() + 30
            while True:  # the same port: a reconnect of the worker's may hold it a moment (as its own)
                try:
                    broker = EmbeddedKafka(port=port).start()
                    break
                except EmbeddedServerError:
                    assert time.monotonic() < restart, worker.log_tail()
                    time.sleep(0.5)
            ensure_topics(settings)
            back = time.monotonic()
            while (health := worker.get_json("/health"))["broker"] != "ok":
                assert time.monotonic() - back < 30, (health, worker.log_tail())
                time.sleep(0.2)
            assert not (health["error"] or "").startswith("broker"), health
            deadline = time.monotonic() + 60
            while (got := _ready(worker.port))[0] != 200:  # the consumer rejoins its (new) group
                assert "broker" not in got[1]["waiting_for"], got
                assert time.monotonic() < deadline, (got, worker.get_json("/health"), worker.log_tail())
                time.sleep(0.5)
            assert worker.get_json("/health")["status"] == "ok"
    finally:
        broker.stop()


def test_replicas_sharing_a_redis_agree_on_its_epoch_and_each_reports_a_loss_once(redis_client: Any) -> None:
    import types

    from streams.app import LiveWorker
    from streams.metrics import Metrics

    def replica() -> Any:  # the state check_redis_epoch uses, on the real Redis
        return types.SimpleNamespace(settings=Settings(redis_prefix="epoch-test"), redis=redis_client,
                                     metrics=Metrics(), redis_epoch=None, redis_data_lost_at=None)

    a, b = replica(), replica()
    redis_client.set("epoch-test:x", b"1")
    assert not LiveWorker.check_redis_epoch(a) and not LiveWorker.check_redis_epoch(b)  # start: nothing lost
    first = redis_client.get("epoch-test:epoch")
    assert first is not None and a.redis_epoch == b.redis_epoch == first
    assert not LiveWorker.check_redis_epoch(a)  # unchanged
    redis_client.flushall()
    assert LiveWorker.check_redis_epoch(a)  # a notices first and writes a new epoch
    assert LiveWorker.check_redis_epoch(b)  # b finds a's: a loss for it too, and the same epoch
    assert a.redis_epoch == b.redis_epoch == redis_client.get("epoch-test:epoch") != first
    assert not LiveWorker.check_redis_epoch(a) and not LiveWorker.check_redis_epoch(b)  # once per loss
    for r in (a, b):
        assert r.metrics.redis_data_lost._value.get() == 1 and r.redis_data_lost_at is not None


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_flushed_redis_is_logged_counted_and_shown_on_health_once(
    kafka_bootstrap: str, unique_topic: str, tmp_path: Any
) -> None:
    # Before: a Redis that came back empty went unnoticed (no log line, metric or health change).
    # A Redis of its own, so that flushing it touches no other test.
    import time

    import redis as redis_py

    from streams.embedded import EmbeddedRedis, free_port
    from streams.live_cli import WorkerProcess
    from streams.settings import Topics

    topics = {f"topics__{k}": f"{unique_topic}.{v}" for k, v in Topics().model_dump().items()}

    def lost_count(worker: WorkerProcess) -> float:
        return float(next(line.split()[1] for line in worker.get_text("/metrics").splitlines()
                          if line.startswith("leadpulse_redis_data_lost_total ")))

    with EmbeddedRedis() as server:
        client = redis_py.Redis.from_url(server.url)
        env = {"kafka_bootstrap": kafka_bootstrap, "redis_url": server.url, "app_id": unique_topic,
               "redis_prefix": unique_topic, "partitions": 1, "broker_session_timeout_s": 10,
               "broker_rebalance_timeout_s": 3, "web_port": free_port(), **topics}
        try:
            with WorkerProcess(env, log_path=tmp_path / "w.log") as worker:
                worker.wait_ready(timeout=120)
                deadline = time.monotonic() + 30
                while (epoch := client.get(f"{unique_topic}:epoch")) is None:
                    assert time.monotonic() < deadline, worker.log_tail()
                    time.sleep(0.2)
                health = worker.get_json("/health")
                assert health["status"] == "ok" and health["redis_data_lost_at"] is None, health
                assert lost_count(worker) == 0

                client.flushall()
                flushed = time.monotonic()
                while (health := worker.get_json("/health"))["redis_data_lost_at"] is None:
                    assert time.monotonic() - flushed < 15, (health, worker.log_tail())
                    time.sleep(0.2)
                assert health["status"] == "degraded", health
                assert health["error"].startswith("redis: data lost (noticed at "), health
                assert lost_count(worker) == 1
                renewed = client.get(f"{unique_topic}:epoch")
                assert renewed is not None and renewed != epoch
                time.sleep(12)  # two more checks: the same loss is not reported again
                assert lost_count(worker) == 1
                assert worker.get_json("/health")["redis_data_lost_at"] == health["redis_data_lost_at"]
                log = worker.log_path.read_text()
                assert log.count("Redis lost its data") == 1, worker.log_tail()
        finally:
            client.close()


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_a_customer_on_another_partition_is_counted_logged_without_its_id_and_shown_on_health(
    kafka_bootstrap: str, redis_url: str, unique_topic: str, tmp_path: Any
) -> None:
    # Before: a producer that put one customer on two partitions went unnoticed.
    import time

    import orjson

    from streams.embedded import free_port
    from streams.live_cli import WorkerProcess, load_settings, make_producer

    topics, env = _worker_env(kafka_bootstrap, redis_url, unique_topic, partitions=2)
    now_ms = int(time.time() * 1000)

    def moves(worker: WorkerProcess) -> float:
        return float(next(line.split()[1] for line in worker.get_text("/metrics").splitlines()
                          if line.startswith("leadpulse_customer_shard_changes_total ")))

    def wait_events(worker: WorkerProcess, n: int) -> None:
        deadline = time.monotonic() + 60
        while worker.get_json("/health")["events"] < n:
            assert time.monotonic() < deadline, (worker.get_json("/health"), worker.log_tail())
            time.sleep(0.3)

    producer = make_producer(load_settings(kafka_bootstrap=kafka_bootstrap))
    with WorkerProcess({**env, "web_port": free_port()}, log_path=tmp_path / "w.log") as worker:
        worker.wait_ready(timeout=120)
        try:
            for i, partition in enumerate((0, 1)):  # the same customer, a partition each time
                value = orjson.dumps({"event_id": f"m{i}", "customer_id": "cmoved-secret", "ts": now_ms + i,
                                      "type": "web", "action": "page_view", "session_id": "s1"})
                producer.send(topics.web, key=b"cmoved-secret", value=value, partition=partition).get(timeout=30)
                wait_events(worker, i + 1)
        finally:
            producer.close()
        deadline = time.monotonic() + 30
        while moves(worker) < 1:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.3)
        health = worker.get_json("/health")
        log = worker.log_path.read_text()
    assert health["customer_shard_changes"] == 1, health
    assert health["customer_shard_changed_at"] and "another input partition" in health["warning"], health
    assert health["status"] == "ok", health  # the worker goes on right: not degraded
    assert log.count("had events on another input partition") == 1, log[-3000:]
    assert "cmoved-secret" not in log

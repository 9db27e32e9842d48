import asyncio
import contextlib
from typing import Any

import pytest
from pydantic import ValidationError

from streams.app import LiveWorker
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
            with urllib.request.urlopen(request, timeout=5) as resp:
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
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as resp:
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

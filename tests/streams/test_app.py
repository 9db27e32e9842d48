import asyncio
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

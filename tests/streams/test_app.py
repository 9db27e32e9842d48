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

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

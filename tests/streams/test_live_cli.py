"""``leadpulse worker`` and ``replay`` misconfigured: one line saying what is wrong, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main
from streams.embedded import EmbeddedRedis, free_port


@pytest.mark.integration
def test_an_unreachable_broker_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id":"e1","customer_id":"c1","ts":"2024-01-01T00:00:00Z","type":"web","action":"login"}\n')
    bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", bootstrap)
    assert main(["replay", str(events)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"leadpulse replay: cannot reach the Kafka brokers {bootstrap}")
    assert "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.integration
@pytest.mark.parametrize("given", ["wrong-pw", None])
def test_a_worker_that_redis_refuses_stops_at_start_without_printing_the_password(
    given: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the batch loop retried AuthenticationError (a redis.ConnectionError) forever.
    with EmbeddedRedis(password="right-pw") as server:
        auth = f":{given}@" if given else ""
        monkeypatch.setenv("LEADPULSE_REDIS_URL", f"redis://{auth}127.0.0.1:{server.port}/0")
        # Redis is checked before the broker is asked anything: none runs here.
        monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
        assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "Redis refused the credentials" in err and "LEADPULSE_REDIS_URL" in err
    assert "wrong-pw" not in err and "right-pw" not in err

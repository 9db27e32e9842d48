"""``leadpulse worker`` and ``replay`` misconfigured: one line saying what is wrong, no traceback."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.cli import main
from streams.embedded import EmbeddedRedis, free_port


@pytest.mark.parametrize(("speed", "says"), [("-1", "must be 0"), ("nan", "must be 0"), ("fast", "not a number")])
def test_replay_refuses_a_speed_that_is_not_zero_or_positive(
    speed: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "events.jsonl", "--speed", speed])  # main: registers the replay parser
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_replay_of_a_directory_says_it_is_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["replay", "worker"])
def test_the_scoring_config_is_read_before_kafka_is_reached_for(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistake in the config was reported as an unreachable broker (after the broker timeout).
    events = tmp_path / "events.jsonl"
    events.write_text('{"event_id":"e1","customer_id":"c1","ts":"2024-01-01T00:00:00Z","type":"web","action":"login"}\n')
    config = tmp_path / "scoring.yaml"
    config.write_text("lateness: 1 hour\n")
    monkeypatch.setenv("LEADPULSE_SCORING_CONFIG", str(config))
    monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")  # nothing listens there
    assert main([command, str(events)] if command == "replay" else [command]) == 2
    assert capsys.readouterr().err == f"leadpulse {command}: {config}: lateness: not a duration: '1 hour' " \
        "(use e.g. 30m, 24h, 7d, 2w)\n"


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
        monkeypatch.setenv("LEADPULSE_WEB_PORT", str(free_port()))
        assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "Redis refused the credentials" in err and "LEADPULSE_REDIS_URL" in err
    assert "wrong-pw" not in err and "right-pw" not in err


@pytest.mark.integration
def test_replay_dead_letters_a_line_too_large_for_a_record_and_sends_the_rest(
    kafka_bootstrap: str, unique_topic: str
) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.admin import NewTopic

    from streams.live_cli import make_producer, replay_lines
    from streams.pipeline import DLQ_TRUNCATE_BYTES
    from streams.settings import Settings, Topics

    topics = Topics(web=f"{unique_topic}.web", dlq=f"{unique_topic}.dlq")
    huge = orjson.dumps({"event_id": "h1", "customer_id": "c1", "ts": "2024-01-01T00:00:00Z",
                         "type": "web", "action": "login", "pad": "x" * (2 << 20)})
    small = b'{"event_id":"h2","customer_id":"c1","ts":"2024-01-01T00:01:00Z","type":"web","action":"login"}'
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1) for name in (topics.web, topics.dlq)])
    finally:
        admin.close()
    producer = make_producer(Settings(kafka_bootstrap=kafka_bootstrap))
    try:
        # Before: MessageSizeTooLargeError out of the replay, and the line after it never sent.
        stats = replay_lines([huge, small], producer, topics)
    finally:
        producer.close()
    assert stats.sent == {topics.web: 1} and stats.unroutable == 1
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topics.dlq, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning()
        records: list[Any] = []
        deadline = time.monotonic() + 20
        while not records and time.monotonic() < deadline:
            records = [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
    finally:
        consumer.close()
    assert len(records) == 1
    headers = dict(records[0].headers)
    assert records[0].value == huge[:DLQ_TRUNCATE_BYTES]
    assert headers["leadpulse.replay.line"] == b"1"
    assert headers["leadpulse.replay.truncated_from"] == str(len(huge)).encode()
    # The worker's format too: the size, and a hash of the whole line.
    assert headers["leadpulse.truncated_from"] == str(len(huge)).encode()
    assert headers["leadpulse.sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert b"too large" in headers["__connect.errors.exception.message"]


def test_a_web_port_in_use_stops_the_worker_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as holder:  # another worker on this host, say
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("LEADPULSE_WEB_PORT", str(port))
        # Checked before Redis and the brokers: neither runs here.
        monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
        monkeypatch.setenv("LEADPULSE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
        assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "LEADPULSE_WEB_PORT" in err


def test_invalid_settings_name_the_variable_and_never_print_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # pydantic's own message repeats every input, the Redis URL and its password too.
    monkeypatch.setenv("LEADPULSE_REDIS_URL", "redis://:topsecret@127.0.0.1:6379/prod")
    monkeypatch.setenv("LEADPULSE_BATCH_SIZE", "-1")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("leadpulse worker: invalid settings: LEADPULSE_REDIS_URL: the database")
    assert "LEADPULSE_BATCH_SIZE: Input should be greater than or equal to 1" in err
    assert "topsecret" not in err and len(err.splitlines()) == 1


@pytest.mark.integration
def test_a_redis_database_that_does_not_exist_stops_the_worker_at_start(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEADPULSE_REDIS_URL", redis_url.rsplit("/", 1)[0] + "/99")  # 16 by default
    monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("LEADPULSE_WEB_PORT", str(free_port()))
    assert main(["worker"]) == 2
    assert "Redis refused the connection (DB index is out of range)" in capsys.readouterr().err


@pytest.mark.integration
def test_rediss_to_a_plain_text_redis_stops_the_worker_at_start_without_printing_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before, the handshake's timeout counted as "not reachable yet": retried forever.
    with EmbeddedRedis(password="right-pw") as server:
        port = server.port
        monkeypatch.setenv("LEADPULSE_REDIS_URL", f"rediss://:right-pw@127.0.0.1:{port}/0")
        monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")  # not asked
        monkeypatch.setenv("LEADPULSE_WEB_PORT", str(free_port()))
        assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "Redis answers in plain text, not TLS" in err and "LEADPULSE_REDIS_URL" in err
    assert "right-pw" not in err and str(port) not in err and len(err.splitlines()) == 1


class TlsFront:
    """A TLS listener forwarding to a plain-text port, as stunnel does: a TLS Redis to clients."""

    def __init__(self, target_port: int, certfile: Path, keyfile: Path) -> None:
        import socket
        import ssl
        import threading

        self.target_port = target_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certfile, keyfile)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Any) -> None:
        import select
        import socket

        conn.settimeout(5)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls, \
                    socket.create_connection(("127.0.0.1", self.target_port), timeout=5) as plain:
                while True:  # one thread per connection: an SSL object is not for two threads
                    readable, _, _ = select.select([tls, plain], [], [], 5)
                    for sock in readable:
                        data = sock.recv(65536)
                        if not data:
                            return
                        (plain if sock is tls else tls).sendall(data)
                    while tls.pending():
                        plain.sendall(tls.recv(65536))
        except OSError:  # the client refused our certificate, or hung up
            conn.close()

    def close(self) -> None:
        self.listener.close()


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.mark.integration
def test_a_ca_file_that_does_not_verify_redis_stops_the_worker_at_start_and_the_right_one_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streams.app import check_redis
    from streams.settings import Settings

    cert, key = _self_signed(tmp_path, "redis")
    other, _ = _self_signed(tmp_path, "other")  # a CA that did not sign the server's certificate
    with EmbeddedRedis(password="right-pw") as server:
        front = TlsFront(server.port, cert, key)
        try:
            url = f"rediss://:right-pw@127.0.0.1:{front.port}/0"
            # The right CA: Redis answers through TLS, nothing is refused or retried.
            with caplog.at_level("WARNING", logger="leadpulse.worker"):
                check_redis(Settings(redis_url=url, redis_ssl_ca_certs=str(cert)))
            assert not caplog.records
            monkeypatch.setenv("LEADPULSE_REDIS_URL", url)
            monkeypatch.setenv("LEADPULSE_REDIS_SSL_CA_CERTS", str(other))
            monkeypatch.setenv("LEADPULSE_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")  # not asked
            monkeypatch.setenv("LEADPULSE_WEB_PORT", str(free_port()))
            assert main(["worker"]) == 2
        finally:
            front.close()
    err = capsys.readouterr().err
    assert "Redis's TLS certificate does not verify (self-signed certificate)" in err
    assert "LEADPULSE_REDIS_SSL_CA_CERTS" in err and len(err.splitlines()) == 1
    assert "right-pw" not in err and str(front.port) not in err


def test_demo_help_shows_its_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--help"])  # main: registers the demo parser
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("default 60", "default 300", "default 120", "default 7"):
        assert shown in text, shown

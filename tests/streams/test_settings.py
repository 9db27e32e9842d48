"""Settings as operators write them: blank values, typos in variable names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.live_cli import load_settings
from streams.settings import Settings


def test_a_blank_scoring_config_means_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a compose file's ``LEADPULSE_SCORING_CONFIG: ${SCORING_CONFIG:-}`` gives when unset.
    monkeypatch.setenv("LEADPULSE_SCORING_CONFIG", "")
    assert Settings().scoring_config is None


def test_a_blank_api_token_is_refused_rather_than_taken_as_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_WEB_API_TOKEN", "")
    with pytest.raises(ValidationError, match="set but empty"):
        Settings()


def test_a_misspelt_variable_is_reported_with_the_name_meant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEADPULSE_BATCH_SIZ", "50")
    monkeypatch.setenv("LEADPULSE_TOPICS__SCORES", "s")  # nested names are known
    monkeypatch.setenv("LEADPULSE_REDIS_SERVER", "/bin/true")  # read by streams/embedded.py
    settings = load_settings()
    assert settings.batch_size == 500  # still ignored, but no longer silently
    err = capsys.readouterr().err
    assert "ignoring unknown setting LEADPULSE_BATCH_SIZ (did you mean LEADPULSE_BATCH_SIZE?)" in err
    assert "TOPICS__SCORES" not in err and "REDIS_SERVER" not in err


@pytest.mark.parametrize("brokers", ["", "kafka:", "kafka:90920", "kafka:9092,", "kafka://127.0.0.1:9092", "PLAINTEXT://b1:9092"])
def test_brokers_that_are_not_host_port_are_refused(brokers: str) -> None:
    with pytest.raises(ValidationError, match="host:port"):
        Settings(kafka_bootstrap=brokers)


def test_a_host_alone_is_kafkas_default_port() -> None:
    assert Settings(kafka_bootstrap="kafka").kafka_client_kwargs()["bootstrap_servers"] == ["kafka"]


def test_a_tls_file_that_does_not_exist_is_refused(tmp_path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(tmp_path / "ca.pem"))
    with pytest.raises(ValidationError, match="no such file"):
        Settings(redis_ssl_ca_certs=str(tmp_path / "ca.pem"))


@pytest.mark.parametrize(
    ("variable", "value"),
    [("LEADPULSE_BROKER_SESSION_TIMEOUT_S", "-1"), ("LEADPULSE_BROKER_REBALANCE_TIMEOUT_S", "0"),
     ("LEADPULSE_APP_ID", "")],
)
def test_values_the_worker_cannot_run_with_are_refused(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a negative session timeout never joined the group (coordinator errors forever),
    # an empty app id stopped Faust with a traceback.
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=variable.removeprefix("LEADPULSE_").lower()):
        Settings()


@pytest.mark.parametrize("name", ["my dlq", "scores/v2", "", "..", "x" * 250])
def test_a_topic_name_kafka_would_refuse_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPULSE_TOPICS__DLQ", name)
    with pytest.raises(ValidationError, match="not a Kafka topic name"):
        Settings()


def test_a_redis_ca_file_without_a_tls_url_is_refused(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    ca = tmp_path / "ca.pem"
    ca.write_text("not read: refused before\n")
    # Before: redis-py passed the CA to a plain-text connection, a TypeError at the first call.
    monkeypatch.setenv("LEADPULSE_REDIS_URL", "redis://:topsecret@127.0.0.1:6379/0")
    monkeypatch.setenv("LEADPULSE_REDIS_SSL_CA_CERTS", str(ca))
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err == ("leadpulse worker: invalid settings: LEADPULSE_REDIS_SSL_CA_CERTS is set but "
                   "LEADPULSE_REDIS_URL is not rediss:// (TLS)\n")
    assert Settings(redis_url="rediss://127.0.0.1:6380/0", redis_ssl_ca_certs=str(ca)).redis_ssl_ca_certs


def test_a_redis_url_of_another_scheme_is_refused_without_showing_it() -> None:
    with pytest.raises(ValidationError, match="redis://, rediss:// \\(TLS\\) or unix://") as info:
        Settings(redis_url="http://user:s3cret@cache:6379/0")
    from streams.cli import _reason  # what the worker prints: pydantic's own text repeats the input

    assert "s3cret" not in _reason(info.value) and "redis://" in _reason(info.value)


def test_the_customer_key_of_import_is_a_known_variable() -> None:
    # Read by ``import-transactions --hash-customers`` (streams/import_cli.py), not settings: the
    # worker, replay and demo reported it as an unknown setting.
    from streams.import_cli import CUSTOMER_KEY_VAR
    from streams.settings import unknown_variables

    assert unknown_variables({CUSTOMER_KEY_VAR: "a-secret-of-sixteen-chars"}) == []


def test_a_misspelt_name_in_the_env_file_is_reported_too(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Settings read ``.env`` as well; a typo there was ignored silently.
    (tmp_path / ".env").write_text("LEADPULSE_BATCH_SIZE=7\nLEADPULSE_PARTITONS=3\nOTHER_TOOL=1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEADPULSE_BATCH_SIZE", raising=False)
    settings = load_settings()
    assert settings.batch_size == 7  # the file is read
    err = capsys.readouterr().err
    assert "ignoring unknown setting LEADPULSE_PARTITONS (did you mean LEADPULSE_PARTITIONS?) in .env" in err
    assert "BATCH_SIZE" not in err and "OTHER_TOOL" not in err


def test_the_api_token_description_names_every_route_it_guards() -> None:
    # streams/app.py asks for the token on DELETE /latency too (the README lists it).
    description = Settings.model_fields["web_api_token"].description or ""
    for route in ("/customers/*", "/models", "DELETE /latency"):
        assert route in description, route


def test_every_setting_has_a_row_in_the_readme_settings_table() -> None:
    from pathlib import Path

    from streams.settings import _OTHER_VARIABLES, Topics

    readme = Path(__file__).resolve().parents[2] / "README.md"
    table = readme.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `LEADPULSE_")]
    names = {f"LEADPULSE_{name.upper()}" for name in Settings.model_fields if name != "topics"}
    names |= {f"LEADPULSE_TOPICS__{name.upper()}" for name in Topics.model_fields}
    names |= _OTHER_VARIABLES - {"LEADPULSE_CUSTOMER_KEY"}  # an import option's key, documented there
    missing = []
    for name in sorted(names):
        # Rows group names: `LEADPULSE_KAFKA_SASL_MECHANISM` / `_USERNAME`, `LEADPULSE_TOPICS__SCORES` (and `__WEB`).
        cut = name.rfind("__") if "__" in name else name.rfind("_")
        stem, tail = name[:cut], name[cut:]
        if not any(f"`{name}`" in row or (f"`{stem}_" in row.split("|")[1] and f"`{tail}`" in row.split("|")[1])
                   for row in rows):
            missing.append(name)
    assert missing == []


@pytest.mark.parametrize(
    "brokers",
    ["user:S3cr3tKafka9@127.0.0.1:44153", "S3cr3tKafka9@kafka", "b1:9092,user:S3cr3tKafka9@b2:9092",
     "user:S3cr3tKafka9:9092", "b1 S3cr3tKafka9:9092"],
)
def test_brokers_with_credentials_or_other_text_are_refused_without_showing_them(brokers: str) -> None:
    # Before: "user:password@host:port" passed as a host named "user:password@host", and the
    # worker printed it when it could not reach it, 30 seconds later.
    with pytest.raises(ValidationError, match="host:port") as info:
        Settings(kafka_bootstrap=brokers)
    from streams.cli import _reason

    assert "S3cr3tKafka9" not in _reason(info.value)
    assert "S3cr3tKafka9" not in str(info.value).split("[type=")[0]  # our message, not pydantic's echo


@pytest.mark.parametrize("brokers", ["127.0.0.1:9092", "kafka-1.internal:9093,kafka-2.internal:9093",
                                     "[::1]:9092", "::1:9092", "kafka"])
def test_host_port_brokers_still_pass(brokers: str) -> None:
    assert Settings(kafka_bootstrap=brokers).kafka_bootstrap == brokers


@pytest.mark.parametrize("url", ["redis://:pw1234@127.0.0.1:99999/0", "redis://:pw1234@127.0.0.1:0/0",
                                 "rediss://:pw1234@cache:port/0"])
def test_a_redis_url_with_a_bad_port_names_the_setting_without_showing_the_url(url: str) -> None:
    # Before: the worker stopped with urllib's "Port out of range 0-65535", naming no setting.
    with pytest.raises(ValidationError) as info:
        Settings(redis_url=url)
    from streams.cli import _reason

    assert _reason(info.value) == (
        "invalid settings: LEADPULSE_REDIS_URL: the port must be a number from 1 to 65535")
    assert Settings(redis_url="redis://:pw1234@127.0.0.1:6380/0").redis_client().connection_pool.connection_kwargs["port"] == 6380

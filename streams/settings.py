"""The one settings object: environment variables ``LEADPULSE_*`` (or a ``.env`` file).

Connection secrets (SASL password, Redis password, TLS files) come from here,
never from code. Every Kafka topic name lives here too.

>>> s = Settings(kafka_bootstrap="127.0.0.1:9092")
>>> s.topics.scores, s.kafka_client_kwargs()["security_protocol"]
('leadpulse.scores', 'PLAINTEXT')
>>> Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN").kafka_client_kwargs()["sasl_mechanism"]
'PLAIN'
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What a broker's host may be: a name, an IPv4 address, an IPv6 address with or without brackets.
_BROKER_HOST = re.compile(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f:.]+\]?")


class Topics(BaseModel):
    web: str = "leadpulse.events.web"
    purchase: str = "leadpulse.events.purchase"
    campaign: str = "leadpulse.events.campaign"
    scores: str = "leadpulse.scores"  # compacted, keyed by customer
    alerts: str = "leadpulse.alerts"
    triggers: str = "leadpulse.triggers"
    dlq: str = "leadpulse.dlq"
    late: str = "leadpulse.late"  # valid events later than the allowed lateness, as received
    labels: str = "leadpulse.labels"  # matured examples -> the one learner
    drift: str = "leadpulse.drift"

    @field_validator("*")
    @classmethod
    def _kafka_topic_name(cls, value: str) -> str:
        # Kafka's own rule. A broker that enforces it refused the topics only when the worker
        # created them, as an error code in a traceback.
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", value) or value in (".", ".."):
            raise ValueError(f"{value!r} is not a Kafka topic name (letters, digits, '.', '_', '-')")
        return value

    @property
    def inputs(self) -> dict[str, str]:
        return {"web": self.web, "purchase": self.purchase, "campaign": self.campaign}


class Settings(BaseSettings):
    """All runtime settings, validated. Nested values use ``__``: ``LEADPULSE_TOPICS__SCORES``."""

    model_config = SettingsConfigDict(
        env_prefix="LEADPULSE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="host:port[,host:port]")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    topics: Topics = Field(default_factory=Topics)
    partitions: int = Field(6, ge=1, description="partitions of the input topics when we create them")
    replication_factor: int = Field(1, ge=1)

    # Redis
    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="redis:// or rediss://; may hold the password")
    redis_password: SecretStr | None = None
    redis_ssl_ca_certs: str | None = None
    redis_prefix: str = "lp"
    redis_ttl_days: int = Field(400, ge=0, description="idle customers expire after this; 0 = never")
    redis_state_cache: int = Field(
        5_000, ge=0,
        description="customers whose feature state and scoring record the worker keeps in memory "
        "(~15-30 KB each: a scoring record also keeps its examples' JSON); what changed "
        "elsewhere is fetched again; 0 = off",
    )

    # Worker
    app_id: str = Field("leadpulse", min_length=1, description="Kafka consumer group and client id prefix")
    batch_size: int = Field(500, ge=1, description="events per stream.take batch")
    batch_within_s: float = Field(0.05, gt=0, description="max wait to fill a batch")
    web_port: int = Field(6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    snapshot_every_labels: int = Field(500, ge=1, description="learner publishes a snapshot after this many labels")
    snapshot_every_s: float = Field(30.0, gt=0)
    snapshot_min_interval_s: float = Field(
        5.0, ge=0, description="at least this long between two snapshots taken for their label count "
        "(scorers look for a newer one every model_refresh_s); 0 = a snapshot every snapshot_every_labels",
    )
    refit_min_interval_s: float = Field(
        5.0, ge=0, description="the central learner refits a kind's model on its window at most this "
        "often (a refit put off happens at a later label); 0 = on the model's label schedule, as a backtest",
    )
    model_refresh_s: float = Field(5.0, gt=0, description="scorers check for a newer snapshot this often")
    # Not positive, the worker never joined its group (it logged coordinator errors forever).
    broker_session_timeout_s: float = Field(60.0, gt=0)
    broker_rebalance_timeout_s: float = Field(60.0, gt=0)
    max_event_bytes: int = Field(64 * 1024, ge=256)
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="a stopping worker (SIGTERM, SIGINT, a crash) that has not finished "
        "its clean stop after this long exits anyway (status 1, one log line); what it had not "
        "committed is redelivered and counted once",
    )
    broker_unreachable_s: float = Field(
        20.0, ge=2, le=3600, description="/health says degraded and /ready not ready once no "
        "broker has answered the worker for this long and its requests have gone unanswered for "
        "half of it (it asks for metadata every quarter of this, at most every 5 s, so an idle "
        "broker counts as answering and a stalled worker does not count as cut off)",
    )
    # Live pipeline (streams/app.py)
    require_key_match: bool = Field(
        True, description="dead-letter valid events whose Kafka key is not their customer_id"
    )
    keep_late: bool = Field(
        False, description="publish valid events later than the allowed lateness to the late topic "
        "as received, instead of only counting them. Off by default: a redelivery of events applied "
        "longer ago than the lateness reads as late too (event ids are remembered only inside it)",
    )
    web_api_token: SecretStr | None = Field(
        None, description="if set, /customers/*, /models and DELETE /latency require "
        "'Authorization: Bearer <token>'",
    )
    scorer_process: bool = Field(
        True, description="score in a child process of the worker, so the Kafka event loop and "
        "the scoring core each use a CPU (one Python process is bound by one); off: a thread",
    )
    learner_process: bool = Field(
        True, description="the central learner (on the worker that holds the labels partition) "
        "learns in a child process of the worker, so its numpy and River work does not take "
        "turns with Faust's event loop for the one interpreter lock; off: a thread",
    )
    scorer_processes: int = Field(
        1, ge=1, le=64, description="with scorer_process: this many scoring processes, each "
        "owning the input partitions p with p % scorer_processes equal to its index (more "
        "when the scoring processes, not the worker's own, are what is busy)",
    )
    producer_linger_ms: int = Field(5, ge=0, le=1000, description="output producer batching delay")
    producer_max_request_bytes: int = Field(
        1_048_588, ge=512 * 1024,
        description="largest record the worker's producer sends (Faust's default is 1,000,000; this "
        "is the broker's default message.max.bytes). A dead letter larger keeps its first 64 KiB, "
        "with headers giving the original size and SHA-256",
    )
    consumer_max_fetch_bytes: int = Field(
        262_144, ge=1024,
        description="most bytes one fetch returns per input partition. Small enough that a "
        "backlog arrives from every partition in the first fetches, so the event-time alignment "
        "can release events at once (a larger record batch still comes whole)",
    )
    consumer_fetch_max_wait_ms: int = Field(
        100, ge=0, le=60_000,
        description="longest the broker holds a fetch that has no new records (Faust fixes 1,500). "
        "One fetch is in flight per broker, and it leaves out partitions with records still "
        "buffered: a long wait on the caught-up partitions stalls the busy ones",
    )
    learner_tick_s: float = Field(0.5, gt=0, description="learner checks for a due snapshot this often")
    align_slack_s: float = Field(
        600.0, ge=0, description="event-time slack of the alignment (below the scoring lateness)"
    )
    align_idle_s: float = Field(
        0.5, ge=0,
        description="an input partition with nothing left to read holds its shard back until it has "
        "delivered nothing for this long (wall clock), and a fetch at least as recent as its "
        "siblings' confirms its end (like Kafka Streams' max.task.idle.ms)",
    )
    align_max_held: int = Field(
        50_000, ge=0, description="events held at most to align input topics by event time (backlogs)"
    )

    # Scoring
    scoring_config: str | None = Field(None, description="YAML file: kinds, policy, lateness, catalog")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _brokers(cls, value: str) -> str:
        # Checked here: kafka-python took "" or "host:90920" for brokers it could not reach,
        # 30 seconds later. A host alone is port 9092, as for Kafka's own clients.
        # The messages never quote the value: "user:password@host:port" passed as a host
        # named "user:password@host", and the password was printed when it could not be reached.
        for broker in value.split(","):
            if "://" in broker or "/" in broker:
                # kafka://h:9092 read as host "kafka" port 9092: a traceback naming another host.
                raise ValueError("brokers are host:port[,host:port], without a scheme or path")
            if "@" in broker:
                raise ValueError("brokers are host:port[,host:port], without user or password "
                                 "(credentials go in LEADPULSE_KAFKA_SASL_USERNAME / _PASSWORD)")
            host, colon, port = broker.strip().rpartition(":")
            if not colon:
                host, port = port, "9092"
            # A host name, an IPv4 address or an IPv6 one (bracketed or not): nothing else.
            if not _BROKER_HOST.fullmatch(host) or not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError("brokers are host:port[,host:port]")
        return value

    @field_validator("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile", "redis_ssl_ca_certs")
    @classmethod
    def _tls_file_exists(cls, value: str | None) -> str | None:
        # A missing CA file read as "cannot reach the brokers" (or a Redis TLS error) before.
        if value and not Path(value).is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_database(cls, value: SecretStr) -> SecretStr:
        # redis-py ignores a database it cannot read as a number ("/prod" is database 0).
        # The message leaves the URL out: it may hold the password.
        url = value.get_secret_value()
        if not url.lower().startswith(("redis://", "rediss://", "unix://")):
            # redis-py said so only at the first connection, naming no setting.
            raise ValueError("a URL that starts with redis://, rediss:// (TLS) or unix://")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:  # urllib's "Port out of range 0-65535" named no setting
            port = 0
        if port == 0:
            raise ValueError("the port must be a number from 1 to 65535")
        path = parts.path.strip("/")
        if url.startswith(("redis://", "rediss://")) and path and not path.isdigit():
            raise ValueError("the database after the last / must be a number")
        return value

    @field_validator("scoring_config", mode="before")
    @classmethod
    def _blank_config_is_none(cls, value: Any) -> Any:
        # ``LEADPULSE_SCORING_CONFIG=`` (a compose file's ``${VAR:-}``) means the defaults; as a
        # path it read the current directory and crashed.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("web_api_token", mode="before")
    @classmethod
    def _token_not_blank(cls, value: Any) -> Any:
        # An empty token is neither off nor a secret: refuse it rather than guess which was meant.
        if isinstance(value, str) and not value.strip():
            raise ValueError("LEADPULSE_WEB_API_TOKEN is set but empty: unset it to turn auth off")
        return value

    @model_validator(mode="after")
    def _redis_ca_needs_tls(self) -> Settings:
        # redis-py hands ssl_ca_certs to a plain-text connection as well, which stopped the
        # worker with a TypeError traceback at its first Redis call.
        if self.redis_ssl_ca_certs and not self.redis_url.get_secret_value().lower().startswith("rediss://"):
            raise ValueError("LEADPULSE_REDIS_SSL_CA_CERTS is set but LEADPULSE_REDIS_URL is not rediss:// (TLS)")
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_mechanism:
            raise ValueError("SASL protocol needs LEADPULSE_KAFKA_SASL_MECHANISM")
        return self

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Security settings for kafka-python clients (producer, consumer, admin)."""
        kw: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap.split(","),
                              "security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            kw["sasl_mechanism"] = self.kafka_sasl_mechanism
            kw["sasl_plain_username"] = self.kafka_sasl_username
            kw["sasl_plain_password"] = (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            )
        for key in ("cafile", "certfile", "keyfile"):
            value = getattr(self, f"kafka_ssl_{key}")
            if value:
                kw[f"ssl_{key}"] = value
        return kw

    def redis_client(self) -> Any:
        """A redis-py client from these settings (password and TLS from configuration)."""
        import redis

        kw: dict[str, Any] = {}
        if self.redis_password:
            kw["password"] = self.redis_password.get_secret_value()
        if self.redis_ssl_ca_certs:
            kw["ssl_ca_certs"] = self.redis_ssl_ca_certs
        return redis.Redis.from_url(self.redis_url.get_secret_value(), **kw)


@contextlib.contextmanager
def kafka_unreachable(settings: Settings) -> Iterator[None]:
    """Turn kafka-python's failure to bootstrap into a ``ConnectionError`` that names the setting.

    The command line prints it in one line and exits 1, instead of a traceback of
    kafka-python's network internals. (The brokers are host:port, never a secret.)
    """
    import kafka.errors as errors

    unreachable = tuple(
        getattr(errors, name) for name in ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError")
        if hasattr(errors, name)  # kafka-python 2.x and 3.x name them differently
    )
    try:
        yield
    except unreachable as exc:
        raise ConnectionError(
            f"cannot reach the Kafka brokers {settings.kafka_bootstrap} ({type(exc).__name__}): check "
            "LEADPULSE_KAFKA_BOOTSTRAP and LEADPULSE_KAFKA_SECURITY_PROTOCOL"
        ) from None


# Read by streams/embedded.py (server binaries) and streams/import_cli.py (the
# --hash-customers key), not settings.
_OTHER_VARIABLES = frozenset({"LEADPULSE_TANSU", "LEADPULSE_REDIS_SERVER", "LEADPULSE_CUSTOMER_KEY"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``LEADPULSE_*`` names in ``environ`` that no setting reads, each with a likely intended name.

    Settings ignore unknown variables, so a typo (``LEADPULSE_BATCH_SIZ``) silently kept
    the default.

    >>> unknown_variables({"LEADPULSE_BATCH_SIZ": "9", "LEADPULSE_TOPICS__SCORES": "s", "HOME": "/"})
    ['LEADPULSE_BATCH_SIZ (did you mean LEADPULSE_BATCH_SIZE?)']
    >>> unknown_variables({"LEADPULSE_TOPICS__SCORE": "s"})
    ['LEADPULSE_TOPICS__SCORE (did you mean LEADPULSE_TOPICS__SCORES?)']
    """
    import difflib

    prefix = "LEADPULSE_"
    known = {prefix + name.upper() for name in Settings.model_fields if name != "topics"}
    known |= {f"{prefix}TOPICS__{name.upper()}" for name in Topics.model_fields}
    known |= _OTHER_VARIABLES
    out = []
    for name in sorted(environ):
        if name.upper().startswith(prefix) and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.8)
            out.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return out

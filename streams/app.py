"""The live worker: a Faust app whose agents feed Kafka batches to the scoring core.

:class:`LiveWorker` builds everything one worker process holds from
:class:`~streams.settings.Settings`: Redis stores, the scoring core
(``learn_inline=False``), the central learner, Prometheus metrics and the Faust
app with its agents, timer and web views. :func:`run_worker` runs it.

Agents
------

``score`` consumes the three input topics (co-partitioned by customer; Faust's
assignor gives partition ``p`` of all three to the same worker) as raw bytes
(``value_serializer="raw"``: no Faust model, so malformed input cannot crash
deserialization). It batches with ``stream.noack_take(batch_size,
within=batch_within_s)``: the same buffer as ``stream.take``, but acks are
ours. ``take`` acks a batch in a ``finally`` -- also when processing raised or
the worker is stopping mid-batch -- so a failed batch would be committed
unprocessed. Per batch, the scorer (:class:`streams.scorer.Scorer`, in a child
process by default, else in this one) decodes and dead-letters, then scores
(``core.process`` per source partition, JSON outputs). Calls to it go through
one thread, in order, with model hot swaps and HTTP erasures. Every output is
sent and its broker ack awaited, and only then are the input events acked, so
Faust commits their offsets. Batches overlap in three stages: the agent takes
batch N+1 while N is scored and N-1 is published; each stage keeps batch
order.

``learn`` consumes the labels topic (one partition: one active learner per
consumer group) and hands its raw records to :class:`streams.pipeline.Learner`
(in a child process of its own by default, :class:`streams.learning.LearnerProcess`,
so learning does not take turns with the event loop for the interpreter lock); model snapshots
and the labels offset they cover are written in one Redis transaction, and the
labels are acked only after the snapshot that contains them. Scorers hot-swap
newer snapshots at most every ``model_refresh_s``, in the batch loop.

Delivery semantics
------------------

- Features: effectively exactly once. Offsets are committed only after a
  batch is fully processed, so a crash redelivers; the Redis feature store
  skips event ids it already applied, in the same atomic step as the update.
- Outputs: at least once for sends (a failed send resends the whole batch's
  records; consumers of alerts and triggers should de-duplicate on
  ``(customer_id, kind/trigger, ts)``), with one hole: the core scores only
  events it applies, so if a worker dies *after* Redis applied a batch and
  *before* the broker acknowledged the outputs, the redelivered events are
  duplicates and their score changes are not published again (the next event
  of that customer publishes the current score). With batches overlapping, the
  hole spans the two batches in flight. A duplicate event therefore never
  produces a second alert.
- Labels and models: exactly once per snapshot (see above); drift events are
  at least once.

Redis or broker errors that look transient are retried with backoff (the
batch stays unacked, ``/health`` turns ``degraded``); a retried batch reuses the
source partitions it had already scored, so their outputs are not lost as
duplicates (a partition interrupted half-way still loses its own). Anything else
crashes the worker so the orchestrator restarts it and Kafka redelivers.

Web views (on ``web_host:web_port``): ``GET /customers/{id}/scores``,
``DELETE /customers/{id}``, ``GET /health`` (liveness), ``GET /ready`` (readiness, see
:meth:`LiveWorker.readiness`), ``GET /metrics``, ``GET /latency``.
Logs never carry customer ids, payloads or credentials.

>>> from streams.settings import Settings
>>> worker = LiveWorker(Settings(kafka_bootstrap="127.0.0.1:9092"))  # doctest: +SKIP
>>> run_worker(Settings())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import hmac
import itertools
import logging
import os
import random
import secrets
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import faust
import redis
from faust.types import TP
from faust.web import Request, Response, View

from features.events import event_time_ms
from scoring.config import load_scoring_config
from streams.faust_transport import LeadpulseApp
from streams.learning import LearnerProcess, LiveLearner, RedisCheckpointStore
from streams.metrics import CONTENT_TYPE, LatencyWindow, Metrics, ShardChanges
from streams.pipeline import (
    BatchOutput,
    EventTimeAligner,
    Incoming,
    OrderedAcks,
    OutRecord,
    input_caught_up,
    instead_of_too_large,
    record_size,
)
from streams.runtime import exit_after, tune_gc
from streams.scorer import Scorer, ScorerPool, ScorerProcess
from streams.settings import Settings, kafka_unreachable

__all__ = [
    "LiveWorker", "RedisCheckpointStore", "check_redis", "check_web_port", "ensure_topics",
    "MalformedRequestFilter", "RepeatFilter", "faust_credentials", "run_worker", "swapped_models",
]

log = logging.getLogger("leadpulse.worker")
T = TypeVar("T")

# Errors worth waiting out: the batch is retried, unacked, until they stop.
TRANSIENT: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    ConnectionError,
    TimeoutError,
)
MAX_BACKOFF_S = 30.0
# Batches in the scoring stage at once. A stage ends once its batch is scored and the batch
# before it published, so with two the scoring process idled while a publish awaited the
# broker's acks; three were 6% faster, four no faster (README: measured figures).
SCORING_DEPTH = 3
SWITCH_INTERVAL_S = 0.001  # sys.setswitchinterval in the worker's process (Python's default: 0.005)
# A customer read waits this long at most: it queues on the scoring thread, which retries a
# failed batch in place (Redis down) for as long as the failure lasts.
API_WAIT_S = 10.0
LEARN_BATCH = 1000
BROKER_PROBE_MAX_S = 5.0  # the broker is asked for metadata at least this often (see watch_broker)
EPOCH_CHECK_S = 5.0  # how often the worker reads Redis's epoch key (see check_redis_epoch)
DATA_LOST_DEGRADED_S = 300.0  # /health stays degraded this long after Redis was found emptied


def faust_credentials(settings: Settings) -> Any:
    """Faust ``broker_credentials`` for the configured security protocol (None = plaintext)."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username, password=password,
        ssl_context=context, mechanism=settings.kafka_sasl_mechanism,
    )


def check_redis(settings: Settings) -> None:
    """Refuse to start on credentials Redis rejects or a TLS mismatch; an unreachable Redis is waited for.

    The batch loop retries Redis errors, as it should for a restart or a failover. A
    wrong or missing password is not one of those, nor is ``rediss://`` to a plain-text
    port or a CA file that does not verify the server (redis-py raises both as a
    ``ConnectionError``): without this check the worker retried them forever, ``/health``
    degraded, and nothing said it was the configuration.
    """
    client = settings.redis_client()
    try:
        client.ping()
    except redis.AuthenticationError as exc:  # a subclass of redis.ConnectionError: first
        raise ValueError(
            f"Redis refused the credentials ({type(exc).__name__}): check the password in "
            "LEADPULSE_REDIS_URL or LEADPULSE_REDIS_PASSWORD"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        mismatch = _tls_mismatch(client, exc)
        if mismatch:
            raise ValueError(mismatch) from None
        log.warning("redis not reachable yet (%s); the worker retries", type(exc).__name__)
    except redis.ResponseError as exc:  # "DB index is out of range", say: Redis's words, no secret
        raise ValueError(f"Redis refused the connection ({exc}): check LEADPULSE_REDIS_URL") from None
    finally:
        client.close()


def _tls_mismatch(client: Any, exc: BaseException) -> str | None:
    """What is wrong with TLS to Redis, if a failed connection shows it; None if it may be an outage.

    redis-py keeps what the handshake raised as the ``ConnectionError``'s cause (or context).
    A certificate that does not verify, or bytes that are not TLS (a plain-text Redis that
    answers at once, in protected mode say: "wrong version number") are an ``ssl.SSLError``.
    Mostly, though, a plain-text Redis does not answer a TLS hello at all (it waits for the
    end of what it takes for an inline command) and the handshake times out, like a
    Redis that is down would. So then ask the same port in plain text: a Redis reply
    means there is no TLS there. Messages name settings, never the URL or a password.
    """
    pool = client.connection_pool
    if not issubclass(pool.connection_class, redis.SSLConnection):
        return None
    cause: BaseException | None = exc
    for _ in range(5):  # the chain is short; bounded in case of a cycle
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError):
            # OpenSSL's host name (62) and IP address (64) mismatches: Python's message quotes the host.
            why = "host name mismatch" if cause.verify_code in (62, 64) else cause.verify_message
            return (f"Redis's TLS certificate does not verify ({why}): check "
                    "LEADPULSE_REDIS_SSL_CA_CERTS (and the host in LEADPULSE_REDIS_URL)")
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):  # EOF: a restart, maybe
            return (f"TLS to Redis failed ({cause.reason or type(cause).__name__}): does LEADPULSE_REDIS_URL "
                    "(rediss://) name a port that speaks TLS? check LEADPULSE_REDIS_SSL_CA_CERTS too")
        cause = cause.__cause__ or cause.__context__
    host, port = pool.connection_kwargs.get("host"), pool.connection_kwargs.get("port")
    if host and port and _answers_plain_text(host, port):
        return ("Redis answers in plain text, not TLS: LEADPULSE_REDIS_URL says rediss://; "
                "use redis:// or the server's TLS port")
    return None


def _answers_plain_text(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether ``host:port`` replies to a plain-text ``PING`` as Redis does (``+PONG``, ``-NOAUTH``...).

    A TLS server takes the bytes for a broken record: it sends an alert or hangs up.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(1) in (b"+", b"-")
    except OSError:
        return False


def check_web_port(settings: Settings) -> None:
    """Refuse a web port another process holds, before anything else starts.

    Faust found out only once the worker had started its agents, and stopped with a
    traceback of some 40 lines (two workers on one host with the same port, say).
    """
    if settings.web_port == 0:  # any free port
        return
    with socket.socket(socket.AF_INET6 if ":" in settings.web_host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        try:
            probe.bind((settings.web_host, settings.web_port))
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {settings.web_host}:{settings.web_port} ({exc.strerror}): "
                "set LEADPULSE_WEB_PORT (and LEADPULSE_WEB_HOST)"
            ) from None


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; check co-partitioning. Returns ``{topic: partitions}``.

    Inputs, scores (``cleanup.policy=compact``), alerts, triggers, the DLQ and
    the late topic get ``settings.partitions``; the labels and drift topics get one partition
    (one learner, ordered labels). Existing topics are left alone, but input
    topics with different partition counts, or a labels topic with more than
    one partition, are refused.

    >>> ensure_topics(Settings(kafka_bootstrap="127.0.0.1:9092"))  # doctest: +SKIP
    {'leadpulse.events.web': 6, ...}
    """
    from kafka import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    t = settings.topics
    wanted = {
        name: settings.partitions for name in (*t.inputs.values(), t.scores, t.alerts, t.triggers, t.dlq, t.late)
    }
    wanted.update({t.labels: 1, t.drift: 1})
    with kafka_unreachable(settings):
        admin = KafkaAdminClient(
            client_id=f"{settings.app_id}-admin", request_timeout_ms=int(timeout_s * 1000),
            **settings.kafka_client_kwargs(),
        )
    try:
        existing = set(admin.list_topics())
        missing = {
            name: {
                "num_partitions": n,
                "replication_factor": settings.replication_factor,
                "configs": {"cleanup.policy": "compact"} if name == t.scores else {},
            }
            for name, n in wanted.items()
            if name not in existing
        }
        if missing:
            result = admin.create_topics(
                missing, timeout_ms=int(timeout_s * 1000), raise_errors=False, wait_for_metadata=True
            )
            failed = [
                f"{r['name']}: error {r['error_code']}"
                for r in result.get("topics", [])
                if r.get("error_code") not in (0, TopicAlreadyExistsError.errno)
            ]
            if failed:
                raise RuntimeError("cannot create topics: " + "; ".join(failed))
            log.info("created %d topics", len(missing))
        found = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(list(wanted))}
    finally:
        admin.close()
    inputs = {found.get(name) for name in t.inputs.values()}
    if len(inputs) != 1:
        raise ValueError(f"input topics must be co-partitioned (same partition count): {found}")
    if found.get(t.labels) != 1:
        raise ValueError(f"{t.labels} must have exactly 1 partition (one learner), has {found.get(t.labels)}")
    return found


class LiveWorker:
    """One worker process: stores, core, learner, metrics and the Faust app.

    ``bare=True`` builds the same Faust app with an agent that only consumes
    and acks (no Redis, no scoring): the benchmark's baseline.
    """

    def __init__(self, settings: Settings, *, bare: bool = False) -> None:
        self.settings = settings
        self.bare = bare
        self.metrics = Metrics()
        self.latency = LatencyWindow()
        # /health's own tally: DELETE /latency (a benchmark starting afresh) must not reset it.
        self.events_done = 0
        self.last_batch_at: float | None = None
        # Scoring calls (into the scoring process, or the core itself) and the learner each
        # have one thread: calls of each kind stay in order, and learning overlaps scoring.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadpulse-core")
        # Batches go to a scoring process ahead of their turn, from a thread of their own.
        self.send_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadpulse-send")
        self._batch_seq = itertools.count()
        self.learn_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leadpulse-learn")
        self.model_versions: dict[str, int] = {}
        self.positions: dict[TP, int] = {}  # next offset to process, per input partition
        self.failing: str | None = None
        # Readiness (/ready): the assignment whose handling finished, None before the first
        # and from a revocation on; whether the score agent has loaded the models once.
        self.assignment: frozenset[TP] | None = None
        self._revocations = 0
        self.models_loaded = bare
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        # The last answer from a broker (see watch_broker): monotonic, and wall time for /health.
        # ensure_topics() reached it just before the worker was built.
        self.broker_answered_at = self.started_monotonic
        self.broker_answered_wall = self.started
        # When the current run of unanswered requests began (None while the last was answered):
        # silence alone is no evidence, a stalled event loop asks nothing.
        self.broker_failing_since: float | None = None
        # Redis's epoch (see check_redis_epoch): the one this worker knows, and when it last
        # found Redis emptied (wall time).
        self.redis_epoch: bytes | None = None
        self.redis_data_lost_at: float | None = None
        # Customers whose events came on another input partition than before (the core counts
        # them): a warning a minute at most, and /health shows the last for an hour.
        self.shard_changes = ShardChanges()
        self._learn_lock = asyncio.Lock()
        self._unacked_labels: list[tuple[Any, Any]] = []  # (stream, event) awaiting a snapshot
        self._score_lock = asyncio.Lock()
        self._score_stream: Any = None
        self._scoring: asyncio.Future[None] | None = None  # the newest batch handed to scoring
        self._stages: list[asyncio.Future[None]] = []  # batches in the scoring stage, oldest first
        self._publishing: asyncio.Future[None] | None = None  # the batch being published
        self.received: dict[TP, int] = {}  # next offset to receive, per input partition
        # When the agent last received a record of each input partition (or it was assigned),
        # time.monotonic(): see _caught_up.
        self.delivered_at: dict[TP, float] = {}
        self._ready: list[Any] = []  # released by the aligner, gathered into a full batch
        self.acks: OrderedAcks[Any] = OrderedAcks()  # ack in offset order per partition
        self.aligner: EventTimeAligner[tuple[Any, Any]] = EventTimeAligner(
            list(settings.topics.inputs.values()), max_held=settings.align_max_held,
            slack_ms=int(settings.align_slack_s * 1000),
        )
        if not bare:
            self._build_core()
            if self.settings.align_slack_s * 1000 >= self.lateness_ms:
                raise ValueError("align_slack_s must be below the allowed lateness of the scoring config")
        self.app = self._build_app()

    # ------------------------------------------------------------------ setup
    def _build_core(self) -> None:
        s = self.settings
        scfg = load_scoring_config(s.scoring_config)
        self.lateness_ms = scfg.lateness_ms
        self.redis = s.redis_client()
        self.scorer: Scorer | ScorerProcess | ScorerPool
        if not s.scorer_process:
            self.scorer = Scorer(s)
        elif s.scorer_processes > 1:
            self.scorer = ScorerPool(s, s.scorer_processes)
        else:
            self.scorer = ScorerProcess(s)
        self.learner: LiveLearner | LearnerProcess = (
            LearnerProcess(s) if s.learner_process else LiveLearner.from_settings(s)
        )

    def _faust_settings(self) -> dict[str, Any]:
        s = self.settings
        datadir = Path(tempfile.mkdtemp(prefix=f"leadpulse-faust-{os.getpid()}-"))
        atexit.register(shutil.rmtree, datadir, True)
        return {
            "broker": [f"kafka://{host.strip()}" for host in s.kafka_bootstrap.split(",")],
            "broker_credentials": faust_credentials(s),
            "broker_session_timeout": s.broker_session_timeout_s,
            "broker_rebalance_timeout": s.broker_rebalance_timeout_s,
            "broker_heartbeat_interval": min(3.0, s.broker_session_timeout_s / 3),
            "consumer_auto_offset_reset": "earliest",
            "store": "memory://",
            "datadir": datadir,
            "autodiscover": False,
            "topic_allow_declare": False,  # ensure_topics() owns topic creation (compaction, counts)
            "topic_disable_leader": True,
            "topic_partitions": s.partitions,
            "topic_replication_factor": s.replication_factor,
            "key_serializer": "raw",
            "value_serializer": "raw",
            "producer_acks": -1,
            "producer_linger_ms": s.producer_linger_ms,
            "producer_max_request_size": s.producer_max_request_bytes,
            "consumer_max_fetch_size": s.consumer_max_fetch_bytes,
            "web_enabled": True,
            "web_bind": s.web_host,
            "web_host": s.web_host,
            "web_port": s.web_port,
            "web_graph_enabled": False,
            "web_router_enabled": False,
            "web_tables_enabled": False,
            "worker_redirect_stdouts": False,
        }

    def _build_app(self) -> faust.App:
        s = self.settings
        app = LeadpulseApp(s.app_id, fetch_max_wait_ms=s.consumer_fetch_max_wait_ms, **self._faust_settings())
        def raw_topic(*names: str) -> Any:
            return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

        inputs = raw_topic(*s.topics.inputs.values())

        if self.bare:
            @app.agent(inputs, name="leadpulse.bare")
            async def bare(stream: Any) -> None:
                async for events in stream.noack_take(s.batch_size, within=s.batch_within_s):
                    await self.consume_only(stream, events)
        else:
            @app.agent(inputs, name="leadpulse.score")
            async def score(stream: Any) -> None:
                # Retried like any Redis call: a worker started before Redis waits for it.
                await self._retrying("redis", self.scorer.refresh, True)
                self.models_loaded = True
                async for events in stream.noack_take(s.batch_size, within=s.batch_within_s):
                    await self.score_batch(stream, events)

            labels = raw_topic(s.topics.labels)

            @app.agent(labels, name="leadpulse.learn")
            async def learn(stream: Any) -> None:
                async for events in stream.noack_take(LEARN_BATCH, within=s.batch_within_s):
                    await self.learn_batch(stream, events)

            @app.task
            async def redis_epoch() -> None:
                await self.watch_redis_epoch()

            # A plain loop, not @app.timer: timers stop iterating as soon as the app
            # stops, but the consumer then waits for every unacked label, so the
            # final snapshot has to be taken while the app is stopping.
            @app.task
            async def watch() -> None:
                while True:
                    await asyncio.sleep(s.learner_tick_s)
                    urgent = self.app.should_stop or not self.app.flow_control.is_active()
                    await self.flush_held(everything=urgent)
                    await self.learner_tick()

        async def revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
            self.on_revoked()

        async def assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
            await self.on_assignment(set(args[0]) if args else set())

        @app.task
        async def broker_probe() -> None:
            await self.watch_broker()

        app.on_partitions_revoked.connect(cast(Any, revoked))
        app.on_partitions_assigned.connect(cast(Any, assigned))

        self._add_views(app)
        return app

    # ------------------------------------------------------------------ helpers
    async def _call(self, fn: Callable[..., T], *args: Any, on: ThreadPoolExecutor | None = None) -> T:
        """Run a synchronous (Redis, CPU) call off the event loop, on the scoring thread
        unless ``on`` names another (the learner's)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(on or self.executor, functools.partial(fn, *args))

    async def _retrying(
        self, stage: str, fn: Callable[..., T], *args: Any, on: ThreadPoolExecutor | None = None
    ) -> T:
        delay = 0.5
        while True:
            try:
                result = await self._call(fn, *args, on=on)
            except TRANSIENT as exc:
                self._failed(stage, exc)
                log.warning("%s failed (%s); retrying in %.1fs", stage, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self._recovered(stage)
            return result

    def _failed(self, stage: str, exc: BaseException) -> None:
        """Count a transient failure and show it on /health until the stage works again."""
        self.metrics.errors.labels(stage=stage).inc()
        self.failing = f"{stage}: {type(exc).__name__}"

    def _recovered(self, stage: str) -> None:
        if self.failing and self.failing.startswith(stage):
            self.failing = None

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send records and wait for every broker ack; on any failure resend them all.

        Resending everything (not only the failures) keeps each key's last
        record last, which matters on the compacted scores topic.
        """
        if not records:
            return
        records = list(records)
        delay = 0.5
        while True:
            producer = self.app.producer
            try:
                futures = [await self._send(producer, r) for r in records]
                results = await asyncio.gather(*futures, return_exceptions=True)
                refused = [i for i, res in enumerate(results) if _too_large(res)]
                if refused:  # final for those records: never retried as they are
                    records = self._instead_of_too_large(records, refused)
                    continue  # the others again too: each key's last record stays last
                for res in results:
                    if isinstance(res, BaseException):
                        raise res
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any send failure: retry the batch's outputs
                self._failed("publish", exc)
                log.warning("publishing %d records failed (%s); retrying in %.1fs",
                            len(records), type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self._recovered("publish")
            return

    @staticmethod
    async def _send(producer: Any, r: OutRecord) -> Any:
        """Hand one record to the producer: its delivery future (a record the producer refuses
        as too large: a future holding that error, so that :meth:`publish` replaces it)."""
        try:
            return await producer.send(r.topic, r.key, r.value, None, None, list(r.headers) or None)
        except Exception as exc:
            if not _too_large(exc):
                raise
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(exc)
            return refused

    def _instead_of_too_large(self, records: list[OutRecord], refused: list[int]) -> list[OutRecord]:
        """``records`` with each refused one replaced by its truncated copy, or left out if it was one."""
        out = list(records)
        for i in reversed(refused):
            rec = records[i]
            self.metrics.errors.labels(stage="too_large").inc()
            instead = instead_of_too_large(rec, self.settings.topics.dlq, self.settings.app_id)
            if instead is None:
                log.error("a record of %d bytes to %s is too large for the broker even truncated; not sent",
                          record_size(rec), rec.topic)
                del out[i]
            else:
                log.warning("a record of %d bytes to %s is too large for the producer or broker; sent "
                            "truncated to %s", record_size(rec), rec.topic, instead.topic)
                out[i] = instead
        return out

    async def _fatal(self, stage: str, exc: BaseException) -> None:
        self.metrics.errors.labels(stage=stage).inc()
        self.failing = f"{stage}: fatal {type(exc).__name__}"
        # The type only: messages of validation or script errors can quote payloads.
        log.error("%s failed with %s; stopping the worker (the batch stays uncommitted)",
                  stage, type(exc).__name__)
        await self.app.crash(exc)

    @staticmethod
    def _incoming(event: Any) -> Incoming:
        m = event.message
        value = event.value if isinstance(event.value, bytes | type(None)) else m.value
        ts = int(m.timestamp * 1000) if m.timestamp else None
        return Incoming(m.topic, m.partition, m.offset, m.key, value, ts)

    def _track(self, events: Sequence[Any]) -> None:
        """Processed positions of input partitions (the lag is computed from them when asked)."""
        for ev in events:
            m = ev.message
            if m.offset + 1 > self.positions.get(m.tp, -1):
                self.positions[m.tp] = m.offset + 1

    def _assigned(self) -> list[TP] | None:
        """The consumer's partitions now, sorted; ``None`` before the consumer has started."""
        try:
            return sorted(self.app.consumer.assignment())
        except Exception:  # noqa: BLE001 - consumer not started yet
            return None

    def lag(self, assignment: list[TP] | None = None) -> dict[TP, int]:
        """Records not processed yet per assigned input partition whose high watermark is known.

        Computed when asked (``/health``, each ``/metrics`` scrape), not after each batch:
        set after batches, the gauge froze at its last value exactly when batches stopped
        (Redis down, a backlog at start) and kept partitions that had moved to another worker.
        ``assignment``: the caller's :meth:`_assigned`, if it has one already.
        """
        consumer = self.app.consumer
        lag: dict[TP, int] = {}
        for tp in (self._assigned() or []) if assignment is None else assignment:
            if tp not in self.positions:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # noqa: BLE001 - lag is best effort
                high = None
            if high is not None:
                lag[tp] = max(0, high - self.positions[tp])
        return lag

    def _mark(self, n_events: int, now: float) -> None:
        """A batch is done: for /latency's window and /health's tally."""
        self.latency.mark(n_events, now)
        self.events_done += n_events
        self.last_batch_at = now

    # ------------------------------------------------------------------ agents
    async def consume_only(self, stream: Any, events: Sequence[Any]) -> None:
        """The bare baseline: count, ack, measure."""
        now = time.time()
        for ev in events:
            await stream.ack(ev)
        self._track(events)
        self.metrics.count({}, Counter(ev.message.topic for ev in events))
        stamps = [int(ev.message.timestamp * 1000) for ev in events if ev.message.timestamp]
        self.latency.extend(self.metrics.observe_event_to_score(stamps, now))
        self._mark(len(events), now)

    async def score_batch(self, stream: Any, events: Sequence[Any]) -> None:
        """Hold a batch's records for event-time alignment, score what is ready.

        Each record's event time is read alone (:func:`features.events.event_time_ms`);
        the scoring process decodes and validates. A record with no readable time is
        not held: it goes with the next batch scored, which dead-letters it. Every
        record is acked once the batch that scored it has published its outputs.
        """
        self._score_stream = stream
        async with self._score_lock:
            now = time.monotonic()
            max_bytes = self.settings.max_event_bytes
            timed = []
            for ev in events:
                msg = self._incoming(ev)
                tp = ev.message.tp
                self.received[tp] = max(self.received.get(tp, 0), msg.offset + 1)
                self.delivered_at[tp] = now
                self.acks.received(tp, ev.message.offset)
                timed.append((msg, event_time_ms(msg.value, max_bytes), ev))
            self._ready.extend((msg, 0, (msg, ev)) for msg, ts, ev in timed if ts is None)
            self.aligner.add((msg, ts, (msg, ev)) for msg, ts, ev in timed if ts is not None)
            self._ready.extend(self.aligner.release(self._caught_up))
            # Live, the aligner holds nothing and every batch goes at once. Working off a
            # backlog, it releases a little per batch: gather a full batch first (the
            # core's cost per call is mostly fixed Redis round trips per shard).
            ready: list[Any] = []
            if len(self._ready) >= self.settings.batch_size or not len(self.aligner):
                ready, self._ready = self._ready, []
            await self._score_ready(stream, ready, len(events))

    async def flush_held(self, everything: bool) -> None:
        """Release held events (all of them when a rebalance or shutdown is under way)."""
        stream = self._score_stream
        if stream is None or not (len(self.aligner) or self._ready):
            if everything and (self._scoring is not None or self._publishing is not None):
                async with self._score_lock:
                    await self.in_flight_done()
            return
        async with self._score_lock:
            if everything:
                # Rebalance or shutdown: score what was already released (it is in order), but
                # drop what the aligner still holds instead of scoring it out of order. Those
                # messages were never acked, so the committed offset stops before them and Kafka
                # delivers them again; dropping our references lets Faust's weak set of
                # unacked messages empty, so wait_empty() does not block. (Scoring them here
                # advanced customers' clocks, and the other topics' older events then
                # arrived later than the allowed lateness and were lost.)
                dropped = self.aligner.flush()
                self.metrics.held_dropped.inc(len(dropped))
                del dropped
                await self.in_flight_done()  # their acks come before the slate is wiped
                # `received` is reset by on_assigned, which follows every revocation.
                # Done-but-unacked events behind a dropped one are redelivered too (and skipped
                # as duplicates): acking them could commit past the dropped offsets.
                self.acks.clear()
                ready = self._ready
            else:
                ready = self._ready + self.aligner.release(self._caught_up)
            self._ready = []
            if ready:
                await self._score_ready(stream, ready, 0)
            if everything:
                await self.in_flight_done()  # a rebalance commits what is acked: all of it

    def _caught_up(self, topic: str, partition: int) -> bool:
        """Whether an input partition holds its shard back no longer (nothing unread for us).

        All three must hold:

        1. What we received (or the committed offset delivery started from, see
           :meth:`on_assigned`) reaches the partition's high watermark. Faust's own read
           position is no use here: it runs thousands of records ahead of the agent, in
           the stream's buffer.
        2. That high watermark is fresh: it came with a fetch response no older than the
           latest one of any input partition of the same shard. A partition is fetched
           only while the consumer buffers nothing of it, so the shard's partitions carry
           high watermarks of different moments. With a replay still producing, an old
           one made a partition look read to its end while a sibling's newer fetch had
           brought events produced after that partition's next, older events; those were
           released, and the partition's older events then arrived later than the allowed
           lateness and were dropped (the two-worker test's "known bug", 4 to 28 events
           of a run, under CPU load). The consumer sends one fetch at a time to a broker
           and handles the responses in order, so a response at least as recent as the
           one that brought any held sibling event reports every record produced before
           that event. (aiokafka writes a partition's high watermark before its poll
           time: reading the times first, the high watermark is never older than they say.
           Poll times are in ms, so two responses within one ms count as equally recent.)
        3. The partition delivered nothing for ``align_idle_s`` (wall clock), or since its
           assignment: like Kafka Streams' ``max.task.idle.ms``, it covers records that
           other producers have not handed to the broker yet.

        Live, this costs little: a partition that is not caught up holds back only events
        later than its own newest one plus ``align_slack_s``, and an idle partition is in
        every fetch, so it is as fresh as its siblings at once or after one more fetch.
        The cost is in backlogs, where what a stale high watermark let through was wrong.
        """
        tp = TP(topic, partition)
        try:
            # Poll times first, then the high watermark (see 2. above).
            kafka = self._kafka_consumer()
            polled = {t: kafka.last_poll_timestamp(TP(t, partition)) for t in self.settings.topics.inputs.values()}
            high = self.app.consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - consumer not ready, partition not assigned: hold
            return False  # (max_held bounds the wait)
        # high or poll time None: not fetched yet (just assigned), it may hold older events.
        # Wait; the first fetch response tells. (Treating it as caught up let a backlog's
        # first batches run ahead of partitions fetched a moment later.)
        idle = time.monotonic() - self.delivered_at.get(tp, self.started_monotonic)
        return input_caught_up(
            self.received.get(tp, 0), high, polled[topic], polled.values(), idle, self.settings.align_idle_s
        )

    def _consumer_thread(self) -> Any:
        """Faust's consumer thread, which owns the aiokafka consumer."""
        thread: Any = getattr(self.app.consumer, "_thread", None)
        if thread is None:
            raise RuntimeError("not an aiokafka consumer thread")
        return thread

    def _kafka_consumer(self) -> Any:
        """The aiokafka consumer inside Faust's consumer thread (read-only use from here).

        Faust's ``highwater()`` reads the same per-partition state from this thread.
        """
        return self._consumer_thread()._ensure_consumer()

    def on_revoked(self) -> None:
        """A rebalance revokes the assignment (all of it: Faust's protocol is eager)."""
        self.assignment = None
        self._revocations += 1

    async def on_assignment(self, assigned: set[TP]) -> None:
        """Handle an assignment (:meth:`on_assigned`); only then does it count for ``/ready``."""
        revocations = self._revocations
        if not self.bare:
            await self.on_assigned(assigned)
        if revocations == self._revocations:  # no newer rebalance began in the meantime
            self.assignment = frozenset(assigned)

    async def on_assigned(self, assigned: set[TP]) -> None:
        """Reset where each assigned input partition's delivery starts: its committed offset.

        After every assignment, a first one or the same partitions again (the eager
        protocol revokes everything at a rebalance), Faust seeks each assigned
        partition to its committed offset and delivers from there. So what we
        received before says nothing any more, and the start is the committed
        offset (or the log start, with none: ``consumer_auto_offset_reset`` is
        ``earliest``). Not the consumer's position: Faust resumes fetching while
        this signal is still being handled, and the position is then the fetch
        position, often already the partition's end. Taken for the start, it made
        a partition look caught up before the agent had seen a single record of
        it; the aligner let the shard's other topics run hours ahead, and that
        partition's events were then dropped as late.
        """
        inputs = set(self.settings.topics.inputs.values())
        if isinstance(self.learner, LearnerProcess) and TP(self.settings.topics.labels, 0) in assigned:
            self.learn_executor.submit(self.learner.start)  # its start-up, before the first labels
        # Before any await: nothing of this assignment has reached the agent yet. Until
        # the starts are known, a partition counts as caught up only if it is empty.
        self.received = {}
        tps = sorted(tp for tp in assigned if tp.topic in inputs)
        # Processed positions start again too: another worker may have processed the partition
        # since we last held it (our old position overstated the lag), or less than we had
        # processed, when what we held was dropped unacked (understated it).
        self.positions = {}
        now = time.monotonic()
        self.delivered_at = dict.fromkeys(tps, now)  # idle counts from the assignment
        if not tps:
            return
        delay = 0.5
        for _attempt in range(5):
            try:
                starts = await self._start_offsets(tps)
                break
            except Exception as exc:  # noqa: BLE001 - retried; then learnt from the first record
                log.warning("reading committed offsets failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay *= 2
        else:
            # Safe, not live: a partition with nothing left to read then holds its shard
            # back until align_max_held forces events out.
            log.error("committed offsets unknown: partitions count as caught up only once they deliver")
            return
        for tp, start in starts.items():
            self.received[tp] = max(self.received.get(tp, 0), start)
            # From the assignment on, not from the first batch done: a worker whose batches
            # wait (Redis down, a long backlog) shows the partition's whole lag meanwhile.
            self.positions[tp] = max(self.positions.get(tp, 0), start)

    async def _start_offsets(self, tps: list[TP]) -> dict[TP, int]:
        """The offset Faust delivers each partition from: max(committed offset, log start)."""
        earliest = await self.app.consumer.earliest_offsets(*tps)
        # Faust has no public call for committed offsets: ask its aiokafka consumer, on the
        # consumer's own thread (aiokafka is not thread-safe).
        thread = self._consumer_thread()

        async def committed() -> dict[TP, int | None]:
            consumer = self._kafka_consumer()
            return {tp: await consumer.committed(tp) for tp in tps}

        found: dict[TP, int | None] = await thread.call_thread(committed)
        return {tp: max(found.get(tp) or 0, earliest.get(tp) or 0) for tp in tps}

    async def _score_ready(self, stream: Any, ready: Sequence[Any], received: int) -> None:
        """Hand a batch to the scoring stage; returns once the batch ``SCORING_DEPTH`` before it
        is scored (and the one before that published).

        Batches overlap: the agent takes and aligns batch N+3 (Faust's per-event work)
        while N+1 and N+2 wait their turn in the scoring process, N is decoded and scored
        (in the scoring processes, or on the scoring thread) and N-1 is published. The
        scoring process takes N+1 the moment N is done: handed over only once N was
        done, N+1 waited for the event loop (busy with Faust's per-message tasks) to
        resume the agent first, and the scoring process idled about a quarter of a
        backlog's drain. Each stage keeps batch order (one scoring thread, retrying a
        failed batch before the next; each batch publishes after the one before), so
        outputs and acks stay in order.
        """
        self._stages = [t for t in self._stages if not t.done()]
        while len(self._stages) >= SCORING_DEPTH:
            await asyncio.shield(self._stages.pop(0))
        to_score = [msg for msg, _, _ in ready]
        scored = None
        if to_score:
            seq: int | None = None
            sent: concurrent.futures.Future[None] | None = None
            if isinstance(self.scorer, ScorerProcess):
                seq = next(self._batch_seq)
                sent = self.send_executor.submit(self.scorer.submit, seq, to_score)
            scored = asyncio.get_running_loop().run_in_executor(
                self.executor, self._score_now, to_score, seq, sent,
            )
        before = self._scoring if self._scoring is not None and not self._scoring.done() else None
        self._scoring = asyncio.ensure_future(self._score_stage(stream, ready, received, scored, before))
        self._stages.append(self._scoring)

    def _score_now(
        self, messages: list[Incoming], seq: int | None = None,
        sent: concurrent.futures.Future[None] | None = None,
    ) -> tuple[BatchOutput, dict[str, int]]:
        """On the scoring thread: score one batch, retrying transient failures in place.

        In place, so the batch queued behind it cannot overtake it (and the scorer's memo of
        shards already applied stays the retried batch's). Gives up when the worker stops.
        With ``seq``, the batch was sent ahead to the scoring process (``sent``): collect
        its answer, and send it again to retry (the process scores nothing after it first).
        """
        delay = 0.5
        while True:
            try:
                if seq is None:
                    result = self.scorer.score(messages)
                else:
                    scorer = cast(ScorerProcess, self.scorer)
                    if sent is not None:
                        sent.result()  # raises what the send raised (the process is gone)
                    else:
                        scorer.submit(seq, messages)
                    result = scorer.collect(seq, messages)
            except TRANSIENT as exc:
                sent = None  # a retry sends the batch again
                self._failed("process", exc)
                if self.app.should_stop:
                    raise
                log.warning("process failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self._recovered("process")
            return result

    async def scoring_done(self) -> None:
        """Wait until every batch handed to scoring is scored (and handed to publishing)."""
        await self._settle("_scoring")  # the newest waits for the one before it
        if self._scoring is None:
            self._stages = []

    async def _settle(self, slot: str) -> None:
        task = getattr(self, slot)
        if task is not None:
            # Shielded: a waiter cancelled at shutdown must not cancel the batch half-way.
            await asyncio.shield(task)
            if getattr(self, slot) is task:
                setattr(self, slot, None)

    async def in_flight_done(self) -> None:
        """Wait until every batch handed over is scored, published and acked."""
        await self.scoring_done()
        await self.publish_done()

    async def _score_stage(
        self, stream: Any, ready: Sequence[Any], received: int,
        scored: asyncio.Future[tuple[BatchOutput, dict[str, int]]] | None, before: asyncio.Future[None] | None,
    ) -> None:
        started = time.perf_counter()
        records: list[OutRecord] = []
        counts: Counter[str] = Counter()
        score_ts: list[int] = []
        if scored is not None:  # (dead letters come from the scoring process too, with the records)
            try:
                result, versions = await scored
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fatal("process", exc)
                return
            self.metrics.model_swaps.inc(swapped_models(self.model_versions, versions))
            self.model_versions = versions
            records, counts, score_ts = result.records, result.counts, result.score_event_ts_ms
        if before is not None:
            await asyncio.shield(before)  # publish in batch order
        await self.publish_done()  # _publish_batch reports its own failures
        done = [fev for _, _, (_, fev) in ready]
        self._publishing = asyncio.ensure_future(
            self._publish_batch(stream, records, done, counts, score_ts, received, started)
        )

    async def publish_done(self) -> None:
        """Wait until the batch in flight is published and acked."""
        await self._settle("_publishing")

    async def _publish_batch(
        self, stream: Any, records: list[OutRecord], done: list[Any], counts: Counter[str],
        score_ts: list[int], received: int, started: float,
    ) -> None:
        try:
            await self.publish(records)
            for fev in done:
                for ackable in self.acks.done(fev.message.tp, fev.message.offset, fev):
                    await stream.ack(ackable)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a task: nobody else would see it
            await self._fatal("publish", exc)
            return
        now = time.time()
        self._track(done)
        self.metrics.count(counts, Counter(m.topic for m in (fev.message for fev in done)))
        moved = counts.get("shard_changes", 0)
        if moved and (warning := self.shard_changes.note(moved)) is not None:
            log.warning(warning)  # counts only: no customer id in the log
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if received:
            self.metrics.batch_events.observe(received)
        self.metrics.held.set(len(self.aligner) + len(self._ready))
        self.metrics.last_batch.set(now)
        self.latency.extend(self.metrics.observe_event_to_score(score_ts, now))
        self._mark(len(done), now)
        for kind, version in self.model_versions.items():
            self.metrics.model_version.labels(kind=kind).set(version)

    async def learn_batch(self, stream: Any, events: Sequence[Any]) -> None:
        """Learn labels in offset order; ack them only after the snapshot that holds them."""
        records = [(ev.message.offset, ev.value) for ev in events]
        async with self._learn_lock:
            try:
                step = await self._retrying("learn", self.learner.learn_records, records, on=self.learn_executor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fatal("learn", exc)
                return
            if step.undecodable:
                self.metrics.errors.labels(stage="label_decode").inc(step.undecodable)
            self.metrics.labels_learned.inc(step.learned)
            drifts = step.drifts
            self._unacked_labels.extend((stream, ev) for ev in events)
            if drifts:
                self.metrics.drift.inc(len(drifts))
                await self.publish([
                    OutRecord(self.settings.topics.drift, d["kind"].encode(), _json(d)) for d in drifts
                ])
            if step.due:
                await self._checkpoint()

    async def learner_tick(self) -> None:
        """Snapshot when due by time, or at once when a rebalance or shutdown is under way."""
        if not self._unacked_labels:
            return
        urgent = self.app.should_stop or not self.app.flow_control.is_active()
        async with self._learn_lock:
            if self._unacked_labels and (urgent or await self._call(self.learner.due, on=self.learn_executor)):
                await self._checkpoint()

    def _holds_labels(self) -> bool:
        """Whether this worker learns: it holds the labels topic's one partition."""
        return TP(self.settings.topics.labels, 0) in self.app.consumer.assignment()

    async def _checkpoint(self) -> None:
        if not self._holds_labels():
            # The labels partition moved: whatever we learned since our last
            # snapshot is relearned by the new owner; restore before learning again.
            self._unacked_labels.clear()
            await self._call(self.learner.invalidate, on=self.learn_executor)
            return
        covered = await self._retrying("snapshot", self.learner.checkpoint, on=self.learn_executor)
        if covered is None:
            return
        self.metrics.snapshots.inc()
        for stream, ev in self._unacked_labels:
            await stream.ack(ev)
        self._unacked_labels.clear()
        log.info("model snapshot saved (labels up to offset %d)", covered)

    # ------------------------------------------------------------------ broker contact
    @property
    def broker_probe_s(self) -> float:
        """How often :meth:`watch_broker` asks: four times per ``broker_unreachable_s``, at most every 5 s."""
        return min(BROKER_PROBE_MAX_S, self.settings.broker_unreachable_s / 4)

    async def watch_broker(self) -> None:
        """Ask a broker for metadata every :attr:`broker_probe_s`; note each answer.

        The consumer and producer reconnect by themselves, but nothing of theirs tells an idle
        broker from a gone one: fetches of a caught-up worker return empty either way, and the
        client refreshes its metadata every 5 minutes. So ask: a metadata request for no topic
        (a few bytes), on the producer's client, to each known broker in turn until one answers.
        """
        while True:
            asked = time.monotonic()
            try:
                answered = await asyncio.wait_for(self.probe_broker(), timeout=self.broker_probe_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a timeout, a producer not started yet: no answer
                answered = False
            if answered:
                self.broker_answered()
            else:
                # Unanswered from when it was asked, but from at most its timeout before the failure
                # was seen: an answer that came in while the event loop stood still loses to the
                # timeout, whose timer fires first when the loop runs again, and the stall is no
                # evidence against the broker.
                self.broker_unanswered(max(asked, time.monotonic() - self.broker_probe_s))
            await asyncio.sleep(self.broker_probe_s)

    async def probe_broker(self) -> bool:
        """Whether one of the brokers the producer knows answers a metadata request now."""
        from aiokafka.protocol.metadata import MetadataRequest

        producer: Any = self.app.producer
        client = producer._ensure_producer().client  # Faust's aiokafka producer (raises before start)
        nodes = [broker.nodeId for broker in client.cluster.brokers()]
        random.shuffle(nodes)
        for node in nodes:
            try:
                await client.send(node, MetadataRequest([]))
            except Exception:  # noqa: BLE001 - connection refused, closed, timed out: the next one
                continue
            return True
        return False

    def broker_answered(self) -> None:
        self.broker_answered_at = time.monotonic()
        self.broker_answered_wall = time.time()
        self.broker_failing_since = None

    def broker_unanswered(self, asked: float) -> None:
        """Note a request (sent at monotonic ``asked``) that no broker answered."""
        if self.broker_failing_since is None:
            self.broker_failing_since = asked

    def broker_unreachable(self) -> str | None:
        """``None`` unless no broker answered for ``broker_unreachable_s`` and the requests have
        gone unanswered for at least half of that; then since when none has.

        The second condition is why a worker whose event loop stalled (a loaded host, a long
        collection) is not called cut off: it sent nothing meanwhile (a request it had sent counts
        from at most its timeout before the failure was seen, see :meth:`watch_broker`), and its
        next request is answered. One unanswered request is not enough either: requests go out
        every quarter of the threshold, and they must fail for half of it.

        >>> w = LiveWorker(Settings(app_id="doc", broker_unreachable_s=8), bare=True)
        >>> w.broker_answered_at -= 60   # a minute of silence, but nothing asked and unanswered
        >>> w.broker_unreachable() is None
        True
        >>> w.broker_unanswered(time.monotonic() - 5)   # unanswered for 5 s (more than 8 / 2)
        >>> w.broker_unreachable().startswith("broker unreachable since")
        True
        """
        if self.broker_failing_since is None:
            return None
        now = time.monotonic()
        silent = now - self.broker_answered_at
        threshold = self.settings.broker_unreachable_s
        if silent <= threshold or now - self.broker_failing_since < threshold / 2:
            return None
        return f"broker unreachable since {_utc(self.broker_answered_wall)} (no answer for {silent:.0f}s)"

    # ------------------------------------------------------------------ Redis epoch
    async def watch_redis_epoch(self) -> None:
        """:meth:`check_redis_epoch` at once, then every ``EPOCH_CHECK_S`` (a failed check waits for the next)."""
        while True:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.check_redis_epoch), timeout=EPOCH_CHECK_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis down: /health's PING says so; check again later
                pass
            await asyncio.sleep(EPOCH_CHECK_S)

    def check_redis_epoch(self) -> bool:
        """Whether Redis lost its data since the last check; adopt its epoch (a new one if there is none).

        The epoch is a random value under the deployment's prefix (``<prefix>:epoch``), written
        only if absent (SET NX), so replicas sharing the Redis all hold the one written first.
        A Redis that comes back empty (restarted without persistence, FLUSHALL, the key evicted)
        has none, or, if another replica noticed first, a new one: the worker would otherwise
        go on from empty features without a sign. Noticed, it is logged once (an ERROR), counted
        (``leadpulse_redis_data_lost_total``) and shown on /health, and the new epoch adopted,
        so each loss is reported once per worker. Blocking: call it off the event loop.
        """
        key = f"{self.settings.redis_prefix}:epoch"
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(key, f"{int(time.time())}-{secrets.token_hex(8)}", nx=True)
        pipe.get(key)
        _, epoch = pipe.execute()
        known, self.redis_epoch = self.redis_epoch, epoch
        if known is None or epoch == known:
            return False
        self.redis_data_lost_at = time.time()
        self.metrics.redis_data_lost.inc()
        log.error("Redis lost its data (its epoch key %s is gone or replaced: restarted without "
                  "persistence, flushed or evicted?): features, scoring records and models start "
                  "empty; /health is degraded for %.0fs", key, DATA_LOST_DEGRADED_S)
        return True

    def redis_data_lost(self) -> str | None:
        """``None`` unless Redis was found emptied within ``DATA_LOST_DEGRADED_S``; else when."""
        lost = self.redis_data_lost_at
        if lost is None or time.time() - lost > DATA_LOST_DEGRADED_S:
            return None
        return f"redis: data lost (noticed at {_utc(lost)})"

    # ------------------------------------------------------------------ queries
    def health(self) -> tuple[dict[str, Any], int]:
        assigned = self._assigned()
        consumer_ready = assigned is not None
        assignment = assigned or []
        lag = {f"{tp.topic}/{tp.partition}": n for tp, n in self.lag(assignment).items()}
        broker = self.broker_unreachable()
        lost = None if self.bare else self.redis_data_lost()
        status = "ok" if consumer_ready and not self.failing and not broker and not lost else "degraded"
        body: dict[str, Any] = {
            "status": status,
            "mode": "bare" if self.bare else "pipeline",
            "error": broker or self.failing or lost,
            "broker": "unreachable" if broker else "ok",
            "uptime_s": round(time.time() - self.started, 1),
            "assigned": [f"{tp.topic}/{tp.partition}" for tp in assignment],
            "lag": lag,
            "lag_total": sum(lag.values()),
            "events": self.events_done,
            "last_batch_age_s": round(time.time() - self.last_batch_at, 1) if self.last_batch_at else None,
        }
        if not self.bare:
            body["model_versions"] = self.model_versions
            lost_at = self.redis_data_lost_at
            body["redis_data_lost_at"] = _utc(lost_at) if lost_at is not None else None
            # Not degraded: the worker goes on right (the new partition owns the customer) and
            # /health is a liveness probe; restarts during a partition increase would only
            # add rebalances. The warning says what to look at.
            moved = self.shard_changes
            body["customer_shard_changes"] = moved.total
            body["customer_shard_changed_at"] = _utc(moved.last_at) if moved.last_at is not None else None
            if moved.recent():
                body["warning"] = (
                    "customers' events came on another input partition than before (last at "
                    f"{_utc(moved.last_at or 0.0)}): after a partition increase expected once; "
                    "if it goes on, a producer does not co-partition by customer (see the log)"
                )
        return body, 200 if status == "ok" else 503

    def readiness(self) -> tuple[dict[str, Any], int]:
        """``/ready``: whether the worker does its share now (a readiness probe), and why not.

        ``/health`` answers ok as soon as the consumer exists. Ready needs more: the last
        rebalance's assignment handled to its end (start offsets read), not a rebalance under
        way (Faust's flag is up from the moment aiokafka rejoins, before our revocation signal),
        the first model refresh done (scoring), no stage failing, not shutting down. An empty
        assignment is ready: a standby replica (more replicas than partitions).
        """
        waiting: list[str] = []
        if self.app.should_stop:
            waiting.append("shutdown")
        settled = self.assignment is not None and not self.app.rebalancing
        if not settled:
            waiting.append("assignment")
        if not self.models_loaded:
            waiting.append("models")
        broker = self.broker_unreachable()
        if broker:
            waiting.append("broker")
        ready = not waiting and not self.failing
        body: dict[str, Any] = {
            "ready": ready,
            "mode": "bare" if self.bare else "pipeline",
            "waiting_for": waiting,
            "error": broker or self.failing,
            "assigned": [f"{tp.topic}/{tp.partition}" for tp in sorted(self.assignment or ())] if settled else None,
        }
        return body, 200 if ready else 503

    async def models(self) -> dict[str, Any]:
        """The learner's models, when this worker learns (it holds the labels partition)."""
        try:
            learner_here = self._holds_labels()
        except Exception:  # noqa: BLE001 - consumer not started yet
            learner_here = False
        body: dict[str, Any] = {"learner_here": learner_here, "model_versions": self.model_versions}
        if learner_here:
            async with self._learn_lock:  # between two learning calls: a consistent picture
                body["models"] = await self._call(self.learner.summaries, on=self.learn_executor)
        return body

    async def redis_failure(self) -> str | None:
        """``None`` if Redis answers a PING within 2 s, else the error's type (never its text)."""
        try:
            await asyncio.wait_for(asyncio.to_thread(self.redis.ping), timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - any failure means not reachable now
            return type(exc).__name__
        return None

    def _authorized(self, request: Request) -> bool:
        token = self.settings.web_api_token
        if token is None:
            return True
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {token.get_secret_value()}".encode())

    def _add_views(self, app: faust.App) -> None:
        worker = self

        @app.page("/health", name="leadpulse_health")
        class Health(View):
            async def get(self, request: Request) -> Response:
                body, status = worker.health()
                if not worker.bare:
                    failed = await worker.redis_failure()
                    body["redis"] = failed or "ok"
                    if failed:
                        body["status"], status = "degraded", 503
                return self.json(body, status=status)

        @app.page("/ready", name="leadpulse_ready")
        class Ready(View):
            """Readiness probe (open without the API token, like /health)."""

            async def get(self, request: Request) -> Response:
                body, status = worker.readiness()
                # Customer queries and every batch need Redis: not ready while it does not answer.
                if not worker.bare and await worker.redis_failure():
                    body["ready"], status = False, 503
                    body["waiting_for"].append("redis")
                return self.json(body, status=status)

        @app.page("/metrics", name="leadpulse_metrics")
        class Prometheus(View):
            async def get(self, request: Request) -> Response:
                worker.metrics.set_lag({(tp.topic, tp.partition): n for tp, n in worker.lag().items()})
                return self.bytes(worker.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

        @app.page("/latency", name="leadpulse_latency")
        class Latency(View):
            """Exact percentiles of recent event-to-output latencies (DELETE starts afresh)."""

            async def get(self, request: Request) -> Response:
                return self.json(worker.latency.summary())

            async def delete(self, request: Request) -> Response:
                # Reading stays open like /metrics; clearing what others measure does not.
                if not worker._authorized(request):
                    return self.error(401, "unauthorized")
                worker.latency = LatencyWindow()
                return self.json({"reset": True})

        if self.bare:
            return

        @app.page("/models", name="leadpulse_models")
        class Models(View):
            """Each learned kind's model: labels, whether it serves, its largest weights."""

            async def get(self, request: Request) -> Response:
                if not worker._authorized(request):
                    return self.error(401, "unauthorized")
                return self.json(await worker.models())

        # Any id but one with "/" unencoded: aiohttp's default pattern also refuses "{" and "}"
        # (matched after percent-decoding), and such customers could be neither read nor erased.
        @app.page("/customers/{customer_id:[^/]+}/scores", name="leadpulse_customer_scores")
        class CustomerScores(View):
            async def get(self, request: Request, customer_id: str) -> Response:
                if not worker._authorized(request):
                    return self.error(401, "unauthorized")
                try:
                    body = await asyncio.wait_for(
                        worker._call(worker.scorer.customer_scores, customer_id), timeout=API_WAIT_S)
                except TRANSIENT:  # asyncio's timeout is the builtin TimeoutError, one of them
                    return self.error(503, "scores unavailable: the scoring stage or Redis is not "
                                      "answering (see /health); try again", retry_after_s=5)
                if body is None:
                    return self.error(404, "no scores for this customer")
                return self.json(body)

        @app.page("/customers/{customer_id:[^/]+}", name="leadpulse_customer")
        class Customer(View):
            async def delete(self, request: Request, customer_id: str) -> Response:
                if not worker._authorized(request):
                    return self.error(401, "unauthorized")
                async with worker._score_lock:
                    # A batch still in flight may hold the customer's scores: they go out
                    # first, so the tombstone is the compacted topic's last word.
                    await worker.in_flight_done()
                    await worker.publish(await worker._call(worker.scorer.erase, customer_id))
                log.info("erased a customer on request")
                return self.json({"erased": True})


def _too_large(exc: object) -> bool:
    """Whether a send failed because the record is too large (the producer's check, or the broker's).

    Final for that record: sent again, it fails again. Faust wraps the producer's own error.
    """
    from aiokafka.errors import (
        MessageSizeTooLargeError,
        RecordListTooLargeError,
        RecordTooLargeError,
    )

    too_large = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
    seen = 0
    while isinstance(exc, BaseException) and seen < 5:
        if isinstance(exc, too_large):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def _utc(t: float) -> str:
    """A wall time as ISO 8601 UTC to the second.

    >>> _utc(0.0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def swapped_models(before: dict[str, int], after: dict[str, int]) -> int:
    """How many kinds' models changed between two ``{kind: version}`` of the scorer.

    A kind first seen is the first load, not a hot swap.

    >>> swapped_models({}, {"churn": 0}), swapped_models({"churn": 0, "buy": 50}, {"churn": 50, "buy": 50})
    (0, 1)
    """
    return sum(1 for kind, version in after.items() if kind in before and before[kind] != version)


def _json(record: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(record)


class MalformedRequestFilter(logging.Filter):
    """Logs aiohttp's errors on malformed requests without their traceback, whose message
    quotes the request line (``/customers/<id>/...`` of an over-long URL: a customer id).

    >>> from aiohttp.http_exceptions import LineTooLong
    >>> record = logging.LogRecord("aiohttp.server", logging.ERROR, "", 0, "Error handling request from %s",
    ...                            ("127.0.0.1",), (LineTooLong, LineTooLong("/customers/c-42/x", 8190), None))
    >>> MalformedRequestFilter().filter(record), record.getMessage(), record.exc_info
    (True, 'Error handling request from 127.0.0.1 (LineTooLong)', None)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg} ({type(exc).__name__})"
            record.exc_info, record.exc_text = None, None
        return True


class _Worker(faust.Worker):
    """Faust's worker, whose stop (SIGTERM, SIGINT, a crash) ends the process within a bound.

    Faust's clean stop waits for every event the agents hold to be acked: a batch stuck in a
    publish that cannot succeed, or a consumer thread waiting on a broker that is gone,
    kept a SIGTERMed worker alive until SIGKILL (110 s and more, logging ``wait_empty``).
    """

    shutdown_timeout_s = 30.0

    async def stop(self) -> None:
        exit_after(self.shutdown_timeout_s, log)
        await super().stop()


class RepeatFilter(logging.Filter):
    """Lets a warning or error through once per ``interval_s`` per logger and message template;
    the next one that passes says how many were left out.

    With the broker gone, the Kafka client logged the same connection errors (with
    tracebacks) some 29,000 times in 10 minutes.

    >>> f, now = RepeatFilter(60.0, clock=lambda: now), 0.0
    >>> def rec(): return logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Unable to update metadata from %s", (1,), None)
    >>> [f.filter(rec()) for _ in range(3)]
    [True, False, False]
    >>> now = 61.0; r = rec(); f.filter(r), r.getMessage()
    (True, 'Unable to update metadata from 1 (2 more like it in the last 60s not logged)')
    """

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: Counter[tuple[str, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.interval_s:g}s not logged)"
        return True


# The Kafka client's loggers that repeat a connection error at every retry while a broker is away.
REPEATING_LOGGERS = ("aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.consumer.fetcher",
                     "aiokafka.consumer.group_coordinator", "aiokafka.producer.sender")


def run_worker(settings: Settings, *, bare: bool = False, loglevel: str = "info") -> None:
    """Create topics if missing, then run one worker until SIGTERM/SIGINT (exits the process)."""
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())
    repeats = RepeatFilter()
    for name in REPEATING_LOGGERS:
        logging.getLogger(name).addFilter(repeats)
    check_web_port(settings)
    if not bare:
        # Read before anything waits on Kafka or Redis: a mistake in the file is not a timeout.
        load_scoring_config(settings.scoring_config)
        check_redis(settings)
    ensure_topics(settings)
    worker = LiveWorker(settings, bare=bare)
    runner = _Worker(worker.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    runner.shutdown_timeout_s = settings.shutdown_timeout_s
    # Faust's start-up spinner, at log levels from warning up, sets the root logger to DEBUG so
    # every record reaches it: each of aiokafka's per-send debug calls then built a record
    # (4% of the event loop in a profile). Our output is a log file, not a terminal.
    runner.spinner = None
    tune_gc()
    # Threads here take turns with Faust's loop for the interpreter lock: the consumer's fetcher,
    # the scoring pipe's sender and reader, the learner's. A thread back from I/O waited up to
    # Python's 5 ms for its turn; at 1 ms the worker ran about 6% faster (README: measured figures).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    runner.execute_from_commandline()

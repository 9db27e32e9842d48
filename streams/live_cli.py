"""Live subcommands of ``leadpulse``: ``worker``, ``replay`` and ``demo``.

Imported by :func:`streams.cli.main`, which picks up the parser builder
appended to ``EXTRA_PARSERS`` and the handlers registered with ``@command``.

- ``leadpulse worker [--bare]``: create missing topics (``LEADPULSE_PARTITIONS``
  partitions, scores compacted, labels and drift one partition), then run one
  Faust worker configured only by ``LEADPULSE_*`` variables. SIGTERM stops it
  cleanly. ``--bare`` runs the consume-only baseline of the benchmark.
- ``leadpulse replay FILE.jsonl [--speed X]``: publish JSON Lines to the input
  topic named by each line's ``type``, keyed by ``customer_id``, with the
  Kafka timestamp set to the event's own ``ts``. ``--speed 0`` (default) sends
  as fast as possible; ``--speed 3600`` plays one hour of event time per
  second. Lines that are not JSON objects with a known ``type`` cannot be
  routed: they go to the DLQ directly, with the reason in the same
  Kafka-Connect-style header the worker uses (``--unroutable dlq``, the
  default), or untouched to a topic of your choice (``--unroutable TOPIC``)
  for the worker to dead-letter. Nothing is dropped. Lines that route but do
  not validate (missing fields, negative amounts, ...) go to their topic and
  the worker dead-letters them. A line too large for a Kafka record goes to
  the DLQ too, its first 64 KiB with the reason, the line number and its
  size (``leadpulse.replay.truncated_from``). Note for real Kafka: old event timestamps
  count against ``retention.ms``; replay history into topics whose retention
  covers it (or ``-1``).
- ``leadpulse demo [--seconds N] [--customers N]``: no Docker needed. Starts
  the embedded broker and Redis, a worker subprocess, streams a simulated
  history (days compressed into seconds) and shows live score changes and
  alerts in the terminal, then stops everything and checks nothing is left.

>>> from streams.cli import build_parser
>>> build_parser().parse_args(["replay", "events.jsonl", "--speed", "60"]).speed
60.0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

import orjson

from streams.cli import (
    EXTRA_PARSERS,
    command,
    count_lines,
    open_input,
    progress,
    time_ordered_lines,
    zone_arg,
)

__all__ = ["WorkerProcess", "replay_lines", "worker_env"]

INPUT_TYPES = ("web", "purchase", "campaign")
# How long WorkerProcess waits for an HTTP answer: a worker's event loop can stand still for
# seconds on a loaded host (a CI machine), and a slow answer is not a wrong one.
HTTP_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- worker


@command("worker")
def cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    run_worker(load_settings(), bare=args.bare, loglevel=args.loglevel)
    return 0


def load_settings(**values: Any) -> Any:
    """``Settings(**values)``: environment and ``.env`` first, ``values`` override them.

    (A plain call: ``Settings.model_validate`` would skip the environment.) Warns on
    stderr of ``LEADPULSE_*`` variables that no setting reads (typos), in the environment
    or in the ``.env`` file the settings read.
    """
    from streams.settings import Settings, unknown_variables

    for name in unknown_variables(os.environ):
        print(f"leadpulse: ignoring unknown setting {name}", file=sys.stderr)
    env_file = Settings.model_config.get("env_file")
    if isinstance(env_file, str) and Path(env_file).is_file():
        from dotenv import dotenv_values  # what pydantic-settings reads the file with

        in_file = dotenv_values(env_file, encoding=Settings.model_config.get("env_file_encoding") or "utf-8")
        for name in unknown_variables({k: "" for k in in_file if k not in os.environ}):
            print(f"leadpulse: ignoring unknown setting {name} in {env_file}", file=sys.stderr)
    factory: Any = Settings
    return factory(**values)


def worker_env(values: Mapping[str, Any], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a worker subprocess: ``base`` (default ``os.environ``) plus settings.

    >>> worker_env({"kafka_bootstrap": "h:1", "partitions": 3}, base={})
    {'LEADPULSE_KAFKA_BOOTSTRAP': 'h:1', 'LEADPULSE_PARTITIONS': '3'}
    """
    env = dict(os.environ if base is None else base)
    env.update({f"LEADPULSE_{k.upper()}": str(v) for k, v in values.items()})
    return env


class WorkerProcess:
    """``leadpulse worker`` as a subprocess in its own process group, with its log in a file.

    >>> w = WorkerProcess({"kafka_bootstrap": "127.0.0.1:9092", "web_port": 6070})  # doctest: +SKIP
    >>> w.start().wait_ready(timeout=60)  # doctest: +SKIP
    >>> w.get_json("/health")["status"]  # doctest: +SKIP
    'ok'
    >>> w.stop()  # doctest: +SKIP
    """

    def __init__(
        self, settings: Mapping[str, Any], log_path: str | Path | None = None,
        bare: bool = False, loglevel: str = "warning",
    ) -> None:
        self.settings = dict(settings)
        self.port = int(self.settings["web_port"])
        self.bare = bare
        self.loglevel = loglevel
        self._own_log = log_path is None
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="leadpulse-worker-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: str | None = None

    def start(self) -> WorkerProcess:
        # Not ``-m streams.cli``: as ``__main__`` it would be a second copy of the module
        # that this module's subcommands are not registered with.
        entry = "import sys; from streams.cli import main; sys.exit(main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", entry, "worker", "--loglevel", self.loglevel]
        if self.bare:
            cmd.append("--bare")
        # The worker's temporary files (Faust's data directory) in a directory of ours, removed
        # when it stops: a worker that is killed cannot remove its own.
        self._remove_tmp()
        self._tmp = tempfile.mkdtemp(prefix="leadpulse-worker-")
        env = worker_env(self.settings)
        env["TMPDIR"] = self._tmp
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get_json(self, path: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
        import urllib.error
        import urllib.request  # here: every command would load http and ssl at start-up

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # /health answers 503 with a body
            return json.loads(exc.read())

    def get_text(self, path: str, timeout: float = HTTP_TIMEOUT_S) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
            return str(resp.read().decode())

    def wait_ready(self, timeout: float = 90.0, partitions: bool = True) -> dict[str, Any]:
        """Wait until the web server answers and (``partitions``) input partitions are assigned."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"worker exited early (code {self.proc and self.proc.returncode}); log:\n{self.log_tail()}")
            try:
                last = self.get_json("/health", timeout=2)
            except OSError:
                last = None
            if last and (not partitions or any(".events." in a for a in last["assigned"])):
                return dict(last)
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s (last health {last}); log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the whole process group (the crash of the kill test)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._remove_tmp()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait for a clean exit, SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):  # anything the worker left in its group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._remove_tmp()
        if self._own_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------- replay


@dataclass
class ReplayStats:
    lines: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    unroutable: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.sent.values()) + self.unroutable
        rate = round(total / self.seconds, 1) if self.seconds > 0 else None
        return {"lines": self.lines, "sent": self.sent, "unroutable": self.unroutable,
                "seconds": round(self.seconds, 2), "records_per_s": rate}


def _route(line: bytes, topics: Mapping[str, str]) -> tuple[str | None, bytes | None, int | None]:
    """``(topic, key, timestamp_ms)`` for a line; topic None when it cannot be routed.

    >>> _route(b'{"type":"web","customer_id":"c1","ts":"2024-01-01T00:00:00Z"}', {"web": "w"})
    ('w', b'c1', 1704067200000)
    >>> _route(b'{"type":"web","customer_id":42,"ts":1704067200}', {"web": "w"})
    ('w', b'42', 1704067200000)
    >>> _route(b'[1]', {"web": "w"})
    (None, None, None)
    """
    from features.events import id_text, parse_ts_ms

    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(obj, dict) or obj.get("type") not in topics:
        return None, None, None
    cid = id_text(obj.get("customer_id"))  # 123 is the customer "123", as the worker decodes it
    key = cid.encode() if isinstance(cid, str) and cid else None
    try:
        ts: int | None = parse_ts_ms(obj.get("ts"))
    except ValueError:
        ts = None  # the worker will dead-letter it; Kafka stamps the send time
    return str(topics[obj["type"]]), key, ts


def replay_lines(
    lines: Iterable[bytes],
    producer: Any,
    topics: Any,
    *,
    speed: float = 0.0,
    unroutable: str = "dlq",
    tick: Any = None,
    stop: threading.Event | None = None,
    align_ms: int = 15 * 60_000,
) -> ReplayStats:
    """Send JSON Lines with a kafka-python producer (see the module docstring for routing).

    ``speed`` > 0 paces by event time (``speed`` event seconds per wall second).
    ``align_ms`` > 0 flushes the producer whenever event time crosses a boundary
    of that width. The producer batches each partition on its own, so at full
    speed one input topic could reach the broker hours of event time ahead of
    another; a worker reading while the replay runs would take the emptier
    partition for caught up and drop its older events as late. Flushing bounds
    the skew to ``align_ms`` (keep it below the worker's lateness).
    """
    from kafka.errors import MessageSizeTooLargeError

    from features.events import decode

    inputs = topics.inputs
    stats = ReplayStats()
    started = time.monotonic()
    first_ts: int | None = None
    window: int | None = None
    for number, raw in enumerate(lines, start=1):
        if stop is not None and stop.is_set():
            break
        line = raw.strip()
        if not line:
            continue
        stats.lines += 1
        topic, key, ts = _route(line, inputs)
        if topic is None:
            stats.unroutable += 1
            reason = getattr(decode(line), "reason", "not routable")
            if unroutable == "dlq":
                _dead_letter(producer, topics.dlq, line, reason, number)
            else:
                try:
                    producer.send(unroutable, value=line)
                except MessageSizeTooLargeError:
                    _dead_letter(producer, topics.dlq, line, reason, number)
        else:
            if speed > 0 and ts is not None:
                first_ts = ts if first_ts is None else first_ts
                wait = (ts - first_ts) / 1000.0 / speed - (time.monotonic() - started)
                if wait > 0:
                    if stop is not None:
                        if stop.wait(wait):
                            break
                    else:
                        time.sleep(wait)
            if align_ms > 0 and ts is not None:
                current = ts // align_ms
                if window is None or current > window:
                    if window is not None:
                        producer.flush()
                    window = current
            try:
                producer.send(topic, key=key, value=line, timestamp_ms=ts)
            except MessageSizeTooLargeError:
                # Larger than a Kafka record may be: this raised out of the replay, and the
                # rest of the file was not sent. The worker would dead-letter it anyway.
                stats.unroutable += 1
                _dead_letter(producer, topics.dlq, line, f"payload of {len(line)} bytes is too large "
                             "for a Kafka record", number)
            else:
                stats.sent[topic] = stats.sent.get(topic, 0) + 1
        if tick is not None and stats.lines % 1000 == 0:
            tick(stats.lines)
    producer.flush()
    stats.seconds = time.monotonic() - started
    return stats


def _dead_letter(producer: Any, dlq: str, line: bytes, reason: str, number: int) -> None:
    """Send a line to the DLQ with the worker's headers; a line too large for a record, truncated."""
    from kafka.errors import MessageSizeTooLargeError

    headers = [
        ("__connect.errors.exception.message", reason.encode("utf-8", "replace")),
        ("__connect.errors.exception.class.name", b"features.events.EventError"),
        ("__connect.errors.stage", b"replay"),
        ("__connect.errors.connector.name", b"leadpulse-replay"),
        ("leadpulse.replay.line", str(number).encode()),
    ]
    try:
        producer.send(dlq, value=line, headers=headers)
    except MessageSizeTooLargeError:
        headers.append(("leadpulse.replay.truncated_from", str(len(line)).encode()))
        # Cut as the worker cuts a dead letter too large for its producer (its first
        # streams.pipeline.DLQ_TRUNCATE_BYTES), with its headers leadpulse.truncated_from and
        # leadpulse.sha256 of the whole line.
        from streams.pipeline import OutRecord, truncated

        cut = truncated(OutRecord(dlq, None, line, tuple(headers)))
        producer.send(dlq, value=cut.value, headers=list(cut.headers))


def make_producer(settings: Any, **overrides: Any) -> Any:
    from kafka import KafkaProducer

    from streams.settings import kafka_unreachable

    kw: dict[str, Any] = {"acks": "all", "linger_ms": 20, "batch_size": 256 * 1024,
                          "client_id": f"{settings.app_id}-replay"}
    kw.update(overrides)
    with kafka_unreachable(settings):
        return KafkaProducer(**settings.kafka_client_kwargs(), **kw)


@command("replay")
def cmd_replay(args: argparse.Namespace) -> int:
    from scoring.config import load_scoring_config

    settings = load_settings()
    path = _input_file(args.file)
    total = count_lines(path) if sys.stderr.isatty() else None
    # Disorder within the workers' lateness is theirs to absorb; any other order is sorted
    # by event time first. Read before Kafka: a mistake in the file is not a broker timeout.
    lateness_ms = load_scoring_config(settings.scoring_config).lateness_ms
    producer = make_producer(settings)
    try:
        with progress(f"replay {path.name}", total) as tick, \
                time_ordered_lines(path, lateness_ms, args.timezone) as handle:
            stats = replay_lines(handle, producer, settings.topics, speed=args.speed,
                                 unroutable=args.unroutable, tick=tick)
    finally:
        producer.close()
    print(json.dumps(stats.as_dict(), indent=2))
    return 0


# --------------------------------------------------------------------------- demo


@dataclass
class DemoView:
    """What the live table shows: the latest score changes and alerts, and totals."""

    scores: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=12))
    alerts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))
    counts: dict[str, int] = field(default_factory=lambda: {"scores": 0, "alerts": 0, "triggers": 0, "dlq": 0})
    status: str = "starting"
    sent: int = 0
    event_time: str = ""

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        head = Table.grid(padding=(0, 2))
        head.add_row(
            f"[bold]leadpulse demo[/] {self.status}", f"events sent {self.sent:,}",
            f"scores {self.counts['scores']:,}", f"alerts {self.counts['alerts']:,}",
            f"triggers {self.counts['triggers']:,}", f"dead letters {self.counts['dlq']:,}",
            f"event time {self.event_time[:10]}",
        )
        scores = Table(title="latest score changes", expand=True)
        for col in ("customer", "kind", "old", "new", "band", "source", "top reason"):
            scores.add_column(col)
        for s in reversed(self.scores):
            reason = s["reasons"][0]["feature"] if s.get("reasons") else ""
            old = "-" if s["old_value"] is None else f"{s['old_value']:.1f}"
            colour = {"hot": "red", "warm": "yellow"}.get(s["band"], "blue")
            scores.add_row(s["customer_id"], s["kind"], old, f"{s['value']:.1f}",
                           f"[{colour}]{s['band']}[/]", f"{s['source']} v{s['model_version']}", reason)
        alerts = Table(title="latest alerts", expand=True)
        for col in ("customer", "kind", "reason", "value", "band"):
            alerts.add_column(col)
        for a in reversed(self.alerts):
            alerts.add_row(a["customer_id"], a["kind"], a["reason"], f"{a['value']:.1f}", a["band"])
        return Group(head, scores, alerts)

    def add(self, topic_kind: str, value: bytes) -> None:
        self.counts[topic_kind] += 1
        if topic_kind in ("scores", "alerts"):
            rec = orjson.loads(value)
            (self.scores if topic_kind == "scores" else self.alerts).append(rec)
            self.event_time = max(self.event_time, rec.get("ts", ""))


def _leftover(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            pass
        alive.append(pid)
    return alive


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from kafka import KafkaConsumer, TopicPartition
    from rich.console import Console
    from rich.live import Live

    from features.events import ms_to_iso
    from scoring.config import load_scoring_config
    from scoring.simulator import SimulationConfig, write_jsonl
    from streams.app import ensure_topics
    from streams.embedded import EmbeddedKafka, EmbeddedRedis, free_port

    history = _input_file(args.file) if args.file else None

    console = Console(stderr=False)
    workdir = Path(tempfile.mkdtemp(prefix="leadpulse-demo-"))
    pids: list[int] = []
    view = DemoView()
    stop = threading.Event()
    worker: WorkerProcess | None = None
    consumer: Any = None
    producer: Any = None
    sender: threading.Thread | None = None
    history_end = ""  # of --file: the run says when the worker did not get there
    console.print("[bold]leadpulse demo[/]: starting an embedded Kafka-protocol broker and Redis ...")
    with EmbeddedKafka() as kafka, EmbeddedRedis() as redis_server:
        pids += [kafka.pid, redis_server.pid]
        try:
            values = {
                "kafka_bootstrap": kafka.bootstrap, "redis_url": redis_server.url, "partitions": 3,
                "app_id": "leadpulse-demo", "web_port": free_port(), "broker_session_timeout_s": 10,
                "broker_rebalance_timeout_s": 3, "snapshot_every_labels": 100, "snapshot_every_s": 5,
                "model_refresh_s": 2,
            }
            settings = load_settings(**values)
            ensure_topics(settings)
            if history is not None:
                events_path = history
                span = history_span(events_path, args.timezone)
                if span is None:
                    raise ValueError(f"{events_path.name}: no line with a readable event time (times "
                                     "without a UTC offset: give --timezone)")
                days = max((span[1] - span[0]) / 86_400_000, 1 / 24)
                history_end = ms_to_iso(span[1])
                what = f"{events_path.name}: {span[2]:,} lines from {ms_to_iso(span[0])[:10]} to {history_end[:10]}"
            else:
                events_path = workdir / "events.jsonl"
                summary = write_jsonl(
                    SimulationConfig(customers=args.customers, days=args.days, seed=args.seed, dirty=0.01),
                    events_path,
                )
                days = args.days
                what = f"simulated {summary.lines:,} lines ({args.customers} customers, {args.days} days)"
            worker = WorkerProcess(values, log_path=workdir / "worker.log").start()
            pids.append(worker.pid)
            console.print(f"{what}; starting a worker (web API on http://127.0.0.1:{worker.port}) ...")
            worker.wait_ready(timeout=120)
            # Compress the history into about two thirds of the run; the rest drains.
            speed = days * 86_400 / max(1.0, args.seconds * 0.66)
            producer = make_producer(settings)
            lateness_ms = load_scoring_config(settings.scoring_config).lateness_ms

            def send() -> None:
                # A history of one's own may be in any order; the simulator's is in time order
                # but for its dirty lines, which the worker is there to show handled (as late).
                with (time_ordered_lines(events_path, lateness_ms, args.timezone) if history is not None
                      else open(events_path, "rb")) as handle:  # noqa: SIM115 - closed by the with
                    counting = _Counting(handle, view)
                    replay_lines(counting, producer, settings.topics, speed=speed, stop=stop)

            sender = threading.Thread(target=send, name="demo-replay", daemon=True)
            consumer = KafkaConsumer(**settings.kafka_client_kwargs(), enable_auto_commit=False)
            t = settings.topics
            names = {t.scores: "scores", t.alerts: "alerts", t.triggers: "triggers", t.dlq: "dlq"}
            consumer.assign([TopicPartition(name, p) for name in names for p in range(settings.partitions)])
            consumer.seek_to_beginning()
            deadline = time.monotonic() + args.seconds
            view.status = "running"
            sender.start()
            with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
                while time.monotonic() < deadline:
                    for tp, records in consumer.poll(timeout_ms=250).items():
                        for rec in records:
                            view.add(names[tp.topic], rec.value)
                    view.status = f"running, {max(0, int(deadline - time.monotonic()))}s left"
                    if not worker.alive():
                        view.status = "worker died"
                        break
                    live.update(view.render())
                view.status = "stopping"
                live.update(view.render())
        finally:
            stop.set()
            if sender is not None:
                sender.join(10)
            for client in (producer, consumer):
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
            if worker is not None:
                worker.stop(timeout=20)
                if worker.proc is not None and worker.proc.returncode not in (0, None):
                    console.print(f"worker log tail:\n{worker.log_tail(20)}")
    with contextlib.suppress(OSError):
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    left = _leftover(pids)
    if not console.is_terminal:
        console.print()  # the live table's last frame ends without a newline in a file or pipe
    console.print(
        f"sent {view.sent:,} events; {view.counts['scores']:,} score changes, {view.counts['alerts']:,} alerts, "
        f"{view.counts['triggers']:,} triggers, {view.counts['dlq']:,} dead letters."
    )
    if history_end and view.event_time and view.event_time[:10] < history_end[:10]:
        console.print(f"the worker had scored up to {view.event_time[:10]} of a history that ends on "
                      f"{history_end[:10]}: more --seconds give it time for the rest")
    if left:
        console.print(f"[red]processes still running: {left}[/]")
        return 1
    console.print("stopped cleanly: broker, Redis and worker are gone.")
    return 0


def _input_file(name: str) -> Path:
    """The events file a command was given, refused before anything starts if it is not one."""
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"not a file: {path}" if path.exists() else f"no such file: {path}")
    return path


def history_span(path: Path, zone: tzinfo | None = None) -> tuple[int, int, int] | None:
    """``(first, last, lines)``: the event-time span of a JSON Lines file's events (``None``: none).

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "h.jsonl"
    >>> _ = f.write_text('{"type":"web","ts":"2024-01-03T00:00:00Z"}\\n{oops\\n'
    ...                  '{"type":"purchase","ts":"2024-01-01T00:00:00Z"}\\n')
    >>> history_span(f)
    (1704067200000, 1704240000000, 3)
    """
    from features.events import event_time_ms, with_zone

    first = last = None
    lines = 0
    with open_input(path) as handle:
        for line in handle:
            lines += 1
            ts = event_time_ms(line if zone is None else with_zone(line, zone))
            if ts is None:
                continue
            first = ts if first is None else min(first, ts)
            last = ts if last is None else max(last, ts)
    return None if first is None or last is None else (first, last, lines)


class _Counting:
    """Iterates lines and counts them into the demo view (the sender thread)."""

    def __init__(self, handle: Iterable[bytes], view: DemoView) -> None:
        self.handle = handle
        self.view = view

    def __iter__(self) -> Iterator[bytes]:
        for line in self.handle:
            self.view.sent += 1
            yield line


# --------------------------------------------------------------------------- parser


def _speed(text: str) -> float:
    """``--speed``: 0 or a positive number (a negative one was taken as full speed, silently).

    >>> _speed("3600"), _speed("0")
    (3600.0, 0.0)
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 (as fast as possible) or positive, not {text}")
    return value


def _add_parsers(sub: Any) -> None:
    p = sub.add_parser("worker", help="run a live worker (Kafka + Redis from LEADPULSE_* settings)")
    p.add_argument("--bare", action="store_true", help="consume-only baseline (benchmarks)")
    p.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])

    p = sub.add_parser("replay", help="publish a JSON Lines file to the input topics")
    p.add_argument("file", help="JSON Lines events, in any order (sorted by ts first when needed); gzip is fine")
    p.add_argument("--speed", type=_speed, default=0.0,
                   help="event seconds per wall second (0 = as fast as possible)")
    p.add_argument("--unroutable", default="dlq",
                   help="where lines without a known type go: 'dlq' (with the reason) or a topic name")
    p.add_argument("--timezone", type=zone_arg, metavar="ZONE",
                   help="publish event times without a UTC offset (and bare dates) as read in this zone")

    p = sub.add_parser("demo", help="embedded broker + Redis + worker + simulator, live table")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the demo runs (default %(default)g)")
    p.add_argument("--file", help="replay this JSON Lines history instead of the simulator's (any order, "
                   "gzip is fine; leadpulse import-transactions writes one), compressed into the run")
    p.add_argument("--timezone", type=zone_arg, metavar="ZONE",
                   help="with --file: read event times without a UTC offset (and bare dates) in this zone")
    p.add_argument("--customers", type=int, default=300, help="customers simulated (default %(default)s)")
    p.add_argument("--days", type=int, default=120,
                   help="simulated history compressed into the run (default %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="the simulator's seed (default %(default)s)")


EXTRA_PARSERS.append(_add_parsers)

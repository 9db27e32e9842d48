"""End-to-end benchmark of one live worker against the same Faust app that only consumes.

On the embedded services (tansu broker, redis-server, loopback), for each run
and each mode (``bare``: an agent that consumes and acks; ``pipeline``: the
real worker: decode, Redis features, scoring, outputs acknowledged by the
broker), alternating the order between runs:

1. **Throughput.** A backlog of ``--events`` simulated events is produced to
   fresh input topics, then the worker starts and drains it. Rate = events /
   (wall time from the first to the last processed batch, as the worker
   reports it on ``GET /latency``).
2. **Latency.** With the worker caught up, ``--latency-events`` more events are
   produced at a steady ``--rate`` (below the pipeline's capacity) as a live
   stream: event time continues from the end of the backlog at the pace of
   the clock; the Kafka timestamp is the send time. Event-to-score latency (pipeline: for events
   that changed a score, until the broker acked the score; bare: until the
   event was consumed) p50/p99 from the worker's exact samples.

Medians over ``--runs`` runs are printed side by side with the ratio
(target: pipeline >= 0.5 x bare), and written as JSON with ``--json``. Each
mode runs with its fastest fetch size per input partition: the worker with
its default ``consumer_max_fetch_bytes`` (256 KB), the bare consumer with
Faust's 1 MB (``--fetch-bytes`` runs both with other sizes beside them), and
both with the settings' fetch wait (``--fetch-wait-ms 1500`` runs both with
Faust's own beside them). ``--learner-thread`` also runs the pipeline with the
learner in a thread of the worker's process instead of a child process.

On Linux each run also says where the CPU went while the backlog drained (from
the first to the last processed batch): CPU microseconds per event of the
worker's own process, its child processes (the scoring processes), Redis and
the broker, and how many cores they used together (``/proc``, sampled every
0.2 s; elsewhere these figures are absent).

    .venv/bin/python scripts/bench_pipeline.py --events 30000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.events import parse_ts_ms  # noqa: E402
from scoring.simulator import SimulationConfig, simulate  # noqa: E402
from streams.app import ensure_topics  # noqa: E402
from streams.embedded import EmbeddedKafka, EmbeddedRedis, free_port  # noqa: E402
from streams.live_cli import WorkerProcess, load_settings, make_producer  # noqa: E402
from streams.settings import Topics  # noqa: E402

PARTITIONS = 6
BARE_FETCH_BYTES = 1024**2  # Faust's own default consumer_max_fetch_size
FIGURES = ("events_per_s", "p50_ms", "p99_ms", "held_s", "steady_events_per_s")


def events(n: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    """``(type, key, line)`` for the first ``n`` simulated events (enough customers and days)."""
    out: list[tuple[str, bytes, bytes]] = []
    customers = max(200, n // 15)
    for ev in simulate(SimulationConfig(customers=customers, days=120, seed=seed)):
        out.append((ev["type"], ev["customer_id"].encode(), orjson.dumps(ev)))
        if len(out) >= n:
            break
    return out


def produce(
    producer: Any, topics: Topics, batch: list[tuple[str, bytes, bytes]], rate: float = 0.0,
    live_from_ms: int | None = None,
) -> None:
    """Send events; ``rate`` paces them.

    ``live_from_ms``: event time continues from there at the pace of the clock
    (a live stream after the backlog). Otherwise the latency phase would replay
    history at ~10^5 x real time and the event-time alignment would (rightly)
    hold events for ordering; stamping "now" instead would jump event time by
    years and mature every pending label at once.
    """
    start = time.monotonic()
    for i, (kind, key, line) in enumerate(batch):
        if rate > 0:
            wait = i / rate - (time.monotonic() - start)
            if wait > 0:
                time.sleep(wait)
        if live_from_ms is not None:
            ev = orjson.loads(line)
            ev["ts"] = live_from_ms + int((time.monotonic() - start) * 1000)
            line = orjson.dumps(ev)
        producer.send(topics.inputs[kind], key=key, value=line)  # Kafka timestamp = send time
    producer.flush()


def wait_for(worker: WorkerProcess, count: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        lat = worker.get_json("/latency")
        if lat["events"] >= count:
            return dict(lat)
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"worker stalled at {lat['events']}/{count}:\n{worker.log_tail()}")
        time.sleep(0.2)


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (None: gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


class CpuSampler:
    """CPU seconds of named process groups, sampled every ``every_s`` (wall clock stamps)."""

    def __init__(self, groups: dict[str, Any], every_s: float = 0.2) -> None:
        self.groups = groups  # name -> callable returning the group's pids now
        self.every_s = every_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            row = {}
            for name, pids in self.groups.items():
                row[name] = sum(c for pid in pids() if (c := _cpu_seconds(pid)) is not None)
            self.samples.append((time.time(), row))
            self._stop.wait(self.every_s)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def per_event(self, start: float, end: float, events: int) -> dict[str, float] | None:
        """CPU µs per event of each group between two wall times, and the cores used."""
        inside = [(t, row) for t, row in self.samples if start <= t <= end]
        if len(inside) < 2 or not events:
            return None
        (t0, a), (t1, b) = inside[0], inside[-1]
        out = {name: round(1e6 * (b[name] - a.get(name, 0.0)) / events, 1) for name in b}
        out["cores"] = round(sum(b[n] - a.get(n, 0.0) for n in b) / max(t1 - t0, 1e-9), 2)
        return out


def one_run(mode: str, run: int, kafka: EmbeddedKafka, redis_url: str, data: list[Any],
            n: int, lat_n: int, rate: float, servers: dict[str, int] | None = None) -> dict[str, Any]:
    # "pipeline@2000": the pipeline with another batch size (events per stream.take);
    # "pipeline#1": with another number of scoring processes; "bare%1048576" and
    # "pipeline%1048576": with another fetch size per input partition; "bare~1500" and
    # "pipeline~1500": with another fetch wait.
    label = mode
    mode, _, wait = mode.partition("~")
    mode, _, fetch = mode.partition("%")
    mode, _, procs = mode.partition("#")
    mode, _, batch = mode.partition("@")
    name = f"bench-{mode}-{run}-{time.monotonic_ns() % 10**8}"
    topics = Topics(**{k: f"{name}.{v}" for k, v in Topics().model_dump().items()})
    env = {
        "kafka_bootstrap": kafka.bootstrap, "redis_url": redis_url, "partitions": PARTITIONS,
        "app_id": name, "redis_prefix": name, "web_port": free_port(),
        "broker_session_timeout_s": 10, "broker_rebalance_timeout_s": 3,
        "scorer_process": mode != "thread",
        "learner_process": mode != "learner-thread",
        **({"batch_size": int(batch)} if batch else {}),
        **({"scorer_processes": int(procs)} if procs else {}),
        # The bare consumer fetches Faust's default 1 MB per partition, its fastest: the worker's
        # smaller default (which gets a backlog of every partition into the first fetches, for
        # the event-time alignment) cost the bare consumer 15-20% here.
        **({"consumer_max_fetch_bytes": int(fetch)} if fetch else
           {"consumer_max_fetch_bytes": BARE_FETCH_BYTES} if mode == "bare" else {}),
        **({"consumer_fetch_max_wait_ms": int(wait)} if wait else {}),
        **{f"topics__{k}": v for k, v in topics.model_dump().items()},
    }
    settings = load_settings(**{k: v for k, v in env.items() if not k.startswith("topics__")}, topics=topics)
    ensure_topics(settings)
    redis.Redis.from_url(redis_url).flushall()
    producer = make_producer(settings, acks=1)
    produce(producer, topics, data[:n])
    worker = WorkerProcess(env, bare=(mode == "bare")).start()
    assert worker.proc is not None
    main_pid = worker.proc.pid
    groups: dict[str, Any] = {"main": lambda: [main_pid], "children": lambda: _children(main_pid)}
    groups.update({name: (lambda pid=pid: [pid]) for name, pid in (servers or {}).items()})
    try:
        worker.wait_ready(timeout=120)
        with CpuSampler(groups) as cpu:
            done = wait_for(worker, n, timeout=600)
            time.sleep(0.25)  # one sample past the last batch
        throughput = n / max(1e-9, done["last_at"] - done["first_at"])
        cpu_us = cpu.per_event(done["first_at"], done["last_at"] + 0.25, n)
        # Before its first finished batch the pipeline may hold everything it received: the
        # event-time alignment waits until every input partition has delivered (see the README).
        held_s = (done["first_events_at"] or done["first_at"]) - done["first_at"]
        steady = done.get("steady_events_per_s")
        reset = urllib.request.Request(f"http://127.0.0.1:{worker.port}/latency", method="DELETE")
        urllib.request.urlopen(reset, timeout=10).close()
        history_end = max(parse_ts_ms(orjson.loads(line)["ts"]) for _, _, line in data[:n])
        produce(producer, topics, data[n:n + lat_n], rate=rate, live_from_ms=history_end)
        lat = wait_for(worker, lat_n, timeout=300)
    finally:
        producer.close()
        worker.stop()
    return {"mode": label, "run": run, "events_per_s": round(throughput, 1),
            "held_s": round(held_s, 2), "steady_events_per_s": steady,
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "latency_samples": lat["samples"],
            "cpu_us_per_event": cpu_us}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=30_000, help="backlog size for the throughput phase")
    p.add_argument("--latency-events", type=int, default=3_000)
    p.add_argument("--rate", type=float, default=500.0, help="events/s during the latency phase")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--batch-sizes", default="",
                   help="also run the pipeline with these batch sizes (comma-separated), side by side")
    p.add_argument("--thread", action="store_true",
                   help="also run the pipeline with the scoring core in a thread of the worker "
                   "(scorer_process off), side by side")
    p.add_argument("--learner-thread", action="store_true",
                   help="also run the pipeline with the learner in a thread of the worker "
                   "(learner_process off), side by side")
    p.add_argument("--scorer-processes", default="",
                   help="also run the pipeline with these numbers of scoring processes "
                   "(comma-separated; the default is the settings' scorer_processes), side by side")
    p.add_argument("--fetch-bytes", default="",
                   help="also run the bare consumer and the pipeline with these fetch sizes per input "
                   "partition (comma-separated bytes; the defaults are the settings' "
                   "consumer_max_fetch_bytes for the pipeline, 1 MB for the bare consumer), side by side")
    p.add_argument("--fetch-wait-ms", default="",
                   help="also run the bare consumer and the pipeline with these fetch waits (comma-separated "
                   "ms; the default is the settings' consumer_fetch_max_wait_ms, Faust's own is 1500), "
                   "side by side")
    args = p.parse_args(argv)
    modes = ["bare", "pipeline"] + (["thread"] if args.thread else []) + (
        ["learner-thread"] if args.learner_thread else [])
    modes += [f"pipeline@{int(b)}" for b in args.batch_sizes.split(",") if b.strip()]
    modes += [f"pipeline#{int(n)}" for n in args.scorer_processes.split(",") if n.strip()]
    modes += [f"{m}%{int(b)}" for b in args.fetch_bytes.split(",") if b.strip() for m in ("bare", "pipeline")]
    modes += [f"{m}~{int(w)}" for w in args.fetch_wait_ms.split(",") if w.strip() for m in ("bare", "pipeline")]

    data = events(args.events + args.latency_events, seed=1)
    if len(data) < args.events + args.latency_events:
        raise SystemExit("simulator produced too few events; lower --events")
    results: list[dict[str, Any]] = []
    with EmbeddedKafka() as kafka, EmbeddedRedis() as redis_server:
        for run in range(args.runs):
            order = modes[run % len(modes):] + modes[:run % len(modes)]  # rotate: no mode always first
            for mode in order:
                servers = {"redis": redis_server.pid, "broker": kafka.pid}
                r = one_run(mode, run, kafka, redis_server.url, data, args.events, args.latency_events,
                            args.rate, servers)
                results.append(r)
                print(json.dumps(r), flush=True)

    def med(mode: str, key: str) -> float:
        values = [r[key] for r in results if r["mode"] == mode and r[key] is not None]
        return float(statistics.median(values)) if values else float("nan")

    summary = {
        "events": args.events, "runs": args.runs, "latency_rate": args.rate,
        **{mode: {k: med(mode, k) for k in FIGURES} for mode in modes},
    }
    summary["ratio"] = round(summary["pipeline"]["events_per_s"] / summary["bare"]["events_per_s"], 3)
    print(f"\n{'':<12}{'events/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'held s':>9}{'after':>9}   (medians of "
          f"{args.runs} runs, {args.events:,} events; latency at {args.rate:g} events/s; held: until the "
          "first finished batch; after: events/s from then on)")
    for mode in modes:
        m = summary[mode]
        print(f"{mode:<12}{m['events_per_s']:>12,.0f}{m['p50_ms']:>10.1f}{m['p99_ms']:>10.1f}"
              f"{m['held_s']:>9.2f}{m['steady_events_per_s']:>9,.0f}")
    print(f"ratio pipeline/bare: {summary['ratio']:.2f} (target >= 0.5)")
    # Each run's own ratio: its two modes ran minutes apart, not a whole session apart, so a
    # machine whose speed drifts moves this less than the ratio of the medians.
    by_run = [
        p["events_per_s"] / b["events_per_s"]
        for b in results if b["mode"] == "bare"
        for p in results if p["mode"] == "pipeline" and p["run"] == b["run"]
    ]
    if by_run:
        summary["ratio_per_run"] = [round(r, 3) for r in by_run]
        print(f"ratio pipeline/bare per run: median {statistics.median(by_run):.2f}, runs "
              + ", ".join(f"{r:.2f}" for r in by_run))
    for mode in modes:
        rows = [r["cpu_us_per_event"] for r in results if r["mode"] == mode and r.get("cpu_us_per_event")]
        if rows:
            parts = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
            summary[mode]["cpu_us_per_event"] = parts
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in parts.items() if k != "cores")
            print(f"cpu while draining, {mode}: {shown} us/event; {parts['cores']:.2f} cores (medians)")
    for mode in modes[2:]:
        if mode.startswith("pipeline"):
            summary[f"ratio_{mode}"] = round(summary[mode]["events_per_s"] / summary["bare"]["events_per_s"], 3)
            print(f"ratio {mode}/bare: {summary[f'ratio_{mode}']:.2f}")
            same = "bare" + mode[len("pipeline"):]
            if same in summary:  # the bare consumer with the same fetch size
                key = f"ratio_{mode}_{same}"
                summary[key] = round(summary[mode]["events_per_s"] / summary[same]["events_per_s"], 3)
                print(f"ratio {mode}/{same}: {summary[key]:.2f}")
    if args.learner_thread:
        summary["ratio_learner_thread"] = round(
            summary["learner-thread"]["events_per_s"] / summary["bare"]["events_per_s"], 3)
        print(f"ratio learner-thread/bare: {summary['ratio_learner_thread']:.2f} (the learner in a thread "
              "of the worker)")
    if args.thread:
        summary["ratio_thread"] = round(summary["thread"]["events_per_s"] / summary["bare"]["events_per_s"], 3)
        print(f"ratio thread/bare: {summary['ratio_thread']:.2f} (the core in a thread of the worker)")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

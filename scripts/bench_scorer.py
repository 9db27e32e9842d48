"""The live worker's scoring process alone: CPU per event on a real redis-server, no Kafka.

``bench_pipeline.py`` measures the whole worker; while it drains a backlog, the
scoring process is the busiest of its processes. This script runs the same
:class:`streams.scorer.Scorer` in this process on the same simulated events
(``bench_pipeline.events``), in batches of ``--batch-size`` over six input
partitions, against an embedded redis-server, and reports per event: this
process's CPU (user + system), Redis's CPU and the wall time. Each run starts
from an empty Redis; medians of ``--runs``.

Learning is not in it (the worker's learner is a process of its own), so models
stay cold-start: a model's prediction costs about what a rule does.

``--delay-ms D`` puts Redis a network hop away: the scorer talks to it through a
proxy that holds every chunk D ms in each direction (a round trip costs 2D more),
as a managed Redis in another zone would.

    .venv/bin/python scripts/bench_scorer.py --events 40000 --runs 3
    .venv/bin/python scripts/bench_scorer.py --events 20000 --delay-ms 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_pipeline import PARTITIONS, events  # noqa: E402
from streams.embedded import EmbeddedRedis, free_port  # noqa: E402
from streams.live_cli import load_settings  # noqa: E402
from streams.pipeline import Incoming  # noqa: E402
from streams.scorer import Scorer  # noqa: E402


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _delay_proxy(listen_port: int, target_port: int, delay_ms: float) -> None:
    """Forward TCP on loopback, holding every chunk ``delay_ms`` in each direction (order kept)."""
    import asyncio

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        while data := await reader.read(1 << 20):
            queue.put_nowait((loop.time() + delay_ms / 1000, data))
        queue.put_nowait((0.0, b""))
        await sender

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(forward(reader, up_writer), forward(up_reader, writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class _Via:
    """The scorer's view of Redis: through the proxy (``url``), while CPU is read from the server."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid


def messages(n: int, seed: int = 1) -> list[Incoming]:
    """The simulated events as consumed records: keyed by customer, partitioned by key."""
    out = []
    offsets = [0] * PARTITIONS
    for kind, key, line in events(n, seed):
        partition = zlib.crc32(key) % PARTITIONS
        out.append(Incoming(f"leadpulse.{kind}", partition, offsets[partition], key, line))
        offsets[partition] += 1
    return out


def one_run(server: EmbeddedRedis | _Via, data: list[Incoming], batch_size: int, run: int) -> dict[str, Any]:
    import redis

    redis.Redis.from_url(server.url).flushall()
    scorer = Scorer(load_settings(redis_url=server.url, redis_prefix=f"bench{run}"))
    scorer.score(data[:1])  # connections, scripts and imports before the clock starts
    batches = [data[i:i + batch_size] for i in range(1, len(data), batch_size)]
    cpu0, redis0, wall0 = time.process_time(), _cpu_s(server.pid), time.perf_counter()
    published = 0
    for batch in batches:
        out, _ = scorer.score(batch)
        published += len(out.records)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    redis_cpu = _cpu_s(server.pid) - redis0
    n = len(data) - 1
    return {
        "run": run, "events": n, "events_per_s": round(n / wall, 1),
        "cpu_us_per_event": round(1e6 * cpu / n, 1), "redis_us_per_event": round(1e6 * redis_cpu / n, 1),
        "records_out": published,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=40_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="reach Redis through a proxy that holds each chunk this long in each direction")
    p.add_argument("--serve-proxy", nargs=2, type=int, metavar=("PORT", "TARGET"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_proxy:  # the proxy's own process (see --delay-ms)
        _delay_proxy(*args.serve_proxy, args.delay_ms)
        return 0
    data = messages(args.events)
    results = []
    with EmbeddedRedis() as server:
        target: EmbeddedRedis | _Via = server
        proxy = None
        if args.delay_ms > 0:
            # A process of its own: in this one, its CPU would count as the scorer's.
            port = free_port()
            proxy = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-proxy",
                                      str(port), str(server.port), "--delay-ms", str(args.delay_ms)])
            wait_for_port(port)
            target = _Via(f"redis://127.0.0.1:{port}/0", server.pid)
        try:
            for run in range(args.runs):
                r = one_run(target, data, args.batch_size, run)
                results.append(r)
                print(json.dumps(r), flush=True)
        finally:
            if proxy is not None:
                proxy.kill()
                proxy.wait()
    summary = {k: statistics.median(r[k] for r in results)
               for k in ("events_per_s", "cpu_us_per_event", "redis_us_per_event")}
    hop = f" (Redis {2 * args.delay_ms:g} ms a round trip away)" if args.delay_ms else ""
    print(f"medians of {args.runs}{hop}: {summary['events_per_s']:,.0f} events/s, scorer CPU "
          f"{summary['cpu_us_per_event']:.1f} us/event, Redis CPU {summary['redis_us_per_event']:.1f} us/event")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

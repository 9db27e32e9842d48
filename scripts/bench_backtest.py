"""Backtest throughput and memory: in-process store vs RedisFeatureStore, side by side.

Each measurement runs in a fresh subprocess (so peak RSS is its own), on the
same simulated file, alternating the two stores run by run so machine noise
hits both alike. Reports medians of ``--runs``.

Memory: with the customer count fixed, a longer history means more events; a
core whose per-customer state is bounded keeps peak RSS nearly flat. The
``--memory`` mode compares two histories of the same customers (about 100k and
about 1M events by default).

    python scripts/bench_backtest.py --customers 2000 --days 365 --runs 3
    python scripts/bench_backtest.py --memory --customers 2000
    python scripts/bench_backtest.py --no-redis --against 2fbf872   # this tree vs an older commit
    python scripts/bench_backtest.py --no-redis --workers 0         # without the sharded replay
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, resource, sys, time
if os.environ.get("BENCH_TREE"):
    sys.path.insert(0, os.environ["BENCH_TREE"])  # an older checkout, for --against
from scoring.backtest import BacktestConfig, run_backtest
from scoring.core import ScoringCore
path, store, redis_url = sys.argv[1], sys.argv[2], sys.argv[3]
core = None
if store == "redis":
    import redis
    from features.engine import FeatureEngine
    from features.redis_store import RedisFeatureStore
    from scoring.state import InMemoryStateStore
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    core = ScoringCore(FeatureEngine(), RedisFeatureStore(client), InMemoryStateStore())
try:  # what `leadpulse backtest` does first (older trees, for --against, lack it)
    from streams.runtime import tune_gc
    tune_gc()
except ImportError:
    pass
config = BacktestConfig(batch_baseline=False)
if store.startswith("sharded"):  # sharded:N, as `leadpulse backtest --workers N` runs it
    from scoring.parallel import ShardedCore
    core = ShardedCore(ScoringCore.in_memory(), int(store.split(":")[1]))
with open(path, "rb") as lines:
    report = run_backtest(lines, config, core)
print(json.dumps({"events": report["events"], "seconds": report["seconds"],
                  "eps": report["events_per_second"], "scored": report["scored"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run_child(path: Path, store: str, redis_url: str, tree: str = "") -> dict:
    env = {**os.environ, "BENCH_TREE": tree}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), store, redis_url],
        check=True, capture_output=True, text=True, env=env, cwd=tree or None,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def simulate(customers: int, days: int, seed: int, path: Path) -> int:
    from scoring.simulator import SimulationConfig, write_jsonl

    return write_jsonl(SimulationConfig(customers=customers, days=days, seed=seed), path).events


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--against", metavar="REV",
                    help="also run the in-process store (and Redis, unless --no-redis) at git revision "
                    "REV, alternating (ratios vs REV)")
    ap.add_argument("--workers", type=int, default=2, metavar="N",
                    help="also run the in-process store sharded over N processes (backtest --workers N; "
                    "default 2, what `leadpulse backtest` does with a large file on two cores; 0: not)")
    ap.add_argument("--memory", action="store_true", help="fixed customers, short vs long history")
    ap.add_argument("--long-days", type=int, default=0, help="long history length (default: ~10x events)")
    args = ap.parse_args()

    from streams.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory() as tmp:
        if args.memory:
            return memory_mode(args, Path(tmp))
        path = Path(tmp) / "events.jsonl"
        events = simulate(args.customers, args.days, args.seed, path)
        print(f"{events:,} events, {args.customers:,} customers, {args.days} days")
        stores = ["memory"] if args.no_redis else ["memory", "redis"]
        if args.workers:
            stores.insert(1, f"sharded:{args.workers}")
        tree = ""
        if args.against:
            tree = str(Path(tmp) / "against")
            subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, args.against], check=True)
            stores += [f"{s}@{args.against}" for s in list(stores)]
        results: dict[str, list[dict]] = {s: [] for s in stores}
        server = None if args.no_redis else EmbeddedRedis().start()
        try:
            for i in range(args.runs):
                for store in stores if i % 2 == 0 else list(reversed(stores)):
                    old = "@" in store
                    r = run_child(path, store.split("@")[0], server.url if server else "", tree if old else "")
                    results[store].append(r)
                    workers = f" (largest worker {r['worker_peak_rss_mb']:.0f} MB)" if "sharded" in store else ""
                    print(f"  run {i + 1} {store:<9} {r['eps']:>9,.0f} ev/s  peak RSS {r['peak_rss_mb']:.0f} MB{workers}")
        finally:
            if server:
                server.stop()
            if tree:
                subprocess.run(["git", "worktree", "remove", "--force", tree], check=False)
        med = {s: statistics.median(r["eps"] for r in rs) for s, rs in results.items()}
        print("\nmedian events/s (backtest core, no batch baseline):")
        for s in stores:
            print(f"  {s:<9} {med[s]:>9,.0f}   runs: {[round(r['eps']) for r in results[s]]}")
        if "redis" in med:
            print(f"  ratio memory/redis: {med['memory'] / med['redis']:.2f}x")
        if args.workers:
            print(f"  ratio sharded:{args.workers}/memory: {med[f'sharded:{args.workers}'] / med['memory']:.2f}x")
        for s in stores if args.against else ():
            if "@" not in s:
                print(f"  ratio {s} now / {s}@{args.against}: {med[s] / med[f'{s}@{args.against}']:.2f}x")
    return 0


def memory_mode(args: argparse.Namespace, tmp: Path) -> int:
    short, long_ = tmp / "short.jsonl", tmp / "long.jsonl"
    n_short = simulate(args.customers, args.days, args.seed, short)
    long_days = args.long_days or args.days * 10
    n_long = simulate(args.customers, long_days, args.seed, long_)
    rows = []
    for name, path, n in (("short", short, n_short), ("long", long_, n_long)):
        peaks = [run_child(path, "memory", "")["peak_rss_mb"] for _ in range(args.runs)]
        rows.append((name, n, statistics.median(peaks), peaks))
    print(f"{args.customers:,} customers, in-process store, peak RSS (median of {args.runs}):")
    for name, n, med, peaks in rows:
        print(f"  {name:<6} {n:>10,} events  {med:>7.0f} MB  ({med * 1024 / args.customers:.1f} KB/customer)  runs {[round(p) for p in peaks]}")
    print(f"  events x{rows[1][1] / rows[0][1]:.1f} -> peak RSS x{rows[1][2] / rows[0][2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

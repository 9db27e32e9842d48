#!/usr/bin/env python
"""One customer's burst: N events within the lateness, through the in-process store.

A bot, a reseller or a replayed import can give one customer tens of thousands of
events inside an hour. The store remembers their ids for de-duplication and forgets the
expired ones; this measures microseconds per event as N grows (flat = linear work).
``--tree`` runs the same in another checkout, side by side (alternating, medians).

    .venv/bin/python scripts/bench_store_burst.py
    .venv/bin/python scripts/bench_store_burst.py --tree /tmp/old-checkout --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
from features.store import InMemoryFeatureStore, Update
n = int(sys.argv[1])
store = InMemoryFeatureStore(lateness_ms=3_600_000)
ups = [Update("whale", f"e{i}", 1_700_000_000_000 + i * 30, (("a", "n", 1.0),)) for i in range(n)]
start = time.perf_counter()
for i in range(0, n, 500):
    store.apply(ups[i:i + 500])
print(json.dumps({"us_per_event": (time.perf_counter() - start) / n * 1e6}))
"""


def run(tree: str, n: int) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], check=True, capture_output=True, text=True,
                         env=env, cwd=tree)
    return float(json.loads(out.stdout)["us_per_event"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="5000,20000,80000", help="events in the burst, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tree", help="another checkout to measure beside this one")
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    trees = [("this tree", here)] + ([("--tree", args.tree)] if args.tree else [])
    print(f"{'events':>8}  " + "  ".join(f"{name:>22}" for name, _ in trees))
    for n in (int(s) for s in args.sizes.split(",")):
        runs: dict[str, list[float]] = {name: [] for name, _ in trees}
        for _ in range(args.runs):
            for name, tree in trees:  # alternating, so the machine's noise hits both
                runs[name].append(run(tree, n))
        cells = [f"{statistics.median(runs[name]):8.1f} us/ev (x{len(runs[name])})" for name, _ in trees]
        print(f"{n:>8,}  " + "  ".join(f"{c:>22}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Benchmark RedisFeatureStore: batched round trips vs one round trip per event.

Generates synthetic events (default 50,000 for ~5,000 customers, mixed web /
purchase / campaign, in time order with some jitter), turns them into updates
with the default feature catalogue *before* timing, then measures events/s
applied to:

- ``batched``: ``RedisFeatureStore.apply`` on batches of ``--batch`` updates
  (one pipelined round trip per batch, one EVALSHA per customer in it);
- ``per-event``: ``apply([update])`` for every event (one round trip each);
- ``in-memory``: ``InMemoryFeatureStore.apply`` on the same batches (reference).

The database is flushed before each measurement, so each one starts from empty
state and the work done is identical. Runs repeat ``--runs`` times; the table
shows the median and every run.

Usage::

    .venv/bin/python scripts/bench_feature_store.py            # starts its own redis-server
    .venv/bin/python scripts/bench_feature_store.py --redis-url redis://127.0.0.1:6379/0 --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import redis

from features.engine import FeatureEngine
from features.events import AnyEvent, EventError, decode
from features.redis_store import RedisFeatureStore
from features.store import InMemoryFeatureStore, Update

T0 = 1_704_067_200_000
DAY_MS = 86_400_000
WEB = ["page_view"] * 6 + ["product_view"] * 3 + ["add_to_cart", "search", "login"]
CAMPAIGN = ["sent"] * 4 + ["delivered"] * 3 + ["opened"] * 2 + ["clicked", "converted"]


def make_events(n: int, customers: int, days: int, seed: int) -> list[AnyEvent]:
    rnd = random.Random(seed)
    bodies: list[dict[str, Any]] = []
    for i in range(n):
        cid = f"cust-{rnd.randrange(customers):06d}"
        ts = T0 + rnd.randrange(days * DAY_MS)
        body: dict[str, Any] = {"event_id": f"ev-{i:08d}", "customer_id": cid, "ts": ts}
        kind = rnd.random()
        if kind < 0.7:
            body |= {"type": "web", "action": rnd.choice(WEB),
                     "session_id": f"{cid}-s{(ts - T0) // 1_800_000}",
                     "category": rnd.choice(["shoes", "hats", "bags", "coats", "socks"])}
        elif kind < 0.8:
            body |= {"type": "purchase", "order_id": f"o{i}", "currency": "EUR",
                     "amount": round(rnd.lognormvariate(3.5, 0.8), 2)}
        else:
            body |= {"type": "campaign", "campaign_id": f"k{rnd.randrange(20)}",
                     "channel": "email", "action": rnd.choice(CAMPAIGN)}
        bodies.append(body)
    # Arrival order: event time plus up to 10 minutes of jitter (well inside lateness).
    bodies.sort(key=lambda b: b["ts"] + rnd.randrange(600_000))
    events = []
    for body in bodies:
        ev = decode(json.dumps(body))
        if isinstance(ev, EventError):
            raise SystemExit(f"generator bug: {ev.reason}")
        events.append(ev)
    return events


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_batched(store: Any, batches: Sequence[Sequence[Update]]) -> None:
    for batch in batches:
        store.apply(batch)


def run_per_event(store: RedisFeatureStore, updates: Sequence[Update]) -> None:
    for up in updates:
        store.apply([up])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this server (it is FLUSHED); default: start one")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--days", type=int, default=30, help="event-time span")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args(argv)

    engine = FeatureEngine()
    events = make_events(args.events, args.customers, args.days, args.seed)
    updates = [Update.of(ev, engine.ops_for(ev)) for ev in events]
    batches = [updates[i:i + args.batch] for i in range(0, len(updates), args.batch)]
    n = len(updates)

    with ExitStack() as stack:
        if args.redis_url:
            url = args.redis_url
        else:
            from streams.embedded import EmbeddedRedis

            url = stack.enter_context(EmbeddedRedis()).url
        client = redis.Redis.from_url(url)
        stack.callback(client.close)
        version = client.info("server").get("redis_version", "?")
        store = RedisFeatureStore(client)

        rates: dict[str, list[float]] = {"batched": [], "per-event": [], "in-memory": []}
        for run in range(args.runs):
            client.flushall()
            rates["batched"].append(n / timed(lambda: run_batched(store, batches)))
            client.flushall()
            rates["per-event"].append(n / timed(lambda: run_per_event(store, updates)))
            mem = InMemoryFeatureStore()
            rates["in-memory"].append(n / timed(lambda m=mem: run_batched(m, batches)))  # type: ignore[misc]
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        client.flushall()

    medians = {k: statistics.median(v) for k, v in rates.items()}
    ratio = medians["batched"] / medians["per-event"]
    result = {
        "events": n,
        "customers": args.customers,
        "batch": args.batch,
        "runs": args.runs,
        "redis_version": version,
        "events_per_s": {k: {"median": round(medians[k]), "runs": [round(r) for r in v]}
                         for k, v in rates.items()},
        "ratio_batched_per_event": round(ratio, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"RedisFeatureStore apply, {n:,} events, ~{args.customers:,} customers, "
          f"redis {version}, {args.runs} runs")
    print(f"{'mode':<22}{'median ev/s':>14}   runs")
    labels = {"batched": f"batched ({args.batch}/trip)", "per-event": "per event (1/trip)",
              "in-memory": "in-memory (ref)"}
    for key, label in labels.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates[key])
        print(f"{label:<22}{medians[key]:>14,.0f}   {runs}")
    print(f"batched / per-event: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A purchases-only history where repeat purchases are rare: the shape of many real shops.

Many marketplaces and one-off retailers see 95-98% of customers buy once and never
again. Then a 7-day purchase outcome is rarer than 1%, and anything that needs a
fixed number of positives in a fixed window of labels (a trial, a calibration)
can wait forever. This script writes such a history as JSON Lines: ``--customers``
customers arriving uniformly over two years, 3% of them buying again (2 to 4
orders, about 60 days apart), with integer customer ids and epoch-second
timestamps, as exports often have. It is a check for that failure mode, not a
benchmark of accuracy: the only signal in it is who bought before and when.

    .venv/bin/python scripts/rare_repeat_history.py --out rare.jsonl
    .venv/bin/leadpulse backtest rare.jsonl --out rare-report/
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime
from pathlib import Path

import orjson

DAY_S = 86_400


def write_history(path: Path, customers: int = 50_000, seed: int = 3, repeat_share: float = 0.03) -> int:
    """Write the history; returns the number of purchase events.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "rare.jsonl"
    >>> write_history(out, customers=200) == len(out.read_bytes().splitlines())
    True
    """
    rnd = random.Random(seed)
    start = datetime(2017, 1, 1, tzinfo=UTC).timestamp()
    end = start + 730 * DAY_S
    orders = []
    for customer in range(customers):
        t = start + rnd.random() * 700 * DAY_S
        for _ in range(1 if rnd.random() >= repeat_share else rnd.randint(2, 4)):
            if t < end:
                orders.append((t, customer))
            t += rnd.expovariate(1 / (60 * DAY_S))
    orders.sort()
    with path.open("wb") as out:
        for i, (t, customer) in enumerate(orders):
            out.write(orjson.dumps({
                "event_id": f"o{i}", "customer_id": customer, "ts": int(t), "type": "purchase",
                "order_id": f"o{i}", "amount": round(rnd.lognormvariate(4, 0.8), 2), "currency": "BRL",
            }) + b"\n")
    return len(orders)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--customers", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    n = write_history(Path(args.out), args.customers, args.seed)
    print(f"{n:,} purchase events for {args.customers:,} customers -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

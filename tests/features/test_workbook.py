"""Excel workbooks (.xlsx) read as the table a CSV export of them is.

Workbooks are written here by openpyxl (what pandas' ``to_excel`` uses) and by
XlsxWriter, not by our own code, so the reader meets real writers' parts: shared
strings, styles with built-in and custom date formats, the 1904 date system.
"""

from __future__ import annotations

import csv
import json
import random
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlsxwriter

from features.workbook import is_workbook, sheet_rows, sheets, write_csv
from streams.cli import main

HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"]
RETAIL_ARGS = ["--customer", "CustomerID", "--time", "InvoiceDate", "--order", "InvoiceNo",
               "--quantity", "Quantity", "--price", "UnitPrice", "--product", "StockCode",
               "--default-currency", "GBP", "--extra", "Country", "--max-errors", "1000"]


def _retail(rows: int = 3_000, seed: int = 3) -> tuple[list[list[Any]], dict[int, str]]:
    """Online Retail's shape, typed as a workbook holds it: ({row index: reason} of the broken rows)."""
    rng = random.Random(seed)
    data: list[list[Any]] = []
    when = datetime(2010, 12, 1, 8, 26)
    invoice = 536365
    while len(data) < rows:
        cancel = rng.random() < 0.03
        customer: Any = rng.choice([rng.randint(12346, 18287), float(rng.randint(12346, 18287))])
        when += timedelta(minutes=rng.randint(0, 600), seconds=rng.choice([0, 0, 0, 30]))
        for _ in range(rng.randint(1, 5)):
            qty = rng.randint(1, 24) * (-1 if cancel else 1)
            desc = rng.choice(["WHITE HANGING HEART T-LIGHT HOLDER", 'GLASS STAR FROSTED, "BIG"',
                               "HAND WARMER\nUNION JACK", "Ünïcode mug ☕"])
            data.append([f"C{invoice}" if cancel else invoice, f"85{rng.randint(100, 999)}B", desc, qty, when,
                         rng.choice([2.55, 3.39, 0.85, 1234.5, 0, 12.75]), customer,
                         rng.choice(["United Kingdom", "France", None])])
        invoice += 1
    data = data[:rows]
    broken: dict[int, str] = {}
    for i in sorted(rng.sample(range(1, rows), 40)):
        if data[i][0] == data[i - 1][0]:
            continue  # a line item's blank cells are its order's first row's: not broken
        reason, column, value = rng.choice([
            ("bad time", 4, "next tuesday"), ("bad time", 4, "2011-13-45 10:00"), ("missing time", 4, None), ("bad price", 5, "abc"),
            ("bad quantity", 3, "six"), ("missing customer", 6, None), ("missing customer", 6, "#N/A"),
        ])
        data[i][column] = value
        broken[i] = reason
    return data, broken


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _csv_export(data: list[list[Any]], path: Path) -> Path:
    """The table as Excel's "Save as CSV" writes it (dates in ISO form)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows([_csv_cell(v) for v in row] for row in data)
    return path


def _import(path: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict, str]:
    code = main(["import-transactions", str(path), *RETAIL_ARGS, *extra, "--out", str(out)])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else {}, captured.err


def test_a_workbook_split_by_year_imports_as_its_csv_export_does(tmp_path: Path, capsys) -> None:
    data, broken = _retail()
    half = 1_700
    book = openpyxl.Workbook()  # not write-only: shared strings, as Excel writes them
    first = book.active
    first.title = "Year 2009-2010"
    second = book.create_sheet("Year 2010-2011")
    notes = book.create_sheet("Notes")  # another table: not read
    notes.append(["Column", "Meaning"])
    hidden = book.create_sheet("Scratch")
    hidden.append(HEADER)
    hidden.append(data[0])
    hidden.sheet_state = "hidden"
    for sheet, part in ((first, data[:half]), (second, data[half:])):
        sheet.append(HEADER)
        for row in part:
            sheet.append(row)
    for sheet in (first, second):  # shown as Excel shows them, in the user's date format
        for (cell,) in sheet.iter_rows(min_row=2, min_col=5, max_col=5):
            cell.number_format = "dd/mm/yyyy hh:mm"
    xlsx = tmp_path / "online_retail_II.xlsx"
    book.save(xlsx)
    exported = _csv_export(data, tmp_path / "online_retail_II.csv")

    code, from_book, err = _import(xlsx, tmp_path / "book.jsonl", capsys)
    assert code == 0, err
    code, from_csv, _ = _import(exported, tmp_path / "csv.jsonl", capsys)
    assert code == 0
    assert (tmp_path / "book.jsonl").read_bytes() == (tmp_path / "csv.jsonl").read_bytes()
    assert from_book["events_written"] == from_csv["events_written"] > 500
    assert from_book["skipped_by_reason"] == from_csv["skipped_by_reason"]
    assert sum(from_book["skipped_by_reason"].values()) == len(broken)
    assert from_book["sheets"] == {"Year 2009-2010": half, "Year 2010-2011": len(data) - half}
    assert from_book["sheets_not_read"] == ["Notes", "Scratch"] and from_book["delimiter"] == "Excel workbook"
    # Skipped rows are named by sheet and row, as Excel shows them, whatever cells span lines.
    shown = [line.removeprefix("skipped ").split(": ", 1) for line in err.splitlines() if line.startswith("skipped ")]
    expected = [[f"sheet {'Year 2009-2010' if i < half else 'Year 2010-2011'!r} row "
                 f"{i + 2 if i < half else i - half + 2}", reason] for i, reason in sorted(broken.items())]
    assert [[where, reason.split(":")[0].split(" (")[0]] for where, reason in shown] == expected
    assert "not read: 'Notes', 'Scratch'" in err

    # inspect reads the first rows alone and suggests the import above.
    assert main(["inspect", str(xlsx), "--rows", "500"]) == 0
    shown = capsys.readouterr()
    assert "(500 rows)" in shown.err and "500 rows read" in shown.out
    assert "--customer CustomerID --time InvoiceDate --order InvoiceNo --price UnitPrice --quantity Quantity" in shown.out

    # As UCI hands it out: a zip holding the workbook.
    download = tmp_path / "online+retail+ii.zip"
    with zipfile.ZipFile(download, "w") as z:
        z.write(xlsx, "online_retail_II.xlsx")
    code, zipped, _ = _import(download, tmp_path / "zipped.jsonl", capsys)
    assert code == 0 and zipped["sheets"] == from_book["sheets"]
    assert (tmp_path / "zipped.jsonl").read_bytes() == (tmp_path / "book.jsonl").read_bytes()
    assert main(["backtest", str(download), "--out", str(tmp_path / "r")]) == 2
    assert "import-transactions" in capsys.readouterr().err

    # One sheet on its own, and a sheet that is not there.
    code, alone, _ = _import(xlsx, tmp_path / "alone.jsonl", capsys, "--sheet", "Year 2010-2011")
    assert code == 0 and alone["sheets"] == {"Year 2010-2011": len(data) - half}
    assert 0 < alone["events_written"] < from_book["events_written"]
    code, _, err = _import(xlsx, tmp_path / "none.jsonl", capsys, "--sheet", "2012")
    assert code == 2 and "no sheet '2012'" in err and "Year 2009-2010, Year 2010-2011, Notes, Scratch" in err
    code, _, err = _import(exported, tmp_path / "none.jsonl", capsys, "--sheet", "2012")
    assert code == 2 and "--sheet reads an Excel workbook" in err


def test_a_report_with_title_rows_above_its_header(tmp_path: Path, capsys) -> None:
    """A report's sheets start with a title, a date and a blank row: the header is the row naming the columns."""
    data, broken = _retail(600, seed=9)
    book = openpyxl.Workbook()
    sheets_ = [book.active, book.create_sheet("Q2")]
    sheets_[0].title = "Q1"
    for sheet, part in zip(sheets_, (data[:300], data[300:]), strict=True):
        sheet.append(["Sales report"])
        sheet.append(["Generated", datetime(2011, 1, 5)])
        sheet.append([])
        sheet.append(HEADER)
        for row in part:
            sheet.append(row)
    xlsx = tmp_path / "report.xlsx"
    book.save(xlsx)
    exported = _csv_export(data, tmp_path / "report.csv")
    code, from_book, err = _import(xlsx, tmp_path / "book.jsonl", capsys)
    assert code == 0, err
    assert "header on row 4 / 4" in err
    assert from_book["header_rows"] == {"Q1": 4, "Q2": 4} and from_book["sheets"] == {"Q1": 300, "Q2": 300}
    assert _import(exported, tmp_path / "csv.jsonl", capsys)[0] == 0
    assert (tmp_path / "book.jsonl").read_bytes() == (tmp_path / "csv.jsonl").read_bytes()
    shown = [line.split(": ", 1)[0] for line in err.splitlines() if line.startswith("skipped ")]
    assert shown == [f"skipped sheet {'Q1' if i < 300 else 'Q2'!r} row {i % 300 + 5}" for i in sorted(broken)]
    # inspect, told no column names, finds the header below the title rows too.
    assert main(["inspect", str(xlsx)]) == 0
    assert "--customer CustomerID --time InvoiceDate --order InvoiceNo" in capsys.readouterr().out
    # A misspelt column: the refusal lists the header's columns, not the title's.
    code = main(["import-transactions", str(xlsx), *RETAIL_ARGS, "--customer", "Customer", "--out",
                 str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "column(s) Customer not in the header (columns: InvoiceNo, StockCode" in err


def test_cells_as_xlsxwriter_writes_them_in_the_1904_date_system(tmp_path: Path) -> None:
    path = tmp_path / "mac.xlsx"
    book = xlsxwriter.Workbook(str(path), {"date_1904": True})
    sheet = book.add_worksheet("Orders")
    stamp = book.add_format({"num_format": "m/d/yy h:mm AM/PM"})
    day = book.add_format({"num_format": 14})  # built-in short date
    money = book.add_format({"num_format": '"£"#,##0.00'})
    sheet.write_row(0, 0, ["id", "when", "day", "paid", "total", "vip", "formula", "error"])
    sheet.write_number(1, 0, 1234567890123)
    sheet.write_datetime(1, 1, datetime(2023, 4, 5, 13, 22, 10, 250_000), stamp)
    sheet.write_datetime(1, 2, datetime(2023, 4, 5), day)
    sheet.write_number(1, 3, 2.5499999999999998, money)
    sheet.write_number(1, 4, -0.1)
    sheet.write_boolean(1, 5, True)
    sheet.write_formula(1, 6, '="C"&"42"', None, "C42")
    sheet.write_formula(1, 7, "=NA()", None, "#N/A")
    sheet.write_string(3, 1, "2023-04-05 13:22")  # a date typed as text stays text; row 3 left empty
    book.close()
    with zipfile.ZipFile(path) as z:
        (only,) = sheets(z)
        rows = list(sheet_rows(z, only))
    assert rows == [
        (1, ["id", "when", "day", "paid", "total", "vip", "formula", "error"]),
        (2, ["1234567890123", "2023-04-05 13:22:10.250", "2023-04-05 00:00:00", "2.55", "-0.1", "TRUE", "C42", "#N/A"]),
        (4, ["", "2023-04-05 13:22"]),
    ]


def test_parts_written_by_other_tools(tmp_path: Path) -> None:
    """Cells without references, rich text with phonetic guides, an absolute part path, Strict OOXML."""
    main_ns = "http://purl.oclc.org/ooxml/spreadsheetml/main"  # the Strict namespace
    rel_ns = "http://purl.oclc.org/ooxml/officeDocument/relationships"
    path = tmp_path / "strict.xlsx"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("xl/workbook.xml", f'<workbook xmlns="{main_ns}" xmlns:r="{rel_ns}"><sheets>'
                   '<sheet name="Data" sheetId="1" r:id="rId7"/></sheets></workbook>')
        z.writestr("xl/_rels/workbook.xml.rels", '<Relationships><Relationship Id="rId7" '
                   'Target="/xl/worksheets/data.xml"/></Relationships>')
        z.writestr("xl/sharedStrings.xml", f'<sst xmlns="{main_ns}"><si><t>customer</t></si>'
                   '<si><r><t>Tōkyō </t></r><r><t>store</t></r><rPh><t>トウキョウ</t></rPh></si></sst>')
        z.writestr("xl/worksheets/data.xml", f'<worksheet xmlns="{main_ns}"><sheetData>'
                   '<row><c t="s"><v>0</v></c><c t="inlineStr"><is><t>amount</t></is></c></row>'
                   '<row><c t="s"><v>1</v></c><c><v>1.5E-2</v></c></row>'
                   '<row r="9"><c r="B9"><v>7</v></c></row></sheetData></worksheet>')
    assert is_workbook(path) and not is_workbook(tmp_path / "missing.xlsx")
    with zipfile.ZipFile(path) as z:
        assert list(sheet_rows(z, sheets(z)[0])) == [
            (1, ["customer", "amount"]), (2, ["Tōkyō store", "0.015"]), (9, ["", "7"])]
    with (tmp_path / "strict.csv").open("w", newline="") as out:
        read = write_csv(path, out)
    assert (tmp_path / "strict.csv").read_text() == "customer,amount\nTōkyō store,0.015\n,7\n"
    assert read.where(3) == "sheet 'Data' row 9"


def test_backtest_given_a_workbook_says_to_import_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "orders.xlsx"
    book = openpyxl.Workbook()
    book.active.append(["customer", "time", "amount"])
    book.save(path)
    assert main(["backtest", str(path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "Excel workbook" in err and "import-transactions" in err
    assert not (tmp_path / "r" / "report.json").exists()


def test_a_date_column_and_a_time_column(tmp_path: Path, capsys) -> None:
    """A sheet that keeps the day and the time of day apart: the time cells read as a clock."""
    from datetime import date, time

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Kunde", "Datum", "Uhrzeit", "Betrag"])
    sheet.append(["k1", date(2023, 4, 5), time(13, 22, 10), 12.5])
    sheet.append(["k2", date(2023, 4, 6), time(0, 5), 3])
    for row in sheet.iter_rows(min_row=2):
        row[1].number_format, row[2].number_format = "DD.MM.YYYY", "hh:mm:ss"
    path = tmp_path / "kasse.xlsx"
    book.save(path)
    code = main(["import-transactions", str(path), "--customer", "Kunde", "--time", "Datum", "--clock", "Uhrzeit",
                 "--amount", "Betrag", "--timezone", "Europe/Berlin", "--out", str(tmp_path / "k.jsonl")])
    assert code == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (tmp_path / "k.jsonl").read_text().splitlines()]
    assert [(e["customer_id"], e["ts"], e["amount"]) for e in events] == [
        ("k1", "2023-04-05T11:22:10.000+00:00", 12.5), ("k2", "2023-04-05T22:05:00.000+00:00", 3.0)]


def test_formulas_never_calculated_read_as_empty_cells(tmp_path: Path, capsys) -> None:
    """openpyxl and pandas write a formula with an empty cached value: no value, not a failure."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["customer", "date", "amount", "total"])
    for i in range(20):
        sheet.append([f"c{i % 7}", datetime(2022, 1, 1) + timedelta(days=9 * i), 10.5 + i, f"=C{i + 2}*2"])
    path = tmp_path / "formulas.xlsx"
    book.save(path)
    rows = [cells for _, cells in sheet_rows(zipfile.ZipFile(path), sheets(zipfile.ZipFile(path))[0])]
    assert rows[1] == ["c0", "2022-01-01 00:00:00", "10.5"]  # the formula's cell is empty, so trimmed
    assert main(["inspect", str(path)]) == 0
    assert "--customer customer --time date --amount amount" in capsys.readouterr().out
    code = main(["import-transactions", str(path), "--customer", "customer", "--time", "date", "--amount", "amount",
                 "--out", str(tmp_path / "f.jsonl")])
    assert code == 0 and json.loads(capsys.readouterr().out)["events_written"] == 20


def test_damaged_files_are_refused_with_a_reason(tmp_path: Path, capsys) -> None:
    """A download cut short, or a part of it damaged: a reason, never a traceback, nothing half-imported."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, _ = _retail(2_000)
    book = openpyxl.Workbook()
    for row in [HEADER, *data]:
        book.active.append(row)
    whole = tmp_path / "whole.xlsx"
    book.save(whole)
    cut = tmp_path / "cut.xlsx"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    damaged = tmp_path / "damaged.xlsx"
    with zipfile.ZipFile(whole) as src, zipfile.ZipFile(damaged, "w") as dst:
        for info in src.infolist():
            part = src.read(info.filename)
            dst.writestr(info, part[: len(part) // 2] if info.filename.startswith("xl/worksheets/") else part)
    table = tmp_path / "orders.parquet"
    pq.write_table(pa.table({"CustomerID": [1.0] * 5_000, "InvoiceDate": ["2011-01-01"] * 5_000,
                             "UnitPrice": [2.5] * 5_000}), table, row_group_size=1_000)
    broken_parquet = tmp_path / "broken.parquet"
    raw = table.read_bytes()
    broken_parquet.write_bytes(raw[:4] + bytes(len(raw) // 2) + raw[4 + len(raw) // 2:])
    for path, says in ((cut, "damaged or cut short"), (damaged, "damaged workbook"),
                       (broken_parquet, "Parquet file")):
        out = tmp_path / "events.jsonl"
        code = main(["import-transactions", str(path), "--customer", "CustomerID", "--time", "InvoiceDate",
                     "--amount", "UnitPrice", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and says in err and "Traceback" not in err, err
        assert not out.exists()

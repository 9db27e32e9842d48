"""Transaction CSV import: broken rows reported exactly, the rest valid purchase events."""

from __future__ import annotations

import csv
import io
import json
import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from features.events import PurchaseEvent, decode
from features.importer import (
    ImportConfig,
    ImportFailed,
    ImportResult,
    parse_number,
    parse_time,
)
from features.importer import import_transactions as import_once


def import_transactions(lines: Any, config: ImportConfig, **kwargs: Any) -> ImportResult:
    """Import the lines both ways, held in memory and read twice: the same result, or the same refusal."""
    source = list(lines)
    try:
        held = import_once(iter(source), config, **kwargs)
    except ImportFailed as exc:
        with pytest.raises(ImportFailed) as again:
            import_once(lambda: iter(source), config, **kwargs)
        assert str(again.value) == str(exc)
        raise
    twice = import_once(lambda: iter(source), config, **kwargs)
    assert (twice.events, twice.errors, twice.summary()) == (held.events, held.errors, held.summary())
    return held

HEADER = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
          "CustomerID", "Country"]
RETAIL = ImportConfig(customer="CustomerID", time="InvoiceDate", order="InvoiceNo",
                      quantity="Quantity", price="UnitPrice", product="StockCode",
                      default_currency="GBP", extra=("Country",))


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


# ------------------------------------------------------------- 10,000 rows, 1% broken
BREAKERS = [
    ("bad time", lambda r: r.__setitem__(4, "31/31/2011 25:61")),
    ("bad time", lambda r: r.__setitem__(4, "next tuesday")),
    ("missing time", lambda r: r.__setitem__(4, "")),
    ("bad price", lambda r: r.__setitem__(5, "abc")),
    ("bad price", lambda r: r.__setitem__(5, "1,2")),
    ("missing price", lambda r: r.__setitem__(5, " ")),
    ("bad quantity", lambda r: r.__setitem__(3, "six")),
    ("missing customer", lambda r: r.__setitem__(6, "")),
    ("missing order", lambda r: r.__setitem__(0, "")),
    ("time out of range", lambda r: r.__setitem__(4, "1/13/1970 10:00")),
    ("wrong number of fields", lambda r: r.append("spill")),
    ("wrong number of fields", lambda r: r.pop()),
]


def _history(rows: int = 10_000, broken: int = 100, seed: int = 42) -> tuple[str, dict[int, str], list[list[str]]]:
    """A UCI Online Retail style export: (csv text, {line: reason} of broken rows, valid rows)."""
    rng = random.Random(seed)
    start = datetime(2010, 12, 1, 8, 0)
    data: list[list[str]] = []
    invoice = 536365
    while len(data) < rows:
        customer = f"{rng.randint(12346, 18287)}.0" if rng.random() < 0.5 else str(rng.randint(12346, 18287))
        when = start + timedelta(minutes=rng.randint(0, 365 * 24 * 60))
        cancel = rng.random() < 0.03
        number = ("C" if cancel else "") + str(invoice)
        invoice += 1
        for _ in range(rng.randint(1, 6)):
            qty = rng.randint(1, 24) * (-1 if cancel else 1)
            desc = rng.choice(['WHITE HANGING HEART T-LIGHT HOLDER', 'SET 7 BABUSHKA NESTING BOXES',
                               'GLASS STAR FROSTED, "BIG"', 'HAND WARMER\nUNION JACK', 'Ünïcode mug ☕'])
            price = rng.choice(["2.55", "3.39", "0.85", "1,234.50", "0", "12.75"])
            date = f"{when.month}/{when.day}/{when.year} {when.hour}:{when.minute:02d}"
            data.append([number, f"{rng.randint(10000, 99999)}", desc, str(qty), date, price,
                         customer, rng.choice(["United Kingdom", "France", "EIRE", "Germany"])])
    data = data[:rows]
    broken_at = sorted(rng.sample(range(rows), broken))
    reasons: dict[int, str] = {}
    for i in broken_at:
        reason, breaker = rng.choice(BREAKERS)
        while reason.startswith("missing ") and reason != "missing price" and i and data[i - 1][0] == data[i][0]:
            # A line item's blank time or customer is its order's (_fill_from_order): not broken.
            reason, breaker = rng.choice(BREAKERS)
        breaker(data[i])
        reasons[i] = reason
    chunks: list[str] = []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    line = 2
    by_line: dict[int, str] = {}
    valid: list[list[str]] = []
    for i, row in enumerate([HEADER, *data], start=-1):
        buf.seek(0)
        buf.truncate()
        writer.writerow(row)
        chunks.append(buf.getvalue())
        if i < 0:
            continue
        if i in reasons:
            by_line[line] = reasons[i]
        else:
            valid.append(row)
        line += chunks[-1].count("\n")  # quoted fields may span lines
    return "".join(chunks), by_line, valid


@pytest.fixture(scope="module")
def history() -> tuple[str, dict[int, str], list[list[str]]]:
    return _history()


def test_ten_thousand_rows_one_percent_broken(history: tuple[str, dict[int, str], list[list[str]]]) -> None:
    text, broken, valid = history
    result = import_transactions(io.StringIO(text, newline=""), RETAIL)
    assert result.rows == 10_000
    assert {e.line: e.reason.split(":")[0] for e in result.errors} == broken
    assert len(result.errors) == 100 and sum(result.skipped_by_reason().values()) == 100

    # every other row is in exactly one valid, time-ordered purchase event
    events = [decode(json.dumps(e)) for e in result.events]
    assert all(isinstance(e, PurchaseEvent) for e in events)
    purchases = [e for e in events if isinstance(e, PurchaseEvent)]
    assert [e.ts_ms for e in purchases] == sorted(e.ts_ms for e in purchases)
    assert len({e.event_id for e in purchases}) == len(purchases)
    groups: dict[tuple[str, str, bool], float] = defaultdict(float)
    for row in valid:
        qty, price = float(row[3]), float(row[5].replace(",", ""))
        groups[(row[6].removesuffix(".0"), row[0], qty < 0)] += abs(qty) * price
    assert len(purchases) == len(groups)
    assert sum(len(e.items or []) for e in purchases) == len(valid)
    for e in purchases:
        key = (e.customer_id, e.order_id, e.status == "refunded")
        assert e.amount == pytest.approx(groups[key], abs=1e-4)
        assert e.currency == "GBP" and e.extra("Country")
    assert result.refund_events == sum(1 for k in groups if k[2]) > 0
    assert result.date_order.startswith("mdy")


def test_cli_reports_line_numbers_without_customer_ids(
    history: tuple[str, dict[int, str], list[list[str]]], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streams.cli import main

    text, broken, valid = history
    src = tmp_path / "retail.csv"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "retail.jsonl"
    code = main(["import-transactions", str(src), "--customer", "CustomerID", "--time", "InvoiceDate",
                 "--order", "InvoiceNo", "--quantity", "Quantity", "--price", "UnitPrice",
                 "--product", "StockCode", "--default-currency", "GBP", "--max-errors", "5",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(captured.out)
    assert summary["rows_read"] == 10_000 and summary["rows_skipped"] == 100
    assert summary["skipped_by_reason"]["missing customer"] == sum(
        1 for r in broken.values() if r == "missing customer")
    assert summary["events_written"] == len(out.read_text().splitlines())
    shown = [ln for ln in captured.err.splitlines() if ln.startswith("skipped line ")]
    assert [int(ln.split()[2].rstrip(":")) for ln in shown] == sorted(broken)[:5]
    assert "95 more skipped rows" in captured.err
    customers = {row[6] for row in valid} | {row[6].removesuffix(".0") for row in valid}
    assert not any(c and c in captured.err for c in customers)
    # re-importing gives the same bytes (stable ids, stable order)
    again = tmp_path / "again.jsonl"
    main(["import-transactions", str(src), "--customer", "CustomerID", "--time", "InvoiceDate",
          "--order", "InvoiceNo", "--quantity", "Quantity", "--price", "UnitPrice",
          "--product", "StockCode", "--default-currency", "GBP", "--out", str(again)])
    assert again.read_bytes() == out.read_bytes()
    # ... and so does the same table shipped gzip-compressed (told by its content).
    import gzip

    packed = tmp_path / "retail.csv.gz"
    packed.write_bytes(gzip.compress(src.read_bytes()))
    unpacked = tmp_path / "unpacked.jsonl"
    main(["import-transactions", str(packed), "--customer", "CustomerID", "--time", "InvoiceDate",
          "--order", "InvoiceNo", "--quantity", "Quantity", "--price", "UnitPrice",
          "--product", "StockCode", "--default-currency", "GBP", "--out", str(unpacked)])
    assert unpacked.read_bytes() == out.read_bytes()


# ------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("text", "kwargs", "expected"), [
    ("2011-12-09", {}, "2011-12-09T00:00:00"),
    ("2011-12-09 12:50:00", {}, "2011-12-09T12:50:00"),
    ("2011-12-09T12:50", {}, "2011-12-09T12:50:00"),
    ("2011-12-09T12:50:00Z", {}, "2011-12-09T12:50:00"),
    ("2011-12-09T14:50:00+02:00", {}, "2011-12-09T12:50:00"),
    ("2011-12-09 12:50:00.250", {}, "2011-12-09T12:50:00.250"),
    ("1323435000", {}, "2011-12-09T12:50:00"),
    ("1323435000.5", {}, "2011-12-09T12:50:00.500"),
    ("1323435000000", {}, "2011-12-09T12:50:00"),
    ("20111209", {}, "2011-12-09T00:00:00"),
    ("12/9/2011 12:50", {"date_order": "mdy"}, "2011-12-09T12:50:00"),
    ("12/9/2011 12:50", {"date_order": "dmy"}, "2011-09-12T12:50:00"),
    ("12/13/2011 9:05", {}, "2011-12-13T09:05:00"),
    ("13/12/2011", {}, "2011-12-13T00:00:00"),
    ("13.12.11", {}, "2011-12-13T00:00:00"),
    ("12/9/2011 12:50:30 AM", {"date_order": "mdy"}, "2011-12-09T00:50:30"),
    ("09-12-2011 12:50", {"date_order": "dmy"}, "2011-12-09T12:50:00"),
    ("13-12-2011", {}, "2011-12-13T00:00:00"),
    ("2011/12/09 9:05", {}, "2011-12-09T09:05:00"),
    ("2011.12.09", {"date_order": "mdy"}, "2011-12-09T00:00:00"),  # year first: never ambiguous
    ("09-12-2011 12:50", {"time_format": "%d-%m-%Y %H:%M"}, "2011-12-09T12:50:00"),
    ("1323435000", {"time_format": "epoch_s"}, "2011-12-09T12:50:00"),
    ("1323435000000", {"time_format": "epoch_ms"}, "2011-12-09T12:50:00"),
    ("40886.5", {"time_format": "excel"}, "2011-12-09T12:00:00"),
    # Microseconds (GA4's BigQuery export) and nanoseconds: whole milliseconds, never rounded up.
    ("1323435000999999", {}, "2011-12-09T12:50:00.999"),
    ("1323435000999999999", {}, "2011-12-09T12:50:00.999"),
    ("1323435000123456", {"time_format": "epoch_us"}, "2011-12-09T12:50:00.123"),
    ("1323435000123456789", {"time_format": "epoch_ns"}, "2011-12-09T12:50:00.123"),
])
def test_parse_time(text: str, kwargs: dict[str, Any], expected: str) -> None:
    assert parse_time(text, **kwargs) == _ms(expected)


def test_parse_time_timezone_for_naive_times_only() -> None:
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    assert parse_time("2011-07-09 12:00", zone=paris) == _ms("2011-07-09T10:00:00")  # summer time
    assert parse_time("2011-12-09 12:00", zone=paris) == _ms("2011-12-09T11:00:00")
    assert parse_time("2011-12-09T12:00:00+00:00", zone=paris) == _ms("2011-12-09T12:00:00")


@pytest.mark.parametrize(("text", "kwargs", "reason"), [
    ("", {}, "missing time"),
    ("soon", {}, "bad time"),
    ("2011-02-30", {}, "bad time"),
    ("12/9/2011", {}, "ambiguous date"),
    ("13/13/2011", {}, "bad time"),
    ("13-12-11", {}, "bad time"),  # dashes and a 2-digit year: 2013-12-11 as well
    ("2011/13/09", {}, "not a valid date as year/month/day"),
    ("1/2/1973", {"date_order": "dmy"}, "time out of range"),
    ("123456", {}, "bad time"),
    ("9/12/2011", {"time_format": "%Y-%m-%d"}, "bad time"),
])
def test_parse_time_errors(text: str, kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_time(text, **kwargs)


@pytest.mark.parametrize(("text", "decimal_comma", "expected"), [
    ("12", False, 12.0), ("12.5", False, 12.5), (".5", False, 0.5), ("1,234.50", False, 1234.5),
    ("1,234,567", False, 1234567.0), ("-3.2", False, -3.2), ("(3.20)", False, -3.2),
    ("3.20-", False, -3.2), ("£1,200", False, 1200.0), ("EUR 12.00", False, 12.0),
    ("12.00 USD", False, 12.0), ("1e3", False, 1000.0), ("+7", False, 7.0),
    ("1.234,50", True, 1234.5), ("1 234,50", True, 1234.5), ("12,5", True, 12.5),
    ("12", True, 12.0), ("\u00a0 9,90 €", True, 9.9),
])
def test_parse_number(text: str, decimal_comma: bool, expected: float) -> None:
    assert parse_number(text, decimal_comma) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["abc", "1,2", "12,34.5", "1.2.3", "nan", "inf", "--1", "1 2"])
def test_parse_number_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad amount"):
        parse_number(text)


# --------------------------------------------------------------- aggregation
def _import(text: str, config: ImportConfig) -> Any:
    return import_transactions(io.StringIO(text.lstrip(), newline=""), config)


ORDERS = ImportConfig(customer="c", time="t", order="o", quantity="q", price="p", product="sku",
                      default_currency="eur")


def test_line_items_aggregate_into_one_event_per_customer_and_order() -> None:
    result = _import("""
c,o,t,q,p,sku
a,1,2024-01-02 10:00,2,5.00,X
a,1,2024-01-02 10:01,1,"1,000.00",Y
b,1,2024-01-01 09:00,3,1.00,X
a,1,2024-01-02 10:02,-1,5.00,X
a,2,2024-01-03 10:00,1,7.50,Z
""", ORDERS)
    assert not result.errors
    got = [(e["customer_id"], e["order_id"], e["status"], e["amount"], e["ts"][:16],
            [(i.get("product_id"), i["quantity"], i["price"]) for i in e["items"]]) for e in result.events]
    assert got == [
        ("b", "1", "completed", 3.0, "2024-01-01T09:00", [("X", 3.0, 1.0)]),
        ("a", "1", "completed", 1010.0, "2024-01-02T10:00", [("X", 2.0, 5.0), ("Y", 1.0, 1000.0)]),
        ("a", "1", "refunded", 5.0, "2024-01-02T10:02", [("X", 1.0, 5.0)]),
        ("a", "2", "completed", 7.5, "2024-01-03T10:00", [("Z", 1.0, 7.5)]),
    ]
    assert all(e["currency"] == "EUR" for e in result.events)
    ids = [e["event_id"] for e in result.events]
    assert len(set(ids)) == 4
    assert [e["event_id"] for e in _import("""
c,o,t,q,p,sku
a,2,2024-01-03 10:00,1,7.50,Z
""", ORDERS).events] == [ids[3]]  # the id depends on the order, not on the file around it


def test_rows_without_order_are_one_purchase_each_and_identical_rows_stay_distinct() -> None:
    cfg = ImportConfig(customer="c", time="t", amount="amt")
    text = "c,t,amt\nx,2024-01-01,10\nx,2024-01-01,10\ny,2024-01-02,(4.50)\n"
    result = _import(text, cfg)
    assert [(e["amount"], e["status"]) for e in result.events] == [(10.0, "completed"), (10.0, "completed"),
                                                                    (4.5, "refunded")]
    assert len({e["event_id"] for e in result.events}) == 3 and result.identical_rows == 1
    assert [e["event_id"] for e in _import(text, cfg).events] == [e["event_id"] for e in result.events]
    assert "items" not in result.events[0]


def test_status_column_and_refund_policy() -> None:
    text = """
c,o,t,amt,state
a,1,2024-01-01,10,paid
a,2,2024-01-02,10,Cancelled
a,3,2024-01-03,10,pending
a,4,2024-01-04,-3,
"""
    cfg = ImportConfig(customer="c", time="t", order="o", amount="amt", status="state")
    result = _import(text, cfg)
    assert [(e["order_id"], e["status"]) for e in result.events] == [
        ("1", "completed"), ("2", "refunded"), ("4", "refunded")]
    assert [(e.line, e.reason.split(":")[0]) for e in result.errors] == [(4, "not a purchase")]
    skip = _import(text, ImportConfig(customer="c", time="t", order="o", amount="amt", status="state",
                                      refunds="skip"))
    assert [e["order_id"] for e in skip.events] == ["1"]
    assert skip.skipped_by_reason() == {"refund skipped (negative amount or quantity, or refund status)": 2,
                                        "not a purchase": 1}


def test_a_refunded_order_is_its_purchase_and_its_refund() -> None:
    """An order export's refunded row is the order, bought and then refunded: a refund alone
    left the purchase out of every count and sum (and spend showed a refund with no order)."""
    text = """
c,o,t,amt,state,refunded_at
a,1,2024-01-01 10:00,10,paid,
a,2,2024-01-02 10:00,20,Refunded,2024-01-09 08:00
a,3,2024-01-03 10:00,30,returned,
a,4,2024-01-04 10:00,40,Cancelled,
a,5,2024-01-05 10:00,-5,refunded,
a,1,2024-01-06 10:00,10,refunded,
"""
    cfg = ImportConfig(customer="c", time="t", order="o", amount="amt", status="state", refund_time="refunded_at")
    result = _import(text, cfg)
    got = [(e["order_id"], e["status"], e["amount"], e["ts"][:16]) for e in result.events]
    assert got == [
        ("1", "completed", 10.0, "2024-01-01T10:00"),
        ("2", "completed", 20.0, "2024-01-02T10:00"),  # bought at the order's time ...
        ("3", "completed", 30.0, "2024-01-03T10:00"),
        ("3", "refunded", 30.0, "2024-01-03T10:00"),  # ... refunded then, without a refund time
        ("4", "refunded", 40.0, "2024-01-04T10:00"),  # a cancellation may come before payment
        ("5", "refunded", 5.0, "2024-01-05T10:00"),  # a negative row is a refund of its own
        ("1", "refunded", 10.0, "2024-01-06T10:00"),  # a ledger's refund of order 1: no second purchase
        ("2", "refunded", 20.0, "2024-01-09T08:00"),  # at its refund time
    ]
    summary = result.summary()
    assert summary["purchases_of_refunded_orders"] == 2 and summary["refund_events"] == 5
    ids = [e["event_id"] for e in result.events]
    assert len(set(ids)) == len(ids) and ids == [e["event_id"] for e in _import(text, cfg).events]
    # The purchase of order 2 has the id an earlier export (the order still paid) gave it: counted once.
    paid = _import("c,o,t,amt,state,refunded_at\na,2,2024-01-02 10:00,20,paid,\n", cfg)
    assert paid.events[0]["event_id"] == ids[1]
    # Without an order column each row is its order: two ids, one order id (one thing at one instant).
    bare = _import("c,t,amt,state\nb,2024-02-01,15,refunded\nb,2024-02-01,15,refunded\n",
                   ImportConfig(customer="c", time="t", amount="amt", status="state"))
    events = bare.events
    assert sorted(e["status"] for e in events) == ["completed", "completed", "refunded", "refunded"]
    assert len({e["event_id"] for e in events}) == 4 and len({e["order_id"] for e in events}) == 2
    # --status-map reads a shop's own word as a refunded order too.
    told = _import(text, replace(cfg, statuses={"cancelled": "refunded"}))
    assert sorted(e["status"] for e in told.events if e["order_id"] == "4") == ["completed", "refunded"]


def test_a_refund_amount_column_is_a_partly_refunded_orders_refund() -> None:
    """Shopify's partially_refunded orders imported as purchases alone: the refunded part was
    lost, and spend (net of refunds) counted it as kept. --refund-amount makes its refund."""
    text = """
c,o,t,amt,state,refunded_at,ref
a,1,2024-01-01 10:00,50,partially_refunded,2024-01-05 09:00,12.50
a,2,2024-01-02 10:00,20,Refunded,2024-01-09 08:00,20
a,3,2024-01-03 10:00,30,paid,,0.00
a,4,2024-01-04 10:00,40,partially_refunded,,90
a,5,2024-01-05 10:00,-5,refunded,,3
a,6,2024-01-06 10:00,60,refunded,,
a,7,2024-01-07 10:00,70,paid,,
a,8,2024-01-08 10:00,80,refunded,,30
"""
    cfg = ImportConfig(customer="c", time="t", order="o", amount="amt", status="state",
                       refund_time="refunded_at", refund_amount="ref")
    result = _import(text, cfg)
    got = sorted((e["order_id"], e["status"], e["amount"], e["ts"][:16]) for e in result.events)
    assert got == [
        ("1", "completed", 50.0, "2024-01-01T10:00"),  # the purchase, whole ...
        ("1", "refunded", 12.5, "2024-01-05T09:00"),  # ... and its refunded part, at its refund time
        ("2", "completed", 20.0, "2024-01-02T10:00"),
        ("2", "refunded", 20.0, "2024-01-09T08:00"),
        ("3", "completed", 30.0, "2024-01-03T10:00"),  # 0.00 refunded: no refund
        ("4", "completed", 40.0, "2024-01-04T10:00"),
        ("4", "refunded", 40.0, "2024-01-04T10:00"),  # 90 of an order of 40: cut to 40, at its time
        ("5", "refunded", 5.0, "2024-01-05T10:00"),  # a refund row of its own: its amount, not the column's
        ("6", "completed", 60.0, "2024-01-06T10:00"),
        ("6", "refunded", 60.0, "2024-01-06T10:00"),  # refunded, no amount given: the whole order
        ("7", "completed", 70.0, "2024-01-07T10:00"),
        ("8", "completed", 80.0, "2024-01-08T10:00"),
        ("8", "refunded", 30.0, "2024-01-08T10:00"),  # refunded, 30 of it: the column's amount
    ]
    summary = result.summary()
    assert summary["refund_events"] == 6 and summary["refunds_from_refund_amount"] == 4
    assert summary["refund_amounts_capped_at_order_amount"] == 1 and not result.errors
    # Ids: the purchase keeps the one it had before the refund (a re-import dedupes), and the
    # refund's is its own, the same on every import.
    ids = {(e["order_id"], e["status"]): e["event_id"] for e in result.events}
    assert len(set(ids.values())) == len(ids) == 13
    assert ids == {(e["order_id"], e["status"]): e["event_id"] for e in _import(text, cfg).events}
    paid = _import("c,o,t,amt,state,refunded_at,ref\na,1,2024-01-01 10:00,50,paid,,\n", cfg)
    assert paid.events[0]["event_id"] == ids[("1", "completed")]
    # Without the option, as before: a partially refunded order is a purchase alone.
    plain = _import(text, replace(cfg, refund_amount=None))
    assert [e["status"] for e in plain.events if e["order_id"] == "1"] == ["completed"]
    assert "refunds_from_refund_amount" not in plain.summary()
    # Without an order column each row is its order: its purchase and its refund, two ids.
    bare = _import("c,t,amt,state,ref\nb,2024-02-01,15,partially_refunded,5\n",
                   ImportConfig(customer="c", time="t", amount="amt", status="state", refund_amount="ref"))
    assert sorted((e["status"], e["amount"]) for e in bare.events) == [("completed", 15.0), ("refunded", 5.0)]
    assert len({e["event_id"] for e in bare.events}) == 2 and len({e["order_id"] for e in bare.events}) == 1
    # A line-item export writes the order's refund once per order (or on each line): one refund,
    # of the order; a cell that is no number skips its row, as a bad amount does.
    items = _import("c,o,t,amt,state,ref\nd,9,2024-03-01,10,partially_refunded,4\nd,9,2024-03-01,10,"
                    "partially_refunded,4\nd,8,2024-03-02,10,paid,lots\n", replace(cfg, refund_time=None))
    assert sorted((e["status"], e["amount"]) for e in items.events) == [("completed", 20.0), ("refunded", 4.0)]
    assert [(e.line, e.reason.split(":")[0]) for e in items.errors] == [(4, "bad refund amount")]
    # --refunds skip makes no refund events, from the column either.
    skip = _import(text, replace(cfg, refunds="skip"))
    assert {e["status"] for e in skip.events} == {"completed"} and len(skip.events) == 4


def test_without_an_order_column_a_later_export_keeps_each_purchases_id() -> None:
    """A row is named by its cells, but not by those that change as an order lives on: the
    export taken after a purchase was refunded (status, refund time, refund amount filled in)
    gives the purchase the id the earlier export gave it, so replaying both counts it once."""
    cfg = ImportConfig(customer="c", time="t", amount="amt", status="state", refund_time="when",
                       refund_amount="ref", default_currency="EUR")
    later = ("c,t,amt,state,when,ref\na,2024-01-05 10:00,50,refunded,2024-01-20 09:00,\n"
             "b,2024-01-06 11:00,70,paid,,\nd,2024-01-07 12:00,30,partially_refunded,,10\n")
    before = _import("c,t,amt,state,when,ref\na,2024-01-05 10:00,50,paid,,\nb,2024-01-06 11:00,70,paid,,\n"
                     "d,2024-01-07 12:00,30,paid,,\n", cfg)
    after = _import(later, cfg)
    ids = {(e["customer_id"], e["status"]): e["event_id"] for e in after.events}
    assert {(e["customer_id"], e["status"]): e["event_id"] for e in before.events} == {
        k: v for k, v in ids.items() if k[1] == "completed"}
    assert sorted(ids) == [("a", "completed"), ("a", "refunded"), ("b", "completed"), ("d", "completed"),
                           ("d", "refunded")]
    assert len(set(ids.values())) == 5  # each refund an id of its own, the same on every import
    assert ids == {(e["customer_id"], e["status"]): e["event_id"] for e in _import(later, cfg).events}
    # Replayed one after the other (a live topic fed each month's full export): each once.
    from scoring.backtest import BacktestConfig, run_backtest

    lines = [orjson.dumps(e) for e in before.events + after.events]
    report = run_backtest(lines, BacktestConfig(batch_baseline=False))
    assert (report["events"], report["duplicates"]) == (8, 3)
    # Rows alike but for those cells are still two purchases (identical rows stay distinct).
    twice = _import("c,t,amt,state\nx,2024-02-01,15,paid\nx,2024-02-01,15,refunded\n",
                    ImportConfig(customer="c", time="t", amount="amt", status="state"))
    assert sorted(e["status"] for e in twice.events) == ["completed", "completed", "refunded"]
    assert len({e["event_id"] for e in twice.events}) == 3


def test_slash_dates_decided_by_the_file_or_refused() -> None:
    cfg = ImportConfig(customer="c", time="t", amount="a")
    dmy = _import("c,t,a\nx,1/2/2024,1\nx,25/12/2024,1\n", cfg)
    assert dmy.events[0]["ts"].startswith("2024-02-01") and dmy.date_order.startswith("dmy")
    with pytest.raises(ImportFailed, match="--date-order"):
        _import("c,t,a\nx,1/2/2024,1\nx,3/4/2024,1\n", cfg)
    told = _import("c,t,a\nx,1/2/2024,1\n", ImportConfig(customer="c", time="t", amount="a", date_order="mdy"))
    assert told.events[0]["ts"].startswith("2024-01-02")
    mixed = _import("c,t,a\nx,25/12/2024,1\nx,26/12/2024,1\nx,12/27/2024,1\n", cfg)
    assert [e.line for e in mixed.errors] == [4] and "other way" in mixed.date_order


def test_dash_dates_are_decided_by_the_file_like_slash_dates() -> None:
    cfg = ImportConfig(customer="c", time="t", amount="a")
    result = _import("c,t,a\nx,01-02-2024 10:00,1\nx,25-12-2024,1\ny,2024/12/26,1\n", cfg)
    assert [e["ts"][:16] for e in result.events] == ["2024-02-01T10:00", "2024-12-25T00:00", "2024-12-26T00:00"]
    assert result.date_order == "dmy (from 1 row with a day above 12)" and not result.errors


def test_title_and_comment_lines_above_the_header_are_read_past(tmp_path: Path, capsys) -> None:
    """Analytics and bank exports write a title, a date range or ``# ----`` lines above the table."""
    from streams.cli import main

    table = "Client;Booked;Amount\nk1;2024-03-01 10:00;12,50\nk2;soon;3\nk1;2024-03-04 10:00;7\n"
    preamble = "# ----------------------------------------\n# Bookings export\n# 20240301-20240331\n\n"
    plain, titled = tmp_path / "plain.csv", tmp_path / "titled.csv"
    plain.write_text(table)
    titled.write_text(preamble + table)
    args = ["--customer", "Client", "--time", "Booked", "--amount", "Amount"]
    for path in (plain, titled):
        assert main(["import-transactions", str(path), *args, "--out", str(path.with_suffix(".jsonl"))]) == 0
    outs = capsys.readouterr()
    assert plain.with_suffix(".jsonl").read_bytes() == titled.with_suffix(".jsonl").read_bytes()
    summaries = [json.loads(part) for part in outs.out.replace("}\n{", "}\x00{").split("\x00")]
    assert "header_line" not in summaries[0] and summaries[1]["header_line"] == 5
    assert summaries[1]["decimal"].startswith("comma") and summaries[1]["delimiter"] == ";"
    # Line numbers stay the file's own: the bad time is on line 3 of one, line 7 of the other.
    assert "skipped line 3: bad time" in outs.err and "skipped line 7: bad time" in outs.err
    # A misspelt column is refused with the table's columns, not the title's.
    assert main(["import-transactions", str(titled), "--customer", "Klient", "--time", "Booked",
                 "--amount", "Amount", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "(columns: Client, Booked, Amount)" in capsys.readouterr().err


def test_command_errors_are_fatal_row_errors_are_not() -> None:
    with pytest.raises(ImportFailed, match="column.*missing_col"):
        _import("c,t,a\nx,2024-01-01,1\n", ImportConfig(customer="c", time="missing_col", amount="a"))
    with pytest.raises(ImportFailed, match="--amount.*--price"):
        _import("c,t,a\n", ImportConfig(customer="c", time="t"))
    with pytest.raises(ImportFailed, match="empty"):
        _import("", ImportConfig(customer="c", time="t", amount="a"))
    with pytest.raises(ImportFailed, match="time zone"):
        _import("c,t,a\n", ImportConfig(customer="c", time="t", amount="a", timezone="Mars/Olympus"))
    cur = _import("c,o,t,a,cur\nx,1,2024-01-01,1,USD\nx,1,2024-01-01,2,EUR\nx,2,2024-01-01,2,dollars\n",
                  ImportConfig(customer="c", time="t", order="o", amount="a", currency="cur"))
    assert [(e.line, e.reason) for e in cur.errors] == [
        (3, "currency differs from the order's first line"), (4, "bad currency: not a 3-letter code")]
    assert [(e["currency"], e["amount"]) for e in cur.events] == [("USD", 1.0)]


def test_undecodable_bytes_skip_their_row(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("c,t,a\nJos\xe9,2024-01-01,1\nx,2024-01-02,2\n".encode("latin-1"))
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        result = import_transactions(handle, ImportConfig(customer="c", time="t", amount="a"))
    assert [e.line for e in result.errors] == [2] and "--encoding" in result.errors[0].reason
    with open(path, encoding="latin-1", newline="") as handle:
        assert len(import_transactions(handle, ImportConfig(customer="c", time="t", amount="a")).events) == 2


def test_bytes_that_are_not_utf8_are_read_as_windows_1252_when_asked(tmp_path: Path) -> None:
    # An older export in Windows-1252, joined to a newer one in UTF-8: each row is read right.
    path = tmp_path / "mixed.csv"
    path.write_bytes("Kunde;Datum;Währung;Betrag\n".encode("cp1252") + "José;2024-01-01;EUR;1\n".encode("cp1252")
                     + "Zoë;2024-01-02;EUR;2\n".encode() + "Ærø;2024-01-03;EUR;3\n".encode("latin-1"))
    config = ImportConfig(customer="Kunde", time="Datum", amount="Betrag", currency="Währung",
                          legacy_fallback=True)
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        result = import_transactions(handle, config)
    assert not result.errors
    assert [e["customer_id"] for e in result.events] == ["José", "Zoë", "Ærø"]
    assert result.legacy_rows == 2 and result.summary()["rows_read_as_windows_1252"] == 2
    # Its header repeated mid-file (the older export's own) is the header too, not a bad row.
    path.write_bytes(path.read_bytes() + "Kunde;Datum;Währung;Betrag\n".encode("cp1252"))
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        again = import_transactions(handle, config)
    assert [e.reason for e in again.errors] == ["the header line repeated"]


def test_swiss_amounts_group_thousands_with_an_apostrophe() -> None:
    result = _import("c;t;a\nk1;2024-01-02;1'234.50\nk2;2024-01-03;2’000\nk3;2024-01-04;12'5\n",
                     ImportConfig(customer="c", time="t", amount="a"))
    assert [e["amount"] for e in result.events] == [1234.5, 2000.0]
    assert [(e.line, e.reason) for e in result.errors] == [(4, "bad amount: not a number")]


def test_a_currency_code_in_the_amount_cell_is_the_rows_currency() -> None:
    text = ("c,t,a\nk1,2024-01-02,CHF 1'234.50\nk2,2024-01-03,12.50 usd\nk3,2024-01-04,€ 3\n"
            "k4,2024-01-05,\"£1,000\"\nk5,2024-01-06,$7\n")
    result = _import(text, ImportConfig(customer="c", time="t", amount="a", default_currency="SEK"))
    assert [(e["customer_id"], e["currency"], e["amount"]) for e in result.events] == [
        ("k1", "CHF", 1234.5), ("k2", "USD", 12.5), ("k3", "EUR", 3.0), ("k4", "GBP", 1000.0),
        ("k5", "SEK", 7.0)]  # $ names several currencies: the default
    column = _import("c,t,a,cur\nk1,2024-01-02,CHF 5,GBP\n",
                     ImportConfig(customer="c", time="t", amount="a", currency="cur"))
    assert column.events[0]["currency"] == "GBP"  # a currency column says it for every row


def test_zone_abbreviations_after_a_time_are_read_and_ambiguous_ones_refused() -> None:
    text = ("c,t,a\nk1,2023-04-05 13:22 CEST,1\nk2,04/05/2023 7:22 AM EDT,1\nk3,5 Apr 2023 11:22 UTC,1\n"
            "k4,2023-04-05 13:22 CST,1\nk5,2023-04-05 13:22 XYZ,1\n")
    result = _import(text, ImportConfig(customer="c", time="t", amount="a", date_order="mdy"))
    assert [e["ts"][:19] for e in result.events] == ["2023-04-05T11:22:00"] * 3
    assert [(e.line, e.reason.split(" (")[0]) for e in result.errors] == [
        (5, "bad time: the zone CST names several offsets"), (6, "bad time: unknown zone XYZ")]
    # The file decides the day/month order from its rows, zone or not.
    auto = _import("c,t,a\nk1,04/05/2023 7:22 AM EDT,1\nk2,04/25/2023 7:22 AM EDT,1\n",
                   ImportConfig(customer="c", time="t", amount="a"))
    assert not auto.errors and auto.date_order.startswith("mdy")


def test_dates_with_month_names_are_read() -> None:
    # CRM, mail and Oracle/Excel exports: the month by name, day first or after, any zone mark.
    cells = ["05-Apr-2023", "5 April 2023 13:22", "Apr 5, 2023", "April 5th 2023 1:22 PM",
             "Wed, 05 Apr 2023 13:22:10 +0200", "05-APR-23", "Sept. 5, 2023", "Wed, 05 Apr 2023 11:22:10 GMT"]
    text = "c,t,a\n" + "".join(f'c{i},"{t}",1\n' for i, t in enumerate(cells)) + 'x,"Foo 5, 2023",1\n'
    result = _import(text, ImportConfig(customer="c", time="t", amount="a"))
    assert [(e.line, e.reason) for e in result.errors] == [(10, "bad time: not a month name")]
    assert [e["ts"][:19] for e in result.events] == [  # in time order
        "2023-04-05T00:00:00", "2023-04-05T00:00:00", "2023-04-05T00:00:00", "2023-04-05T11:22:10",
        "2023-04-05T11:22:10", "2023-04-05T13:22:00", "2023-04-05T13:22:00", "2023-09-05T00:00:00"]


def test_semicolon_decimal_comma_export() -> None:
    result = import_transactions(io.StringIO("kunde;datum;betrag\nk1;09.12.2011 13:50;1.234,50\n"),
                                 ImportConfig(customer="kunde", time="datum", amount="betrag",
                                              decimal_comma=True, date_order="dmy",
                                              timezone="Europe/Berlin"),
                                 delimiter="semicolon")
    assert [(e["amount"], e["ts"]) for e in result.events] == [(1234.5, "2011-12-09T12:50:00.000+00:00")]


def test_separator_and_decimal_comma_are_read_from_the_file() -> None:
    text = "Kunde;Datum;Betrag\nk1;09.12.2011;1.234,50\nk2;10.12.2011;12,5\nk3;13.12.2011;7\n"
    result = import_transactions(io.StringIO(text, newline=""),
                                 ImportConfig(customer="Kunde", time="Datum", amount="Betrag"))
    assert [e["amount"] for e in result.events] == [1234.5, 12.5, 7.0] and not result.errors
    summary = result.summary()
    assert summary["delimiter"] == ";" and summary["decimal"].startswith("comma (from 2 numbers")


def test_decimal_point_wins_when_the_numbers_disagree() -> None:
    # 1,234.50 and 3.25 say point; 12,50 says comma: read with a point, the comma row reported.
    text = "c,t,a\nk1,2024-01-01,\"1,234.50\"\nk2,2024-01-02,3.25\nk3,2024-01-03,\"12,50\"\nk4,2024-01-04,\"1,234\"\n"
    result = import_transactions(io.StringIO(text, newline=""), ImportConfig(customer="c", time="t", amount="a"))
    assert [e["amount"] for e in result.events] == [1234.5, 3.25, 1234.0]
    assert [e.line for e in result.errors] == [4] and "--decimal-comma" in result.errors[0].reason
    assert result.summary()["delimiter"] == "," and "1 numbers like 12,50" in result.summary()["decimal"]
    # Told, the file does not decide: with --decimal-comma, 12,50 and 1,234 are decimals and
    # 1,234.50 is the row that cannot be read.
    told = import_transactions(io.StringIO(text, newline=""),
                               ImportConfig(customer="c", time="t", amount="a", decimal_comma=True))
    assert [e["amount"] for e in told.events] == [3.25, 12.5, 1.234] and [e.line for e in told.errors] == [2]


def test_cli_imports_a_semicolon_decimal_comma_export_without_format_flags(tmp_path: Path) -> None:
    from streams.cli import main

    src = tmp_path / "umsatz.csv"
    src.write_text("Kundennummer;Rechnungsdatum;Betrag\nK1;31.01.2016;12,00\nK2;01.02.2016;7,5\n")
    out = tmp_path / "u.jsonl"
    assert main(["import-transactions", str(src), "--customer", "Kundennummer", "--time", "Rechnungsdatum",
                 "--amount", "Betrag", "--out", str(out)]) == 0
    assert [json.loads(line)["amount"] for line in out.read_text().splitlines()] == [12.0, 7.5]


def test_amounts_in_several_currencies_are_converted_into_one() -> None:
    config = ImportConfig(customer="c", time="t", order="o", quantity="q", price="p", currency="cur",
                          convert_to="eur", rates={"GBP": 1.2, "usd": 0.5})
    result = _import("""
c,o,t,q,p,cur
a,1,2024-01-02 10:00,2,5.00,GBP
a,1,2024-01-02 10:01,1,3.00,GBP
b,2,2024-01-03 09:00,4,1.00,usd
b,3,2024-01-04 09:00,1,9.00,EUR
c,4,2024-01-05 09:00,1,9.00,CHF
""", config)
    by_order = {e["order_id"]: e for e in result.events}
    assert {o: (e["amount"], e["currency"]) for o, e in by_order.items()} == {
        "1": (15.6, "EUR"), "2": (2.0, "EUR"), "3": (9.0, "EUR")}
    assert [i["price"] for i in by_order["1"]["items"]] == [6.0, 3.6]  # unit prices too
    assert [(e.line, e.reason) for e in result.errors] == [(6, "no rate for currency CHF (give --rate CHF=...)")]
    assert result.summary()["converted_rows"] == {"GBP": 2, "USD": 1}
    # Without conversion each row keeps its currency, and the summary says nothing of it.
    plain = _import("c,o,t,q,p,cur\na,1,2024-01-02,1,5,GBP\n", ImportConfig(
        customer="c", time="t", order="o", quantity="q", price="p", currency="cur"))
    assert plain.events[0]["currency"] == "GBP" and "converted_rows" not in plain.summary()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rates": {"GBP": 1.2}}, "rates need the currency to convert into"),
    ({"convert_to": "EURO"}, "a 3-letter ISO code"),
    ({"convert_to": "EUR", "rates": {"GBP": 0}}, "rate of GBP: a number above 0"),
    ({"convert_to": "EUR", "rates": {"GBP": float("nan")}}, "rate of GBP: a number above 0"),
])
def test_conversion_settings_are_checked_before_reading(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ImportFailed, match=message):
        _import("c,t,a\nx,2024-01-01,5\n", ImportConfig(customer="c", time="t", amount="a", **kwargs))


def test_cli_converts_currencies_and_then_backtest_scores_each_customer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streams.cli import main

    src = tmp_path / "orders.csv"
    rows = ["customer,date,amount,currency"]
    for i in range(120):
        rows.append(f"c{i % 40},2024-{1 + i % 6:02d}-{1 + i % 27:02d},{10 + i % 9}.50,{('EUR', 'GBP', 'USD')[i % 3]}")
    src.write_text("\n".join(rows) + "\n")
    events = tmp_path / "orders.jsonl"
    assert main(["import-transactions", str(src), "--customer", "customer", "--time", "date", "--amount", "amount",
                 "--currency", "currency", "--convert-to", "EUR", "--rate", "GBP=1.2", "--rate", "USD=0.5",
                 "--out", str(events)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["converted_rows"] == {"GBP": 40, "USD": 40} and summary["events_written"] == 120
    assert {json.loads(line)["currency"] for line in events.read_text().splitlines()} == {"EUR"}
    # A malformed --rate stops the command with a message, not a traceback.
    assert main(["import-transactions", str(src), "--customer", "customer", "--time", "date", "--amount", "amount",
                 "--convert-to", "EUR", "--rate", "GBP:1.2", "--out", str(events)]) != 0
    assert "--rate 'GBP:1.2': give CODE=RATE" in capsys.readouterr().err
    customers = tmp_path / "customers.csv"
    assert main(["backtest", str(events), "--out", str(tmp_path / "bt"), "--no-batch-baseline",
                 "--customers-out", str(customers)]) == 0
    report = json.loads((tmp_path / "bt" / "report.json").read_text())
    assert report["purchase_currencies"] == {"EUR": 120}
    lines = customers.read_text().splitlines()
    assert lines[0].startswith("customer_id,as_of,days_silent,days_since_purchase,purchase_propensity_value") and len(lines) == 41


SHOPIFY = """
Name,Email,Financial Status,Created at,Total,Currency,Lineitem quantity,Lineitem price,Lineitem name
#1002,b@example.com,refunded,2023-04-06 09:00:00 +0200,20.00,EUR,1,20.00,Mug
#1001,a@example.com,paid,2023-04-05 13:22:10 +0200,34.90,USD,2,10.00,Cup
#1001,a@example.com,,,,,1,9.90,Plate
#1001,a@example.com,,,,,1,5.00,Spoon
#1003,c@example.com,paid,2023-04-07 10:00:00 +0200,,EUR,1,3.00,Fork
#1003,c@example.com,,,,,1,4.00,Knife
#1004,d@example.com,,,,,1,1.00,Bowl
"""


def test_line_items_take_the_order_fields_of_the_order_first_row() -> None:
    # Shopify's orders export: time, status, currency and total on an order's first row only.
    shop = dict(customer="Email", time="Created at", order="Name", status="Financial Status",
                currency="Currency", quantity="Lineitem quantity", price="Lineitem price",
                product="Lineitem name")
    by_items = _import(SHOPIFY, ImportConfig(**shop))  # type: ignore[arg-type]
    got = {e["order_id"]: (e["amount"], e["currency"], e["status"], e["ts"], len(e["items"]))
           for e in by_items.events}
    assert got == {
        "#1001": (34.9, "USD", "completed", "2023-04-05T11:22:10.000+00:00", 3),
        "#1002": (20.0, "EUR", "refunded", "2023-04-06T07:00:00.000+00:00", 1),
        "#1003": (7.0, "EUR", "completed", "2023-04-07T08:00:00.000+00:00", 2),
    }
    # An order with no first row to fill from is still skipped, with its reason.
    assert [(e.line, e.reason) for e in by_items.errors] == [(8, "missing time")]
    assert by_items.summary()["rows_filled_from_order_first_row"] == 3
    # With the order's total as the amount, the items under it add 0, not the total again;
    # an order whose first row has no total is not given one by its other rows.
    by_total = _import(SHOPIFY, ImportConfig(**{**shop, "amount": "Total"}))  # type: ignore[arg-type]
    assert {e["order_id"]: e["amount"] for e in by_total.events} == {"#1001": 34.9, "#1002": 20.0}
    assert [(e.line, e.reason) for e in by_total.errors] == [
        (6, "missing amount"), (7, "missing amount"), (8, "missing time")]


def test_blank_cells_are_not_filled_from_another_order() -> None:
    result = _import("c,o,t,a\nx,1,2024-01-01,5\nx,2,,6\nx,1,,7\n",
                     ImportConfig(customer="c", time="t", order="o", amount="a"))
    assert [e["amount"] for e in result.events] == [5.0]
    assert [(e.line, e.reason) for e in result.errors] == [(3, "missing time"), (4, "missing time")]
    assert "rows_filled_from_order_first_row" not in result.summary()


def test_status_values_not_read_are_counted_and_can_be_mapped() -> None:
    text = """
deal,contact,closed,amount,stage
1,ann@example.com,2024-01-01,100,Closed Won
2,bob@example.com,2024-01-02,50,Processing
3,ann@example.com,2024-01-03,70,processing
4,cy@example.com,2024-01-04,20,On Hold
5,cy@example.com,2024-01-05,20,partially_refunded
6,bob@example.com,2024-01-06,30,Closed Lost
"""
    crm = ImportConfig(customer="contact", time="closed", order="deal", amount="amount", status="stage")
    result = _import(text, crm)
    assert [e["order_id"] for e in result.events] == ["1", "5"]
    summary = result.summary()
    assert summary["unread_statuses"] == {"processing": 2, "on_hold": 1, "closed_lost": 1}
    assert summary["skipped_by_reason"] == {"not a purchase": 4}
    assert "@" not in json.dumps(summary) and all("@" not in e.reason for e in result.errors)
    told = _import(text, replace(crm, statuses={
        "Processing": "completed", "on-hold": "skip", "closed lost": "refunded"}))
    # A value read as refunded is an order bought and then refunded, as the word itself is.
    assert [(e["order_id"], e["status"]) for e in told.events] == [
        ("1", "completed"), ("2", "completed"), ("3", "completed"), ("5", "completed"), ("6", "completed"),
        ("6", "refunded")]
    assert told.skipped_by_reason() == {"status skipped (--status-map VALUE=skip)": 1}
    assert "unread_statuses" not in told.summary()
    with pytest.raises(ImportFailed, match="--status-map open=maybe"):
        _import(text, replace(crm, statuses={"open": "maybe"}))
    # A column of e-mail addresses given as the status is never echoed in the summary.
    wrong = _import(text, replace(crm, status="contact"))
    assert wrong.summary()["unread_statuses"] == {"(3 distinct values: is --status the right column?)": 6}


def test_a_repeated_header_line_is_skipped_as_such() -> None:
    # Two monthly exports joined with `cat`: the second's header (with its BOM) sits mid-file.
    text = "c,t,a\nx,2024-01-01,5\n\ufeffc, t ,a\ny,2024-02-01,6\n\nc,t,a\n"
    result = _import(text, ImportConfig(customer="c", time="t", amount="a"))
    assert [e["amount"] for e in result.events] == [5.0, 6.0]
    assert [(e.line, e.reason) for e in result.errors] == [(3, "the header line repeated"),
                                                          (6, "the header line repeated")]


def test_a_header_in_another_encoding_says_which_encoding_to_try(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("Kunde;Datum;W\xe4hrung;Betrag\nk1;2024-01-01;EUR;5\n".encode("latin-1"))
    config = ImportConfig(customer="Kunde", time="Datum", amount="Betrag", currency="W\xe4hrung")
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle, \
            pytest.raises(ImportFailed) as failed:
        import_transactions(handle, config)
    assert str(failed.value) == ("column(s) W\xe4hrung not in the header (columns: Kunde, Datum, W?hrung, Betrag); "
                                 "the header is not valid text in the file's encoding: try --encoding latin-1 "
                                 "or cp1252")
    with open(path, encoding="latin-1", newline="") as handle:
        assert [e["amount"] for e in import_transactions(handle, config).events] == [5.0]


def test_placeholders_for_no_value_are_no_id() -> None:
    # Excel and Power BI write "(blank)", SQL clients NULL, pandas nan: none of them is a customer
    # (the UCI Online Retail invoices made one "(blank)" customer of 3,722 stock adjustments).
    result = _import("""
c,o,t,q,p,sku
a,1,2024-01-02 10:00,2,5.00,X
(blank),2,2024-01-02 11:00,-1,5.00,X
NULL,3,2024-01-02 12:00,1,5.00,X
 nan ,4,2024-01-02 13:00,1,5.00,X
#N/A,5,2024-01-02 14:00,1,5.00,X
b,NULL,2024-01-02 15:00,1,5.00,X
b,6,2024-01-02 16:00,1,5.00,(blank)
Nancy,7,2024-01-02 17:00,1,5.00,X
""", ORDERS)
    assert [(e["customer_id"], e["order_id"]) for e in result.events] == [("a", "1"), ("b", "6"), ("Nancy", "7")]
    assert "product_id" not in result.events[1]["items"][0]
    assert [(err.line, err.reason) for err in result.errors] == [
        (3, "missing customer ('(blank)', what exports write for no value)"),
        (4, "missing customer ('NULL', what exports write for no value)"),
        (5, "missing customer ('nan', what exports write for no value)"),
        (6, "missing customer ('#N/A', what exports write for no value)"),
        (7, "missing order ('NULL', what exports write for no value)"),
    ]
    assert result.summary()["skipped_by_reason"]["missing customer ('(blank)', what exports write for no value)"] == 1


def test_one_id_holding_a_large_share_of_the_events_is_pointed_out_never_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from streams.cli import main

    rows = [f"c{i % 90},2024-01-{1 + i % 28:02d},10" for i in range(100)]  # ten buy twice
    src = tmp_path / "orders.csv"
    src.write_text("customer,day,total\n" + "\n".join(rows) + "\n", encoding="utf-8")
    args = ["import-transactions", str(src), "--customer", "customer", "--time", "day", "--amount", "total",
            "--out", str(tmp_path / "orders.jsonl")]
    assert main(args) == 0
    captured = capsys.readouterr()
    # Its days without a time of day are noted; nothing about its ids.
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert "shared_customer_id" not in json.loads(captured.out) and len(notes) == 1 \
        and notes[0].startswith("note: all 100 rows' times fall at midnight")
    # A guest checkout id: 10 of 110 orders.
    src.write_text("customer,day,total\n" + "\n".join(rows + ["guest-0042,2024-02-01,5"] * 10) + "\n",
                   encoding="utf-8")
    assert main(args) == 0
    captured = capsys.readouterr()
    note = json.loads(captured.out)["shared_customer_id"]
    assert note.startswith("the customer with the most events holds 9.1% of them (10): a shared id")
    assert f"note: {note}" in captured.err
    assert "guest-0042" not in captured.out + captured.err


def test_an_id_per_order_in_the_customer_column_is_pointed_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Olist's orders table: customer_id is minted per order, customer_unique_id is the person.
    from streams.cli import main

    src = tmp_path / "orders.csv"
    src.write_text("order_id,customer_id,customer_unique_id,order_purchase_timestamp,payment_value\n" + "".join(
        f"o{i},k{i},p{i % 1100},2018-01-{1 + i % 28:02d} 10:00:00,{10 + i}.5\n" for i in range(1200)),
        encoding="utf-8")

    def imported(customer: str) -> tuple[dict[str, Any], str]:
        assert main(["import-transactions", str(src), "--customer", customer, "--time", "order_purchase_timestamp",
                     "--amount", "payment_value", "--order", "order_id", "--out", str(tmp_path / "o.jsonl")]) == 0
        captured = capsys.readouterr()
        return json.loads(captured.out), captured.err

    summary, err = imported("customer_id")
    note = summary["one_order_per_customer"]
    assert note.startswith("no customer of 1,200 has a second order: is the customer column an id per order?")
    assert f"note: {note}" in err
    summary, err = imported("customer_unique_id")  # a hundred people ordered twice
    assert "one_order_per_customer" not in summary and "note:" not in err


def test_a_day_or_week_number_reads_as_days_or_weeks_after_a_date(tmp_path: Path) -> None:
    # Anonymised panels (dunnhumby's transaction_data: DAY 1..711, WEEK_NO) count time from
    # an undisclosed start.
    src = tmp_path / "transactions.csv"
    src.write_text("household_key,BASKET_ID,DAY,WEEK_NO,SALES_VALUE\n1,b1,1,1,2.5\n1,b2,15,3,4\n2,b3,700,100,1.25\n")
    days = import_transactions(src.open(), ImportConfig(customer="household_key", time="DAY", order="BASKET_ID",
                                                 amount="SALES_VALUE", time_format="days:2019-12-31"))
    assert [e["ts"][:10] for e in days.events] == ["2020-01-01", "2020-01-15", "2021-11-30"]
    weeks = import_transactions(src.open(), ImportConfig(customer="household_key", time="WEEK_NO", order="BASKET_ID",
                                                  amount="SALES_VALUE", time_format="weeks:2020-01-01"))
    assert [e["ts"][:10] for e in weeks.events] == ["2020-01-08", "2020-01-22", "2021-12-01"]
    # Without it, the day number is refused with the way out.
    plain = import_transactions(src.open(), ImportConfig(customer="household_key", time="DAY", order="BASKET_ID",
                                                  amount="SALES_VALUE"))
    assert not plain.events and "a day number: days:DATE" in plain.errors[0].reason
    with pytest.raises(ImportFailed, match="the start must be a date as 2020-01-31"):
        import_transactions(src.open(), ImportConfig(customer="household_key", time="DAY", amount="SALES_VALUE",
                                              time_format="days:31/12/2019"))


def test_skipped_rows_are_all_counted_and_the_first_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file whose rows are nearly all skipped (a wrong column) held one RowError per row.
    import features.importer
    from streams.cli import main

    monkeypatch.setattr(features.importer, "ERRORS_KEPT", 5)
    text = "c,t,a\n" + "".join(f"c{i},2024-01-0{1 + i % 9},{'x' if i % 4 else i}\n" for i in range(40))
    result = import_transactions(io.StringIO(text, newline=""), ImportConfig(customer="c", time="t", amount="a"))
    assert [e.line for e in result.errors] == [3, 4, 5, 7, 8]
    assert result.summary()["rows_skipped"] == 30 and result.skipped_by_reason() == {"bad amount": 30}
    (tmp_path / "t.csv").write_text(text)
    assert main(["import-transactions", str(tmp_path / "t.csv"), "--customer", "c", "--time", "t",
                 "--amount", "a", "--out", str(tmp_path / "t.jsonl"), "--max-errors", "3"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped line") == 3 and "... and 27 more skipped rows" in err


def test_a_time_of_day_column_is_added_to_the_day(tmp_path: Path) -> None:
    # dunnhumby keeps the time of day apart from the day number: TRANS_TIME, HHMM.
    src = tmp_path / "transactions.csv"
    src.write_text("household_key,BASKET_ID,DAY,TRANS_TIME,SALES_VALUE\n1,b1,1,1631,2.5\n1,b1,1,1631,1\n"
                   "1,b2,1,539,4\n2,b3,2,07:05,1.25\n2,b4,2,2460,3\n2,b5,2,,3\n")
    result = import_transactions(src.open(), ImportConfig(customer="household_key", time="DAY", clock="TRANS_TIME",
                                                    order="BASKET_ID", amount="SALES_VALUE",
                                                    time_format="days:2019-12-31"))
    assert [(e["order_id"], e["ts"][:16]) for e in result.events] == [
        ("b2", "2020-01-01T05:39"), ("b1", "2020-01-01T16:31"), ("b3", "2020-01-02T07:05")]
    assert [(e.line, e.reason) for e in result.errors] == [
        (6, "bad clock: not a time of day as 1631 or 16:31"), (7, "missing clock")]


def test_a_binary_file_is_refused_as_not_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streams.cli import main

    src = tmp_path / "export.dat"  # a format we do not read (a database dump, say)
    rng = random.Random(5)
    src.write_bytes(bytes(rng.randrange(256) for _ in range(4000)))
    assert main(["import-transactions", str(src), "--customer", "c", "--time", "t", "--amount", "a",
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "the first line is not a header of column names but binary data" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_a_json_lines_export_imports_as_its_csv_does(history: tuple[str, dict[int, str], list[list[str]]]) -> None:
    # The same rows as one JSON object per line (as BigQuery or a CDP exports a table): the
    # same events, the same skipped rows and reasons; only the read format differs.
    text, _, _ = history
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], [r for r in rows[1:] if len(r) == len(rows[0])]  # JSON has no field count
    as_csv = io.StringIO(newline="")
    csv.writer(as_csv, lineterminator="\n").writerows([header, *body])
    lines = [json.dumps(dict(zip(header, r, strict=True)), ensure_ascii=False) + "\n" for r in body]
    from_csv = import_transactions(io.StringIO(as_csv.getvalue(), newline=""), RETAIL)
    from_json = import_transactions(lines, RETAIL)
    assert from_json.events == from_csv.events and len(from_json.events) > 1_000
    assert [e.reason for e in from_json.errors] == [e.reason for e in from_csv.errors]
    assert from_json.summary() | {"delimiter": ","} == from_csv.summary()
    assert from_json.summary()["delimiter"] == "JSON Lines"


def test_json_lines_columns_are_keys_or_nested_paths_and_a_misspelt_one_is_refused() -> None:
    lines = [
        '{"event":"order","properties":{"user":{"id":7},"time":1704067200,"total":12.5}}\n',
        '\n',
        '{"event":"order","properties":{"user":{"id":"7"},"time":"2024-01-03T10:00:00Z","total":null}}\n',
        '{"broken\n',
        '["not", "an", "object"]\n',
        '{"event":"order","properties":{"user":{"id":8},"time":1704153600,"total":3}}\n',
    ]
    cfg = ImportConfig(customer="properties.user.id", time="properties.time", amount="properties.total")
    result = import_transactions(lines, cfg)
    assert [(e["customer_id"], e["amount"]) for e in result.events] == [("7", 12.5), ("8", 3.0)]
    assert result.events[0]["ts"].startswith("2024-01-01T00:00:00")  # epoch seconds, as in a CSV cell
    assert result.skipped_by_reason() == {"missing amount": 1, "not valid JSON": 1, "not a JSON object": 1}
    with pytest.raises(ImportFailed, match="properties.user_id in none of the first 3 JSON objects"):
        import_transactions(lines, replace(cfg, customer="properties.user_id"))


def test_a_json_array_export_reads_as_its_objects() -> None:
    text = json.dumps([{"c": "a", "t": "2024-01-01T10:00:00Z", "amt": 5}, {"c": "b", "t": "2024-01-02T10:00:00Z", "amt": 7.5}],
                      indent=2)
    result = import_transactions(text.splitlines(keepends=True), ImportConfig(customer="c", time="t", amount="amt"))
    assert [(e["customer_id"], e["amount"]) for e in result.events] == [("a", 5.0), ("b", 7.5)]
    assert result.summary()["delimiter"] == "JSON array"
    with pytest.raises(ImportFailed, match="not valid JSON"):
        import_transactions(["[{\"c\": 1,\n"], ImportConfig(customer="c", time="t", amount="amt"))


def test_customer_ids_that_are_emails_are_noted_and_hashed_when_asked(tmp_path: Path, capsys, monkeypatch) -> None:
    from streams.cli import main

    src = tmp_path / "mailing.csv"
    src.write_text("email,date,total\nAnn@Example.org,2024-03-01,10\nann@example.org,2024-03-09,12\n"
                   "bob@example.net,2024-03-02,5\n")
    args = ["import-transactions", str(src), "--customer", "email", "--time", "date", "--amount", "total"]
    assert main([*args, "--out", str(tmp_path / "plain.jsonl")]) == 0
    out = capsys.readouterr()
    assert "customer ids look like e-mail addresses (2 of 2)" in out.err  # two customers: Ann in any case
    assert json.loads(out.out)["customer_ids_are_emails"].startswith("customer ids look like e-mail addresses")
    assert "example" not in out.err + out.out  # the note names no address
    plain = [json.loads(line)["customer_id"] for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert sorted(plain) == ["ann@example.org", "ann@example.org", "bob@example.net"]  # Ann is one customer unhashed too

    monkeypatch.delenv("LEADPULSE_CUSTOMER_KEY", raising=False)
    assert main([*args, "--hash-customers", "--out", str(tmp_path / "h.jsonl")]) == 2
    assert "LEADPULSE_CUSTOMER_KEY" in capsys.readouterr().err

    monkeypatch.setenv("LEADPULSE_CUSTOMER_KEY", "a secret of the marketing team")
    for name in ("h1", "h2"):
        assert main([*args, "--hash-customers", "--out", str(tmp_path / f"{name}.jsonl")]) == 0
    out = capsys.readouterr()
    assert "e-mail" not in out.err and "customer_ids_are_emails" not in out.out
    hashed = (tmp_path / "h1.jsonl").read_text()
    assert "@" not in hashed and "example" not in hashed
    assert hashed == (tmp_path / "h2.jsonl").read_text()  # the same key: the same ids, re-imports join
    ids = [json.loads(line)["customer_id"] for line in hashed.splitlines()]
    assert len(ids) == 3 and len(set(ids)) == 2 and all(len(i) == 24 for i in ids)  # Ann is one customer
    monkeypatch.setenv("LEADPULSE_CUSTOMER_KEY", "another secret, another team")
    assert main([*args, "--hash-customers", "--out", str(tmp_path / "h3.jsonl")]) == 0
    other = {json.loads(line)["customer_id"] for line in (tmp_path / "h3.jsonl").read_text().splitlines()}
    assert other.isdisjoint(ids)


def test_cdnow_master_file_as_published_with_spaces_and_without_a_header(tmp_path: Path, capsys) -> None:
    """CDNOW's master file: fields apart by runs of spaces, CRLF, leading spaces; the original has no header."""
    import collections
    import shlex

    from streams.cli import main

    rng = random.Random(11)
    rows = [(f"{rng.randint(1, 300):05d}", f"1997{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
             rng.randint(1, 9), f"{rng.randint(500, 9000) / 100:.2f}") for _ in range(1_500)]
    body = "".join(f" {c} {d}  {n}   {v}\r\n" for c, d, n, v in rows)
    spaced = tmp_path / "CDNOW_master.txt"  # as the lifetimes package ships it, with a header
    spaced.write_text(" customer_id  date number_of_cds  dollar_value\r\n" + body, newline="")
    bare = tmp_path / "CDNOW_master_original.txt"  # as first published: no header line
    bare.write_text(body, newline="")

    def purchases(path: Path) -> collections.Counter:
        return collections.Counter((e["customer_id"], e["ts"], e["amount"])
                                   for e in map(json.loads, path.read_text().splitlines()))

    assert main(["import-transactions", str(spaced), "--customer", "customer_id", "--time", "date",
                 "--amount", "dollar_value", "--out", str(tmp_path / "a.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events_written"] == 1_500 and summary["delimiter"] == "spaces"
    assert main(["import-transactions", str(bare), "--columns", "customer,date,cds,dollars", "--customer", "customer",
                 "--time", "date", "--amount", "dollars", "--out", str(tmp_path / "b.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events_written"] == 1_500 and summary["header_line"] == "none (--columns)"
    assert purchases(tmp_path / "a.jsonl") == purchases(tmp_path / "b.jsonl")
    assert {e[0] for e in purchases(tmp_path / "a.jsonl")} == {c for c, *_ in rows}  # ids keep their zeros
    # inspect finds the header-less file's columns and suggests --columns; the command runs as printed.
    assert main(["inspect", str(bare)]) == 0
    out = capsys.readouterr().out
    assert "its first line is a row, not a header" in out
    suggested = next(line.strip() for line in out.splitlines() if line.strip().startswith("leadpulse "))
    assert "--columns customer,time," in suggested
    argv = shlex.split(suggested)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "c.jsonl")
    assert main(argv) == 0
    capsys.readouterr()
    assert purchases(tmp_path / "c.jsonl") == purchases(tmp_path / "b.jsonl")


def test_a_repeated_column_name_is_numbered_so_each_column_can_be_named(tmp_path: Path, capsys) -> None:
    """A report with two 'Amount' columns (net and gross, say): the second is Amount_2, in inspect too."""
    from streams.cli import main

    src = tmp_path / "orders.csv"
    src.write_text("Customer,Date,Amount,Amount,Order\nc1,2024-01-02,0,10,o1\nc2,2024-01-03,0,12,o2\n"
                   "Customer,Date,Amount,Amount,Order\nc1,2024-02-03,0,7,o3\n")  # exports joined: a header again
    assert main(["inspect", str(src)]) == 0
    assert "  Amount_2 " in capsys.readouterr().out
    assert main(["import-transactions", str(src), "--customer", "Customer", "--time", "Date", "--amount", "Amount_2",
                 "--out", str(tmp_path / "o.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events_written"] == 3 and summary["skipped_by_reason"] == {"the header line repeated": 1}
    amounts = [json.loads(line)["amount"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert amounts == [10.0, 12.0, 7.0]


def test_an_orders_later_lines_without_a_time_point_to_order(tmp_path: Path, capsys) -> None:
    """Shopify writes an order's date and total on its first line only."""
    from streams.cli import main

    src = tmp_path / "orders.csv"
    src.write_text("Name,Email,Paid at,Total,Lineitem sku\n"
                   + "".join(f"#{1000 + i},c{i % 7}@example.com,2024-01-{1 + i % 28:02d} 10:00,{10 + i},A\n"
                             f"#{1000 + i},c{i % 7}@example.com,,,B\n" for i in range(30)))
    args = ["import-transactions", str(src), "--customer", "Email", "--time", "Paid at", "--amount", "Total"]
    assert main([*args, "--out", str(tmp_path / "a.jsonl")]) == 0
    captured = capsys.readouterr()
    assert "30 rows have no time: if they are an order's later lines, --order COL" in captured.err
    assert main([*args, "--order", "Name", "--product", "Lineitem sku", "--out", str(tmp_path / "b.jsonl")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows_skipped"] == 0 and "have no time" not in captured.err


def test_crm_stages_and_voided_invoices(tmp_path: Path, capsys) -> None:
    """HubSpot's closedwon is a purchase, closedlost none; a voided invoice was never charged: no refund."""
    from streams.cli import main

    src = tmp_path / "deals.csv"
    src.write_text("Deal ID,Deal Stage,Close Date,Amount,Company\n"
                   + "".join(f"{i},{('closedwon', 'closedlost', 'voided')[i % 3]},2023-0{1 + i % 9}-1{i % 9} 14:03,"
                             f"{100 + i},co{i % 20}\n" for i in range(90)))
    assert main(["inspect", str(src)]) == 0
    assert "--status 'Deal Stage'" in capsys.readouterr().out
    assert main(["import-transactions", str(src), "--customer", "Company", "--time", "Close Date", "--amount", "Amount",
                 "--status", "Deal Stage", "--out", str(tmp_path / "d.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["events_written"] == 30 and summary["refund_events"] == 0
    assert summary["unread_statuses"] == {"closedlost": 30, "voided": 30}


def test_one_name_in_two_unicode_forms_is_one_customer(tmp_path: Path, capsys, monkeypatch) -> None:
    """Zoë typed composed on one system and decomposed by another became two customers."""
    from features.events import decode
    from streams.cli import main

    composed, decomposed = "Zo\u00eb M\u00fcller", "Zoe\u0308 Mu\u0308ller"
    src = tmp_path / "orders.csv"
    src.write_text(f"name,date,total\n{composed},2024-03-01,10\n{decomposed},2024-03-09,12\n", encoding="utf-8")
    args = ["import-transactions", str(src), "--customer", "name", "--time", "date", "--amount", "total"]
    monkeypatch.setenv("LEADPULSE_CUSTOMER_KEY", "a secret of the marketing team")
    for extra, name in (([], "plain"), (["--hash-customers"], "hashed")):
        assert main([*args, *extra, "--out", str(tmp_path / f"{name}.jsonl")]) == 0
        ids = {json.loads(line)["customer_id"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()}
        assert len(ids) == 1
    capsys.readouterr()
    events = [decode(json.dumps({"event_id": f"e{i}", "customer_id": cid, "ts": 1704067200000, "type": "web",
                                 "action": "login"})) for i, cid in enumerate((composed, decomposed))]
    assert events[0].customer_id == events[1].customer_id == composed


def _result_of(counts: dict[str, int]) -> ImportResult:
    return ImportResult([orjson.dumps({"customer_id": cid}) for cid, n in counts.items() for _ in range(n)])


def test_a_large_real_account_is_no_shared_id() -> None:
    """A wholesaler's 146 accounts: the largest holds 6.5% of the orders, ten times the median account's."""
    rng = random.Random(2)
    counts = {f"ACCT-{i:04d}": 140 - 4 * i if i < 6 else rng.randint(4, 14) for i in range(146)}
    result = _result_of(counts)
    assert 0.05 < 140 / sum(counts.values()) < 0.1
    assert result.shared_customer_id() == ""


@pytest.mark.parametrize("placeholder", ["0", "-1", "unknown", "GUEST", "n/a", "Kundennr", "(not set)"])
def test_a_placeholder_id_is_pointed_out_though_a_real_account_holds_more(placeholder: str) -> None:
    counts = {f"ACCT-{i:04d}": 200 if i == 0 else 15 for i in range(146)}
    result = _result_of({**counts, placeholder: 150})
    result.customer_column = "Kundennr"
    assert result.shared_customer_id().startswith(
        "a customer id that looks like a placeholder holds 5.9% of them (150): a shared id")


def test_an_id_far_above_any_customer_is_pointed_out_by_its_concentration() -> None:
    counts = {f"c{i}": 1 + i % 2 for i in range(300)}
    assert _result_of({**counts, "x9f3": 200}).shared_customer_id().startswith(
        "the customer with the most events holds 30.8% of them (200)")
    assert _result_of({**counts, "x9f3": 40}).shared_customer_id() == ""  # 8%: a big buyer may


def test_a_status_known_as_no_purchase_gets_no_hint_to_map_it_to_completed() -> None:
    """A subscription export's failed and void invoices: skipped as no purchase; an unknown status keeps the hint."""
    text = "c,t,amt,status\na,2024-01-01,19,paid\na,2024-02-01,19,Failed\nb,2024-02-01,49,void\nb,2024-03-01,49,on hold\n"
    result = _import(text, ImportConfig(customer="c", time="t", amount="amt", status="status"))
    reasons = {e.line: e.reason for e in result.errors}
    assert reasons[3] == "not a purchase: status 'failed' is no purchase (see unread_statuses in the summary)"
    assert reasons[4] == "not a purchase: status 'void' is no purchase (see unread_statuses in the summary)"
    assert "--status-map VALUE=completed" in reasons[5]
    assert result.skipped_by_reason() == {"not a purchase": 3}


def test_a_change_of_customer_id_shape_over_time_is_pointed_out_by_shape_never_by_id() -> None:
    """A shop that moved to a new CRM: numbers up to a day, CUST-000123 after. Each person is then
    two customers, their history split; the summary says when and in which shapes, no id."""
    rng = random.Random(4)
    start = datetime(2023, 1, 1, tzinfo=UTC)
    rows = ["customer,time,amount"]
    for i in range(600):
        who = rng.randint(1, 150)
        customer = str(48_000 + who) if i < 400 else f"CUST-{who:06d}"
        rows.append(f"{customer},{(start + timedelta(hours=11 * i + 3)).isoformat()},{rng.randint(5, 90)}")
    cfg = ImportConfig(customer="customer", time="time", amount="amount")
    summary = _import("\n".join(rows) + "\n", cfg).summary()
    note = summary["customer_id_shape_changes"]
    # By day: the day of the change holds the last old id too.
    assert note.startswith("customer ids change shape on 2023-07-03: before it 399 of 399 rows are digits(5), "
                           "from it 200 of 201 are letters(4)-digits(6);")
    assert "CUST" not in json.dumps(summary) and "480" not in note
    # Hashed, the ids all look alike: the shapes are read before the hash.
    hashed = _import("\n".join(rows) + "\n", replace(cfg, customer_key=b"k" * 16)).summary()
    assert hashed["customer_id_shape_changes"] == note
    # Numbers that grow a digit, or two shapes side by side all along (guests by e-mail), are no change.
    growing = ["customer,time,amount"] + [f"{9_800 + i},{(start + timedelta(hours=i)).isoformat()},5" for i in range(400)]
    assert "customer_id_shape_changes" not in _import("\n".join(growing) + "\n", cfg).summary()
    mixed = ["customer,time,amount"] + [f"{'g' + str(i) + '@example.org' if i % 3 else 1000 + i},"
                                        f"{(start + timedelta(hours=i)).isoformat()},5" for i in range(400)]
    assert "customer_id_shape_changes" not in _import("\n".join(mixed) + "\n", cfg).summary()

"""Exported tables joined in the import command: --query over the file and its --join files."""

from __future__ import annotations

import csv
import gzip
import json
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from features.join_tables import open_tables
from streams.cli import main

# Olist's shape: a customer_id per order, the person in customers.csv, prices per line item.
QUERY = ("select c.customer_unique_id, o.order_purchase_timestamp, o.order_status, i.order_id, i.price "
         "from olist_order_items_dataset i join olist_orders_dataset o using (order_id) "
         "join olist_customers_dataset c using (customer_id)")
ARGS = ["--customer", "customer_unique_id", "--time", "order_purchase_timestamp", "--order", "order_id",
        "--amount", "price", "--status", "order_status", "--default-currency", "BRL"]


@pytest.fixture
def olist(tmp_path: Path) -> dict[str, object]:
    """Three files as the dataset ships them, one of them gzipped and one with ';' and a title line."""
    people = [f"{n:05d}" for n in range(40)]  # leading zeros: ids, not numbers
    orders, customers, items = [], [], []
    truth: dict[str, list[float]] = defaultdict(list)  # person -> order totals of completed orders
    for n in range(200):
        person = people[(n * 7) % 40 if n % 3 else n % 5]
        order, customer = f"o{n:04d}", f"c{n:04d}"  # a new customer id for every order
        status = "canceled" if n % 17 == 0 else "delivered"
        orders.append([order, customer, status, f"2017-{1 + n % 12:02d}-{1 + n % 28:02d} 10:{n % 60:02d}:00"])
        customers.append([customer, person, "sao paulo"])
        prices = [round(10 + (n * k) % 90 + 0.5, 2) for k in range(1, 2 + n % 3)]
        items += [[order, k + 1, f"{p:.2f}"] for k, p in enumerate(prices)]
        if status == "delivered":
            truth[person].append(round(sum(prices), 2))
    with gzip.open(tmp_path / "olist_order_items_dataset.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "order_item_id", "price"])
        w.writerows(items)
    with open(tmp_path / "olist_orders_dataset.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["order_id", "customer_id", "order_status", "order_purchase_timestamp"])
        w.writerows(orders)
    with open(tmp_path / "olist_customers_dataset.csv", "w", newline="") as f:
        f.write("Customers export\n\n")
        w = csv.writer(f, delimiter=";")
        w.writerow(["customer_id", "customer_unique_id", "customer_city"])
        w.writerows(customers)
    return {"dir": tmp_path, "truth": truth}


def _import(folder: Path, *extra: str) -> int:
    return main(["import-transactions", str(folder / "olist_order_items_dataset.csv.gz"),
                 "--join", str(folder / "olist_orders_dataset.csv"),
                 "--join", str(folder / "olist_customers_dataset.csv"),
                 "--query", QUERY, *ARGS, "--out", str(folder / "events.jsonl"), *extra])


def test_joined_exports_import_as_one_purchase_per_order_of_each_person(olist: dict, capsys) -> None:
    folder: Path = olist["dir"]  # type: ignore[assignment]
    assert _import(folder) == 0
    summary = json.loads(capsys.readouterr().out)
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    purchases: dict[str, list[float]] = defaultdict(list)
    for ev in events:
        if ev["status"] == "completed":
            purchases[ev["customer_id"]].append(ev["amount"])
    truth: dict[str, list[float]] = olist["truth"]  # type: ignore[assignment]
    assert {c: sorted(v) for c, v in purchases.items()} == {c: sorted(v) for c, v in truth.items()}
    assert all(len(c) == 5 for c in purchases), "ids keep their leading zeros"
    assert Counter(ev["status"] for ev in events)["refunded"] == len(range(0, 200, 17))
    assert summary["query_rows"] == sum(1 + n % 3 for n in range(200)) and summary["rows_skipped"] == 0
    assert max(len(v) for v in purchases.values()) > 5, "repeat buyers, as one person"


def test_inspect_suggests_the_command_with_its_joins(olist: dict, capsys) -> None:
    folder: Path = olist["dir"]  # type: ignore[assignment]
    assert main(["inspect", str(folder / "olist_order_items_dataset.csv.gz"),
                 "--join", str(folder / "olist_orders_dataset.csv"),
                 "--join", str(folder / "olist_customers_dataset.csv"), "--query", QUERY]) == 0
    out = capsys.readouterr().out
    suggested = out.split("suggested (check each column it picked):\n  ")[1].splitlines()[0]
    assert suggested.startswith("leadpulse import-transactions "), "orders with a status, not an event log"
    for piece in ("--customer customer_unique_id", "--status order_status", "--order order_id",
                  "olist_orders_dataset.csv", "olist_customers_dataset.csv", "--query"):
        assert piece in suggested


def test_a_database_joins_a_csv_and_a_csv_joins_a_database(tmp_path: Path, capsys) -> None:
    shop = tmp_path / "shop.sqlite"
    with sqlite3.connect(shop) as db:
        db.execute("create table orders (id text, customer text, at text, total real)")
        db.executemany("insert into orders values (?, ?, ?, ?)",
                       [(f"o{n}", f"c{n % 4}", f"2024-01-{1 + n:02d}", 10.0 + n) for n in range(12)])
    people = tmp_path / "people.csv"
    people.write_text("customer,person\n" + "".join(f"c{n},p{n % 2}\n" for n in range(4)))
    before = shop.read_bytes()
    args = ["--customer", "person", "--time", "at", "--order", "id", "--amount", "total",
            "--default-currency", "EUR"]
    assert main(["import-transactions", str(shop), "--join", str(people), "--out", str(tmp_path / "a.jsonl"),
                 "--query", "select p.person, o.* from orders o join people p using (customer)", *args]) == 0
    assert main(["import-transactions", str(people), "--join", str(shop), "--out", str(tmp_path / "b.jsonl"),
                 "--query", "select p.person, o.* from shop.orders o join people p using (customer)", *args]) == 0
    capsys.readouterr()
    a, b = ((tmp_path / n).read_text() for n in ("a.jsonl", "b.jsonl"))
    assert a == b and len(a.splitlines()) == 12
    assert {json.loads(line)["customer_id"] for line in a.splitlines()} == {"p0", "p1"}
    assert shop.read_bytes() == before, "the database is read, never written"


def test_mistakes_get_a_reason(olist: dict, tmp_path: Path, capsys) -> None:
    folder: Path = olist["dir"]  # type: ignore[assignment]
    orders = str(folder / "olist_orders_dataset.csv")
    base = ["import-transactions", orders, *ARGS, "--out", str(tmp_path / "x.jsonl")]
    assert main([*base, "--join", orders]) == 2
    assert "--join adds a table for --query" in capsys.readouterr().err
    assert main([*base, "--join", orders, "--query", "select 1"]) == 2
    assert "two tables would be named 'olist_orders_dataset'" in capsys.readouterr().err
    assert main([*base, "--join", str(tmp_path / "nope.csv"), "--query", "select 1"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*base, "--query", "select * from nowhere"]) == 2
    assert "the query failed (no such table: nowhere)" in capsys.readouterr().err
    assert main([*base, "--table", "orders"]) == 2
    assert "--table reads a SQLite database" in capsys.readouterr().err


def test_tables_hold_text_as_the_file_does(tmp_path: Path) -> None:
    path = tmp_path / "2024 sales.csv"
    path.write_bytes("id,id,Price,\n007,a,\"1,5\",x\n\n008,b,2\nM\xfcller,c,3,y,extra\n".encode("cp1252"))
    db, loaded = open_tables(path, [])
    assert loaded == {"t_2024_sales": 3}
    rows = db.execute('select * from t_2024_sales').fetchall()
    assert [d[0] for d in db.execute("select * from t_2024_sales").description] == ["id", "id_2", "Price", "column_4"]
    assert rows == [("007", "a", "1,5", "x"), ("008", "b", "2", None), ("Müller", "c", "3", "y")]
    assert db.execute("select sum(Price) from t_2024_sales where id != '007'").fetchone() == (5.0,)
    db.close()


def test_an_event_log_joins_its_customers_too(tmp_path: Path, capsys) -> None:
    # A clickstream keyed by a device id, and a table that names each device's person.
    rows = [("device", "at", "event")] + [
        (f"d{n % 6}", f"2024-02-{1 + n % 20:02d}T10:{n % 60:02d}:00Z", "view" if n % 4 else "transaction")
        for n in range(60)]
    log, people = tmp_path / "clicks.csv", tmp_path / "devices.csv"
    log.write_text("".join(",".join(row) + "\n" for row in rows))
    people.write_text("device,person\n" + "".join(f"d{n},p{n // 2}\n" for n in range(6)))
    assert main(["import-events", str(log), "--join", str(people), "--out", str(tmp_path / "e.jsonl"),
                 "--query", "select p.person, c.at, c.event from clicks c join devices p using (device)",
                 "--customer", "person", "--time", "at", "--action", "event"]) == 0
    summary = json.loads(capsys.readouterr().out)
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert {ev["customer_id"] for ev in events} == {"p0", "p1", "p2"}
    assert Counter(ev["type"] for ev in events) == {"web": 45, "purchase": 15}
    assert summary["query_rows"] == 60

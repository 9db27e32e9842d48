r"""Several exported tables in one SQLite connection, for ``--query`` to join.

Real exports are normalised: orders in one file, the customers in another, line items
or payments in a third. Olist's Brazilian e-commerce data is the common example: its
orders carry a ``customer_id`` per order, and the person is ``customer_unique_id`` in
the customers file. Imported as it is, every order is a new customer. ``--query`` joins
the files in the import command, as it joins a SQLite database's tables:

    leadpulse import-transactions olist_order_items_dataset.csv \
        --join olist_orders_dataset.csv --join olist_customers_dataset.csv \
        --query 'select c.customer_unique_id, o.order_purchase_timestamp, i.order_id, i.price
                 from olist_order_items_dataset i join olist_orders_dataset o using (order_id)
                 join olist_customers_dataset c using (customer_id)' ...

Each file becomes a table named after it (its name up to the first dot, other than
letters, digits and ``_`` made ``_``): a CSV (any delimiter the imports sniff, packed
or not), an Excel workbook or a Parquet file (as the imports read them), or a SQLite
database, attached read-only (its tables are ``name.table``). Cells are text, as in
the file, so ids keep their leading zeros; SQLite still sums and compares text that
reads as a number (``sum(price)``, ``cast(price as real)``).

>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "orders.csv").write_text("order,customer,at\no1,007,2024-01-02\no2,008,2024-01-03\n")
>>> _ = (folder / "customers.csv").write_text("customer;person\n007;ann\n008;ann\n")
>>> db, tables = open_tables(folder / "orders.csv", [folder / "customers.csv"])
>>> tables
{'orders': 2, 'customers': 2}
>>> db.execute("select o.\"order\", c.person from orders o join customers c using (customer)").fetchall()
[('o1', 'ann'), ('o2', 'ann')]
>>> db.close()
"""

from __future__ import annotations

import io
import re
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from features.importer import legacy_text, numbered_names, table_records

ROWS_PER_INSERT = 10_000


def table_name(path: Path) -> str:
    """The table a file becomes: its name up to the first dot, as an SQL name.

    >>> table_name(Path("data/olist_orders_dataset.csv.gz")), table_name(Path("2024 sales.csv"))
    ('olist_orders_dataset', 't_2024_sales')
    """
    name = re.sub(r"\W", "_", path.name.split(".")[0], flags=re.ASCII) or "t"
    return f"t_{name}" if name[0].isdigit() else name


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_tables(
    main: Path, joins: Sequence[Path], opener: Callable[[Path], IO[bytes]] | None = None,
) -> tuple[sqlite3.Connection, dict[str, int]]:
    """A connection holding ``main`` and every file of ``joins`` as tables; and their row counts.

    A SQLite ``main`` is the connection's own database (read-only; the others become
    temporary tables beside its tables, in memory). A SQLite database among ``joins``
    is attached read-only and counts no rows (``-1``). Two files of one name are refused.
    ``opener`` opens a text file's bytes (the command line's unpacks gzip, xz, bzip2, zip).
    """
    from features import sqlite_table

    main_is_db = sqlite_table.is_sqlite(main)
    # URIs on, so an attached database is opened read-only whatever SQLite was built with.
    db = sqlite_table.connect(main) if main_is_db else sqlite3.connect("file::memory:", uri=True)
    loaded: dict[str, int] = {}
    try:
        for path in ([] if main_is_db else [main]) + list(joins):
            name = table_name(path)
            if name in loaded:
                raise ValueError(f"two tables would be named {name!r} ({path.name}): rename one of the files")
            if sqlite_table.is_sqlite(path):
                db.execute(f"attach database ? as {_quoted(name)}", (f"{path.resolve().as_uri()}?mode=ro",))
                loaded[name] = -1
            else:
                loaded[name] = _load(db, name, path, opener or _plain)
    except BaseException:
        db.close()
        raise
    return db, loaded


def _plain(path: Path) -> IO[bytes]:
    return path.open("rb")


def _load(db: sqlite3.Connection, name: str, path: Path, opener: Callable[[Path], IO[bytes]]) -> int:
    from features import parquet, workbook

    if workbook.is_workbook(path) or parquet.is_parquet(path):
        with tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as copy:
            if workbook.is_workbook(path):
                workbook.write_csv(path, copy)
            else:
                parquet.write_csv(path, copy)
            copy.seek(0)
            return _insert(db, name, path, copy)
    with opener(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape",
                                               newline="") as text:
        return _insert(db, name, path, text)


def _insert(db: sqlite3.Connection, name: str, path: Path, text: io.TextIOBase) -> int:
    records = table_records(text)
    header = next((cells for _, cells in records), None)
    if not header:
        raise ValueError(f"{path.name} is empty: no header line to name its columns")
    columns = _unique([legacy_text(c).strip() or f"column_{i + 1}" for i, c in enumerate(header)])
    width = len(columns)
    db.execute(f"create temp table {_quoted(name)} ({', '.join(_quoted(c) + ' text' for c in columns)})")
    insert = f"insert into temp.{_quoted(name)} values ({', '.join('?' * width)})"
    rows = 0
    batch: list[list[str | None]] = []
    for _, cells in records:
        if not any(cells):
            continue  # a blank line
        values: list[str | None] = [legacy_text(c) if c else None for c in cells[:width]]
        values += [None] * (width - len(values))
        batch.append(values)
        if len(batch) >= ROWS_PER_INSERT:
            db.executemany(insert, batch)
            rows += len(batch)
            batch.clear()
    db.executemany(insert, batch)
    return rows + len(batch)


def _unique(names: list[str]) -> list[str]:
    """Column names, a repeated one numbered (SQLite refuses a table with two of one name).

    >>> _unique(["id", "price", "ID", "id"])
    ['id', 'price', 'ID_2', 'id_3']
    """
    return numbered_names(names, fold_case=True)  # SQLite's column names ignore case

"""Read a table of a SQLite database, or the rows of a query on it, as the text table a CSV export is.

A shop's or an app's history often sits in a SQLite file (or is put into one to
join an export's tables). :func:`write_csv` writes a table, or what a ``SELECT``
returns, as CSV for the importer: a query joins orders to customers in the same
command. Values are written as :func:`features.tabular.typed_cell` writes them (whole numbers
without ``.0``, ``NULL`` as an empty cell).

>>> import io, sqlite3, tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "shop.db"
>>> with sqlite3.connect(path) as db:
...     _ = db.execute("create table orders (customer, at, total)")
...     _ = db.execute("insert into orders values (17850.0, '2011-12-09 12:50', 2.55), (NULL, '2011-12-10', 1)")
>>> out = io.StringIO()
>>> write_csv(path, out).rows, out.getvalue().splitlines()
(2, ['customer,at,total', '17850,2011-12-09 12:50,2.55', ',2011-12-10,1'])
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import IO

from features.tabular import TableWriter

MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    """Whether a file is a SQLite database, told by its header."""
    try:
        with open(path, "rb") as probe:
            return probe.read(16) == MAGIC
    except OSError:
        return False


def tables(path: Path) -> list[str]:
    """The database's tables and views, by name."""
    with closing(connect(path)) as db:
        try:
            listed = db.execute(
                "select name from sqlite_master where type in ('table', 'view') and name not like 'sqlite_%' "
                "order by name").fetchall()
        except sqlite3.Error as exc:
            raise ValueError(f"{path.name} is a SQLite database that cannot be read ({exc})") from None
    return [name for (name,) in listed]


def connect(path: Path) -> sqlite3.Connection:
    """The database, opened read-only: an import never writes to the user's database."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def write_csv(
    path: Path, out: IO[str], table: str | None = None, query: str | None = None, limit: int | None = None,
) -> TableWriter:
    """Write a table's rows (``table``), or a query's (``query``), out as CSV.

    With neither, a database of one table is read whole; one of several is refused
    with their names.
    """
    if query is None:
        if table is None:
            names = tables(path)
            if len(names) != 1:
                raise ValueError(f"{path.name} holds {len(names)} tables ({', '.join(names[:20])}): "
                                 "name one with --table, or join them with --query 'select ...'")
            table = names[0]
        query = f'select * from "{table.replace(chr(34), chr(34) * 2)}"'
    with closing(connect(path)) as db:
        return query_csv(db, query, out, path.name, limit)


def query_csv(
    db: sqlite3.Connection, query: str, out: IO[str], label: str, limit: int | None = None, form: str = "SQLite",
) -> TableWriter:
    """Write the rows of ``query`` on ``db`` out as CSV; ``label`` names the source in errors,
    ``form`` in the import's summary.

    >>> import io
    >>> out = io.StringIO()
    >>> query_csv(sqlite3.connect(":memory:"), "select 1 as n, null as m", out, "memory").rows, out.getvalue().splitlines()
    (1, ['n,m', '1,'])
    """
    try:
        cursor = db.execute(query)
    except sqlite3.Error as exc:
        raise ValueError(f"{label}: the query failed ({exc})") from None
    if cursor.description is None:
        raise ValueError(f"{label}: the query returns no rows (give a select)")
    table_out = TableWriter(out, [d[0] for d in cursor.description], form=form)
    try:
        while (limit is None or table_out.rows < limit) and (batch := cursor.fetchmany(10_000)):
            for values in batch:
                table_out.write(values)
    except sqlite3.Error as exc:
        raise ValueError(f"{label}: reading the rows failed ({exc})") from None
    return table_out

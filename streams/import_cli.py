"""``leadpulse import-transactions``: a transaction table (CSV, JSON, .xlsx, Parquet, SQLite) to purchase events.

A thin shell over :func:`features.importer.import_transactions`: it reads the
file, shows a progress bar on a terminal, prints the first skipped rows (line
number and reason, never a cell's content) on stderr and a JSON summary on
stdout, and writes the events sorted by time, ready for ``leadpulse backtest``.

>>> import tempfile
>>> from pathlib import Path
>>> from streams.cli import main
>>> tmp = Path(tempfile.mkdtemp())
>>> _ = (tmp / "t.csv").write_text("cust,when,total\\nc1,2024-03-01 10:00,19.90\\nc2,yesterday,5\\n")
>>> main(["import-transactions", str(tmp / "t.csv"), "--customer", "cust", "--time", "when",
...       "--amount", "total", "--out", str(tmp / "t.jsonl")])  # doctest: +ELLIPSIS
{
  "rows_read": 2,
  "events_written": 1,
  ...
0
>>> len((tmp / "t.jsonl").read_text().splitlines())
1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import replace
from itertools import chain, islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from features.actions import CHANNELS, TARGETS
from streams.cli import (
    EXTRA_PARSERS,
    PROGRESS_LOG_S,
    command,
    count_lines,
    open_input,
    progress,
    zip_data_members,
)

if TYPE_CHECKING:
    from features.tabular import TableWriter
    from features.workbook import WorkbookRead

CUSTOMER_KEY_VAR = "LEADPULSE_CUSTOMER_KEY"  # the --hash-customers key: a secret, so not an option
DEFAULT_ENCODING = "utf-8-sig"  # UTF-8, with or without the byte order mark Excel writes

EXAMPLE = """examples:
  # UCI Online Retail II as downloaded: a zip of a workbook, one sheet per year
  leadpulse import-transactions online+retail+ii.zip --customer "Customer ID" --time InvoiceDate \\
      --order Invoice --quantity Quantity --price Price --product StockCode \\
      --default-currency GBP --out retail2.jsonl
  # UCI Online Retail (one row per line item, cancellations have negative quantities)
  leadpulse import-transactions online_retail.csv --customer CustomerID --time InvoiceDate \\
      --order InvoiceNo --quantity Quantity --price UnitPrice --product StockCode \\
      --default-currency GBP --extra Country --date-order mdy --out retail.jsonl
  # a shop export with one row per order
  leadpulse import-transactions orders.csv --customer client_id --time created_at \\
      --amount total --order order_no --currency currency --status state --out orders.jsonl
"""


EVENTS_EXAMPLE = """examples:
  # GA4's BigQuery export as JSON Lines (epoch microseconds; the session among event_params)
  leadpulse import-events ga4.jsonl --customer user_pseudo_id --time event_timestamp \\
      --action event_name --session event_params.ga_session_id --order ecommerce.transaction_id \\
      --amount ecommerce.purchase_revenue --default-currency USD --others skip --out ga4-events.jsonl
  # Retailrocket's events.csv (timestamp in ms, view / addtocart / transaction, no prices)
  leadpulse import-events events.csv --customer visitorid --time timestamp --action event \\
      --product itemid --order transactionid --out retailrocket.jsonl
  # REES46 (one row per product; purchases of one session become one order)
  leadpulse import-events 2019-Oct.csv --customer user_id --time event_time --action event_type \\
      --session user_session --product product_id --category category_code --price price \\
      --default-currency USD --out rees46.jsonl
  # a CRM export of e-mail activity beside orders, with its own words for the actions
  leadpulse import-events activity.csv --customer contact --time at --action what \\
      --campaign campaign --amount value --map "Newsletter Read=opened" --map bookmark=skip \\
      --out activity.jsonl
"""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "import-transactions",
        help="turn a transaction table (CSV, JSON, Excel, Parquet, SQLite) into purchase events",
        description="Turn a transaction table into purchase events, sorted by time. Rows that "
                    "cannot be read are skipped and reported by line number and reason.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_columns(p, event_log=False)
    e = sub.add_parser(
        "import-events",
        help="turn an event log table (views, carts, purchases, e-mail activity) into events",
        description="Turn an event log (one row per thing a customer did: page or product "
                    "views, carts, purchases, e-mail opens and clicks) into web, purchase and "
                    "campaign events, sorted by time. The --action column says what each row "
                    "is; common words are read as they are (view, addtocart, cart, "
                    "transaction, purchase, email_opened, ...) and --map reads the others. "
                    "Rows that cannot be read are skipped and reported by line number and reason.",
        epilog=EVENTS_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_columns(e, event_log=True)
    i = sub.add_parser(
        "inspect",
        help="say which column of a table is what, and suggest the import command",
        description="Profile the columns of a table (CSV, JSON Lines, Excel, Parquet, SQLite) from a "
                    "sample of its rows: how full, how many distinct values, what share reads as a time, "
                    "a number, an e-mail address, a status or an action word; then suggest the "
                    "import-transactions or import-events command. Cell values are not shown, except "
                    "those of a small vocabulary (statuses, actions, currencies).",
    )
    i.add_argument("file", help="the table, in any format the imports read")
    i.add_argument("--rows", type=int, default=5_000, help="rows sampled from the top (default 5,000)")
    i.add_argument("--sheet", metavar="NAME", help="the sheet of an Excel workbook")
    i.add_argument("--table", metavar="NAME", help="the table of a SQLite database")
    i.add_argument("--query", metavar="SQL", help="a SELECT on a SQLite database, or on the file and --join files")
    i.add_argument("--join", metavar="FILE", action="append", default=[], type=Path,
                   help="another table for --query, named after its file; repeatable")


def _add_columns(p: Any, event_log: bool) -> None:
    p.add_argument("file", help="CSV file with a header line, an Excel workbook (.xlsx), Parquet (with pyarrow), "
                   "a SQLite database, or JSON Lines (one object per line; a column is a key, nested as "
                   "a.b); gzip is fine ('-' for stdin)")
    p.add_argument("--out", required=True, help="JSON Lines file to write")
    cols = p.add_argument_group("columns")
    cols.add_argument("--customer", required=True, metavar="COL", help="customer id column")
    cols.add_argument("--time", required=True, metavar="COL",
                      help="event time column" if event_log else "order date / time column")
    if event_log:
        cols.add_argument("--action", required=True, metavar="COL",
                          help="what each row is: view, add_to_cart, purchase, opened, ...")
        cols.add_argument("--map", metavar="VALUE=ACTION", action="append", default=[],
                          help="read an action value as ACTION: one of "
                               + ", ".join(sorted(TARGETS)) + "; repeatable")
        cols.add_argument("--others", metavar="ACTION", dest="other_actions",
                          help="read every action value that no built-in word or --map reads as ACTION "
                               "(page_view for a clickstream's page names, or skip); default: skip them "
                               "and count them in the summary's unmapped_actions")
        cols.add_argument("--session", metavar="COL",
                          help="web session id column (without --order, a session's purchase "
                               "rows are one order)")
        cols.add_argument("--campaign", metavar="COL", help="campaign id column (campaign rows)")
        cols.add_argument("--channel", metavar="COL",
                          help="channel column: email, sms, push, web, ads")
        cols.add_argument("--default-channel", default="email", choices=sorted(CHANNELS),
                          help="channel of campaign rows without a channel column (default email)")
        cols.add_argument("--event-id", metavar="COL",
                          help="the log's own event id column (default: a hash of the row)")
    cols.add_argument("--amount", metavar="COL",
                      help="row total column (purchase rows; without it and --price, purchases "
                           "have amount 0)" if event_log else
                           "row total column; required unless --price (then amount = price x quantity)")
    cols.add_argument("--order", metavar="COL",
                      help="order / invoice id column: rows of one order become one event with items")
    cur = cols.add_mutually_exclusive_group()
    cur.add_argument("--currency", metavar="COL", help="currency code column")
    cur.add_argument("--default-currency", default="EUR", metavar="CODE",
                     help="currency of every row when there is no currency column (default EUR)")
    cols.add_argument("--convert-to", metavar="CODE",
                      help="convert every amount into this currency (features sum amounts, so a "
                           "history in several currencies needs one); with --rate for the others")
    cols.add_argument("--rate", metavar="CODE=RATE", action="append", default=[],
                      help="one amount in CODE is RATE in the --convert-to currency, e.g. GBP=1.17; "
                           "repeatable. A row in a currency without a rate is skipped and reported")
    cols.add_argument("--status", metavar="COL",
                      help="status column: refunded/returned -> the order's purchase and its refund, "
                           "cancelled -> refund, completed/paid/shipped/won/... -> purchase, anything "
                           "else skipped (and counted in the summary's unread_statuses)")
    cols.add_argument("--status-map", metavar="VALUE=STATUS", action="append", default=[],
                      help="read a status value as completed, refunded or skip, e.g. "
                           "processing=completed; repeatable")
    cols.add_argument("--refund-time", metavar="COL",
                      help="when a refunded order (its --status) was refunded, e.g. a refund date or "
                           "updated-at column: the time of its refund event (blank: the order's time)")
    cols.add_argument("--refund-amount", metavar="COL",
                      help="the amount refunded of an order, e.g. Shopify's 'Refunded Amount': on a "
                           "purchase row (paid, partially refunded) a refund event of it beside the "
                           "purchase; on a refunded order's row its refund's amount (blank or 0: none; "
                           "above the order's amount: cut to it, and counted)")
    cols.add_argument("--quantity", metavar="COL", help="quantity column (line items)")
    cols.add_argument("--price", metavar="COL", help="unit price column (line items)")
    cols.add_argument("--product", metavar="COL", help="product id column (line items)")
    cols.add_argument("--category", metavar="COL", help="product category column (line items)")
    cols.add_argument("--extra", metavar="COL", action="append", default=[],
                      help="carry this column on events (e.g. a segment or country for "
                           "backtest --group-by); repeatable. Never carry personal data.")
    fmt = p.add_argument_group("reading")
    fmt.add_argument("--sheet", metavar="NAME",
                     help="the sheet of an Excel workbook to read (default: the first, and after it "
                          "every sheet with the same header, as a workbook split by year)")
    fmt.add_argument("--table", metavar="NAME",
                     help="the table of a SQLite database to read (default: its only table)")
    fmt.add_argument("--query", metavar="SQL",
                     help="a SELECT on a SQLite database whose rows are the table to import, e.g. a "
                          "join of orders and customers (the database is opened read-only); or on the "
                          "file and the --join files, each a table named after its file")
    fmt.add_argument("--join", metavar="FILE", action="append", default=[], type=Path,
                     help="another table for --query to join (CSV, Excel, Parquet or SQLite), named "
                          "after its file up to the first dot (orders.csv: orders); repeatable")
    fmt.add_argument("--delimiter", default="auto",
                     help="field separator: , ; tab | or space (runs of spaces and tabs; default: the "
                          "header's, the most frequent of these, or spaces when it has none of them)")
    fmt.add_argument("--columns", metavar="A,B,...",
                     help="the column names of a file without a header line (its first line is a row), "
                          "in order, e.g. customer,date,cds,dollars for CDNOW's master file")
    fmt.add_argument("--encoding", default=DEFAULT_ENCODING,
                     help="file encoding (default utf-8, or utf-16 when the file starts with its byte "
                          "order mark; by default, bytes that are not UTF-8 are read as Windows-1252, "
                          "as older exports write them, and counted; given, bad bytes skip their row)")
    fmt.add_argument("--time-format", metavar="FMT",
                     help="strptime format such as '%%d/%%m/%%Y %%H:%%M', or epoch_s, epoch_ms, epoch_us, epoch_ns, excel, or "
                          "days:DATE / weeks:DATE for a count of days or weeks after DATE (days:2020-01-01); "
                          "default: ISO 8601, epoch, YYYYMMDD, 2011/12/09, slash, dot or dash dates (12/9/2011, 09.12.2011, "
                          "09-12-2011) and month names (09-Dec-2011, Dec 9, 2011), guessed per row")
    fmt.add_argument("--clock", metavar="COL",
                     help="a time-of-day column (1631 or 16:31, as dunnhumby's TRANS_TIME) added to the "
                          "--time column's date, for tables that keep the two apart")
    fmt.add_argument("--date-order", choices=["auto", "dmy", "mdy"], default="auto",
                     help="how to read slash dates like 12/9/2011 (default: decided by the rows "
                          "whose day is above 12; the import stops if none settles it)")
    fmt.add_argument("--timezone", default="UTC",
                     help="time zone of times without an offset (IANA name, default UTC)")
    decimal = fmt.add_mutually_exclusive_group()
    decimal.add_argument("--decimal-comma", dest="decimal_comma", action="store_const", const=True,
                         default=None, help="amounts like 1.234,50 (default: decided by the numbers, "
                                            "comma when some read 12,50 and none 12.50)")
    decimal.add_argument("--decimal-point", dest="decimal_comma", action="store_const", const=False,
                         help="amounts like 1,234.50, whatever the numbers look like")
    fmt.add_argument("--refunds", choices=["event", "skip"], default="event",
                     help="negative amounts / quantities: refund events (default) or skip")
    fmt.add_argument("--hash-customers", action="store_true",
                     help="replace every customer id with a keyed hash (HMAC-SHA256, 24 hex digits; the key "
                          "from LEADPULSE_CUSTOMER_KEY, never from the command line): e-mail addresses and "
                          "other personal ids stay out of the events, Kafka, Redis and score records")
    fmt.add_argument("--max-errors", type=int, default=20,
                     help="skipped rows shown on stderr (all are counted; default 20)")


EXTRA_PARSERS.append(add_parser)


def _rates(pairs: list[str]) -> dict[str, float]:
    """``["GBP=1.17"]`` -> ``{"GBP": 1.17}``.

    >>> _rates(["GBP=1.17", "usd = 0.92"])
    {'GBP': 1.17, 'USD': 0.92}
    """
    out = {}
    for pair in pairs:
        code, sep, rate = pair.partition("=")
        try:
            out[code.strip().upper()] = float(rate)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--rate {pair!r}: give CODE=RATE, e.g. GBP=1.17")
    return out


def _actions(pairs: list[str], option: str = "--map", example: str = "addtobasket=add_to_cart") -> dict[str, str]:
    """``["Newsletter Read=opened"]`` -> ``{"Newsletter Read": "opened"}`` (checked by the config).

    >>> _actions(["Newsletter Read = opened", "bookmark=skip"])
    {'Newsletter Read': 'opened', 'bookmark': 'skip'}
    >>> _actions(["On Hold=Skip"], "--status-map", "processing=completed")
    {'On Hold': 'skip'}
    """
    out = {}
    for pair in pairs:
        value, sep, action = pair.rpartition("=")
        if not sep or not value.strip():
            raise ValueError(f"{option} {pair!r}: give {'VALUE=ACTION' if option == '--map' else 'VALUE=STATUS'}, "
                             f"e.g. {example}")
        out[value.strip()] = action.strip().lower()
    return out


def _encoding(raw: Any, asked: str) -> str:
    r"""The encoding to read with: as asked, but UTF-16 for a file that starts with its byte order mark.

    Excel's "Unicode Text" and some Windows tools write UTF-16, which read as UTF-8 is
    a header of spaced-out letters that matches no column.

    >>> import io
    >>> _encoding(io.BufferedReader(io.BytesIO("c\tt".encode("utf-16"))), "utf-8-sig")
    'utf-16'
    >>> _encoding(io.BufferedReader(io.BytesIO(b"c,t")), "utf-8-sig"), _encoding(io.BytesIO(b"\xff\xfe"), "cp1252")
    ('utf-8-sig', 'cp1252')
    """
    if asked != DEFAULT_ENCODING or not hasattr(raw, "peek"):
        return asked
    return "utf-16" if raw.peek(2)[:2] in (b"\xff\xfe", b"\xfe\xff") else asked


@command("import-events")
@command("import-transactions")
def cmd_import_transactions(args: argparse.Namespace) -> int:
    key = _customer_key(args)  # refused before a large workbook is read, not after
    out = Path(args.out)
    for given in (Path(args.file), *getattr(args, "join", ())):
        # The events are written after the rows are read: over the export itself, they replaced it.
        if args.file != "-" and out.exists() and given.exists() and out.samefile(given):
            raise ValueError(f"--out {args.out} is the file being imported: give the events another name")
    with _table_as_csv(args) as table:
        return _import(args, table, key)


def _customer_key(args: argparse.Namespace) -> bytes | None:
    if not args.hash_customers:
        return None
    key = os.environ.get(CUSTOMER_KEY_VAR, "")
    if len(key) < 16:
        raise ValueError(f"--hash-customers takes its key from {CUSTOMER_KEY_VAR}: set it to a secret of "
                         "16 characters or more (the same key gives the same ids on every import)")
    return key.encode()


@contextmanager
def _table_as_csv(args: argparse.Namespace, limit: int | None = None) -> Iterator[WorkbookRead | TableWriter | None]:
    """An Excel workbook, a Parquet file or a SQLite database is written out as a temporary CSV
    (``TMPDIR``), imported, removed.

    The import reads its file twice (see ``import_transactions``): a CSV read twice
    costs less than parsing a workbook's XML, decoding Parquet or querying twice.
    """
    from features import parquet, sqlite_table, workbook

    path = Path(args.file)
    with ExitStack() as stack:
        given = args.file != "-"
        book = path if given and workbook.is_workbook(path) else None
        member = _zipped_workbook(path) if given and book is None else None
        if member is not None:  # a dataset download: a zip holding the workbook
            book = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="leadpulse-"))) / "book.xlsx"
            with zipfile.ZipFile(path) as archive, archive.open(member) as src, book.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        columnar = given and book is None and parquet.is_parquet(path)
        database = given and book is None and sqlite_table.is_sqlite(path)
        if args.sheet is not None and book is None:
            raise ValueError(f"--sheet reads an Excel workbook, and {path.name} is not one")
        joins = list(getattr(args, "join", ()) or ())
        if joins and args.query is None:
            raise ValueError("--join adds a table for --query to join: give the --query too")
        if args.table is not None and not database:
            raise ValueError(f"--table reads a SQLite database, and {path.name} is not one")
        joined = args.query is not None and (bool(joins) or not database)
        if joined and not given:
            raise ValueError("--query joins files: give the first one by name, not on stdin")
        if not joined and book is None and not columnar and not database:
            yield None
            return
        copy = stack.enter_context(tempfile.NamedTemporaryFile(
            "w", prefix="leadpulse-table-", suffix=".csv", encoding="utf-8", newline=""))
        read: WorkbookRead | TableWriter
        if joined:
            read = _joined(args.query, path, joins, copy, limit)
        elif book is not None:
            named = tuple(c for c in (getattr(args, "customer", None), getattr(args, "time", None)) if c)
            read = workbook.write_csv(book, copy, args.sheet, columns=named, limit=limit)
            names = " + ".join(repr(s.name) for s in read.sheets)
            below = "" if all(s.header_row == 1 for s in read.sheets) else (
                ", header on row " + " / ".join(str(s.header_row) for s in read.sheets))
            print(f"{path.name}: an Excel workbook, sheet{'s' if len(read.sheets) > 1 else ''} {names} "
                  f"({sum(s.rows for s in read.sheets):,} rows{below})"
                  + (f"; not read: {', '.join(repr(n) for n in read.other_sheets)} (another table, or "
                     "hidden: --sheet NAME reads one)" if read.other_sheets else ""), file=sys.stderr)
        elif columnar:
            read = parquet.write_csv(path, copy, limit=limit)
            print(f"{path.name}: a Parquet file ({read.rows:,} rows)", file=sys.stderr)
        else:
            read = sqlite_table.write_csv(path, copy, args.table, args.query, limit=limit)
            print(f"{path.name}: a SQLite database ({read.rows:,} rows)", file=sys.stderr)
        copy.flush()
        args.given_file, args.file = args.file, copy.name
        args.delimiter, args.encoding = "comma", "utf-8"
        yield read


def _joined(query: str, path: Path, joins: list[Path], out: IO[str], limit: int | None) -> TableWriter:
    """The rows of ``--query`` on the file and the ``--join`` files, written to ``out`` as CSV."""
    from features import join_tables, sqlite_table

    for extra in joins:
        if not extra.is_file():
            raise ValueError(f"--join {extra}: no such file")
    db, loaded = join_tables.open_tables(path, joins, open_input)
    with closing(db):
        described = ", ".join(f"{name} ({rows:,} rows)" if rows >= 0 else f"{name} (a database)"
                              for name, rows in loaded.items())
        print(f"tables for --query: {described}", file=sys.stderr)
        read = sqlite_table.query_csv(db, query, out, "--query", limit=limit, form="query")
    print(f"--query: {read.rows:,} rows", file=sys.stderr)
    return read


def _blank_customers_read(rows: list[Any], customer: str, order: str | None) -> str:
    """What the import does with the sampled rows whose customer cell is empty.

    An order's line items under its first row, with the customer on that row alone (Shopify's
    orders export), are filled from it; only the others are skipped. Said as all skipped, a
    Shopify export's 49% of rows were "skipped", of which the import skipped none.

    >>> rows = [{"c": "7", "o": "#1"}, {"c": "", "o": "#1"}, {"c": "", "o": "#2"}, {"c": "", "o": ""}]
    >>> _blank_customers_read(rows, "c", "o")
    '1 of them on the line items of an order whose customer the import fills in from its first row, the other 2 skipped (missing customer)'
    >>> _blank_customers_read(rows[:2], "c", "o")
    'on the line items of an order whose customer the import fills in from its first row'
    >>> _blank_customers_read(rows, "c", None)
    'the import skips those (missing customer)'
    """
    from features.importer import NO_VALUE

    def cell(row: Any, name: str) -> str:
        value = (row.get(name) or "").strip()
        return "" if value in NO_VALUE else value

    if not order:
        return "the import skips those (missing customer)"
    blank = [row for row in rows if not cell(row, customer)]
    named = {cell(row, order) for row in rows if cell(row, customer)} - {""}
    filled = sum(cell(row, order) in named for row in blank)
    if not filled:
        return "the import skips those (missing customer)"
    said = "on the line items of an order whose customer the import fills in from its first row"
    if filled == len(blank):
        return said
    return f"{filled:,} of them {said}, the other {len(blank) - filled:,} skipped (missing customer)"


@command("inspect")
def cmd_inspect(args: argparse.Namespace) -> int:
    from features.inspect import command as import_command
    from features.inspect import (
        dates_only_note,
        id_shape_note,
        pii_note,
        profile,
        suggest,
        unread_status_note,
    )

    given = args.file
    sample = max(1, args.rows)
    with _table_as_csv(args, limit=sample) as table:
        # Rows spread over a file not too large; else one more than the sample: did the file end?
        total = _spread_total(Path(args.file), sample) if table is None else 0
        rows, headerless = _sample_rows(Path(args.file), sample if total else sample + 1, total)
    # A copied table (workbook, Parquet, SQLite, --query) holds at most the sample: all of it
    # only when it ended before.
    whole = not total and (len(rows) <= sample if table is None else len(rows) < sample)
    rows = rows[:sample]
    if not rows:
        print(f"{given}: no rows under a header", file=sys.stderr)
        return 1
    profiles = profile(rows)
    form = table.form if table is not None else "JSON" if isinstance(rows[0], _Flat) else "CSV"
    sampled = (f"all {len(rows):,} rows read" if whole else f"{len(rows):,} rows read (the first; --rows N for more)"
               if not total else f"{len(rows):,} rows read (spread over its {total:,}; --rows N for more)")
    print(f"{given}: {form}, {sampled}, {len(profiles)} columns")
    width = min(max(len(p.name) for p in profiles), 40)
    for p in profiles:
        print(f"  {p.name:<{width}}  {p.describe()}")
    if {"event_id", "customer_id", "ts", "type"} <= {p.name for p in profiles}:
        print(f"\nthese rows are leadpulse events already: leadpulse backtest {given} --out report/")
        return 0
    pick = suggest(profiles)
    event_log = "action" in pick
    if "customer" not in pick or ("time" not in pick and "day_number" not in pick):
        print("\nno customer and time columns found: name them with --customer and --time "
              "(leadpulse import-transactions --help)")
        if "customer" not in pick and "order" in pick:
            print(f"  its rows name an order ({pick['order']}) but no customer: join the orders' table with "
                  "--join FILE and --query (README: several tables, joined in the command)")
        return 0
    customer = next(p for p in profiles if p.name == pick["customer"])
    extra = [f"--sheet {args.sheet!r}" if args.sheet else "", f"--table {args.table!r}" if args.table else "",
             f"--query {args.query!r}" if args.query else "",
             *(f"--join {str(j)!r}" for j in args.join)]
    if headerless:  # name the columns after what they hold, and say so
        roles = {column: role for role, column in pick.items()}
        names = [roles.get(p.name, p.name) for p in profiles]
        pick = {role: role for role in pick}
        extra.insert(0, "--columns " + ",".join(names))
        print("\nits first line is a row, not a header: --columns names the columns, in order")
    print("\nsuggested (check each column it picked):\n  "
          + " ".join([import_command(given, pick, event_log), *[e for e in extra if e]]))
    if "day_number" in pick:
        print(f"  {pick['day_number']} counts days: replace START with the date before day 1 "
              "(days:2019-12-31 makes day 1 the first of January 2020)")
    if "amount" not in pick and "price" not in pick:
        print("  no amount column found: add --amount COL (or --price and --quantity)" if not event_log else
              "  no amount column found: purchases in the log get amount 0 (add --amount COL if it has one)")
    elif "currency" not in pick:
        print("  amounts are read as EUR: add --default-currency CODE (or --currency COL)")
    amount = pick.get("amount") or pick.get("price")
    if amount and re.search(r"(^|[^a-z])(cents?|pence|centimes)($|[^a-z])", amount.lower()):
        from features.join_tables import table_name

        # Billing tools (Chargebee, Stripe's API) keep integer cents; features sum what they are given.
        print(f"  {amount} looks like cents: the import reads amounts as written; in currency units: "
              f"--query 'select *, \"{amount}\" / 100.0 as amount_units from {table_name(Path(given))}' "
              "--amount amount_units")
    for note in (dates_only_note(profiles, pick), id_shape_note(rows, pick), unread_status_note(profiles, pick)):
        if note:
            print(f"  {note}")
    if customer.filled < 0.95 * customer.rows:  # anonymous visitors of an analytics log
        print(f"  {customer.name} is empty in {100 - 100 * customer.filled / customer.rows:.0f}% of the rows read: "
              + _blank_customers_read(rows, customer.name, pick.get("order")))
    personal = pii_note(customer)  # no cell of such a column is shown
    if personal:
        print(f"  {personal}")
    action = next((p for p in profiles if p.name == pick.get("action")), None)
    if action is not None and action.share(action.actions) < 1.0 and "others" not in pick:
        print("  some action words are not ones the import knows: add --others page_view (or skip), "
              "or --map WORD=ACTION for each")
    return 0


class _Flat(dict[str, str]):
    """A JSON object flattened to dotted columns, as the imports address them."""


# inspect samples rows spread over a file up to these (an export sorted by account holds a
# handful of accounts in its first rows); a larger one, or a pipe, by its first rows.
SPREAD_MAX_BYTES = 64 << 20
SPREAD_MAX_ROWS = 200_000


def _spread_total(path: Path, n: int) -> int:
    """The rows of a file to spread a sample of ``n`` over: 0 where it is read from the top
    (no more rows than ``n``, a pipe, above :data:`SPREAD_MAX_BYTES` or :data:`SPREAD_MAX_ROWS`)."""
    try:
        if not path.is_file() or path.stat().st_size > SPREAD_MAX_BYTES:
            return 0
    except OSError:
        return 0
    with _table_rows(path) as (rows, _):
        total = sum(1 for _ in islice(rows, SPREAD_MAX_ROWS + 1))
    return total if n < total <= SPREAD_MAX_ROWS else 0


def _spread(rows: Iterable[dict[str, str]], n: int, total: int) -> list[dict[str, str]]:
    """``n`` of ``total`` rows, evenly spaced from the first (all of them up to ``n`` when ``total`` is 0).

    >>> [r["i"] for r in _spread(({"i": str(i)} for i in range(10)), 4, 10)]
    ['0', '3', '5', '8']
    >>> len(_spread(({"i": str(i)} for i in range(10)), 4, 0))
    4
    """
    if not total:
        return list(islice(rows, n))
    return [row for i, row in enumerate(islice(rows, total)) if i * n // total != (i - 1) * n // total]


def _sample_rows(path: Path, n: int, total: int = 0) -> tuple[list[dict[str, str]], bool]:
    """Up to ``n`` rows of the table as ``{column: cell}`` (a CSV's under its header, a JSON
    object's flattened), and whether its first line looks like a row, not a header.

    With ``total`` (its rows, :func:`_spread_total`), ``n`` rows spread over them.
    """
    with _table_rows(path) as (rows, headerless):
        return _spread(rows, n, total), headerless


@contextmanager
def _table_rows(path: Path) -> Iterator[tuple[Iterator[dict[str, str]], bool]]:
    """The table's rows as ``{column: cell}``, read as they are used, and whether its first
    line looks like a row, not a header (:func:`_sample_rows`).

    A file without a header line gets its columns named ``column1``, ``column2``, ...
    """
    from features.importer import legacy_text, numbered_names, table_records
    from features.inspect import looks_like_a_row

    with open_input(path) as raw:
        # Decoded as the imports decode it: UTF-16 by its byte order mark, and bytes that are
        # not UTF-8 as Windows-1252, so the names inspect suggests are the ones the import reads.
        encoding = _encoding(raw, DEFAULT_ENCODING)
        wrapper = io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="")
        text: Iterator[str] = map(legacy_text, wrapper) if encoding == DEFAULT_ENCODING else iter(wrapper)
        first = next(text, "")
        start = first.lstrip(" \t\r\n")[:1]
        if start in ("{", "["):
            import orjson

            if start == "[":
                items = orjson.loads(first + "".join(text))
                objects: Iterable[Any] = items if isinstance(items, list) else []
            else:
                objects = (_json_or_none(line) for line in chain([first], text) if line.strip())
            yield (_flatten(obj) for obj in objects if isinstance(obj, dict)), False
            return
        # Title or comment lines above the header (an analytics export's "# ----").
        records = (cells for _, cells in table_records(chain([first], text)))
        header = next(records, [])
        headerless = looks_like_a_row(header)
        names = ([f"column{i + 1}" for i in range(len(header))] if headerless
                 else numbered_names([c.strip() for c in header]))  # as the import numbers them
        rows = chain([header], records) if headerless else records
        yield (dict(zip(names, cells, strict=False)) for cells in rows), headerless


def _json_or_none(line: str) -> Any:
    import orjson

    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None  # a bad line: the import counts it, the sample passes it by


def _flatten(obj: dict[str, Any], prefix: str = "") -> _Flat:
    from features.importer import cell_text, typed_value

    flat = _Flat()
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "key" in v for v in value):
            for item in value:  # GA4's key-value lists: event_params.ga_session_id, as json_cell reads it
                flat[f"{name}.{item['key']}"] = cell_text(typed_value(item.get("value")))
        else:
            flat[name] = cell_text(value)
    return flat


def _zipped_workbook(path: Path) -> str | None:
    """The workbook a zip archive holds as its one file (``online+retail.zip``), if it does."""
    from features.workbook import WORKBOOK_PART

    try:
        with zipfile.ZipFile(path) as archive:
            names = zip_data_members(archive)
            if len(names) != 1 or WORKBOOK_PART in names:
                return None
            with archive.open(names[0]) as member:
                return names[0] if member.read(4) == b"PK\x03\x04" else None
    except (OSError, zipfile.BadZipFile):
        return None


def _import(args: argparse.Namespace, table: WorkbookRead | TableWriter | None, key: bytes | None) -> int:
    from features.importer import ImportConfig, import_transactions

    config = ImportConfig(
        header=tuple(c.strip() for c in args.columns.split(",")) if args.columns else (),
        customer=args.customer, time=args.time, amount=args.amount, order=args.order,
        currency=args.currency, default_currency=args.default_currency, status=args.status,
        refund_time=args.refund_time, refund_amount=args.refund_amount, quantity=args.quantity, price=args.price, product=args.product,
        category=args.category,
        extra=tuple(args.extra), time_format=args.time_format, clock=args.clock, date_order=args.date_order,
        timezone=args.timezone, decimal_comma=args.decimal_comma, refunds=args.refunds,
        convert_to=args.convert_to, rates=_rates(args.rate),
        statuses=_actions(args.status_map, "--status-map", "processing=completed"),
    )
    if args.command == "import-events":
        config = replace(
            config, action=args.action, actions=_actions(args.map), other_actions=args.other_actions,
            session=args.session,
            campaign=args.campaign, channel=args.channel, default_channel=args.default_channel,
            event_id=args.event_id,
        )
    if key is not None:
        config = replace(config, customer_key=key)
    stdin = args.file == "-"
    lines = count_lines(Path(args.file)) - 1 if sys.stderr.isatty() and not stdin else None
    source: Any = sys.stdin  # read once, so its rows are held
    if not stdin:
        with open_input(Path(args.file)) as raw:
            encoding = _encoding(raw, args.encoding)
        # surrogateescape: bytes that are not valid in the encoding skip their row, not the file;
        # read as UTF-8 by default, such bytes are read as Windows-1252 instead (legacy_fallback).
        config = replace(config, legacy_fallback=encoding == DEFAULT_ENCODING)

        def source() -> Iterator[str]:  # a file is read twice, not held (see import_transactions)
            with open_input(Path(args.file)) as raw, io.TextIOWrapper(
                raw, encoding=encoding, errors="surrogateescape", newline=""
            ) as handle:
                yield from handle

    with progress("import" if stdin else "import (read twice)", None if lines is None else 2 * lines,
                  log_every_s=PROGRESS_LOG_S,
                  count=None if stdin else lambda: 2 * (count_lines(Path(args.file)) - 1)) as tick:
        result = import_transactions(source, config, delimiter=args.delimiter, progress=tick)
    if table is not None:  # what the summary says was read
        result.delimiter = table.form
    for err in result.errors[: max(0, args.max_errors)]:
        where = f"line {err.line}" if table is None else table.where(err.line)
        print(f"skipped {where}: {err.reason}", file=sys.stderr)
    hidden = result.rows_skipped - min(len(result.errors), max(0, args.max_errors))
    if hidden > 0:
        print(f"... and {hidden:,} more skipped rows (counted in the summary)", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.write(out)
    summary = result.summary()
    if table is not None:
        summary.update(table.summary())
    print(json.dumps({**summary, "out": str(out)}, indent=2))
    for note in ("shared_customer_id", "one_order_per_customer", "customer_ids_are_emails",  # the customer column
                 "customer_id_shape_changes", "dates_without_time_of_day"):
        if note in summary:
            print(f"note: {summary[note]}", file=sys.stderr)
    untimed = result.skipped.get("missing time", 0)
    if untimed >= max(1, result.rows // 10) and not args.order:
        # Shopify writes an order's date, total and status on its first line only.
        print(f"note: {untimed:,} rows have no time: if they are an order's later lines, --order COL reads "
              "them with their order's first line", file=sys.stderr)
    if not result.encoded and result.rows:
        print("nothing imported: every row was skipped", file=sys.stderr)
        return 1
    if not result.rows:  # an empty day's export is no mistake: said, not failed
        print("note: no rows under the header: nothing to import", file=sys.stderr)
    return 0

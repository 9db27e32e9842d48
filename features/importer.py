"""Turn a plain transaction table (CSV) into purchase events.

The most common history a company has is a table of transactions exported
from a shop, an ERP or a spreadsheet. :func:`import_transactions` reads one
and returns purchase events (see :mod:`features.events`), sorted by time,
ready for ``leadpulse backtest``; every row it cannot use is reported with its
line number and a reason, and counted. It never echoes a cell's value in an
error (a misaligned row could put a customer id or an e-mail in any column):
line numbers are enough to find the row.

Rules, chosen for what real exports look like:

- **Lines.** Line 1 is the header; a row's line number is the line it starts
  on in the file, as a text editor shows it.
- **One event per order.** With ``order`` set, rows with the same customer and
  order id are line items of one purchase: amounts are summed, each row
  becomes an item when a product, price or quantity column is given, and the
  event takes the earliest row's time. Without ``order`` every row is one
  purchase.
- **Stable ids.** ``event_id`` is a hash of (customer, order, status); without
  an order column, a hash of the row's cells (but those that change as an order
  lives on: status, refund time, refund amount) plus its occurrence number among
  identical rows. Re-importing the same file gives the same ids, so a backtest
  or a live replay deduplicates re-imports. Identical rows stay distinct
  purchases (counted as ``identical_rows`` in the summary).
- **Refunds.** A row with a negative amount or a negative quantity (UCI Online
  Retail style cancellations, invoice ``C536379``), or whose status column says
  refunded / cancelled / returned, is a refund: it becomes a purchase event
  with ``status: "refunded"`` and the absolute amount, kept apart from the
  order's completed lines (``event_id`` differs). ``refunds="skip"`` skips
  them instead (reason ``refund skipped``). Rows whose status says the
  purchase did not happen (pending, failed, ...) are skipped.
- **Refunded orders.** A row whose status says refunded, returned or charged back
  (not cancelled: a cancelled order may never have been paid), with no negative
  amount, is the order itself, bought and later refunded: it gives the purchase
  at the order's time and its refund, at ``refund_time``'s cell when given and
  not blank, else at the same instant (backtest counts one order's purchase and
  refund at one instant as one thing). Where the same order also has completed
  rows (a ledger that writes the refund on a row of its own), the row is only
  that order's refund.
- **Refunded amounts.** ``refund_amount`` names a column of the amount refunded
  of an order (Shopify's "Refunded Amount"): on a purchase row (paid, partially
  refunded) a filled amount above 0 is a refund of it beside the purchase, at
  ``refund_time``'s cell when given, else at the order's time; on a refunded
  order's row, its refund's amount. At most the order's amount (the summary
  counts the orders cut to it).
- **Time.** ISO 8601 dates and date-times, with or without an offset
  (``2011-12-09``, ``2011-12-09 12:50:00``, ``2011-12-09T12:50:00+01:00``);
  epoch seconds (9-10 digits), milliseconds (12-13), microseconds (15-16: GA4's
  BigQuery export) or nanoseconds (18-19); ``YYYYMMDD``;
  slash, dot or dash dates (``12/9/2011 12:50``, ``09.12.2011``, ``09-12-2011``;
  dashes with a 4-digit year only); and year-first slash or dot dates
  (``2011/12/09``, never ambiguous). A time without
  an offset is read in ``timezone`` (UTC unless told). Slash dates are
  ambiguous (is 12/9 the 12th of September or December 9th?): with
  ``date_order="auto"`` the file decides, from rows whose day is above 12; when
  no row settles it, the import stops and asks for ``date_order`` or
  ``time_format``. ``time_format`` (a :func:`~datetime.datetime.strptime`
  format, or ``epoch_s``, ``epoch_ms``, ``epoch_us``, ``epoch_ns``, ``excel``, or ``days:DATE`` / ``weeks:DATE``
  for a count of days or weeks after DATE, as anonymised panels write time) overrides
  all guessing.
- **Amounts.** ``1234.5``, ``1,234.50``, ``€ 12``, ``(12.50)`` and ``12.50-``
  (negative); with ``decimal_comma``, ``1.234,50`` and ``1 234,50``. A comma
  that is not a thousands separator is an error, never silently dropped. If
  there is no amount column, the amount is ``price × quantity``.
- **Ids.** Customer and order ids are trimmed; ``17850.0`` (a number that went
  through a spreadsheet or pandas) is read as ``17850``.

- **Event logs.** With ``action`` set (``leadpulse import-events``), the table
  is a log of what customers did: each row's action cell says which event it
  is, read with :data:`features.actions.ACTION_ALIASES` (``view``, ``addtocart``,
  ``transaction``, ``email_opened``, ...) and the ``actions`` overrides. Web
  and campaign rows become one event each; purchase rows become purchases as
  above, grouped by order, or without an order column by session (a log often
  has a row per product bought). Rows whose action nothing reads are skipped
  and their values counted (``unmapped_actions``). No ``url`` is imported: query
  strings carry e-mail addresses and tokens.

>>> csv_text = '''customer,invoice,date,qty,price
... c1,536365,12/1/2010 08:26,6,2.55
... c1,536365,12/1/2010 08:26,8,3.39
... ,536366,12/1/2010 08:28,6,1.85
... c2,C536379,12/13/2010 09:41,-1,27.50
... '''
>>> cfg = ImportConfig(customer="customer", time="date", order="invoice",
...                    quantity="qty", price="price", default_currency="GBP")
>>> result = import_transactions(csv_text.splitlines(keepends=True), cfg)
>>> [(e["order_id"], e["amount"], e["status"], len(e["items"])) for e in result.events]
[('536365', 42.42, 'completed', 2), ('C536379', 27.5, 'refunded', 1)]
>>> [(err.line, err.reason) for err in result.errors]
[(4, 'missing customer')]
>>> result.summary()["date_order"]
'mdy (from 1 row with a day above 12)'
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from itertools import chain, islice
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from features.actions import (
    ACTION_ALIASES,
    CHANNELS,
    TARGETS,
    action_table,
    action_target,
    norm_action,
)
from features.events import (
    MAX_TS_MS,
    MIN_TS_MS,
    MIN_TS_TEXT,
    EventError,
    compact,
    decode,
    encode,
    id_text,
    ms_to_iso,
)
from features.spec import DAY_MS

# A field longer than csv's default 128 KiB (a JSON blob or an HTML description in an
# export) is read, not an error that stops the import.
csv.field_size_limit(64 << 20)

DateOrder = Literal["auto", "dmy", "mdy"]

REFUND_STATUSES = frozenset({
    "refunded", "refund", "returned", "return", "cancelled", "canceled", "cancellation",
    "reversed", "chargeback",
})
COMPLETED_STATUSES = frozenset({
    "completed", "complete", "paid", "shipped", "delivered", "fulfilled", "closed", "success",
    "succeeded", "ok", "invoiced", "settled", "captured", "done",
    "won", "closed_won", "closedwon",  # a CRM's deals (HubSpot writes closedwon)
    "partially_refunded",  # Shopify: paid, then part refunded; the purchase happened
})
# Words that say a row is no purchase, neither made nor taken back: skipped as any unread
# status is, and known, so inspect offers such a column as the status. A void was never
# charged (an authorisation released, an invoice cancelled before payment): no refund either.
NOT_PURCHASE_STATUSES = frozenset({
    "voided", "void", "pending", "failed", "declined", "open", "lost", "closed_lost", "closedlost",
    "abandoned", "draft", "expired", "unpaid",
})
STATUS_TARGETS = frozenset({"completed", "refunded", "skip"})
# " " stands for runs of spaces and tabs (CDNOW's master file, fixed-width-looking exports).
DELIMITERS = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|", "space": " ", "whitespace": " "}

class ImportFailed(ValueError):
    """The whole import cannot go on (missing column, ambiguous dates): fix the command."""


@dataclass(frozen=True)
class ImportConfig:
    """Which columns mean what, and how to read them (see the module docs)."""

    customer: str
    time: str
    amount: str | None = None  # row total; without it, price x quantity
    order: str | None = None
    currency: str | None = None  # a column; otherwise default_currency
    default_currency: str = "EUR"
    status: str | None = None
    quantity: str | None = None
    price: str | None = None  # unit price
    product: str | None = None
    category: str | None = None
    extra: tuple[str, ...] = ()  # columns carried on events as extra fields (segment, region)
    # When a refunded order was refunded (a refund date, an updated-at column): its refund's time.
    refund_time: str | None = None
    # The amount refunded of an order (Shopify's "Refunded Amount"): a partially refunded order's
    # refund, and a refunded order's refund in place of its whole amount (see _events).
    refund_amount: str | None = None
    time_format: str | None = None  # strptime format, "epoch_s" / "_ms" / "_us" / "_ns" / "excel", "days:DATE"
    clock: str | None = None  # a time-of-day column (1631, 16:31) added to a date-only ``time``
    date_order: DateOrder = "auto"
    timezone: str = "UTC"  # for times without an offset
    decimal_comma: bool | None = None  # None: the file decides (see _decide_decimal)
    refunds: Literal["event", "skip"] = "event"
    # Amounts in several currencies: convert each row into ``convert_to`` (one amount in
    # code X is ``rates[X]`` in convert_to). Features sum amounts, so they need one currency.
    convert_to: str | None = None
    rates: Mapping[str, float] = field(default_factory=dict)
    # An event log (views, carts, purchases, email opens in one table): ``action`` is the
    # column saying what each row is, read with ACTION_ALIASES and the ``actions`` overrides
    # (value -> leadpulse action, or "skip"). Without it every row is a purchase.
    action: str | None = None
    actions: Mapping[str, str] = field(default_factory=dict)
    # Column names of a file that has no header line (its line 1 is a row), in order.
    header: tuple[str, ...] = ()
    # What every other action value is read as (a clickstream's page names: page_view);
    # None skips them, counted in the summary's unmapped_actions.
    other_actions: str | None = None
    session: str | None = None  # web sessions; purchases of one session are one order without ``order``
    campaign: str | None = None  # campaign id, for sent / opened / clicked rows
    channel: str | None = None  # email, sms, push, web, ads; otherwise default_channel
    default_channel: str = "email"
    event_id: str | None = None  # the log's own event id, kept so later replays deduplicate
    # Status values read otherwise than the built-in words (value -> completed / refunded / skip).
    statuses: Mapping[str, str] = field(default_factory=dict)
    # A key for a keyed hash (HMAC-SHA256) of every customer id: e-mail addresses and other
    # personal ids stay out of the events, and so out of Kafka keys, Redis and score records.
    # The same key gives the same ids (re-imports join; the key's holder can hash a CRM list).
    customer_key: bytes | None = field(default=None, repr=False)
    # Lines read as UTF-8 with errors="surrogateescape": bytes that are not UTF-8 are read as
    # Windows-1252 (Latin-1 where it has no character) instead of skipping the row. The CLI
    # sets it when --encoding was not given.
    legacy_fallback: bool = False

    def columns(self) -> list[str]:
        cols = [self.customer, self.time, self.clock, self.refund_time, self.refund_amount, self.amount,
                self.order, self.currency, self.status,
                self.quantity, self.price, self.product, self.category, self.action, self.session,
                self.campaign, self.channel, self.event_id, *self.extra]
        return list(dict.fromkeys(c for c in cols if c))

    def identity_columns(self) -> list[str]:
        """The columns whose cells name a row without an order or event id column: every column
        read but those that change as an order lives on (its status, refund time and refund
        amount), so a later export where a purchase was refunded gives its purchase the id it
        had (the refund gets one of its own).

        >>> ImportConfig(customer="c", time="t", amount="a", status="s", refund_amount="r").identity_columns()
        ['c', 't', 'a']
        """
        changing = {self.status, self.refund_time, self.refund_amount} - {None, ""}
        return [c for c in self.columns() if c not in changing]

    def check(self) -> None:
        if not self.amount and not self.price and not self.action:
            raise ImportFailed("give an amount column (--amount) or a unit price column (--price)")
        for value, target in self.actions.items():
            if target not in TARGETS:
                raise ImportFailed(f"--map {value}={target}: the action must be one of "
                                   f"{', '.join(sorted(TARGETS))}")
        if self.other_actions is not None and self.other_actions not in TARGETS:
            raise ImportFailed(f"--others {self.other_actions}: the action must be one of "
                               f"{', '.join(sorted(TARGETS))}")
        for value, target in self.statuses.items():
            if target not in STATUS_TARGETS:
                raise ImportFailed(f"--status-map {value}={target}: the status must be one of "
                                   f"{', '.join(sorted(STATUS_TARGETS))}")
        if self.default_channel not in CHANNELS:
            raise ImportFailed(f"default channel {self.default_channel!r}: one of {', '.join(sorted(CHANNELS))}")
        if not re.fullmatch(r"[A-Za-z]{3}", self.default_currency):
            raise ImportFailed("default currency must be a 3-letter ISO code such as EUR")
        time_zone(self.timezone)
        if self.time_format and self.time_format.startswith(COUNT_UNITS):
            _count_start(self.time_format)  # refused here, not once per row
        if self.rates and not self.convert_to:
            raise ImportFailed("rates need the currency to convert into (--convert-to)")
        for code in (*self.rates, *([self.convert_to] if self.convert_to else [])):
            if not re.fullmatch(r"[A-Za-z]{3}", code):
                raise ImportFailed(f"currency {code!r}: a 3-letter ISO code such as EUR")
        for code, rate in self.rates.items():
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
                raise ImportFailed(f"rate of {code.upper()}: a number above 0")
        reserved = {"event_id", "customer_id", "ts", "type", "order_id", "amount", "currency",
                    "items", "status"}
        if self.action:  # an event log writes web and campaign events too
            reserved |= {"action", "session_id", "url", "product_id", "category", "campaign_id",
                         "channel"}
        clash = [c for c in self.extra if c in reserved]
        if clash:
            raise ImportFailed(f"--extra column(s) {', '.join(clash)} clash with event fields; rename them")


@dataclass(frozen=True, slots=True)
class RowError:
    """A skipped row: its line number and why (never its content)."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


ERRORS_KEPT = 10_000  # skipped rows kept with line and reason (all are counted)


@dataclass
class ImportResult:
    """Events sorted by time, the skipped rows, and counts for the summary."""

    # Each event's canonical JSON (features.events.encode), in time order. Held as bytes: a
    # third of the memory of dicts, for logs of millions of rows (see ``events``).
    encoded: list[bytes] = field(default_factory=list)
    # The skipped rows, by line: the first ERRORS_KEPT found (a file whose every row is
    # skipped would hold one per row); ``skipped`` counts them all, by reason.
    errors: list[RowError] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    rows: int = 0
    refund_events: int = 0
    refunded_orders: int = 0  # rows whose status says refunded: the purchase made beside the refund
    column_refunds: int = 0  # refund events whose amount is the refund_amount column's
    refunds_capped: int = 0  # of them, orders whose refund amount was above the order's, cut to it
    dates_only: int = 0  # the rows read, when every one's time is a midnight (in --timezone): dates alone
    # Rows per day and shape of their customer id (id_shape; no id kept), for id_shape_switch.
    id_shapes: defaultdict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    identical_rows: int = 0
    filled_rows: int = 0  # line items whose blank order-level cells came from the order's first row
    legacy_rows: int = 0  # rows whose bytes were not UTF-8, read as Windows-1252 (legacy_fallback)
    converted: Counter[str] = field(default_factory=Counter)  # rows converted, by their currency
    types: Counter[str] = field(default_factory=Counter)  # events written by type (event logs)
    unmapped: Counter[str] = field(default_factory=Counter)  # event log action values not read
    others: Counter[str] = field(default_factory=Counter)  # action values read as other_actions
    others_as: str = ""  # what they were read as
    unread_statuses: Counter[str] = field(default_factory=Counter)  # status values read as not a purchase
    customer_column: str = ""  # its name: an id equal to it is a header line repeated in the rows
    amounts: str = ""  # a note when an event log's purchases have no amounts
    date_order: str = "not needed"
    header_line: int = 1  # below a title or comment lines, the line that names the columns
    delimiter: str = ","
    decimal: str = "point"

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events as dicts, decoded at each call (``encoded`` holds them)."""
        return [orjson.loads(line) for line in self.encoded]

    def write(self, path: str | Path) -> int:
        """Write the events as JSON Lines; returns how many."""
        with open(path, "wb") as out:
            for line in self.encoded:
                out.write(line + b"\n")
        return len(self.encoded)

    def skip(self, line: int, reason: str) -> None:
        """Count a skipped row; keep its line and reason while fewer than ERRORS_KEPT are kept."""
        self.skipped[reason.split(":")[0]] += 1
        if len(self.errors) < ERRORS_KEPT:
            self.errors.append(RowError(line, reason))

    @property
    def rows_skipped(self) -> int:
        """Every skipped row, kept in ``errors`` or not."""
        return sum(self.skipped.values())

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(self.skipped.most_common())

    def shared_customer_id(self) -> str:
        """A note when one customer id of 50 or more looks shared: a placeholder (``0``, ``-1``,
        ``unknown``, ``guest-…``, the column's name) holding at least 5% of the events, or any
        id holding at least 15% of them and 50 times the events of the median customer.

        Such an id is usually not a customer: a guest checkout, ``0`` or ``unknown`` for
        everyone without an account. Its features and labels are then no one's. A real
        large customer (a wholesaler's top account, 6% of the orders, ten times the median
        account's) is no such id. The id itself is never shown (it may be a person's).

        >>> result = ImportResult([orjson.dumps({"customer_id": f"c{i}"}) for i in range(60)])
        >>> result.shared_customer_id()
        ''
        >>> result.encoded += [b'{"customer_id": "c0"}'] * 9
        >>> result.shared_customer_id()  # 14.5%, ten times the median: a large customer
        ''
        >>> result.encoded += [b'{"customer_id": "0"}'] * 8
        >>> result.shared_customer_id()[:68]
        'a customer id that looks like a placeholder holds 10.4% of them (8):'
        >>> result.encoded += [b'{"customer_id": "0"}'] * 3
        >>> result.shared_customer_id()[:58]
        'the customer with the most events holds 13.8% of them (11)'
        """
        return _shared_id_note(self._scan()[0], self.customer_column)

    def one_order_each(self) -> str:
        """A note when no customer of 1,000 or more has a second order (see :class:`RepeatBuyers`).

        >>> result = ImportResult([orjson.dumps({"customer_id": f"c{i}", "type": "purchase", "order_id": f"o{i}"})
        ...                        for i in range(1200)])
        >>> result.one_order_each()[:42]
        'no customer of 1,200 has a second order: i'
        >>> result.encoded.append(b'{"customer_id": "c1", "type": "purchase", "order_id": "o999"}')
        >>> result.one_order_each()
        ''
        """
        buyers = self._scan()[1]
        return one_order_each_note(buyers.buyers, buyers.repeats)

    def _scan(self) -> tuple[Counter[str], RepeatBuyers]:
        """Events per customer, and the buyers of completed orders: one decoding of the events."""
        counts: Counter[str] = Counter()
        buyers = RepeatBuyers()
        for line in self.encoded:
            e = orjson.loads(line)
            counts[e["customer_id"]] += 1
            if e.get("type") == "purchase" and e.get("status", "completed") == "completed":
                buyers.add(e["customer_id"], e["order_id"])
        return counts, buyers

    def unmapped_actions(self) -> dict[str, int]:
        """Action values no alias or --map reads, with their row counts (see :func:`_vocabulary`)."""
        return _vocabulary(self.unmapped, "--action")

    def summary(self) -> dict[str, Any]:
        counts, buyers = self._scan()  # for both notes on the customer column
        return {
            "rows_read": self.rows,
            "events_written": len(self.encoded),
            "refund_events": self.refund_events,
            **({"purchases_of_refunded_orders": self.refunded_orders} if self.refunded_orders else {}),
            **({"refunds_from_refund_amount": self.column_refunds} if self.column_refunds else {}),
            **({"refund_amounts_capped_at_order_amount": self.refunds_capped} if self.refunds_capped else {}),
            "rows_skipped": self.rows_skipped,
            "skipped_by_reason": self.skipped_by_reason(),
            "identical_rows": self.identical_rows,
            **({"rows_filled_from_order_first_row": self.filled_rows} if self.filled_rows else {}),
            **({"rows_read_as_windows_1252": self.legacy_rows} if self.legacy_rows else {}),
            **({"converted_rows": dict(self.converted.most_common())} if self.converted else {}),
            **({"event_types": dict(self.types.most_common())} if self.types else {}),
            **({"amounts": self.amounts} if self.amounts else {}),
            **({"unmapped_actions": self.unmapped_actions()} if self.unmapped else {}),
            **({f"actions_read_as_{self.others_as}": _vocabulary(self.others, "--action")}
               if self.others else {}),
            **({"unread_statuses": _vocabulary(self.unread_statuses, "--status")}
               if self.unread_statuses else {}),
            **({"shared_customer_id": shared} if (shared := _shared_id_note(counts, self.customer_column)) else {}),
            **({"customer_ids_are_emails": emails} if (emails := emails_note(counts)) else {}),
            **({"one_order_per_customer": once}
               if (once := one_order_each_note(buyers.buyers, buyers.repeats)) else {}),
            **({"dates_without_time_of_day": dates_only_note(self.dates_only)} if self.dates_only else {}),
            **({"customer_id_shape_changes": switch} if (switch := id_shape_switch(self.id_shapes)) else {}),
            "date_order": self.date_order,
            **({"header_line": self.header_line or "none (--columns)"} if self.header_line != 1 else {}),
            "delimiter": {"\t": "tab", " ": "spaces"}.get(self.delimiter, self.delimiter),
            "decimal": self.decimal,
            "first_event": orjson.loads(self.encoded[0])["ts"] if self.encoded else None,
            "last_event": orjson.loads(self.encoded[-1])["ts"] if self.encoded else None,
        }


def _shared_id_note(counts: Counter[str], column: str = "") -> str:
    """The note of :meth:`ImportResult.shared_customer_id`, from the events per customer ('' for none)."""
    if len(counts) < 50:
        return ""
    total = sum(counts.values())
    large = [(cid, n) for cid, n in counts.most_common(20) if n >= 0.05 * total]
    if not large:
        return ""
    median = sorted(counts.values())[len(counts) // 2]
    # A placeholder-looking id among the large ones (a real account may hold more), else the
    # largest if far above a real customer's share.
    shared = [rank for rank, (cid, _) in enumerate(large) if placeholder_id(cid, column)]
    rank = shared[0] if shared else 0
    top = large[rank][1]
    share = top / total
    if not shared and not (share >= 0.15 and top >= 50 * median):
        return ""
    which = "the customer with the most events" if rank == 0 else "a customer id that looks like a placeholder"
    return (f"{which} holds {share:.1%} of them ({top:,}): a shared id "
            "(guest checkout, 0, 'unknown')? If so, its events are no one customer's: remove its "
            "rows and import again")


# Ids everyone without an account gets (the customer of a guest checkout, a test order).
_PLACEHOLDER_WORDS = frozenset({"guest", "unknown", "anonymous", "anon", "undefined", "null", "none", "nil",
                                "default", "test", "walkin", "dummy", "noname", "nobody", "unregistered"})
# A header line repeated in the rows (exports pasted together) names the column as its id.
_HEADER_IDS = frozenset({"customer", "customerid", "customer_id", "user", "userid", "user_id", "client",
                         "clientid", "client_id", "account", "accountid", "account_id", "id", "email", "kunde"})
_EMPTY_LIKE = re.compile(r"[-_.#*?/\\ x0]*|-0*1|n/?a|n\.a\.|\(?not set\)?", re.IGNORECASE)


def placeholder_id(customer: str, column: str = "") -> bool:
    """Whether a customer id looks like one many share: 0, -1, empty-like, ``unknown``,
    ``guest-0042``, or a header word (the column's own name).

    >>> [placeholder_id(c) for c in ("0", "-1", "000", "N/A", "Guest-0042", "UNKNOWN", "customer_id", "x")]
    [True, True, True, True, True, True, True, True]
    >>> [placeholder_id(c) for c in ("ACCT-0001", "17850", "c0", "ann@example.org", "Guesthouse Alpen")]
    [False, False, False, False, False]
    >>> placeholder_id("Kundennr", column="Kundennr")
    True
    """
    text = customer.strip().lower()
    if _EMPTY_LIKE.fullmatch(text) or text in NO_VALUE or text in _HEADER_IDS:
        return True
    if column and text == column.strip().lower():
        return True
    return any(word in _PLACEHOLDER_WORDS for word in re.split(r"[^a-z]+", text))


# Buyers. Below that, no second order can be chance: a month's log of a shop where one buyer
# in a hundred comes back has no repeat among 100 buyers a third of the time, among 1,000
# once in 20,000 logs.
ONE_ORDER_EACH_MIN = 1_000


class RepeatBuyers:
    """Customers with a completed order, and how many of them have a second one.

    Real histories have one-time buyers, mostly, but never only: with none at all, the
    customer column usually names the order, not the person (an id minted per checkout).

    >>> buyers = RepeatBuyers()
    >>> for customer, order in [("c1", "o1"), ("c1", "o1"), ("c2", "o2"), ("c1", "o3"), ("c1", "o4")]:
    ...     buyers.add(customer, order)
    >>> buyers.buyers, buyers.repeats
    (2, 1)
    """

    def __init__(self) -> None:
        self._first: dict[str, str | None] = {}  # a buyer's first order id; None once a second shows
        self.repeats = 0

    def add(self, customer_id: str, order_id: str) -> None:
        first = self._first.setdefault(customer_id, order_id)
        if first is not None and first != order_id:
            self._first[customer_id] = None
            self.repeats += 1

    @property
    def buyers(self) -> int:
        return len(self._first)


def one_order_each_note(buyers: int, repeats: int) -> str:
    """What import and backtest say when none of 1,000 or more buyers has a second order ('' otherwise)."""
    if buyers < ONE_ORDER_EACH_MIN or repeats:
        return ""
    return (f"no customer of {buyers:,} has a second order: is the customer column an id per order? "
            "Churn and propensity learn from repeat purchases, so import with the column that names "
            "the person (in Olist's tables customer_unique_id, not customer_id; where it is in another "
            "file, --join FILE --query 'select ...' joins it in)")


def _binary(header: list[str]) -> bool:
    """Whether a header line is binary bytes (a random or unknown file), not names.

    >>> _binary(["InvoiceNo", "Date", "Montant (€)"]), _binary(["\x8b\x1f\x03\x07PK\x01\x02ab"])
    (False, True)
    """
    text = "".join(header)
    odd = sum(1 for ch in text if not ch.isprintable() and ch not in "\t\r\n")
    return len(text) > 0 and odd > max(2, len(text) // 10)


def _vocabulary(values: Counter[str], option: str) -> dict[str, int]:
    """Values of a column that were not read, with their row counts, for the summary.

    Shown only when they look like a vocabulary (at most 20 short values without an
    ``@``): a column of many values is not actions or statuses (a name, an e-mail),
    and is never echoed.

    >>> _vocabulary(Counter({"processing": 3, "on_hold": 1}), "--status")
    {'processing': 3, 'on_hold': 1}
    >>> _vocabulary(Counter({"ann@example.com": 2, "paid": 1}), "--status")
    {'(2 distinct values: is --status the right column?)': 3}
    """
    if len(values) > 20 or any(len(v) > 40 or "@" in v for v in values):
        return {f"({len(values):,} distinct values: is {option} the right column?)": sum(values.values())}
    return dict(values.most_common())


class RowProblem(ValueError):
    """A cell that cannot be read; the message is the reason shown to the user."""


class _NotAPurchase(RowProblem):
    """A row whose status is neither completed nor refunded; ``value`` is counted, shown only when
    it is a status the import knows is no purchase (``failed``, ``void``: mapping it to
    completed would be wrong, so no --status-map hint either).

    >>> str(_NotAPurchase("failed"))
    "not a purchase: status 'failed' is no purchase (see unread_statuses in the summary)"
    >>> str(_NotAPurchase("processing"))[:64]
    'not a purchase: status is neither completed nor refunded (see un'
    """

    def __init__(self, value: str) -> None:
        if value in NOT_PURCHASE_STATUSES:
            super().__init__(f"not a purchase: status {value!r} is no purchase (see unread_statuses in the summary)")
        else:
            super().__init__("not a purchase: status is neither completed nor refunded (see unread_statuses "
                             "in the summary; --status-map VALUE=completed reads it)")
        self.value = value


# ------------------------------------------------------------------- numbers
_GROUPED_DOT = re.compile(r"\d{1,3}(,\d{3})+(\.\d*)?")
_GROUPED_COMMA = re.compile(r"\d{1,3}([. ]\d{3})+(,\d*)?")
_PLAIN = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def parse_number(text: str | None, decimal_comma: bool | None = False, what: str = "amount") -> float:
    """A number as people type it in exports; raises :class:`RowProblem` with a reason.

    >>> parse_number("1,234.50"), parse_number("(12.5)"), parse_number("12.50-"), parse_number("€ 3")
    (1234.5, -12.5, -12.5, 3.0)
    >>> parse_number("1.234,50", decimal_comma=True), parse_number("1 234,5", decimal_comma=True)
    (1234.5, 1234.5)
    >>> parse_number("1,5")
    Traceback (most recent call last):
    ...
    features.importer.RowProblem: bad amount: not a number (a comma that is not a thousands separator; decimal comma? use --decimal-comma)
    >>> parse_number("")
    Traceback (most recent call last):
    ...
    features.importer.RowProblem: missing amount
    """
    if text is None or not text.strip():
        raise RowProblem(f"missing {what}")
    s, negative = _bare_number(text)
    if decimal_comma:
        if _GROUPED_COMMA.fullmatch(s):
            s = s.replace(".", "").replace(" ", "")
        if s.count(",") == 1 and "." not in s:
            s = s.replace(",", ".")
    elif _GROUPED_DOT.fullmatch(s):
        s = s.replace(",", "")
    elif "," in s:
        raise RowProblem(f"bad {what}: not a number (a comma that is not a thousands separator; "
                         "decimal comma? use --decimal-comma)")
    if not _PLAIN.fullmatch(s):
        raise RowProblem(f"bad {what}: not a number")
    value = float(s)
    if math.isinf(value) or math.isnan(value):
        raise RowProblem(f"bad {what}: not a finite number")
    return -value if negative else value


# A 3-letter currency code before or after an amount (see _bare_number, which strips it).
_CELL_CURRENCY = re.compile(r"^\s*\(?\s*([A-Za-z]{3})\s*[-+(\d.,]|[\d.,)]\s*([A-Za-z]{3})\s*\)?\s*-?\s*$")
# An apostrophe between groups of three digits groups thousands (Switzerland, Liechtenstein).
_APOSTROPHE_GROUPS = re.compile(r"(?<=\d)['\u2019](?=\d{3}(?!\d))")


_CODE = re.compile(r"[A-Za-z]{3}")
_CODE_AROUND = re.compile(r"^[A-Za-z]{3}\s*|\s*[A-Za-z]{3}$")


def _bare_number(text: str) -> tuple[str, bool]:
    """A number's digits and separators without currency, sign or parentheses; and whether negative.

    >>> _bare_number(" (EUR 1.234,50) "), _bare_number("12,50- €")
    (('1.234,50', True), ('12,50', True))
    >>> _bare_number("CHF 1'234.50"), _bare_number("1’234’567,5")  # Swiss thousands
    (('1234.50', False), ('1234567,5', False))
    """
    s = text.strip().replace("\u00a0", " ").replace("\u202f", " ")
    s = _APOSTROPHE_GROUPS.sub("", s)
    negative = False
    if s.startswith("(") and s.endswith(")"):
        negative, s = True, s[1:-1].strip()
    s = _CODE_AROUND.sub("", s.strip("€$£¥ ")).strip()  # "EUR 12", "12 USD"
    if s.endswith("-"):
        negative, s = not negative, s[:-1].strip()
    if s.startswith(("-", "+")):
        negative, s = (not negative) if s[0] == "-" else negative, s[1:].strip()
    return s.strip("€$£¥ ").strip(), negative


# --------------------------------------------------------------------- times
_CLOCK = r"(?:[ T,]+(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,6}))?)?\s*(?P<p>[AaPp][Mm])?)?"
# Day and month in either order, then the year: 12/9/2011, 09.12.2011, 09-12-2011.
_SLASH = re.compile(r"(?P<a>\d{1,2})(?P<sep>[/.-])(?P<b>\d{1,2})[/.-](?P<y>\d{4}|\d{2})" + _CLOCK)
# The year first, with slashes or dots (2011/12/09, as Japanese and some ERP exports write it).
_YMD = re.compile(r"(?P<y>\d{4})[/.](?P<b>\d{1,2})[/.](?P<a>\d{1,2})" + _CLOCK)
# ISO's dashes with a 12-hour clock (2011-12-09 12:50 PM), which ISO parsing refuses.
_YMD_12H = re.compile(r"(?P<y>\d{4})-(?P<b>\d{1,2})-(?P<a>\d{1,2})" + _CLOCK)
# Month names (English): 05-Apr-2023, 5 April 2023, Apr 5, 2023, and RFC 2822 mail dates
# (Wed, 05 Apr 2023 13:22:10 +0200), as CRM, mail and Oracle or Excel exports write them.
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")
_ZONE = r"(?:\s*(?P<z>[+-]\d{2}:?\d{2}|Z|UTC|GMT)(?:\s*\([A-Za-z ]+\))?)?"
_WEEKDAY = r"(?:[A-Za-z]{3,9},?\s+)?"
_DAY_MONTH = re.compile(
    _WEEKDAY + r"(?P<d>\d{1,2})[-\s./]+(?P<mon>[A-Za-z]{3,9})\.?[-\s./,]+(?P<y>\d{4}|\d{2})" + _CLOCK + _ZONE,
    re.IGNORECASE)
_MONTH_DAY = re.compile(
    _WEEKDAY + r"(?P<mon>[A-Za-z]{3,9})\.?\s+(?P<d>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<y>\d{4})" + _CLOCK + _ZONE,
    re.IGNORECASE)
EXCEL_EPOCH = datetime(1899, 12, 30)
# --time-format days:DATE / weeks:DATE: a count after DATE (dunnhumby's DAY and WEEK_NO).
COUNT_UNITS = ("days:", "weeks:")


@lru_cache(maxsize=8)  # parse_time asks once per row
def _count_start(time_format: str) -> tuple[str, datetime]:
    """The unit and start of a ``days:DATE`` or ``weeks:DATE`` time format.

    >>> _count_start("days:2020-01-01")
    ('days', datetime.datetime(2020, 1, 1, 0, 0))
    >>> _count_start("weeks:1/1/2020")
    Traceback (most recent call last):
    ...
    features.importer.ImportFailed: --time-format weeks:1/1/2020: the start must be a date as 2020-01-31
    """
    unit, _, start = time_format.partition(":")
    try:
        return unit, datetime.fromisoformat(start.strip())
    except ValueError:
        raise ImportFailed(f"--time-format {time_format}: the start must be a date as 2020-01-31") from None
_UTC_SUFFIX = re.compile(r"\s*\b(UTC|GMT)$", re.IGNORECASE)
# Zone abbreviations after a time ("2023-04-05 13:22 CEST"), hours from UTC. Only those that
# mean one offset: CST, IST and BST each name several, and are refused (see parse_time).
ZONE_ABBREVIATIONS = {
    "WET": 0, "WEST": 1, "CET": 1, "CEST": 2, "MET": 1, "MEST": 2, "EET": 2, "EEST": 3, "MSK": 3,
    "EST": -5, "EDT": -4, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7, "AKST": -9, "AKDT": -8,
    "HST": -10, "JST": 9, "KST": 9, "HKT": 8, "SGT": 8, "AEST": 10, "AEDT": 11, "NZST": 12, "NZDT": 13,
}
_AMBIGUOUS_ZONES = frozenset({"CST", "CDT", "IST", "BST", "AST", "ADT"})
_ZONE_SUFFIX = re.compile(r"(?<=[0-9AaPp][0-9Mm])\s+([A-Z]{3,4})$")
# Bytes a file opened with errors="surrogateescape" could not decode.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def legacy_text(text: str) -> str:
    r"""Text read as UTF-8 with ``surrogateescape``, its undecodable bytes read as Windows-1252.

    A file that is not UTF-8 is nearly always Windows-1252 or Latin-1 (older Excel and
    ERP exports); valid UTF-8 is left as it is, so a file that mixes the two (exports
    joined together) is read right too. Bytes Windows-1252 leaves undefined are Latin-1.

    >>> raw = "Müller;12,50 €".encode("cp1252").decode("utf-8", "surrogateescape")
    >>> legacy_text(raw), legacy_text("Müller"), legacy_text(b"x\x81".decode("utf-8", "surrogateescape"))
    ('Müller;12,50 €', 'Müller', 'x\x81')
    """
    if not _UNDECODABLE.search(text):
        return text
    return _UNDECODABLE.sub(_legacy_run, text)


def _legacy_run(match: re.Match[str]) -> str:
    raw = match.group().encode("utf-8", "surrogateescape")
    try:
        return raw.decode("cp1252")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def time_zone(name: str) -> tzinfo:
    """UTC or an IANA zone, by name (``--timezone`` of the imports, backtest, replay and demo)."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ImportFailed(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from exc


def _fine_epoch_ms(text: str, per_ms: int) -> int:
    """Epoch micro- or nanoseconds (``per_ms`` to a millisecond) cut to whole milliseconds.

    By integer division: a float would round the last digits, and up into the next ms.
    """
    return _to_ms(datetime.fromtimestamp(int(text.split(".")[0]) // per_ms / 1000, UTC), UTC)


def _to_ms(dt: datetime, zone: tzinfo) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    ms = round(dt.timestamp() * 1000)
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise RowProblem(f"time out of range: before {MIN_TS_TEXT} or after 2100")
    return ms


def _slash(text: str) -> re.Match[str] | None:
    """A day-month-year or month-day-year date; with dashes only with a 4-digit year.

    12-05-23 could as well be 2012-05-23: such dashes are left to ``--time-format``.

    >>> bool(_slash("09-12-2011 12:50")), bool(_slash("09-12-11")), bool(_slash("9.12.11"))
    (True, False, True)
    """
    m = _SLASH.fullmatch(text)
    if m and m["sep"] == "-" and len(m["y"]) == 2:
        return None
    return m


def slash_evidence(text: str) -> str | None:
    """``"dmy"`` / ``"mdy"`` when a slash or dot date settles the order, else ``None``.

    >>> slash_evidence("13/12/2011"), slash_evidence("12/13/2011 10:00"), slash_evidence("1/2/2011")
    ('dmy', 'mdy', None)
    """
    m = _slash(text.strip())
    if not m:
        return None
    a, b = int(m["a"]), int(m["b"])
    if a > 12 >= b:
        return "dmy"
    if b > 12 >= a:
        return "mdy"
    return None


_DECIMAL_DIGITS = re.compile(r"\d+(\.\d+)?")


def parse_time(
    text: str | None, time_format: str | None = None, date_order: DateOrder = "auto",
    zone: tzinfo = UTC,
) -> int:
    """Epoch milliseconds for one time cell; raises :class:`RowProblem` with a reason.

    >>> parse_time("2011-12-09 12:50:00"), parse_time("2011-12-09T13:50:00+01:00")
    (1323435000000, 1323435000000)
    >>> parse_time("1323435000"), parse_time("1323435000000"), parse_time("20111209")
    (1323435000000, 1323435000000, 1323388800000)
    >>> parse_time("12/9/2011 12:50", date_order="mdy"), parse_time("9.12.2011 12:50", date_order="dmy")
    (1323435000000, 1323435000000)
    >>> parse_time("12/9/2011 12:50 PM", date_order="mdy"), parse_time("2011-12-09 12:50 PM")
    (1323435000000, 1323435000000)
    >>> parse_time("09-12-2011 12:50", date_order="dmy"), parse_time("2011/12/09 12:50")
    (1323435000000, 1323435000000)
    >>> parse_time("09/12/2011 12:50", "%d/%m/%Y %H:%M")
    1323435000000
    >>> parse_time("09-Dec-2011 12:50"), parse_time("Dec 9, 2011 12:50 PM"), parse_time("Fri, 9 Dec 2011 13:50 +0100")
    (1323435000000, 1323435000000, 1323435000000)
    >>> parse_time("2011-12-09 13:50 CET"), parse_time("12/9/2011 7:50 AM EST", date_order="mdy")
    (1323435000000, 1323435000000)
    >>> from zoneinfo import ZoneInfo
    >>> parse_time("2011-12-09 13:50", zone=ZoneInfo("Europe/Paris"))
    1323435000000
    >>> parse_time("2011-12-09 12:50:00 UTC", zone=ZoneInfo("Europe/Paris"))
    1323435000000
    >>> parse_time("12/9/2011")
    Traceback (most recent call last):
    ...
    features.importer.RowProblem: ambiguous date: day and month both 12 or less (use --date-order or --time-format)
    """
    if text is None or not text.strip():
        raise RowProblem("missing time")
    s = text.strip()
    named_zone = _ZONE_SUFFIX.search(s) if not time_format else None
    if named_zone and named_zone[1] not in ("UTC", "GMT"):
        if named_zone[1] in _AMBIGUOUS_ZONES:
            raise RowProblem(f"bad time: the zone {named_zone[1]} names several offsets "
                             "(use --timezone or --time-format with %z)")
        hours = ZONE_ABBREVIATIONS.get(named_zone[1])
        if hours is None:
            raise RowProblem(f"bad time: unknown zone {named_zone[1]} (use --timezone or --time-format with %z)")
        s, zone = s[: named_zone.start()], timezone(timedelta(hours=hours))
    try:
        if time_format == "epoch_s":
            return _to_ms(datetime.fromtimestamp(float(s), UTC), zone)
        if time_format == "epoch_ms":
            return _to_ms(datetime.fromtimestamp(float(s) / 1000, UTC), zone)
        if time_format in ("epoch_us", "epoch_ns"):
            return _fine_epoch_ms(s, 1_000 if time_format == "epoch_us" else 1_000_000)
        if time_format == "excel":
            return _to_ms(EXCEL_EPOCH + timedelta(days=float(s)), zone)
        if time_format and time_format.startswith(COUNT_UNITS):
            unit, start = _count_start(time_format)
            return _to_ms(start + timedelta(**{unit: float(s)}), zone)
        if time_format:
            return _to_ms(datetime.strptime(s, time_format), zone)
    except (ValueError, OverflowError, OSError) as exc:
        if isinstance(exc, RowProblem):
            raise
        raise RowProblem(f"bad time: does not match --time-format {time_format}") from None
    digits = s.lstrip("-")
    if _DECIMAL_DIGITS.fullmatch(digits):
        whole = digits.split(".")[0]
        try:
            if len(whole) == 8 and "." not in digits:
                return _to_ms(datetime.strptime(digits, "%Y%m%d"), zone)
            if len(whole) in (9, 10):
                return _to_ms(datetime.fromtimestamp(float(s), UTC), zone)
            if len(whole) in (12, 13):
                return _to_ms(datetime.fromtimestamp(float(s) / 1000, UTC), zone)
            # Microseconds (GA4's BigQuery export, UNIX_MICROS) and nanoseconds (Spark, ClickHouse).
            for width, per_ms in ((16, 1_000), (19, 1_000_000)):
                if len(whole) in (width - 1, width):
                    return _fine_epoch_ms(s, per_ms)
        except (ValueError, OverflowError, OSError):
            raise RowProblem("bad time: not a valid date") from None
        raise RowProblem("bad time: a number that is neither epoch seconds (10 digits), milliseconds (13), "
                         "microseconds (16), nanoseconds (19) nor YYYYMMDD (use --time-format; a day number: days:DATE; "
                         "an Excel date's serial such as 44927: excel)")
    m = _slash(s)
    year_first = False
    if m is None:
        m = _YMD.fullmatch(s)
        if m is None and (dashed := _YMD_12H.fullmatch(s)) is not None and dashed["p"]:
            m = dashed
        year_first = m is not None
    if m:
        a, b = int(m["a"]), int(m["b"])
        if a > 12 and b > 12:
            raise RowProblem("bad time: neither of the first two numbers can be a month")
        order = "dmy" if year_first else date_order  # _YMD names its day a, its month b
        if order == "auto":
            order = slash_evidence(s) or "auto"  # type: ignore[assignment]
        if order == "auto":
            raise RowProblem("ambiguous date: day and month both 12 or less "
                             "(use --date-order or --time-format)")
        day, month = (a, b) if order == "dmy" else (b, a)
        clock = _clock(m)  # outside the try: its RowProblem is a ValueError with its own reason
        try:
            dt = datetime(_year(m), month, day, *clock)
        except ValueError:
            shape = "year/month/day" if year_first else "day/month/year" if order == "dmy" else "month/day/year"
            raise RowProblem(f"bad time: not a valid date as {shape}") from None
        return _to_ms(dt, zone)
    named = _MONTH_DAY.fullmatch(s) or _DAY_MONTH.fullmatch(s)
    if named:
        return _to_ms(_month_named(named), zone)
    s = _UTC_SUFFIX.sub("+00:00", s)  # "2019-10-01 00:00:04 UTC", as warehouse exports write it
    try:
        parsed = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RowProblem("bad time: not a date in a known format (use --time-format)") from None
    return _to_ms(parsed, zone)


# The row loop's parsers: line items repeat their order's time, and prices and quantities
# repeat across a table. Pure functions; a refused cell raises again (exceptions are not cached).
_cached_time = lru_cache(maxsize=1 << 15)(parse_time)
_cached_number = lru_cache(maxsize=1 << 15)(parse_number)


_CLOCK_CELL = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?|(\d{1,4})")


@lru_cache(maxsize=1 << 12)
def clock_ms(text: str) -> int:
    """Milliseconds after midnight of a time-of-day cell: ``1631`` or ``539`` (HHMM, as
    dunnhumby's ``TRANS_TIME``), ``16:31``, ``16:31:05`` or ``16:31:05.250`` (a workbook's time
    cell); raises :class:`RowProblem`.

    Added to the instant the time column gives (a date: its midnight), so on a day the
    clocks change, a time after the change is an hour off in a zone with summer time.

    >>> clock_ms("1631") == clock_ms("16:31") == (16 * 60 + 31) * 60_000, clock_ms("539") // 60_000
    (True, 339)
    >>> clock_ms("16:31:05.25") - clock_ms("16:31:05")
    250
    >>> clock_ms("2460")
    Traceback (most recent call last):
    ...
    features.importer.RowProblem: bad clock: not a time of day as 1631 or 16:31
    """
    m = _CLOCK_CELL.fullmatch(text.strip())
    if m is None:
        raise RowProblem("missing clock" if not text.strip() else "bad clock: not a time of day as 1631 or 16:31")
    millis = 0
    if m[5] is not None:
        hours, minutes, seconds = int(m[5]) // 100, int(m[5]) % 100, 0
    else:
        hours, minutes, seconds = int(m[1]), int(m[2]), int(m[3] or 0)
        millis = int((m[4] or "0").ljust(3, "0"))
    if hours > 23 or minutes > 59 or seconds > 59:
        raise RowProblem("bad clock: not a time of day as 1631 or 16:31")
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + millis


def _row_time(row: dict[str, str], config: ImportConfig, order: DateOrder, zone: tzinfo) -> int:
    """A row's time in epoch ms: its time cell, plus its ``--clock`` cell when given."""
    ts = _cached_time(row[config.time], config.time_format, order, zone)
    return ts + clock_ms(row[config.clock]) if config.clock else ts


def _month_named(m: re.Match[str]) -> datetime:
    """The datetime of a date with its month's name (see _MONTH_DAY, _DAY_MONTH).

    >>> _month_named(_DAY_MONTH.fullmatch("Wed, 05 Apr 2023 13:22:10 +0200")).isoformat()
    '2023-04-05T13:22:10+02:00'
    >>> _month_named(_MONTH_DAY.fullmatch("Sept. 5th, 2023 1:22 PM")).isoformat()
    '2023-09-05T13:22:00'
    """
    name = m["mon"].lower()
    months = [i for i, full in enumerate(_MONTH_NAMES, 1) if full.startswith(name) or (name == "sept" and i == 9)]
    if len(name) < 3 or len(months) != 1:
        raise RowProblem("bad time: not a month name")
    z = (m["z"] or "").upper()
    zone = UTC if z in ("Z", "UTC", "GMT") else datetime.strptime(z, "%z").tzinfo if z else None
    clock = _clock(m)
    try:
        return datetime(_year(m), months[0], int(m["d"]), *clock, tzinfo=zone)
    except ValueError:
        raise RowProblem("bad time: not a valid date") from None


def _year(m: re.Match[str]) -> int:
    """The year of a date match; two digits are 1970-2069."""
    y = int(m["y"])
    return y + (2000 if y < 70 else 1900) if len(m["y"]) == 2 else y


def _clock(m: re.Match[str]) -> tuple[int, int, int, int]:
    """Hour, minute, second and microsecond of a match of ``_CLOCK`` (all 0 when absent)."""
    hour = int(m["H"] or 0)
    if m["p"]:
        if not 1 <= hour <= 12:
            raise RowProblem("bad time: hour must be 1-12 with AM/PM")
        hour = hour % 12 + (12 if m["p"].lower() == "pm" else 0)
    return hour, int(m["M"] or 0), int(m["S"] or 0), int((m["f"] or "0").ljust(6, "0"))


# --------------------------------------------------------------------- rows
# What exports write in a cell that has no value: Excel and Power BI "(blank)" and "#N/A",
# SQL clients "NULL", pandas "nan" (a column cast to text), "None" from Python. An id cell
# holding one of these has no id: read as one, every such row became one customer (in the
# UCI Online Retail invoices, 3,722 stock adjustments made a single "(blank)" customer).
NO_VALUE = frozenset({
    "(blank)", "(null)", "(none)", "(empty)", "null", "none", "nan", "n/a", "#n/a", "na",
    "nil", "undefined", "-", "--", "?",
})


def _text(value: str | None) -> str:
    """A trimmed cell; '' for a placeholder for no value (:data:`NO_VALUE`).

    >>> _text(" Lantern "), _text("(blank)"), _text(" NULL ")
    ('Lantern', '', '')
    """
    s = (value or "").strip()
    return "" if s.lower() in NO_VALUE else s


_FLOAT_ID = re.compile(r"\d+\.0+")


def _clean_id(value: str | None) -> str:
    """Trimmed id; ``17850.0`` (a number through a spreadsheet) becomes ``17850``; a
    placeholder for no value (:data:`NO_VALUE`) is no id.

    >>> _clean_id(" 17850.0 "), _clean_id("C536379"), _clean_id("0042"), _clean_id("(blank)"), _clean_id("NULL")
    ('17850', 'C536379', '0042', '', '')
    """
    s = _text(value)
    if _FLOAT_ID.fullmatch(s):
        s = s.split(".")[0]
    return s


def _missing(what: str, cell: str | None) -> str:
    """The reason a row without ``what`` is skipped; it names a placeholder (never any other value).

    >>> _missing("customer", " "), _missing("customer", "(blank)")
    ('missing customer', "missing customer ('(blank)', what exports write for no value)")
    """
    s = (cell or "").strip()
    return f"missing {what} ({s!r}, what exports write for no value)" if s else f"missing {what}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


@dataclass(slots=True)
class _Line:
    """One usable row, parsed."""

    line: int
    customer: str
    order: str | None
    ts_ms: int
    amount: float  # absolute
    refund: bool
    bought: bool  # a refunded order's row (its status says so): the order's purchase too
    refund_ts_ms: int  # the refund's time: ts_ms, or the refund_time cell of a bought row
    currency: str
    item: tuple[float, float, str, str] | None  # quantity, unit price, product, category
    extra: dict[str, str]
    key: str  # the row's group without an order column: content hash or session; '' with one
    source_currency: str  # the row's own currency, before any conversion
    refunded: float = 0.0  # the refund_amount cell of a purchase or bought row (absolute, converted)


def table_records(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """A delimited table's records from its header line on (the header first): title or
    comment lines above it passed by (:func:`likely_header`), the delimiter sniffed from it.

    >>> [cells for _, cells in table_records(["# Orders export", "", "a;b", "1;2"])]
    [['a', 'b'], ['1', '2']]
    """
    rest = iter(lines)
    head = list(islice(rest, HEADER_SEARCH_LINES))
    at = likely_header(head)
    delimiter = sniff_delimiter(head[at]) if head else ","
    return csv_records(chain(head[at:], rest), delimiter, first_line=at + 1)


def csv_records(lines: Iterable[str], delimiter: str, first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
    """``(first line number, cells)`` per CSV record (quoted fields may span lines).

    ``" "``: fields apart by runs of spaces and tabs, and none around a line's ends.
    """
    if delimiter == " ":
        lines = (_SPACES.sub(" ", line.strip(" \t\r\n")) + "\n" for line in lines)
    reader = csv.reader(lines, delimiter=delimiter)
    start = first_line
    for cells in reader:
        yield start, cells
        start = first_line + reader.line_num


_SPACES = re.compile(r"[ \t]+")

# Lines searched for the header: analytics and bank exports write a title, the date range
# or "# ----" comment lines above it.
HEADER_SEARCH_LINES = 50


def _header_line(head: list[str], config: ImportConfig, delimiter: str) -> int:
    r"""Index in ``head`` of the first line naming the customer and time columns.

    When none does (a misspelt column), :func:`likely_header`: the header the import then
    refuses, listing its columns, rather than a title line above it.

    >>> cfg = ImportConfig(customer="Client", time="Date", amount="Revenue")
    >>> _header_line(["# All Web Site Data\n", "\n", "Client,Date,Revenue\n", "c1,2020-01-01,5\n"], cfg, "auto")
    2
    >>> _header_line(["Bank statement\n", "Clint;Date;Amount\n", "c1;2020-01-01;5\n"], cfg, "auto")
    1
    """
    wanted = [c for c in (config.customer, config.time) if c]
    for i, line in enumerate(head):
        if all(c in line_cells(line, delimiter) for c in wanted):
            return i
    return likely_header(head, delimiter)


def likely_header(head: list[str], delimiter: str = "auto") -> int:
    r"""Index of a table's header among its first lines, below any title, blank or ``#`` line.

    The first line as wide as most lines, cells counted (empty ones too: a header may end
    with an unnamed column); a row wider than the header (a trailing field) does not move
    it. A line of words apart by spaces counts half a cell less: a title, unless every
    line is so (CDNOW's master file).

    >>> likely_header(["# GA export\n", "Report: March\n", "\n", "Client;Date;Total\n", "k1;2024-03-01;5\n"])
    3
    >>> likely_header(["Customers export\n", "\n", "id;person\n", "c1;p1\n", "c2;p2\n"])
    2
    >>> likely_header(["id,id,Price,\n", "007,a,5,x\n", "008,b,2,y,extra\n", "009,c,1,z\n"])
    0
    """
    widths = [0.0 if not line.strip() or line.lstrip().startswith("#") else
              len(line_cells(line, delimiter)) - 0.5 * (_delimiter_of(line, delimiter) == " ") for line in head]
    counted = [w for w in widths if w]
    if not counted:
        return 0
    usual = Counter(counted).most_common(1)[0][0]
    return next(i for i, w in enumerate(widths) if w >= usual)


def _delimiter_of(line: str, delimiter: str) -> str:
    return DELIMITERS.get(delimiter, delimiter) if delimiter != "auto" else sniff_delimiter(line)


def numbered_names(names: list[str], fold_case: bool = False) -> list[str]:
    """Column names, a repeated one numbered in order (``fold_case``: as SQLite compares them).

    >>> numbered_names(["id", "price", "id", "id"]), numbered_names(["Id", "id"], fold_case=True)
    (['id', 'price', 'id_2', 'id_3'], ['Id', 'id_2'])
    """
    seen: dict[str, int] = {}
    out = []
    for n in names:
        key = n.lower() if fold_case else n
        seen[key] = seen.get(key, 0) + 1
        out.append(n if seen[key] == 1 else f"{n}_{seen[key]}")
    return out


def line_cells(line: str, delimiter: str) -> list[str]:
    """The cells of one line, trimmed (``auto``: its own delimiter, sniffed)."""
    cells = next((c for _, c in csv_records([line], _delimiter_of(line, delimiter))), [])
    return [c.strip().lstrip("\ufeff") for c in cells]


def sniff_delimiter(header: str) -> str:
    r"""The field separator a header line uses: the most frequent of , ; tab |; with none of
    them, runs of spaces when the line holds words apart (``" "``), else comma.

    >>> sniff_delimiter("Kunde;Datum;Betrag\n"), sniff_delimiter('"a,b"\tc\td'), sniff_delimiter("one")
    (';', '\t', ',')
    >>> sniff_delimiter(" customer_id  date number_of_cds  dollar_value\r\n")  # runs of spaces
    ' '
    """
    unquoted = re.sub(r'"[^"]*"', "", header)  # a quoted name may hold any of them
    counts = {d: unquoted.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    if not counts[best] and len(unquoted.split()) >= 2:
        return " "  # none of them, but words apart: runs of spaces separate the fields
    return best if counts[best] else ","


Lines = Iterable[str] | Callable[[], Iterable[str]]


def import_transactions(
    lines: Lines, config: ImportConfig, delimiter: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Read a transaction CSV (text lines, header first) into purchase events.

    Raises :class:`ImportFailed` when the command itself is wrong (a column
    missing from the header, dates that no row disambiguates); bad rows are
    skipped and reported in the result. ``delimiter="auto"`` takes the header's
    separator (:func:`sniff_delimiter`); ``config.decimal_comma=None`` lets the
    numbers decide (:func:`_decide_decimal`).

    ``lines`` may also be a function that opens the lines afresh (a file, not a
    pipe). The rows are then read twice, once for what the whole file decides
    (date order, decimal mark) and once to parse, instead of being held in
    memory in between: a line-item table imports in about half the memory.
    ``progress`` then counts the lines of both readings.

    >>> text = "c,t,a\\nc1,1/13/2024,1.5\\nc2,2/3/2024,2\\n"
    >>> cfg = ImportConfig(customer="c", time="t", amount="a")
    >>> once = import_transactions(text.splitlines(keepends=True), cfg)
    >>> twice = import_transactions(lambda: text.splitlines(keepends=True), cfg)
    >>> once.events == twice.events, [e["ts"][:10] for e in twice.events], twice.date_order
    (True, ['2024-01-13', '2024-02-03'], 'mdy (from 1 row with a day above 12)')
    """
    config.check()
    zone = time_zone(config.timezone)
    result = ImportResult(customer_column=config.customer)
    evidence = _Evidence(config)
    rows: Iterable[tuple[int, dict[str, str]]]
    if callable(lines):
        # Pass 1 decides; its skipped rows are counted again (and kept) by pass 2.
        scratch = ImportResult()
        for _number, row in _rows(lines(), config, delimiter, scratch, progress):
            evidence.add(row)
        first_pass = scratch.rows
        tick = (lambda n: progress(first_pass + n)) if progress else None
        rows = _rows(lines(), config, delimiter, result, tick)
    else:
        raw = []
        for number, row in _rows(lines, config, delimiter, result, progress):
            evidence.add(row)
            raw.append((number, row))
        raw.reverse()
        rows = _popped(raw)  # popped as read: a large log's rows are not held beside its events
    order = _decide_date_order(config, evidence.dates, evidence.ambiguous, result)
    config = _decide_decimal(config, evidence.comma, evidence.point, result)
    identity = config.identity_columns()  # what names a row without an id
    parsed: list[_Line] = []
    activity: list[_Encoded] = []  # web and campaign events of an event log
    seen: Counter[str] = Counter()
    table = action_table(config.actions) if config.action else None
    other = action_target(config.other_actions) if config.action and config.other_actions else None
    result.others_as = config.other_actions or ""
    for number, row in rows:
        kind = ("purchase", "completed")
        if table is not None:
            assert config.action is not None
            value = norm_action(row[config.action])
            found = table.get(value)
            if found is None and other is not None:
                result.others[value] += 1
                found = other
            if found is None:
                result.unmapped[value] += 1
                result.skip(number, "unknown action (see unmapped_actions in the "
                                    "summary; --map VALUE=ACTION reads it)")
                continue
            if found[0] == "skip":
                result.skip(number, "action skipped (--others skip)" if value in result.others
                            else "action skipped (--map VALUE=skip)")
                continue
            kind = found
        try:
            if kind[0] != "purchase":
                activity.append(_activity(row, config, kind, order, zone, seen, identity))
                result.types[kind[0]] += 1
                result.id_shapes[activity[-1][0] // DAY_MS][cell_shape(row[config.customer])] += 1
                continue
            line = _parse_row(number, row, config, order, zone, seen, kind[1] == "refunded", identity)
        except RowProblem as exc:
            if isinstance(exc, _NotAPurchase):
                result.unread_statuses[exc.value] += 1
            result.skip(number, str(exc))
            continue
        parsed.append(line)
        result.id_shapes[line.ts_ms // DAY_MS][cell_shape(row[config.customer])] += 1
        if line.source_currency != line.currency:
            result.converted[line.source_currency] += 1
    result.identical_rows = sum(n - 1 for n in seen.values() if n > 1)
    # Dates without a time of day (every time a midnight) put a customer's events of one day at
    # one instant: which came first is lost. The rows' own times (not a refund's); stops at the
    # first with a time of day.
    times = chain((ln.ts_ms for ln in parsed), (a[0] for a in activity))
    if (parsed or activity) and all(_at_midnight(ts, zone) for ts in times):
        result.dates_only = len(parsed) + len(activity)
    purchases = bool(parsed)
    events = _events(parsed, config, result)  # empties parsed
    if config.action:
        if not config.amount and not config.price and purchases:
            result.amounts = "none (no --amount or --price): purchases have amount 0, spend features read 0"
        if events:
            result.types["purchase"] = len(events)
        events += activity
        activity.clear()
        events.sort(key=_by_time)
    result.encoded = [line for _, _, line in events]
    result.errors.sort(key=lambda e: e.line)
    return result


@lru_cache(maxsize=1 << 12)
def _at_midnight(ts_ms: int, zone: tzinfo) -> bool:
    """Whether a time is a midnight in ``zone`` (a date read without its time of day).

    >>> from zoneinfo import ZoneInfo
    >>> _at_midnight(parse_time("2024-03-01"), UTC), _at_midnight(parse_time("2024-03-01 00:00:01"), UTC)
    (True, False)
    >>> paris = ZoneInfo("Europe/Paris")
    >>> _at_midnight(parse_time("2024-03-01", zone=paris), paris), _at_midnight(parse_time("2024-03-01"), paris)
    (True, False)
    """
    local = datetime.fromtimestamp(ts_ms / 1000, zone)
    return local.hour == local.minute == local.second == local.microsecond == 0


def dates_only_note(rows: int) -> str:
    """The note for a history whose every row's time is a midnight (see :func:`import_transactions`).

    >>> dates_only_note(3)[:62]
    "all 3 rows' times fall at midnight: the time column holds date"
    """
    return (f"all {rows:,} rows' times fall at midnight: the time column holds dates without a time of day, so a "
            "customer's events of one day share one instant and their order within the day is lost (campaign "
            "response and same-day repeat orders go uncounted); --clock COL adds a time-of-day column, or give "
            "--time a column with times if the table has one (leadpulse inspect names them)")


# An event as (ts_ms, event_id, canonical JSON): sorted by time, then id.
_Encoded = tuple[int, str, bytes]


def _by_time(event: _Encoded) -> tuple[int, str]:
    return event[0], event[1]


def _popped(raw: list[tuple[int, dict[str, str]]]) -> Iterator[tuple[int, dict[str, str]]]:
    """A reversed list's items, first row first, each let go as it is read."""
    while raw:
        yield raw.pop()


def _rows(
    lines: Iterable[str], config: ImportConfig, delimiter: str, result: ImportResult,
    progress: Callable[[int], None] | None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, {column: cell})`` per usable row; the header checked first.

    Rows that cannot be read (wrong number of fields, a repeated header, bytes not
    in the encoding) are counted in ``result`` and skipped; an order's blank
    order-level cells are filled from its first row (:func:`_fill_from_order`).
    """
    lines = iter(lines)
    first = next(lines, None)
    if first is not None:
        lines = chain([first], lines)
        start = first.lstrip("\ufeff \t\r\n")[:1]
        if start == "[" and delimiter == "auto":
            # One JSON array of objects ("export as JSON"): read whole, then as JSON Lines.
            try:
                items = orjson.loads("".join(lines))
            except orjson.JSONDecodeError as exc:
                raise ImportFailed(f"a JSON array that is not valid JSON: {str(exc)[:120]}") from None
            if not isinstance(items, list):
                raise ImportFailed("not a JSON array of objects")
            rows = (orjson.dumps(item).decode() for item in items)
            yield from _json_rows(rows, config, result, progress, "JSON array")
            return
        if start == "{" and delimiter == "auto":
            yield from _json_rows(lines, config, result, progress)
            return
    head = list(islice(lines, HEADER_SEARCH_LINES))
    skip = 0 if config.header else _header_line(head, config, delimiter)
    lines = chain(head[skip:], lines)
    result.header_line = skip + 1
    if delimiter == "auto":
        delimiter = sniff_delimiter(head[skip] if head else "")
    delimiter = DELIMITERS.get(delimiter, delimiter)
    result.delimiter = delimiter
    records = csv_records(lines, delimiter, first_line=skip + 1)
    if config.header:  # a file without a header line: its columns named by the user
        header = list(config.header)
        result.header_line = 0
    else:
        try:
            _, header = next(records)
        except StopIteration:
            raise ImportFailed("the file is empty (no header line)") from None

    def header_cell(cell: str) -> str:
        name = cell.strip().lstrip("\ufeff")
        return legacy_text(name) if config.legacy_fallback else name

    header = [header_cell(h) for h in header]
    # A repeated name is numbered (Amount, Amount_2), as inspect lists it: each column can be named.
    index = {name: i for i, name in enumerate(numbered_names(header))}
    absent = [c for c in config.columns() if c not in index]
    if absent:
        shown = ", ".join(_UNDECODABLE.sub("?", h) for h in header[:30])
        hint = ("; the header is not valid text in the file's encoding: try --encoding latin-1 or cp1252"
                if any(_UNDECODABLE.search(h) for h in header) else "")
        if any("\x00" in h for h in header) and not _binary([h.replace("\x00", "") for h in header]):
            # Every other byte 0 and text between: UTF-16 without its byte order mark.
            hint, shown = "; the file looks like UTF-16 text: try --encoding utf-16-le (or utf-16-be)", shown.replace("\x00", "")
        elif _binary(header):
            raise ImportFailed("the first line is not a header of column names but binary data: is this a "
                               "text table (CSV or TSV, plain or .gz/.zip)?")
        raise ImportFailed(f"column(s) {', '.join(absent)} not in the header (columns: {shown}){hint}")
    picks = [(c, index[c]) for c in config.columns()]
    first_row: dict[str, str] = {}  # the current order's first row (see _fill_from_order)
    for number, cells in records:
        if not any(c.strip() for c in cells):
            continue  # blank line
        result.rows += 1
        if progress and result.rows % 10_000 == 0:
            progress(result.rows)
        if header_cell(cells[0]) == header[0] and [header_cell(c) for c in cells] == header:
            # Exports joined together, each with its own header line.
            result.skip(number, "the header line repeated")
            continue
        if len(cells) != len(header):
            result.skip(number, f"wrong number of fields: {len(cells)}, header has {len(header)}")
            continue
        row = {c: cells[i] for c, i in picks}
        if any(_UNDECODABLE.search(v) for v in row.values()):
            if not config.legacy_fallback:
                result.skip(number, "not valid text in the file's encoding (try --encoding latin-1 or cp1252)")
                continue
            row = {c: legacy_text(v) for c, v in row.items()}
            result.legacy_rows += 1
        if config.order:
            first_row = _fill_from_order(row, first_row, config, result)
        yield number, row


# A JSON Lines export: columns named in the first this many objects are checked against.
JSON_COLUMN_CHECK_ROWS = 1_000


def json_cell(obj: Mapping[str, Any], column: str) -> str | None:
    """One JSON object's value for a column, as the cell text a CSV would hold (None: absent).

    ``column`` is a key, or a dotted path into nested objects (Segment, Mixpanel and
    BigQuery exports nest, e.g. ``properties.time``); a key that itself holds dots wins.
    Numbers keep their JSON text, ``null`` is an empty cell, and an object or a list
    is its JSON. A list of ``{"key": ..., "value": ...}`` items, as GA4's BigQuery
    export holds ``event_params`` and ``user_properties``, is looked into by key,
    and a value typed GA4's way (``{"string_value": null, "int_value": "7", ...}``)
    is the one that is set: ``event_params.ga_session_id``.

    >>> row = {"id": 7, "properties": {"time": 1704067200, "price": 12.5, "tags": ["a"]}, "v": None}
    >>> [json_cell(row, c) for c in ("id", "properties.time", "properties.price", "properties.tags", "v", "x")]
    ['7', '1704067200', '12.5', '["a"]', '', None]
    >>> ga4 = {"event_params": [{"key": "page_title", "value": {"string_value": "Home", "int_value": None}},
    ...                         {"key": "ga_session_id", "value": {"string_value": None, "int_value": "1680700900"}}]}
    >>> json_cell(ga4, "event_params.ga_session_id"), json_cell(ga4, "event_params.page_title")
    ('1680700900', 'Home')
    """
    if column in obj:
        value = obj[column]
    else:
        value = obj
        for part in column.split("."):
            if isinstance(value, list):
                value = next((typed_value(item.get("value")) for item in value
                              if isinstance(item, dict) and item.get("key") == part), _ABSENT)
            elif isinstance(value, dict):
                value = value.get(part, _ABSENT)
            else:
                return None
            if value is _ABSENT:
                return None
    return cell_text(value)


_ABSENT = object()  # a key that is not there, told from one that holds null


def typed_value(value: Any) -> Any:
    """A value typed GA4's way (``{"string_value": None, "int_value": "7", ...}``) as the one set.

    >>> typed_value({"string_value": None, "int_value": "7"}), typed_value({"a": 1}), typed_value("x")
    ('7', {'a': 1}, 'x')
    """
    if isinstance(value, dict) and value and all(k.endswith("_value") for k in value):
        return next((v for v in value.values() if v is not None), None)
    return value


def cell_text(value: Any) -> str:
    """A JSON value as the cell text a CSV would hold: ``null`` empty, numbers as their JSON text.

    >>> [cell_text(v) for v in (None, "a", True, 7, 12.5, {"k": [1]})]
    ['', 'a', 'true', '7', '12.5', '{"k":[1]}']
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return orjson.dumps(value, default=str).decode()


def _json_rows(
    lines: Iterable[str], config: ImportConfig, result: ImportResult, progress: Callable[[int], None] | None,
    form: str = "JSON Lines",
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, {column: cell})`` per JSON object line: a JSON Lines export read as a table.

    A column that none of the first ``JSON_COLUMN_CHECK_ROWS`` objects has is refused, as a
    CSV column missing from the header is (a misspelt name would skip every row); one
    absent from some objects (an amount only on purchases) is an empty cell there.
    """
    result.delimiter = form  # what the summary says was read
    columns = config.columns()
    seen: set[str] = set()  # columns some of the first objects have
    keys: set[str] = set()  # their top-level keys, for the refusal's message
    held: list[tuple[int, dict[str, str]]] = []
    checked = False
    first_row: dict[str, str] = {}
    objects = 0

    def check() -> None:
        absent = [c for c in columns if c not in seen]
        if absent and objects:
            raise ImportFailed(f"column(s) {', '.join(absent)} in none of the first {objects:,} JSON "
                               f"objects (keys: {', '.join(sorted(keys)[:30])}; a nested one as a.b)")

    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        result.rows += 1
        if progress and result.rows % 10_000 == 0:
            progress(result.rows)
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            result.skip(number, "not valid JSON")
            continue
        if not isinstance(obj, dict):
            result.skip(number, "not a JSON object")
            continue
        cells = {c: json_cell(obj, c) for c in columns}
        row = {c: "" if v is None else v for c, v in cells.items()}
        if not checked:
            objects += 1
            keys.update(obj)
            seen.update(c for c, v in cells.items() if v is not None)
        if config.order:
            first_row = _fill_from_order(row, first_row, config, result)
        if checked:
            yield number, row
            continue
        held.append((number, row))
        if objects >= JSON_COLUMN_CHECK_ROWS:
            check()
            checked = True
            yield from held
            held = []
    if not checked:
        check()
        yield from held


class _Evidence:
    """What the rows say about the file's date order and decimal mark (decided over all rows)."""

    def __init__(self, config: ImportConfig) -> None:
        self._time = None if config.time_format else config.time
        self._numbers = ([c for c in (config.amount, config.price, config.quantity, config.refund_amount) if c]
                         if config.decimal_comma is None else [])
        self.dates: Counter[str] = Counter()
        self.ambiguous = 0  # slash dates whose day and month are both 12 or less
        self.comma = self.point = 0  # numbers like 12,50 and like 12.50

    def add(self, row: dict[str, str]) -> None:
        if self._time:
            t = _ZONE_SUFFIX.sub("", row[self._time].strip())  # "... 7:50 AM EST"
            if _slash(t):
                ev = slash_evidence(t)
                if ev:
                    self.dates[ev] += 1
                else:
                    self.ambiguous += 1
        for c in self._numbers:
            cell = _bare_number(row[c])[0]
            if _COMMA_DECIMAL.fullmatch(cell):
                self.comma += 1
            elif _POINT_DECIMAL.fullmatch(cell):
                self.point += 1


def _fill_from_order(
    row: dict[str, str], first: dict[str, str], config: ImportConfig, result: ImportResult
) -> dict[str, str]:
    """Fill a line item's blank order-level cells from the first row of its order; returns that row.

    Shop exports (Shopify's orders export among them) write the order's time, status,
    currency and total on its first row only, and leave them blank on the rows of its
    other line items. Read as they are, those rows would be skipped ("missing time"),
    and an order's amount from prices x quantities would silently be its first item's.
    Only the rows right under the first row, with the same order id, are filled, so a
    file in any other order is read as before. A blank total under a filled one is 0:
    the order's total is on its first row, and summing it again would count it twice.

    >>> cfg = ImportConfig(customer="c", time="t", order="o", amount="total", status="s")
    >>> result = ImportResult()
    >>> first = _fill_from_order({"c": "a", "o": "#1", "t": "2024-01-02", "total": "30", "s": "paid"},
    ...                          {}, cfg, result)
    >>> line = {"c": "a", "o": "#1", "t": "", "total": "", "s": ""}
    >>> _ = _fill_from_order(line, first, cfg, result)
    >>> line, result.filled_rows
    ({'c': 'a', 'o': '#1', 't': '2024-01-02', 'total': '0', 's': 'paid'}, 1)
    """
    assert config.order is not None
    order_id = _clean_id(row[config.order])
    if not order_id or not first or _clean_id(first[config.order]) != order_id:
        return row
    blank = [c for c in (config.customer, config.time, config.status, config.currency, config.refund_time)
             if c and not row[c].strip() and first[c].strip()]
    for c in blank:
        row[c] = first[c]
    total = config.amount and not row[config.amount].strip() and first[config.amount].strip()
    if total:
        assert config.amount is not None
        row[config.amount] = "0"
    if blank or total:
        result.filled_rows += 1
    return first


# Of a number's bare form (_bare_number): what parse_number reads past currency and sign.
_COMMA_DECIMAL = re.compile(r"(\d+|\d{1,3}(\.\d{3})+),\d{1,2}")
_POINT_DECIMAL = re.compile(r"(\d+|\d{1,3}(,\d{3})+)\.\d{1,2}")


def _decide_decimal(config: ImportConfig, comma: int, point: int, result: ImportResult) -> ImportConfig:
    """Decimal comma or point, when not told: the file decides, as for slash dates.

    A number with one or two digits after a comma (``12,5``, ``1.234,50``) is a
    decimal comma; one or two after a point (``12.5``, ``1,234.50``), a decimal
    point. Three digits (``1,234``) could be either and say nothing. Comma only
    when some number says so and none says point (``comma`` and ``point`` count
    them, see :class:`_Evidence`): a file with both is read with a point, and its
    comma numbers are reported row by row.
    """
    if config.decimal_comma is not None:
        result.decimal = "comma" if config.decimal_comma else "point"
        return config
    if comma and not point:
        result.decimal = f"comma (from {comma:,} number{'s' if comma > 1 else ''} like 12,50)"
        return replace(config, decimal_comma=True)
    result.decimal = "point" + (f" ({comma:,} numbers like 12,50 are skipped: --decimal-comma reads them)"
                                if comma else "")
    return replace(config, decimal_comma=False)


def _decide_date_order(
    config: ImportConfig, evidence: Counter[str], ambiguous: int, result: ImportResult
) -> DateOrder:
    if config.time_format:
        result.date_order = f"--time-format {config.time_format}"
        return config.date_order
    if config.date_order != "auto":
        result.date_order = f"{config.date_order} (--date-order)"
        return config.date_order
    if not evidence:
        if ambiguous:
            raise ImportFailed(
                f"{ambiguous} slash dates and none with a day above 12: cannot tell day/month "
                "from month/day. Pass --date-order dmy or mdy, or --time-format."
            )
        return "auto"
    decided: DateOrder = "dmy" if evidence["dmy"] >= evidence["mdy"] else "mdy"
    other = "mdy" if decided == "dmy" else "dmy"
    n = evidence[decided]
    note = f"{decided} (from {n:,} row{'s' if n != 1 else ''} with a day above 12)"
    if evidence[other]:
        note += f"; {evidence[other]:,} rows read the other way are skipped as bad dates"
    result.date_order = note
    return decided


def _norm_status(value: str) -> str:
    return value.strip().lower().replace("-", "_").replace(" ", "_")


def _status(value: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """``completed`` / ``refunded`` / ``skip`` for a status cell, ``None`` for not-a-purchase.

    >>> _status("Closed Won"), _status("partially_refunded"), _status("Cancelled"), _status("pending")
    ('completed', 'completed', 'refunded', None)
    >>> _status("closedwon"), _status("closedlost"), _status("voided")
    ('completed', None, None)
    >>> _status("Processing", {"processing": "completed"}), _status("on-hold", {"On Hold": "skip"})
    ('completed', 'skip')
    """
    s = _norm_status(value)
    for told, target in (overrides or {}).items():
        if _norm_status(told) == s:
            return target
    if not s or s in COMPLETED_STATUSES:
        return "completed"
    if s in REFUND_STATUSES or s.startswith(("refund", "return", "cancel")):
        return "refunded"
    return None


def _bought_first(value: str, overrides: Mapping[str, str] | None = None) -> bool:
    """Whether a status read as refunded says the order was bought first: refunded, returned,
    charged back, or a value ``--status-map`` reads as refunded; not a cancellation, which
    may come before any payment (a shop cancels an unpaid order).

    >>> [_bought_first(v) for v in ("Refunded", "returned", "chargeback", "Cancelled", "canceled")]
    [True, True, True, False, False]
    >>> _bought_first("Cancelled", {"cancelled": "refunded"})
    True
    """
    s = _norm_status(value)
    if any(_norm_status(told) == s for told in (overrides or {})):
        return True  # the user's own reading of the word (only "refunded" reaches here)
    return not s.startswith("cancel")


def _customer(row: dict[str, str], config: ImportConfig) -> str:
    customer = id_text(_clean_id(row[config.customer]))  # composed form, before any hash
    if not customer:
        raise RowProblem(_missing("customer", row[config.customer]))
    if len(customer) > 200:
        raise RowProblem("bad customer: longer than 200 characters")
    if config.customer_key is not None:
        return hashed_id(customer, config.customer_key)
    # An address is one customer however it is capitalised (as hashed_id reads it): a shop
    # export holds Ann@Example.org on one order and ann@example.org on the next.
    return customer.lower() if "@" in customer and _EMAIL.fullmatch(customer) else customer


def hashed_id(customer: str, key: bytes) -> str:
    """A customer id replaced by a keyed hash: 24 hex digits of HMAC-SHA256 (96 bits).

    E-mail addresses are read in lower case first (``Ann@x.org`` and ``ann@x.org`` are
    one customer, as every mail system reads them).

    >>> hashed_id("Ann@Example.org", b"k") == hashed_id("ann@example.org", b"k") != hashed_id("ann@example.org", b"j")
    True
    >>> len(hashed_id("17850", b"k"))
    24
    """
    text = customer.lower() if "@" in customer else customer
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:24]


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")


def emails_note(counts: Counter[str]) -> str:
    """A note when customer ids look like e-mail addresses (none is shown).

    >>> emails_note(Counter({"ann@example.org": 3, "c2": 1}))[:52]
    'customer ids look like e-mail addresses (1 of 2): th'
    >>> emails_note(Counter({"c1": 1}))
    ''
    """
    emails = sum(1 for c in counts if "@" in c and _EMAIL.fullmatch(c))
    if not emails:
        return ""
    return (f"customer ids look like e-mail addresses ({emails:,} of {len(counts):,}): they would be Kafka "
            "keys, Redis keys and score records; --hash-customers replaces each with a keyed hash "
            "(its key in LEADPULSE_CUSTOMER_KEY)")


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SHAPE_TOKENS = re.compile(r"[^\W_]+|.", re.DOTALL)  # runs of letters and digits, and each other character
_SEPARATORS = frozenset("-_.:/#+ ,;()[]'")
_HEX = frozenset("0123456789abcdefABCDEF")


def id_shape(customer: str) -> str:
    """The shape of an id, naming none of its characters but separators: safe to print.

    >>> [id_shape(c) for c in ("000123", "CUST-000123", "ann@example.org", "Ann Smith", "cus_NffrFeUfNV2Hib")]
    ['digits(6)', 'letters(4)-digits(6)', 'e-mail address', 'letters(3) letters(5)', 'letters(3)_alnum(14)']
    >>> id_shape("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"), id_shape("köln&co")
    ('hex(64)', 'letters(4)?letters(2)')
    """
    if "@" in customer and _EMAIL.fullmatch(customer):
        return "e-mail address"
    if _UUID.fullmatch(customer):
        return "uuid"
    parts = []
    for token in _SHAPE_TOKENS.findall(customer):
        if token.isdigit():
            parts.append(f"digits({len(token)})")
        elif token.isalpha():
            parts.append(f"letters({len(token)})")
        elif token.isalnum():  # a hash, or a tool's random id (Stripe's cus_...)
            parts.append(f"{'hex' if len(token) >= 16 and _HEX.issuperset(token) else 'alnum'}({len(token)})")
        else:
            parts.append(token if token in _SEPARATORS else "?")
    return "".join(parts)


@lru_cache(maxsize=1 << 15)
def cell_shape(cell: str) -> str:
    """The :func:`id_shape` of a customer cell read as the import reads it (``17850.0`` is ``17850``).

    >>> cell_shape(" 17850.0 "), cell_shape("CUST-000123")
    ('digits(5)', 'letters(4)-digits(6)')
    """
    return id_shape(id_text(_clean_id(cell)))


_SHAPE_LENGTHS = re.compile(r"\(\d+\)")
SHAPE_SWITCH_MIN_ROWS = 50  # rows on each side of a switch, at the least
SHAPE_SWITCH_PURITY = 0.9  # the share of its side's rows each shape holds


def id_shape_switch(days: Mapping[int, Counter[str]], what: str = "rows") -> str:
    """A note when the customer ids change shape at one day and keep the new one ('' otherwise).

    ``days`` maps a day (epoch days) to the rows of each :func:`id_shape` that day. Shapes
    are compared without their lengths (numbers that grow from 4 to 5 digits are one shape);
    each side of the day must hold :data:`SHAPE_SWITCH_MIN_ROWS` rows and 5% of all, each
    shape :data:`SHAPE_SWITCH_PURITY` of its side. A mix throughout (guests by e-mail
    beside accounts) is no switch. Ids are two customers' then, one person's history split
    in two, so the note names the shapes and the day, never an id.

    >>> days = {d: Counter({"digits(5)": 30}) for d in range(19_700, 19_710)}
    >>> days.update({d: Counter({"letters(4)-digits(6)": 28, "digits(5)": 1}) for d in range(19_710, 19_715)})
    >>> print(id_shape_switch(days))  # doctest: +NORMALIZE_WHITESPACE
    customer ids change shape on 2023-12-19: before it 300 of 300 rows are digits(5), from it 140 of 145 are
      letters(4)-digits(6); if one customer has an id of each, they are two customers (their history split in two):
      map the old ids to the new before importing, or import each period on its own
    >>> days[19_712]["digits(5)"] += 20  # the old shape still in use: a mix, no switch
    >>> id_shape_switch(days)
    ''
    """
    if not days:
        return ""
    order = sorted(days)
    coarse: list[Counter[str]] = [Counter() for _ in order]
    for counts, day in zip(coarse, order, strict=True):
        for shape, n in days[day].items():
            counts[_SHAPE_LENGTHS.sub("", shape)] += n
    total = sum(sum(c.values()) for c in coarse)
    top = [shape for shape, _ in sum(coarse, Counter()).most_common(2)]
    least = max(SHAPE_SWITCH_MIN_ROWS, total // 20)
    if len(top) < 2 or total < 2 * least:
        return ""
    best: tuple[int, int, str, str] | None = None  # (rows that fit, split, old, new)
    for old, new in ((top[0], top[1]), (top[1], top[0])):
        before = fit_old = 0
        fit_new = sum(c[new] for c in coarse)
        for k in range(1, len(order)):
            before += sum(coarse[k - 1].values())
            fit_old += coarse[k - 1][old]
            fit_new -= coarse[k - 1][new]
            after = total - before
            if (before >= least and after >= least and fit_old >= SHAPE_SWITCH_PURITY * before
                    and fit_new >= SHAPE_SWITCH_PURITY * after and (best is None or fit_old + fit_new > best[0])):
                best = (fit_old + fit_new, k, old, new)
    if best is None:
        return ""
    _, k, old, new = best

    def shown(coarse_shape: str, span: list[int]) -> tuple[str, int, int]:
        # The commonest full shape of that kind (digits(6), not digits), its kind's rows, the side's rows.
        full: Counter[str] = Counter()
        for day in span:
            full.update({s: n for s, n in days[day].items() if _SHAPE_LENGTHS.sub("", s) == coarse_shape})
        return full.most_common(1)[0][0], sum(full.values()), sum(sum(days[d].values()) for d in span)

    old_shape, n_old, of_old = shown(old, order[:k])
    new_shape, n_new, of_new = shown(new, order[k:])
    switched = datetime.fromtimestamp(order[k] * DAY_MS / 1000, UTC).date().isoformat()
    return (f"customer ids change shape on {switched}: before it {n_old:,} of {of_old:,} {what} are {old_shape}, "
            f"from it {n_new:,} of {of_new:,} are {new_shape}; if one customer has an id of each, they are two "
            "customers (their history split in two): map the old ids to the new before importing, or import "
            "each period on its own")


_NO_EXTRA: dict[str, str] = {}  # shared by the lines without --extra values: never written to


def _extra(row: dict[str, str], config: ImportConfig) -> dict[str, str]:
    """The ``--extra`` columns a row has a value in, carried on its event."""
    return {c: row[c].strip() for c in config.extra if row[c].strip()}


def _cell(row: dict[str, str], column: str | None) -> str:
    """A trimmed id-like cell (product, session, campaign), at most 200 characters; '' if none."""
    return _clean_id(row[column])[:200] if column else ""


def _activity(
    row: dict[str, str], config: ImportConfig, kind: tuple[str, str],
    order: DateOrder, zone: tzinfo, seen: Counter[str], columns: list[str],
) -> _Encoded:
    """A web or campaign event of an event log, in its canonical form."""
    etype, action = kind
    body: dict[str, Any] = {"customer_id": _customer(row, config),
                            "ts": ms_to_iso(_row_time(row, config, order, zone)),
                            "type": etype, "action": action}
    if etype == "web":
        for column, name in ((config.session, "session_id"), (config.product, "product_id"),
                             (config.category, "category")):
            value = _cell(row, column)
            if value:
                body[name] = value
    else:
        if not config.campaign:
            raise RowProblem("campaign action without a campaign column (--campaign)")
        campaign = _cell(row, config.campaign)
        if not campaign:
            raise RowProblem("missing campaign")
        channel = (row[config.channel].strip().lower() if config.channel else "") or config.default_channel
        if channel not in CHANNELS:
            raise RowProblem(f"bad channel: not one of {', '.join(sorted(CHANNELS))}")
        body.update(campaign_id=campaign, channel=channel)
    for name, value in _extra(row, config).items():
        body.setdefault(name, value)
    key = _digest(*(row[c] for c in columns))
    seen[key] += 1
    if config.event_id:
        body["event_id"] = _cell(row, config.event_id)
        if not body["event_id"]:
            raise RowProblem("missing event id")
    else:
        body["event_id"] = "imp-" + _digest(key, str(seen[key]))
    event = decode(orjson.dumps(body))
    if isinstance(event, EventError):  # a guard: the checks above should make this unreachable
        raise RowProblem("invalid event: " + event.reason.split(":")[0])
    return event.ts_ms, event.event_id, compact(encode(event))


def _parse_row(
    number: int, row: dict[str, str], config: ImportConfig, order: DateOrder, zone: tzinfo,
    seen: Counter[str], refund_action: bool, columns: list[str],
) -> _Line:
    # Interned: an order's line items share their customer, order and currency strings.
    customer = sys.intern(_customer(row, config))
    order_id: str | None = None
    if config.order:
        order_id = sys.intern(_clean_id(row[config.order]))
        if not order_id:
            raise RowProblem(_missing("order", row[config.order]))
    ts = _row_time(row, config, order, zone)
    quantity = (_cached_number(row[config.quantity], config.decimal_comma, "quantity")
                if config.quantity else None)
    price = _cached_number(row[config.price], config.decimal_comma, "price") if config.price else None
    if config.amount:
        amount = _cached_number(row[config.amount], config.decimal_comma, "amount")
    else:
        amount = (price or 0.0) * (1.0 if quantity is None else quantity)
    refund = (refund_action or amount < 0 or (quantity is not None and quantity < 0)
              or (price is not None and price < 0))
    bought = False
    if config.status:
        status = _status(row[config.status], config.statuses)
        if status is None:
            raise _NotAPurchase(_norm_status(row[config.status]))
        if status == "skip":
            raise RowProblem("status skipped (--status-map VALUE=skip)")
        # A negative row is a refund of its own; a refunded status on the order's row says it
        # was bought first (a refund alone would leave the purchase out of every feature).
        bought = status == "refunded" and not refund and _bought_first(row[config.status], config.statuses)
        refund = refund or status == "refunded"
    if refund and config.refunds == "skip":
        raise RowProblem("refund skipped (negative amount or quantity, or refund status)")
    currency = config.default_currency
    if config.currency:
        cur = row[config.currency].strip()
        if cur:
            if not _CODE.fullmatch(cur):
                raise RowProblem("bad currency: not a 3-letter code")
            currency = cur
    else:
        # "CHF 1'234.50", "12.50 USD", "€12", "£1,000": the cell names its currency (not $ or ¥:
        # several currencies write each).
        cell = row[config.amount] if config.amount else row[config.price] if config.price else ""
        named = _CELL_CURRENCY.search(cell)
        if named:
            currency = named[1] or named[2]
        elif "€" in cell:
            currency = "EUR"
        elif "£" in cell:
            currency = "GBP"
    currency = source = sys.intern(currency.upper())
    if config.convert_to and currency != config.convert_to.upper():
        rate = next((r for code, r in config.rates.items() if code.upper() == currency), None)
        if rate is None:
            raise RowProblem(f"no rate for currency {currency} (give --rate {currency}=...)")
        currency = config.convert_to.upper()
        amount, price = amount * rate, None if price is None else price * rate
    else:
        rate = 1.0
    refunded = 0.0
    if config.refund_amount and config.refunds == "event" and (bought or not refund) and _text(row[config.refund_amount]):
        try:  # a purchase (paid, partially refunded) or a refunded order's row: not a refund of its own
            refunded = abs(_cached_number(row[config.refund_amount], config.decimal_comma, "refund amount")) * rate
        except RowProblem as exc:
            raise RowProblem(f"bad refund amount: {exc}") from None
    item: tuple[float, float, str, str] | None = None
    if config.product or config.price or config.quantity:
        q = abs(quantity) if quantity is not None else 1.0
        unit = abs(price) if price is not None else (abs(amount) / q if q else 0.0)
        product, category = (sys.intern(_text(row[c])[:200]) if c else "" for c in (config.product, config.category))
        item = (q, round(unit, 6), product, category)
    refund_ts = ts
    if (bought or refunded) and config.refund_time and _text(row[config.refund_time]):
        try:
            refund_ts = max(ts, _cached_time(row[config.refund_time], config.time_format, order, zone))
        except RowProblem as exc:
            raise RowProblem(f"bad refund time: {exc}") from None
    extra = _extra(row, config) or _NO_EXTRA
    key = _digest(*(row[c] for c in columns))
    seen[key] += 1
    group = "" if config.order else f"{key}#{seen[key]}"
    if config.action and not config.order and _cell(row, config.session):
        # An event log's purchase rows are often one per product: a session's are one order.
        group = "session#" + _digest(_cell(row, config.session))
    return _Line(number, customer, order_id, ts, abs(amount), refund, bought, refund_ts, currency, item, extra,
                 group, source, refunded)


def _events(lines: list[_Line], config: ImportConfig, result: ImportResult) -> list[_Encoded]:
    """The purchase events of the parsed lines, by time; ``lines`` is emptied."""
    groups: dict[tuple[str, str, bool], list[_Line]] = defaultdict(list)
    for ln in lines:
        groups[(ln.customer, ln.order or ln.key, ln.refund)].append(ln)
    # Lines are let go as their events are made: not all of both at once (a 500k-row file).
    lines.clear()
    # A refunded order's purchase, unless the order has completed rows of its own (then the
    # refunded row is a ledger's refund of it, and a purchase here would count it twice).
    twins = {(customer, order_key, False): bought for (customer, order_key, refund), members in groups.items()
             if refund and (customer, order_key, False) not in groups
             and (bought := [m for m in members if m.bought])}
    groups.update(twins)
    result.refunded_orders = len(twins)
    column = _column_refunds(groups, twins, result) if config.refund_amount else {}
    # A purchase with a refund amount and no refund rows (partially refunded): its refund, made here.
    partials = {(customer, order_key, True): _first_currency(members)
                for (customer, order_key, refund), members in groups.items()
                if not refund and (customer, order_key) in column and (customer, order_key, True) not in groups}
    groups.update(partials)
    events: list[_Encoded] = []
    for group in list(groups):
        customer, order_key, refund = group
        members = groups.pop(group)
        first = members[0]
        kept = _first_currency(members)
        if group not in partials:  # its lines were the purchase's too, and told of there
            for m in members:
                if m.currency != first.currency:
                    result.skip(m.line, "currency differs from the order's first line")
        status = "refunded" if refund else "completed"
        if config.order:
            event_id = "imp-" + _digest(customer, order_key, status)
            order_id = order_key
        else:
            event_id = order_id = "imp-" + _digest(customer, order_key)
            # A row that gives a purchase and its refund: the purchase keeps the row's id, the one
            # it had in an export from before the refund, and the refund takes another.
            if refund and ((customer, order_key, False) in twins or group in partials):
                event_id = "imp-" + _digest(customer, order_key, status)
        amount = round(sum(m.amount for m in kept), 6)
        times = [m.refund_ts_ms if refund else m.ts_ms for m in kept]
        told = column.get((customer, order_key)) if refund else None
        if told is not None:  # the refund amount column's, at the refund time of the row that has it
            times = [m.refund_ts_ms for m in kept if m.refunded] or times
        body: dict[str, Any] = {
            "event_id": event_id,
            "customer_id": customer,
            "ts": ms_to_iso(min(times)),
            "type": "purchase",
            "order_id": order_id,
            "amount": amount if told is None else told,
            "currency": first.currency,
            "status": status,
        }
        # A part refunded is of no item known: items only on a refund of the whole order.
        items = [_item(*m.item) for m in kept if m.item is not None and (told is None or told == amount)]
        if items:
            body["items"] = items
        for name, value in first.extra.items():
            body.setdefault(name, value)
        event = decode(orjson.dumps(body))
        if isinstance(event, EventError):  # a guard: the checks above should make this unreachable
            for m in kept:
                result.skip(m.line, "invalid event: " + event.reason.split(":")[0])
            continue
        events.append((event.ts_ms, event.event_id, compact(encode(event))))
        result.refund_events += refund
        result.column_refunds += told is not None
    events.sort(key=_by_time)
    return events


def _column_refunds(
    groups: Mapping[tuple[str, str, bool], list[_Line]], twins: Mapping[tuple[str, str, bool], list[_Line]],
    result: ImportResult,
) -> dict[tuple[str, str], float]:
    """Each order's refund from the refund amount column, by (customer, order key): at most the
    order's amount (the orders cut to it are counted). The largest cell of the order's lines: an
    order-level value, which some exports repeat on every line item (summed, it would count
    once per item). An order with refund rows of its own (a ledger's), other than its refunded
    row, has its refund there: the column is not read for it.
    """
    column: dict[tuple[str, str], float] = {}
    for (customer, order_key, refund), members in groups.items():
        if refund or ((customer, order_key, True) in groups and (customer, order_key, False) not in twins):
            continue
        kept = _first_currency(members)
        asked = max(m.refunded for m in kept)
        if asked <= 0:
            continue
        total = round(sum(m.amount for m in kept), 6)
        if round(asked, 6) > total:
            result.refunds_capped += 1
        asked = min(round(asked, 6), total)
        if asked > 0:
            column[(customer, order_key)] = asked
    return column


def _first_currency(lines: list[_Line]) -> list[_Line]:
    """An order's lines in its first line's currency: an order's amount is summed in one."""
    return [m for m in lines if m.currency == lines[0].currency]


def _item(quantity: float, price: float, product: str, category: str) -> dict[str, Any]:
    """A line item of a purchase event (see :class:`_Line`: held as a tuple until then)."""
    item: dict[str, Any] = {"quantity": quantity, "price": price}
    if product:
        item["product_id"] = product
    if category:
        item["category"] = category
    return item


__all__ = [
    "ACTION_ALIASES", "ImportConfig", "ImportFailed", "ImportResult", "RowError", "RowProblem",
    "action_table", "import_transactions", "norm_action", "parse_number", "parse_time",
    "slash_evidence",
]

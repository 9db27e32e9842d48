"""Which column of an unknown export is what: a profile of each column, and the import it suggests.

A new table (a shop's export, a CRM dump, an analytics log) comes with its own column
names. :func:`profile` reads a sample of its rows and says, per column, how full it is,
how many distinct values it has, and what share of its cells read as a time, a
number or an e-mail address; :func:`suggest` picks the columns an import needs
(customer, time, amount, order, ...) from those figures and the names, and
:func:`command` writes the ``leadpulse import-...`` line to start from.

Cell values are never shown, except those of a column of status, action or currency
words (at most 30 short values, a fifth or more of them words the import knows, none
with an ``@``), as the import's summary shows such words.

>>> rows = [{"Kunde": f"k{i % 7}", "Datum": f"2024-03-{1 + i % 28:02d}", "Betrag": f"{i}.50",
...          "Status": "paid" if i % 9 else "refunded"} for i in range(60)]
>>> cols = profile(rows)
>>> pick = suggest(cols)
>>> pick["customer"], pick["time"], pick["amount"], pick["status"]
('Kunde', 'Datum', 'Betrag', 'Status')
>>> command("orders.csv", pick, event_log=False)
'leadpulse import-transactions orders.csv --customer Kunde --time Datum --amount Betrag --status Status --out orders.jsonl'
"""

from __future__ import annotations

import re
import shlex
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from features.actions import ACTION_ALIASES, norm_action
from features.importer import (
    COMPLETED_STATUSES,
    NO_VALUE,
    NOT_PURCHASE_STATUSES,
    REFUND_STATUSES,
    RowProblem,
    _norm_status,
    _status,
    cell_shape,
    id_shape_switch,
    parse_number,
    parse_time,
)
from features.spec import DAY_MS, name_words

DISTINCT_CAP = 10_000  # distinct values counted per column (a sample's ids need no more)
# Not a url that carries an address in its query (?email=a@b.com): no / : ? = & before the @.
_EMAIL = re.compile(r"[^@\s/:?=&]+@[^@\s/?]+\.[A-Za-z]{2,}")
# Names that say what a column is, in the words exports use (English, some German, French, Spanish).
_NAMES: dict[str, tuple[str, ...]] = {
    "customer": ("customer", "client", "user", "member", "buyer", "contact", "kunde", "visitor", "account",
                 "email", "distinct_id", "person", "shopper", "cliente", "usuario", "household", "cust",
                 "organization", "organisation", "company", "firma", "empresa"),  # a B2B CRM's customer
    "time": ("time", "date", "timestamp", "created", "datum", "ts", "when", "at", "fecha", "zeit"),
    "amount": ("amount", "total", "revenue", "value", "sales", "spend", "betrag", "umsatz", "price_total",
               "payment", "sum", "montant", "importe", "dollars", "gross"),
    "order": ("order", "invoice", "transaction", "receipt", "basket", "bestell", "rechnung", "commande", "pedido"),
    "quantity": ("quantity", "qty", "units", "menge", "anzahl", "count", "cds", "items"),
    "price": ("price", "unit_price", "unitprice", "preis", "prix", "precio"),
    "product": ("product", "sku", "item", "stock", "article", "artikel", "asin", "ean"),
    "status": ("status", "state"),
    "refund_time": ("refunded", "refund", "returned", "return"),  # refunded_at: when a refunded order was
    "currency": ("currency", "curr", "waehrung", "devise", "moneda"),
    "action": ("event", "action", "type", "activity", "event_type", "event_name"),
    "session": ("session",),
    "page": ("page", "page_name", "screen", "screen_name", "page_title"),
    "campaign": ("campaign", "mailing", "newsletter", "utm_campaign"),
    "day_number": ("day", "day_no", "day_number", "days"),
    # Ids of other things than the customer: an order's lines name them (Olist's items).
    "not_customer": ("product", "order", "session", "campaign", "seller", "vendor", "supplier", "merchant",
                     "store", "item", "sku", "invoice", "transaction"),
    "not_a_day_number": ("hour", "since", "prior", "dow", "weekday", "week", "month", "of"),
    "phone": ("phone", "tel", "telephone", "telefon", "mobile", "mobil", "handy", "msisdn", "cell"),
    "company": ("organization", "organisation", "company", "firma", "empresa", "account", "business", "org",
                "firm", "societe"),
    "clock": ("trans_time", "time_of_day", "clock", "hour_minute", "uhrzeit", "heure"),
}
# Money beside an order's value, never its amount or quantity ("Discount Amount" holds "count",
# PayPal's "Shipping and Handling Amount" says amount): a shop export has several of them.
_NOT_AN_ORDER_VALUE = ("discount", "rabatt", "remise", "shipping", "versand", "handling", "freight", "postage",
                       "tax", "vat", "mwst", "fee", "tip", "commission", "refund", "balance", "coupon", "weight")
# Words of a column that sorts customers into a few kinds ("Customer Segment", "Account Type").
_KINDS = ("segment", "status", "state", "type", "tier", "group", "categor", "class", "level", "region", "country",
          "channel", "source", "kind", "stage")
# Three-letter codes a payment tool writes in lower case (Stripe's "usd"); upper case needs no list.
_LOWER_CURRENCIES = frozenset({
    "usd", "eur", "gbp", "jpy", "cny", "cad", "aud", "nzd", "chf", "sek", "nok", "dkk", "pln", "czk", "huf", "ron",
    "bgn", "inr", "brl", "mxn", "zar", "sgd", "hkd", "krw", "try", "ils", "aed", "sar", "thb", "idr", "myr", "php",
    "twd", "ars", "clp", "cop", "pen", "rub", "uah",
})
_ORDER_MARK = re.compile(r"#\d+")  # Shopify's order names: #1001
# A phone number: 7 to 15 digits with a leading + or ( or 00, or in three groups or more (an id
# such as 2023-000123 has two).
_PHONE = re.compile(r"(\+|00|\()?\d[\d ()./-]{5,}\d")
_PHONE_GROUPS = re.compile(r"\d+")
# 00 and a country code (never 0): 0049 170 1234567, or 11 digits or more in one run. An ERP's
# zero-padded customer number (SAP's ten digits, 0000100234 or 0012345678) is no phone number.
_INTERNATIONAL = re.compile(r"00[1-9](?:\d*[ ()./-]|\d{8})")
# Two to four words of letters (a hyphen or apostrophe inside), each starting upper case or
# all upper case, a comma after the first allowed: Ann Smith, Smith, Ann, Jean-Luc O'Neill.
_COMPANY_ENDINGS = frozenset({"inc", "corp", "corporation", "co", "company", "ltd", "limited", "llc", "llp", "plc",
                              "gmbh", "ag", "kg", "se", "sa", "sarl", "sas", "srl", "spa", "bv", "nv", "ab", "as",
                              "oy", "group", "holding", "holdings"})
_NAME_WORD = r"[^\W\d_]+(?:[-'][^\W\d_]+)*"
_PERSON = re.compile(rf"{_NAME_WORD},?(?: (?:(?:van|von|de|der|den|da|di|du|la|le|del|bin|al) )?{_NAME_WORD}){{1,3}}")
_CLOCK_CELL = re.compile(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?")  # a time of day in a column of its own
# Excel's serial days: 20000 is 1954-10-03, 80000 is 2119-01-10 (a date cell exported as its number).
_EXCEL_SERIALS = (20_000, 80_000)


@dataclass
class ColumnProfile:
    """What a sample says about one column."""

    name: str
    filled: int = 0
    rows: int = 0
    distinct: int = 0
    times: int = 0  # cells that read as a time (parse_time, date order settled by the cells)
    numbers: int = 0
    decimals: int = 0  # numbers with a fractional part
    negatives: int = 0
    emails: int = 0
    phones: int = 0  # +49 170 1234567, (555) 123-4567, 030 1234 5678: personal data as an id
    names: int = 0  # Ann Smith, Smith, Ann, MÜLLER HANS: people's names as an id
    statuses: int = 0  # cells that are a status word the import knows
    actions: int = 0  # cells that are an action word the import knows
    currencies: int = 0  # three-letter upper-case codes (or a known one in lower case)
    refunds: int = 0  # cells that are a refund word (of the statuses)
    order_marks: int = 0  # cells such as #1001
    midnights: int = 0  # times at midnight (a date without its time of day)
    clocks: int = 0  # cells that are a time of day alone (13:22 or 13:22:10)
    low: float | None = None  # the smallest and largest number read
    high: float | None = None
    max_len: int = 0
    vocabulary: dict[str, int] = field(default_factory=dict)  # its values, when a small vocabulary

    def share(self, count: int) -> float:
        return count / self.filled if self.filled else 0.0

    def describe(self) -> str:
        """One line: fill rate, distinct values, and what its cells read as."""
        kinds = [(self.times, "times"), (self.numbers, "numbers"), (self.emails, "e-mail addresses"),
                 (self.statuses, "statuses"), (self.actions, "actions"), (self.currencies, "currency codes")]
        reads = ", ".join(f"{100 * self.share(n):.0f}% {what}" for n, what in kinds if self.share(n) >= 0.5)
        fill = 100 * self.filled / self.rows if self.rows else 0
        distinct = f"{self.distinct:,}{'+' if self.distinct >= DISTINCT_CAP else ''} distinct"
        line = f"{fill:.0f}% filled, {distinct}" + (f"; {reads}" if reads else "")
        if self.vocabulary:
            line += ": " + ", ".join(f"{v} ({n:,})" for v, n in self.vocabulary.items())
        return line


def profile(rows: Iterable[Mapping[str, str]], columns: Iterable[str] = ()) -> list[ColumnProfile]:
    """Profile each column over the rows (a sample: the first few thousand are plenty)."""
    profiles: dict[str, ColumnProfile] = {c: ColumnProfile(c) for c in columns}
    values: dict[str, Counter[str]] = {}
    total = 0
    for row in rows:
        total += 1
        for name, raw in row.items():
            p = profiles.get(name)
            if p is None:
                p = profiles[name] = ColumnProfile(name)
            cell = (raw or "").strip()
            if not cell or cell in NO_VALUE:
                continue
            p.filled += 1
            p.max_len = max(p.max_len, len(cell))
            seen = values.setdefault(name, Counter())
            if cell in seen or len(seen) < DISTINCT_CAP:
                seen[cell] += 1
            _read(p, cell)
    out = []
    for name, p in profiles.items():
        p.rows = total  # a JSON object without the key has no value there either
        seen = values.get(name, Counter())
        p.distinct = len(seen)
        words = max(p.statuses, p.actions, p.currencies)
        if 0 < len(seen) <= 30 and p.share(words) >= 0.2 and all(len(v) <= 40 and "@" not in v for v in seen):
            p.vocabulary = dict(seen.most_common())  # statuses, actions, currencies: no one's data
        out.append(p)
    return out


def looks_like_a_row(first_line: list[str]) -> bool:
    """Whether a table's first line is a row, not a header: half or more of its cells numbers.

    Names are words; CDNOW's master file as first published starts with its first purchase.

    >>> looks_like_a_row(["00001", "19970101", "1", "11.77"]), looks_like_a_row(["customer", "date", "amount"])
    (True, False)
    """
    def number(cell: str) -> bool:
        try:
            parse_number(cell)
        except ValueError:
            return False
        return True

    return bool(first_line) and sum(number(c) for c in first_line if c.strip()) >= max(1, len(first_line) // 2)


def _read(p: ColumnProfile, cell: str) -> None:
    # Either date order: a US export's 08/29/2020 is a time too (the import settles the order).
    timed = False
    for order in ("dmy", "mdy"):
        try:
            ms = parse_time(cell, date_order=order)
        except (RowProblem, ValueError):
            continue
        timed = True
        p.times += 1
        p.midnights += ms % 86_400_000 == 0
        break
    if _CLOCK_CELL.fullmatch(cell):
        p.clocks += 1
    letters = "".join(ch for ch in cell if ch.isalpha())
    # A number may carry its currency's code (EUR 12); other letters make it no number
    # (Pipedrive's "Org 19", a "SKU-31"), though the import reads a code-like prefix as one.
    if not letters or letters.lower() in _LOWER_CURRENCIES:
        for comma in (False, True):  # 12.50, or a European export's 12,50
            try:
                number = parse_number(cell, comma)
            except (RowProblem, ValueError, OverflowError):
                continue
            p.numbers += 1
            p.decimals += number != int(number)
            p.negatives += number < 0
            p.low = number if p.low is None else min(p.low, number)
            p.high = number if p.high is None else max(p.high, number)
            break
    if "@" in cell and _EMAIL.fullmatch(cell):
        p.emails += 1
    elif not letters and _PHONE.fullmatch(cell) and 7 <= sum(ch.isdigit() for ch in cell) <= 15 and not timed \
            and (cell[0] in "+(" or _INTERNATIONAL.match(cell) or len(_PHONE_GROUPS.findall(cell)) >= 3):
        p.phones += 1
    elif " " in cell and _PERSON.fullmatch(cell) and all(w[0].isupper() for w in cell.replace(",", "").split()
                                                          if len(w) > 3) \
            and cell.rsplit(" ", 1)[-1].strip(".").lower() not in _COMPANY_ENDINGS:
        p.names += 1
    word = norm_action(cell)
    if word in COMPLETED_STATUSES or word in REFUND_STATUSES or word in NOT_PURCHASE_STATUSES:
        p.statuses += 1
        p.refunds += word in REFUND_STATUSES
    if word in ACTION_ALIASES:
        p.actions += 1
    if len(cell) == 3 and cell.isalpha() and (cell.isupper() or cell in _LOWER_CURRENCIES):
        p.currencies += 1
    if cell[0] == "#" and _ORDER_MARK.fullmatch(cell):
        p.order_marks += 1


def _named(p: ColumnProfile, role: str) -> bool:
    name = norm_action(p.name).replace(".", "_")
    bare = re.sub(r"_?(id|no|nr|number|num|key)$", "", name)  # itemid, customer_no
    parts = set(re.split(r"_+", name)) | {name, name.replace("_", ""), bare}
    return any(word in parts or (len(word) > 4 and word in name) for word in _NAMES[role])


def suggest(profiles: list[ColumnProfile]) -> dict[str, str]:
    """The column for each role an import needs, from the profiles (names break ties).

    Roles: ``customer``, ``time`` (or ``day_number`` with a ``clock``, for a panel that
    counts days), ``amount`` (or ``price`` with ``quantity``), ``order``, ``product``,
    ``status`` (and ``refund_time``, a refunded order's refund time), ``refund_amount`` (a column
    named as an amount refunded), ``currency``, and for an event log ``action``, ``session`` and
    ``campaign`` (and ``others``: ``page_view`` where the action column names pages). A role no column fits is left out; of two times (an order's and its
    delivery's), the first in the table wins, so the user checks the pick.
    """
    pick: dict[str, str] = {}
    used: set[str] = set()

    def take(role: str, fits: Iterable[tuple[float, ColumnProfile]]) -> None:
        best = max(((score, p) for score, p in fits if p.name not in used and score > 0),
                   key=lambda sp: sp[0], default=None)
        if best is not None:
            pick[role] = best[1].name
            used.add(best[1].name)

    full = [p for p in profiles if p.filled]
    # A time column's moments differ row to row; a date beside it (GA4's event_date) repeats.
    # A refund's time (refunded_at) is no order's.
    take("time", ((p.share(p.times) + _named(p, "time") - p.share(p.decimals) + min(p.distinct / p.filled, 1) / 2
                   - 2 * _named(p, "refund_time"), p)
                  for p in full if p.share(p.times) >= 0.8))
    if "time" not in pick:
        # A date cell exported as its serial number (an ERP's Posting Date: 44927).
        lo, hi = _EXCEL_SERIALS
        take("time", ((1.0 + min(p.distinct / p.filled, 1), p) for p in full if _named(p, "time")
                      and p.share(p.numbers) >= 0.99 and p.low is not None and p.high is not None
                      and lo <= p.low and p.high <= hi))
        if "time" in pick:
            pick["time_format"] = "excel"
    if "time" not in pick:
        # Anonymised panels count days from an undisclosed start (dunnhumby's DAY 1 to 711), over
        # more than a month; not an hour of the day, a weekday, or days since the last order
        # (Instacart's days_since_prior_order: each customer's own clock, no timeline).
        take("day_number", ((1.0, p) for p in full if _named(p, "day_number") and not _named(p, "not_a_day_number")
                            and p.share(p.numbers) >= 0.99 and p.share(p.decimals) == 0 and p.negatives == 0
                            and p.distinct > 31))
        if "day_number" in pick:
            take("clock", ((1.0, p) for p in full if _named(p, "clock") and p.share(p.numbers) >= 0.99))
    elif "time_format" not in pick and _all_midnight(full, pick["time"]):
        # A till's export keeps the time of day in a column of its own (Datum, Uhrzeit).
        take("clock", ((1.0 + _named(p, "clock"), p) for p in full
                       if p.share(p.clocks) >= 0.95 and (_named(p, "clock") or _named(p, "time"))))
    # An order's status (delivered, shipped, canceled) also reads as e-mail actions: where it
    # reads at least as well as a status, it is one, and the table is of orders, not events.
    statuses = {p.name for p in full if p.share(p.statuses) >= 0.5
                and p.share(p.statuses) + _named(p, "status") >= p.share(p.actions) + _named(p, "action")}
    # One value throughout (Stripe's Description "Order") tells no rows apart: only a column
    # named as the action is one then (an export of opens alone).
    # Over all rows, not the filled ones: Snowplow's se_action (19% filled, all words) is not
    # the action where its event column (every row, most of them words) is.
    take("action", ((p.actions / p.rows + _named(p, "action"), p) for p in full
                    if (p.share(p.actions) >= 0.5 or _named(p, "action") and p.share(p.actions) >= 0.2)
                    and p.distinct <= 200 and p.name not in statuses and (p.distinct > 1 or _named(p, "action"))))
    if "action" not in pick:
        # A clickstream that names its pages (home, catalog, cart): each row a page view.
        take("action", ((1.0, p) for p in full if _named(p, "page") and 1 < p.distinct <= 200
                        and p.share(p.times) < 0.5 and p.share(p.numbers) < 0.5))
        if "action" in pick:
            pick["others"] = "page_view"
    # Of two status columns (Shopify's financial and fulfilment statuses), the one with refunds.
    take("status", ((p.share(p.statuses) + _named(p, "status") + 0.5 * (p.refunds > 0), p) for p in full
                    if p.share(p.statuses) >= 0.5 and 1 < p.distinct <= 50))
    if "status" in pick:  # a refunded order's refund at its own time, not the order's
        take("refund_time", ((p.share(p.times), p) for p in full if _named(p, "refund_time") and p.share(p.times) >= 0.8))
    take("currency", ((p.share(p.currencies) + _named(p, "currency"), p) for p in full
                      if p.share(p.currencies) >= 0.9 and p.distinct <= 50))
    # Ids: text or whole numbers, not times, with more values than a vocabulary has.
    # (GA4's user_pseudo_id reads as a decimal number, 1234567890.1680700930: named as an id, it is one.)
    # (Ten-digit ids read as epoch seconds: one named as an id is an id, once the time is picked.)
    idlike = [p for p in full if (p.share(p.decimals) < 0.05 or _named(p, "customer") and not _named(p, "amount"))
              and p.max_len <= 200 and (p.share(p.times) < 0.5 or _id_named(p) and p.name != pick.get("time"))]
    ids = [p for p in idlike if p.distinct > 30 or p.distinct > p.filled / 10]
    # An id named as the customer's before an address (Stripe's Customer ID, then its Customer Email).
    # A column named as the customer's counts even with few values in the sample (an export sorted
    # by account: its first rows hold a handful), below one with many; a measure (Qty, UnitPrice)
    # or a column of status words never does.
    take("customer", ((1.0 + 2 * _named(p, "customer") + _id_named(p) + 0.4 * p.share(p.emails)
                       - p.distinct / p.filled / 2 - (p not in ids), p)
                      for p in idlike if (p in ids or _named(p, "customer") and not _a_kind_of(p.name))
                      and p.distinct < p.filled
                      and not _measure(p) and p.share(max(p.statuses, p.actions, p.currencies)) < 0.5
                      and p.share(p.order_marks) < 0.5 and (_named(p, "customer") or not _named(p, "not_customer"))))
    if "customer" not in pick:  # a sample too small for anyone to repeat: the name decides
        take("customer", ((1.0 + _id_named(p), p) for p in ids if _named(p, "customer")))
    take("order", ((1.0 + 2 * _named(p, "order") + _id_named(p) + p.share(p.order_marks)
                    - abs(0.5 - p.distinct / p.filled), p)
                   for p in ids if _named(p, "order") or p.share(p.order_marks) >= 0.9))
    # One value throughout (a shipping fee of 0.00) is no order's value, quantity or price.
    money = [p for p in full if p.share(p.numbers) >= 0.9 and p.distinct > 1
             and not _beside_the_value(p.name)]
    # Line items (a unit price and a quantity) before a row total: a price is no order's amount.
    take("price", ((p.share(p.decimals) + 2 * _named(p, "price"), p) for p in money if _named(p, "price")))
    take("quantity", ((2 * _named(p, "quantity") - p.share(p.decimals), p) for p in money if _named(p, "quantity")))
    if "price" in pick and "quantity" not in pick:
        used.discard(pick.pop("price"))
    take("amount", ((p.share(p.decimals) + 2 * _named(p, "amount"), p) for p in money
                    if _named(p, "amount") or p.share(p.decimals) > 0.3 and "price" not in pick))
    if "amount" in pick or "price" in pick:  # an order's refunded part (Shopify's Refunded Amount): its refund
        take("refund_amount", ((p.share(p.numbers), p) for p in full if _named(p, "refund_time")
                               and _named(p, "amount") and p.share(p.numbers) >= 0.9))
    named_ids = [p for p in full if p.share(p.decimals) < 0.05]  # GA4's session id is an epoch second
    for role in ("product", "session", "campaign"):
        take(role, ((1.0 + _id_named(p) / 2, p) for p in named_ids if _named(p, role)))
    return pick


def _beside_the_value(name: str) -> bool:
    """Whether a column's name says it holds a discount, fee, tax or the like (a word of it starts so).

    >>> [_beside_the_value(n) for n in ("Discount Amount", "TotalTax", "Amount Refunded", "Coffee Sales", "Total")]
    [True, True, True, False, False]
    """
    return any(word.startswith(_NOT_AN_ORDER_VALUE) for word in name_words(name))


def _a_kind_of(name: str) -> bool:
    """Whether a column's name says it holds a kind of customer, not who (a word of it starts so).

    >>> [_a_kind_of(n) for n in ("Customer Segment", "customer_status", "Account Type", "Account", "Client ID")]
    [True, True, True, False, False]
    """
    return any(word.startswith(_KINDS) for word in name_words(name))


def _measure(p: ColumnProfile) -> bool:
    """Whether a column reads as a quantity, price or amount: named so (and not as the customer's), or
    numbers with decimals that are not named as the customer's id (GA4's user_pseudo_id is one)."""
    if _named(p, "customer"):  # "Account" holds "count"
        return False
    return (any(_named(p, role) for role in ("quantity", "price", "amount"))
            or p.share(p.numbers) >= 0.9 and p.share(p.decimals) >= 0.05)


def dates_only_note(profiles: list[ColumnProfile], pick: Mapping[str, str]) -> str:
    """A note when the picked time has no time of day ('' otherwise), naming columns that have one.

    Dates alone (every cell at midnight, Excel serial days without a fraction, a day number
    without its ``--clock``) put a customer's events of one day at one instant.

    >>> rows = [{"Kunde": f"k{i % 7}", "Datum": f"2024-03-{1 + i % 28:02d}", "Betrag": "5",
    ...          "Geaendert": f"2024-03-{1 + i % 28:02d} 10:{i % 60:02d}"} for i in range(60)]
    >>> cols = profile(rows)
    >>> print(dates_only_note(cols, {"customer": "Kunde", "time": "Datum"}))
    Datum holds dates without a time of day (all 60 read at midnight): a customer's events of one day share one instant and their order within the day is lost (campaign response and same-day repeat orders suffer)
      these have times of day: Geaendert; --time COL if one of them is when it happened
    >>> dates_only_note(cols, {"customer": "Kunde", "time": "Geaendert"})
    ''
    """
    if "clock" in pick:
        return ""
    name = pick.get("time") or pick.get("day_number")
    p = next((p for p in profiles if p.name == name), None)
    if p is None:
        return ""
    if "day_number" in pick and "time" not in pick:
        read = "day numbers"
    elif pick.get("time_format") == "excel":
        read = "" if p.decimals else "whole Excel serial days"
    else:
        read = f"all {p.times:,} read at midnight" if p.times and p.midnights == p.times else ""
    if not read:
        return ""
    note = (f"{name} holds dates without a time of day ({read}): a customer's events of one day share one instant "
            "and their order within the day is lost (campaign response and same-day repeat orders suffer)")
    timed = [q.name for q in profiles if q.name != name and q.filled and q.share(q.times) >= 0.8
             and q.midnights < q.times]
    if timed:
        note += (f"\n  these have times of day: {', '.join(timed[:5])}; --time COL if one of them is when it "
                 "happened")
    return note


def unread_status_note(profiles: list[ColumnProfile], pick: Mapping[str, str]) -> str:
    """A note naming the picked status's values the import does not know ('' if none): it skips
    their rows, and a paid order among them is lost unless ``--status-map`` reads it.

    >>> rows = [{"Status": s} for s in ["completed"] * 6 + ["processing"] * 3 + ["on-hold", "pending"]]
    >>> print(unread_status_note(profile(rows), {"status": "Status"}))
    Status: the import skips rows of processing (3), on-hold (1), statuses it does not know; where one is a paid order (WooCommerce's and Magento's processing is; on-hold awaits payment), --status-map processing=completed reads it
    >>> unread_status_note(profile(rows[:6] + rows[-1:]), {"status": "Status"})  # pending: known, no purchase
    ''
    """
    p = next((q for q in profiles if q.name == pick.get("status")), None)
    if p is None or not p.vocabulary:
        return ""
    unknown = [(value, n) for value, n in p.vocabulary.items()
               if _status(value) is None and _norm_status(value) not in NOT_PURCHASE_STATUSES]
    if not unknown:
        return ""
    shown = ", ".join(f"{value} ({n:,})" for value, n in unknown[:6])
    example = next((value for value, _ in unknown if _norm_status(value) == "processing"), unknown[0][0])
    return (f"{p.name}: the import skips rows of {shown}, statuses it does not know; where one is a paid order "
            "(WooCommerce's and Magento's processing is; on-hold awaits payment), "
            f"--status-map {shlex.quote(example)}=completed reads it")


def id_shape_note(rows: Iterable[Mapping[str, str]], pick: Mapping[str, str]) -> str:
    """A note when the picked customer ids change shape over the rows' time ('' otherwise): see
    :func:`features.importer.id_shape_switch`, which the import's summary runs on every row.

    >>> rows = [{"c": str(10_000 + i % 300) if i < 400 else f"CUST-{i % 300:06d}",
    ...          "t": f"2024-{1 + i // 100:02d}-{1 + i % 28:02d} 10:00"} for i in range(800)]
    >>> id_shape_note(rows, {"customer": "c", "time": "t"})[:112]
    'customer ids change shape on 2024-05-01: before it 400 of 400 sampled rows are digits(5), from it 400 of 400 are'
    """
    customer, time = pick.get("customer"), pick.get("time")
    if not customer or not time or "time_format" in pick:
        return ""
    days: defaultdict[int, Counter[str]] = defaultdict(Counter)
    for row in rows:
        cell = (row.get(customer) or "").strip()
        if not cell or cell in NO_VALUE:
            continue
        for order in ("dmy", "mdy"):  # as _read takes either
            try:
                ms = parse_time(row.get(time), date_order=order)
            except (RowProblem, ValueError):
                continue
            days[ms // DAY_MS][cell_shape(cell)] += 1
            break
    return id_shape_switch(days, "sampled rows")


def pii_note(p: ColumnProfile) -> str:
    """A note when the customer column holds personal data: e-mail addresses, phone numbers or
    people's names ('' otherwise). It names the column and a share, never a cell.

    >>> rows = [{"Kunde": f"{first} {last}"} for first in ("Ann", "Bo", "Cy") for last in ("Smith", "Lee", "Ng")]
    >>> print(pii_note(profile(rows)[0]))  # doctest: +NORMALIZE_WHITESPACE
    Kunde looks like people's names (100% of its cells): two people of one name would be one customer, and a
      name is personal data; import the table's customer number if it has one, else add --hash-customers
      (README: e-mail addresses as customer ids)
    >>> pii_note(profile([{"c": "+49 170 123456" + str(i)} for i in range(9)])[0])[:53]
    'c looks like phone numbers (100% of its cells): perso'
    >>> pii_note(profile([{"c": f"k{i}"} for i in range(9)])[0])
    ''
    """
    hash_it = "--hash-customers (README: e-mail addresses as customer ids)"
    if p.share(p.emails) >= 0.5:  # the import says it too, after the fact
        return (f"customer ids are e-mail addresses: add {hash_it} to keep them out of Kafka and Redis keys "
                "(its key in LEADPULSE_CUSTOMER_KEY)")
    if p.share(p.phones) >= 0.5 or _named(p, "phone") and p.share(p.phones) > 0:
        return (f"{p.name} looks like phone numbers ({100 * p.share(p.phones):.0f}% of its cells): personal data "
                f"in every event, Kafka key, Redis key and score record; add {hash_it}")
    if p.share(p.names) >= 0.5 and not _named(p, "company"):
        return (f"{p.name} looks like people's names ({100 * p.share(p.names):.0f}% of its cells): two people of one "
                "name would be one customer, and a name is personal data; import the table's customer number if "
                f"it has one, else add {hash_it}")
    return ""


def _all_midnight(profiles: list[ColumnProfile], name: str) -> bool:
    p = next(p for p in profiles if p.name == name)
    return p.times > 0 and p.midnights == p.times


def _id_named(p: ColumnProfile) -> float:
    """0.5 for a name that says it is an id (``user_id``, ``CustomerID``, ``invoice_no``)."""
    name = norm_action(p.name).replace(".", "_")  # "Customer ID" too
    return 0.5 if re.search(r"(^|_|[a-z])(id|no|nr|number|num|key)$", name) else 0.0


_OPTIONS = ("customer", "time", "time_format", "clock", "action", "others", "order", "amount", "price", "quantity",
            "product", "status", "refund_time", "refund_amount", "currency", "session",
            "campaign")


def out_name(path: str) -> str:
    """The events file an import of ``path`` writes: JSON Lines (the one form the imports write)
    named after it, never the file itself (an export named ``events.jsonl`` was overwritten
    by the import suggested for it).

    >>> out_name("data/orders.csv.gz"), out_name("online_retail.xlsx"), out_name("events.jsonl"), out_name("-")
    ('orders.jsonl', 'online_retail.jsonl', 'events-events.jsonl', 'events.jsonl')
    """
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.split(".")[0] if path != "-" else ""
    if not stem:
        return "events.jsonl"
    return f"{stem}.jsonl" if f"{stem}.jsonl" != name else f"{stem}-events.jsonl"


def command(path: str, pick: Mapping[str, str], event_log: bool) -> str:
    """The import command line the picked columns make (``--out``: :func:`out_name`).

    A day-number column (``day_number``) becomes ``--time COL --time-format days:START``,
    with ``START`` left for the user: only they know the day before day 1.
    """
    verb = "import-events" if event_log else "import-transactions"
    parts = ["leadpulse", verb, path]
    pick = dict(pick)
    if "day_number" in pick and "time" not in pick:
        pick["time"] = pick.pop("day_number")
        parts_after = ["--time-format", "days:START"]
    else:
        parts_after = []
    for role in _OPTIONS:
        if role in pick and (event_log or role not in ("action", "others", "session", "campaign")):
            parts += [f"--{role.replace('_', '-')}", pick[role]]
    parts += parts_after
    return " ".join(shlex.quote(p) for p in parts + ["--out", out_name(path)])

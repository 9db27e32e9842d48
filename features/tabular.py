"""What the readers of typed tables (Parquet, SQLite) share: a value's cell text, and the CSV they write.

Each reader writes its rows out as a CSV for the importer (:mod:`features.importer`),
which then reads it as any other table. :class:`TableWriter` writes those rows and
remembers where a row spans lines (a value holding a line break), so that a skipped
row is reported by its row in the source, not by its line in the CSV.

>>> import io
>>> out = io.StringIO()
>>> table = TableWriter(out, ["customer", "note"], form="SQLite")
>>> table.write([17850.0, "gift\\nwrap"]); table.write([None, "x"])
>>> out.getvalue().splitlines(), table.where(4)
(['customer,note', '17850,"gift', 'wrap"', ',x'], 'row 2')
"""

from __future__ import annotations

import csv
from bisect import bisect_right
from collections.abc import Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import IO, Any

from features.importer import cell_text


def typed_cell(value: Any) -> str:
    """A typed value as the cell text the importer reads.

    Whole numbers without ``.0`` (a customer id stored as a double), others in their
    shortest form; decimals as stored; a zoned timestamp in ISO 8601 with its offset,
    a naive one as ``YYYY-MM-DD HH:MM:SS[.ffffff]``; ``None`` empty; lists and structs
    as JSON.

    >>> [typed_cell(v) for v in (17850.0, 2.55, Decimal("12.50"), datetime(2011, 12, 9, 12, 50), None, [1])]
    ['17850', '2.55', '12.50', '2011-12-09 12:50:00', '', '[1]']
    """
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat() if value.tzinfo is not None else value.isoformat(sep=" ")
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return cell_text(value)  # text, booleans, whole numbers, lists and structs (as JSON)


def line_breaks(cells: Sequence[str]) -> int:
    r"""How many more lines than one a row takes in a CSV (its cells' line breaks, CRLF as one).

    >>> line_breaks(["a", "b\r\nc", "d\ne\rf"])
    3
    """
    return sum(c.count("\n") + c.count("\r") - c.count("\r\n") for c in cells if "\n" in c or "\r" in c)


class TableWriter:
    """Rows written as CSV under a header; :meth:`where` names the row a CSV line holds."""

    def __init__(self, out: IO[str], header: Sequence[str], form: str) -> None:
        self.form = form  # what the import's summary says was read
        self.rows = 0
        self._writer = csv.writer(out, lineterminator="\n")
        self._writer.writerow(header)
        self._line = 2  # the CSV line the next row starts on
        # (first CSV line, row) wherever a value with a line break made a row span lines.
        self._marks: list[tuple[int, int]] = [(2, 1)]

    def write(self, values: Sequence[Any]) -> None:
        cells = [typed_cell(v) for v in values]
        self._writer.writerow(cells)
        self.rows += 1
        breaks = line_breaks(cells)
        self._line += 1 + breaks
        if breaks:
            self._marks.append((self._line, self.rows + 1))

    def where(self, line: int) -> str:
        """The row (1 = the first below the header) a line of the CSV holds."""
        first, row = self._marks[max(bisect_right(self._marks, line, key=lambda mark: mark[0]) - 1, 0)]
        return f"row {row + line - first}"

    def summary(self) -> dict[str, Any]:
        return {f"{self.form.lower()}_rows": self.rows}

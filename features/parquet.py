"""Read a Parquet file (warehouse and lakehouse exports) as the text table a CSV export of it would be.

Needs ``pyarrow`` (``pip install 'leadpulse[parquet]'``); without it the imports
say so. :func:`write_csv` streams the file's row groups, so a large file is never
held whole, and writes each value as the importer reads it:

- text as it is, whole numbers without ``.0`` (``17850``, a customer id stored
  as a double), other numbers in their shortest form, decimals as written;
- a timestamp with its zone as ISO 8601 with its offset; one without a zone as
  ``YYYY-MM-DD HH:MM:SS[.ffffff]`` (read in ``--timezone``, UTC by default); a date
  as ``YYYY-MM-DD``;
- ``true`` / ``false``, and lists and structs as their JSON.

>>> import tempfile
>>> from pathlib import Path
>>> import io, pyarrow as pa, pyarrow.parquet as pq
>>> from datetime import datetime
>>> path = Path(tempfile.mkdtemp()) / "orders.parquet"
>>> pq.write_table(pa.table({"customer": [17850.0, None], "at": [datetime(2011, 12, 9, 12, 50), None],
...                          "amount": [2.55, 1.0]}), path)
>>> out = io.StringIO()
>>> write_csv(path, out).rows, out.getvalue().splitlines()
(2, ['customer,at,amount', '17850,2011-12-09 12:50:00,2.55', ',,1'])
"""

from __future__ import annotations

import csv
import math
from bisect import bisect_right
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from features.importer import cell_text

INSTALL_HINT = "reading Parquet needs pyarrow: pip install 'leadpulse[parquet]' (or pyarrow)"


def is_parquet(path: Path) -> bool:
    """Whether a file is Parquet, told by its magic bytes (``PAR1``)."""
    try:
        with open(path, "rb") as probe:
            return probe.read(4) == b"PAR1"
    except OSError:
        return False


def _cell(value: Any) -> str:
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


class ParquetRead:
    """What :func:`write_csv` read: the row count, and where a CSV line came from."""

    form = "Parquet"  # what the import's summary says was read

    def __init__(self) -> None:
        self.rows = 0
        # (first CSV line, row) wherever a value with a line break made a row span lines.
        self.marks: list[tuple[int, int]] = [(2, 1)]

    def where(self, line: int) -> str:
        """The row (1 = the first below the header) a line of the CSV holds.

        >>> read = ParquetRead(); read.marks.append((10, 8)); read.where(5), read.where(12)
        ('row 4', 'row 10')
        """
        first, row = self.marks[max(bisect_right(self.marks, (line, math.inf)) - 1, 0)]
        return f"row {row + line - first}"

    def summary(self) -> dict[str, Any]:
        return {"parquet_rows": self.rows}


def write_csv(path: Path, out: IO[str], batch_rows: int = 65_536) -> ParquetRead:
    """Write a Parquet file's rows out as CSV (UTF-8 text, ``\\n`` lines), a row group at a time."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path.name} is a Parquet file: {INSTALL_HINT}") from None
    try:
        source = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path.name} is not a Parquet file pyarrow can read ({str(exc)[:200]})") from None
    names = source.schema_arrow.names
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(names)
    read = ParquetRead()
    line = 2
    for batch in source.iter_batches(batch_size=batch_rows):
        columns = []
        for column in batch.columns:
            if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
                # Python's datetime holds microseconds; event times need no finer.
                column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
            columns.append([_cell(v) for v in column.to_pylist()])
        for cells in zip(*columns, strict=True):
            writer.writerow(cells)
            read.rows += 1
            breaks = sum(c.count("\n") + c.count("\r") - c.count("\r\n") for c in cells if "\n" in c or "\r" in c)
            line += 1 + breaks
            if breaks:
                read.marks.append((line, read.rows + 1))
    return read

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

from pathlib import Path
from typing import IO, Any

from features.tabular import TableWriter

INSTALL_HINT = "reading Parquet needs pyarrow: pip install 'leadpulse[parquet]' (or pyarrow)"


def is_parquet(path: Path) -> bool:
    """Whether a file is Parquet, told by its magic bytes (``PAR1``)."""
    try:
        with open(path, "rb") as probe:
            return probe.read(4) == b"PAR1"
    except OSError:
        return False


def write_csv(path: Path, out: IO[str], batch_rows: int = 65_536, limit: int | None = None) -> TableWriter:
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
    table = TableWriter(out, source.schema_arrow.names, form="Parquet")
    try:
        _write_rows(pa, source, table, batch_rows, limit)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path.name} is a damaged Parquet file ({str(exc)[:200]})") from None
    return table


def _write_rows(pa: Any, source: Any, table: TableWriter, batch_rows: int, limit: int | None) -> None:
    for batch in source.iter_batches(batch_size=batch_rows):
        columns = []
        for column in batch.columns:
            if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
                # Python's datetime holds microseconds; event times need no finer.
                column = column.cast(pa.timestamp("us", column.type.tz), safe=False)
            columns.append(column.to_pylist())
        for values in zip(*columns, strict=True):
            table.write(values)
        if limit is not None and table.rows >= limit:
            break  # a sample (leadpulse inspect): the row group read is plenty

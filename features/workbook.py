"""Read an Excel workbook (.xlsx) as the text table a CSV export of it would be.

Shops, ERPs and public datasets hand out transaction tables as workbooks (UCI's
Online Retail is one, Online Retail II one sheet per year). :func:`sheet_rows`
reads a sheet's rows as cell text with the standard library alone (a workbook is
a zip of XML parts), streaming, so a sheet of a million rows is never held;
:func:`write_csv` writes them out as CSV for the importer, which then reads it as
any other table.

What a cell becomes, as Excel's "Save as CSV" would write it, except for dates:

- text as it is (shared, inline or a formula's text result);
- a number in its shortest form: ``17850`` for a whole number (an id), ``2.55``
  for a stored ``2.5499999999999998``;
- a number shown as a date or time (its cell format, built-in or custom) as
  ``YYYY-MM-DD HH:MM:SS`` (``.fff`` when it has milliseconds), whichever way the
  sheet displays it: a serial day number needs no date order guessed. Workbooks
  counting from 1904 (old Mac Excel) are read as such;
- ``TRUE`` / ``FALSE``, and an error as its text (``#N/A``).

>>> import io, zipfile
>>> book = io.BytesIO()
>>> with zipfile.ZipFile(book, "w") as z:
...     z.writestr("xl/workbook.xml", '<workbook xmlns:r="r"><sheets>'
...                '<sheet name="Orders" r:id="rId1"/></sheets></workbook>')
...     z.writestr("xl/_rels/workbook.xml.rels",
...                '<Relationships><Relationship Id="rId1" Target="worksheets/sheet1.xml"/></Relationships>')
...     z.writestr("xl/styles.xml", '<styleSheet><cellXfs><xf numFmtId="0"/><xf numFmtId="22"/></cellXfs></styleSheet>')
...     z.writestr("xl/worksheets/sheet1.xml", '<worksheet><sheetData>'
...         '<row r="1"><c r="A1" t="inlineStr"><is><t>customer</t></is></c><c r="B1" t="inlineStr"><is><t>time</t></is></c>'
...         '<c r="C1" t="inlineStr"><is><t>amount</t></is></c></row>'
...         '<row r="2"><c r="A2"><v>17850</v></c><c r="B2" s="1"><v>40513.354166666664</v></c>'
...         '<c r="C2"><v>2.5499999999999998</v></c></row></sheetData></worksheet>')
>>> with zipfile.ZipFile(book) as z:
...     [s.name for s in sheets(z)], list(sheet_rows(z, sheets(z)[0]))
(['Orders'], [(1, ['customer', 'time', 'amount']), (2, ['17850', '2010-12-01 08:30:00', '2.55'])])
"""

from __future__ import annotations

import csv
import re
import zipfile
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any, ClassVar
from xml.etree.ElementTree import Element, ParseError, iterparse

from features.tabular import line_breaks

WORKBOOK_PART = "xl/workbook.xml"

# Built-in number formats that show a date or a time (ECMA-376 18.8.30, with the
# East Asian ones Excel writes for those locales).
_DATE_FORMAT_IDS = frozenset({*range(14, 23), *range(27, 37), *range(45, 48), *range(50, 59)})
# What a custom format's date/time tokens are made of, once its quoted text, escaped
# characters and [colour]/[$-locale] sections are gone.
_QUOTED = re.compile(r'"[^"]*"|\\.|\[[^\]]*\]|_.|\*.')
_DATE_TOKENS = re.compile(r"[dmyhsDMYHS]")
_EPOCH_1900 = datetime(1899, 12, 30)  # serial 1 is 1900-01-01 (Excel's 1900 leap day included)
_EPOCH_1904 = datetime(1904, 1, 1)


@dataclass(frozen=True)
class Sheet:
    """One worksheet of a workbook: its name and the zip member that holds its cells."""

    name: str
    part: str
    hidden: bool = False


@dataclass
class _Book:
    strings: list[str] = field(default_factory=list)
    date_styles: frozenset[int] = frozenset()
    epoch: datetime = _EPOCH_1900


def is_workbook(path: Path) -> bool:
    """Whether a file is an .xlsx workbook (a zip holding ``xl/workbook.xml``), told by content.

    >>> import tempfile
    >>> is_workbook(Path(tempfile.mkdtemp()) / "missing.xlsx")
    False
    """
    try:
        with open(path, "rb") as probe:
            if probe.read(4) != b"PK\x03\x04":
                return False
        with zipfile.ZipFile(path) as z:
            return WORKBOOK_PART in z.NameToInfo
    except (OSError, zipfile.BadZipFile):
        return False


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(z: zipfile.ZipFile, part: str) -> Iterator[tuple[str, Element]]:
    with z.open(part) as handle:
        for _event, elem in iterparse(handle, events=("end",)):
            yield _local(elem.tag), elem


def sheets(z: zipfile.ZipFile) -> list[Sheet]:
    """The workbook's worksheets, in the order its tabs show."""
    targets: dict[str, str] = {}
    rels = "xl/_rels/workbook.xml.rels"
    if rels in z.NameToInfo:
        for tag, elem in _parse(z, rels):
            if tag == "Relationship":
                target = elem.get("Target", "")
                targets[elem.get("Id", "")] = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
    found: list[Sheet] = []
    for tag, elem in _parse(z, WORKBOOK_PART):
        if tag == "sheet":
            rid = next((v for k, v in elem.attrib.items() if _local(k) == "id"), "")
            part = targets.get(rid, f"xl/worksheets/sheet{len(found) + 1}.xml")
            if part in z.NameToInfo:  # chart sheets and dialog sheets hold no cells
                found.append(Sheet(elem.get("name", ""), part, elem.get("state", "visible") != "visible"))
    return found


def _book(z: zipfile.ZipFile) -> _Book:
    book = _Book()
    for tag, elem in _parse(z, WORKBOOK_PART):
        if tag == "workbookPr" and elem.get("date1904", "").lower() in ("1", "true"):
            book.epoch = _EPOCH_1904
    if "xl/sharedStrings.xml" in z.NameToInfo:
        with z.open("xl/sharedStrings.xml") as handle:
            events = iterparse(handle, events=("start", "end"))
            _, root = next(events)
            for event, elem in events:
                if event == "end" and _local(elem.tag) == "si":
                    book.strings.append(_text(elem))
                    root.clear()  # strings read are let go: a table of ids holds a million
    if "xl/styles.xml" in z.NameToInfo:
        custom: dict[int, str] = {}
        styles: list[int] = []
        in_cell_xfs = False
        with z.open("xl/styles.xml") as handle:
            for event, elem in iterparse(handle, events=("start", "end")):
                tag = _local(elem.tag)
                if tag == "cellXfs":
                    in_cell_xfs = event == "start"
                elif event == "end" and tag == "numFmt":
                    custom[int(elem.get("numFmtId", "0"))] = elem.get("formatCode", "")
                elif event == "start" and tag == "xf" and in_cell_xfs:
                    styles.append(int(elem.get("numFmtId", "0")))
        book.date_styles = frozenset(i for i, fmt in enumerate(styles) if _is_date_format(fmt, custom.get(fmt)))
    return book


def _is_date_format(fmt_id: int, code: str | None) -> bool:
    """Whether a number format shows a date or a time.

    >>> _is_date_format(14, None), _is_date_format(2, None), _is_date_format(164, "dd/mm/yyyy hh:mm")
    (True, False, True)
    >>> _is_date_format(165, '#,##0.00 "days"'), _is_date_format(166, "[Red]0.00"), _is_date_format(167, "[h]:mm")
    (False, False, False)
    """
    if code is None:
        return fmt_id in _DATE_FORMAT_IDS
    # Elapsed-time formats ([h]:mm) show a duration, not a moment: left a number.
    if re.search(r"\[[hms]+\]", code, re.IGNORECASE):
        return False
    return bool(_DATE_TOKENS.search(_QUOTED.sub("", code).split(";")[0]))


def _text(elem: Element) -> str:
    """A string item's text: its runs joined, without phonetic guides (``rPh``)."""
    parts = []
    for child in elem:
        tag = _local(child.tag)
        if tag == "t":
            parts.append(child.text or "")
        elif tag == "r":
            parts.extend(t.text or "" for t in child if _local(t.tag) == "t")
    return "".join(parts)


def _column(ref: str) -> int:
    """0-based column of a cell reference (``A1`` -> 0, ``AB7`` -> 27)."""
    n = 0
    for ch in ref:
        if "A" <= ch <= "Z":
            n = n * 26 + ord(ch) - 64
        else:
            break
    return n - 1


def _number(text: str) -> str:
    """A number cell's text as the import reads it; what is not a number stays as written.

    >>> _number("12.0"), _number("0.1"), _number("n/a")
    ('12', '0.1', 'n/a')
    """
    try:
        value = float(text)
    except ValueError:
        return text
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _date(text: str, epoch: datetime) -> str:
    """A date or time cell's text; a serial below 1 is a time of day alone (a column of its own).

    >>> _date("40513.354166666664", _EPOCH_1900), _date("0.5573", _EPOCH_1900), _date("1e12", _EPOCH_1900)
    ('2010-12-01 08:30:00', '13:22:30.720', '1000000000000')
    """
    try:
        serial = float(text)
    except ValueError:
        return text  # not a serial: the text, for the import to refuse with its reason
    try:
        moment = epoch + timedelta(milliseconds=round(serial * 86_400_000))
    except OverflowError:
        return _number(text)  # no date a calendar holds: the number, for the import to refuse
    shown = moment.strftime("%H:%M:%S" if 0 <= serial < 1 else "%Y-%m-%d %H:%M:%S")
    return f"{shown}.{moment.microsecond // 1000:03d}" if moment.microsecond else shown


def sheet_rows(z: zipfile.ZipFile, sheet: Sheet, book: _Book | None = None) -> Iterator[tuple[int, list[str]]]:
    """``(row number, cells)`` for each row the sheet stores, as cell text; empty rows are absent."""
    book = book or _book(z)
    strings, date_styles, epoch = book.strings, book.date_styles, book.epoch
    columns: dict[str, int] = {}  # column letters -> index
    dates: dict[str, str] = {}  # serial -> text: the line items of an order share their time
    with z.open(sheet.part) as handle:
        events = iterparse(handle, events=("start", "end"))
        _, root = next(events)  # the worksheet: its namespace names every tag below
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        row_tag, c_tag, v_tag, is_tag = f"{ns}row", f"{ns}c", f"{ns}v", f"{ns}is"
        table: Element | None = None
        row_number = 0
        for event, elem in events:
            if event == "start" or elem.tag != row_tag:
                continue
            number = elem.get("r")
            row_number = int(number) if number else row_number + 1
            cells: list[str] = []
            for c in elem:
                if c.tag != c_tag:
                    continue
                ref = c.get("r")
                if ref is None:
                    at = len(cells)
                else:
                    letters = ref.rstrip("0123456789")
                    at = columns.get(letters, -1)
                    if at < 0:
                        at = columns[letters] = _column(letters)
                while len(cells) < at:
                    cells.append("")
                kind = c.get("t")
                if kind == "inlineStr":
                    inline = c.find(is_tag)
                    text = "" if inline is None else _text(inline)
                else:
                    v = c.findtext(v_tag)
                    if v is None or not v.strip():
                        text = ""  # a formula never calculated: openpyxl and pandas write an empty <v/>
                    elif kind is None or kind == "n":
                        if int(c.get("s", "0")) in date_styles:
                            text = dates.get(v) or dates.setdefault(v, _date(v, epoch))
                            if len(dates) > 100_000:
                                dates.clear()  # a sheet of distinct moments: memory stays bounded
                        else:
                            text = _number(v)
                    elif kind == "s":
                        text = strings[int(v)]
                    elif kind == "b":
                        text = "TRUE" if v.strip() in ("1", "true") else "FALSE"
                    else:
                        text = v  # str (a formula's text), e (an error such as #N/A), d (an ISO date)
                if at < len(cells):
                    cells[at] = text
                else:
                    cells.append(text)
            while cells and not cells[-1]:
                cells.pop()
            if cells:
                yield row_number, cells
            if table is None:
                table = root.find(f"{ns}sheetData")
            if table is not None:
                table.clear()  # rows read are let go: a long sheet is never held
            else:
                elem.clear()


@dataclass
class SheetRead:
    """What :func:`write_csv` read of one sheet: its name, its rows below the header, the header's row."""

    name: str
    rows: int
    header_row: int = 1


@dataclass
class WorkbookRead:
    """What :func:`write_csv` read: the sheets written out, those left, and where each CSV line came from."""

    form: ClassVar[str] = "Excel workbook"  # what the import's summary says was read
    sheets: list[SheetRead]
    other_sheets: list[str]
    # (first CSV line, sheet, its row there) wherever the two stop counting alike: each
    # sheet's start, and after a cell that holds a line break (a quoted CSV field spans lines).
    marks: list[tuple[int, str, int]] = field(default_factory=list)

    def where(self, line: int) -> str:
        """The sheet and row a line of the CSV holds, as a user finds it in Excel.

        >>> WorkbookRead([], [], [(1, "2010", 1), (9, "2011", 2)]).where(12)
        "sheet '2011' row 5"
        >>> WorkbookRead([], [], [(1, "2010", 1), (9, "📈 2011", 2)]).where(9)
        "sheet '📈 2011' row 2"
        """
        i = bisect_right(self.marks, line, key=lambda mark: mark[0]) - 1
        first, sheet, row = self.marks[max(i, 0)]
        return f"sheet {sheet!r} row {row + line - first}"

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sheets": {s.name: s.rows for s in self.sheets}}
        if any(s.header_row != 1 for s in self.sheets):
            # A report's title rows above the header are not read.
            out["header_rows"] = {s.name: s.header_row for s in self.sheets}
        if self.other_sheets:
            out["sheets_not_read"] = self.other_sheets
        return out


# Rows searched for the header: a report's title, date and blank rows come above it.
HEADER_SEARCH_ROWS = 50


def _find_header(head: list[tuple[int, list[str]]], is_header: Callable[[list[str]], bool]) -> int | None:
    """Index of the header among a sheet's first rows: the first that ``is_header`` says is one."""
    return next((i for i, (_, cells) in enumerate(head) if is_header([c.strip() for c in cells])), None)


def _widest(head: list[tuple[int, list[str]]]) -> int | None:
    """Index of the first of the rows with the most filled cells (a title row is narrow)."""
    widths = [sum(1 for c in cells if c.strip()) for _, cells in head]
    return widths.index(max(widths)) if widths else None


def write_csv(
    path: Path, out: IO[str], sheet: str | None = None, columns: Sequence[str] = (), limit: int | None = None,
) -> WorkbookRead:
    """Write a workbook's table out as CSV (UTF-8 text, ``\\n`` lines, quoted as needed).

    ``sheet`` names the sheet to read. Without it: the first visible sheet, and
    after it every other visible sheet with the same header, in tab order, as a
    workbook split by year is one table; their header rows are not repeated. The
    header is the first row, or with ``columns`` the first of the sheet's first
    ``HEADER_SEARCH_ROWS`` rows that names them all: a report's title rows above it
    are left out. A row shorter than the header is one whose last cells are
    empty: it is padded (Excel stores no empty cell). :meth:`WorkbookRead.where`
    turns a line of the CSV back into its sheet and row. ``limit``: at most that many
    rows below the header(s).
    """
    try:
        return _write_csv(path, out, sheet, columns, limit)
    except (ParseError, zipfile.BadZipFile, KeyError, IndexError, EOFError, zlib.error) as exc:
        # Refused whole: half a damaged workbook imported would look like a complete history.
        raise ValueError(f"{path.name} is a damaged workbook ({type(exc).__name__}: {str(exc)[:120]})") from None


def _write_csv(
    path: Path, out: IO[str], sheet: str | None, columns: Sequence[str], limit: int | None,
) -> WorkbookRead:
    wanted = [c.strip() for c in columns]
    with zipfile.ZipFile(path) as z:
        found = sheets(z)
        if sheet is not None:
            chosen = [s for s in found if s.name == sheet]
            if not chosen:
                raise ValueError(f"no sheet {sheet!r} in {path.name} (sheets: {', '.join(s.name for s in found)})")
        else:
            chosen = [s for s in found if not s.hidden] or found
        if not chosen:
            raise ValueError(f"{path.name} holds no worksheet")
        book = _book(z)
        writer = csv.writer(out, lineterminator="\n")
        header: list[str] | None = None
        line = 1  # the CSV line the next row starts on
        read = WorkbookRead([], [s.name for s in found if s not in chosen])
        written = 0
        for current in chosen:
            if limit is not None and written >= limit:
                break
            rows = sheet_rows(z, current, book)
            head = list(islice(rows, HEADER_SEARCH_ROWS))
            if header is None:
                at = _find_header(head, lambda cells: all(c in cells for c in wanted)) if wanted else None
                if at is None:
                    # No row names them (or no names are given, as to inspect): the widest of the
                    # first rows is the header; the import then refuses it, listing its columns,
                    # when it lacks a name given.
                    at = _widest(head)
            else:
                at = _find_header(head, [c.strip() for c in header].__eq__)
            first = None if at is None else head[at]
            rows = chain(head[at + 1:] if at is not None else [], rows)  # the rows below the header
            if first is None:
                if header is None:
                    raise ValueError(f"sheet {current.name!r} of {path.name} is empty")
                read.other_sheets.append(current.name)  # another table
                continue
            count = 0
            if header is None:
                header = first[1]
                read.marks.append((line, current.name, first[0]))
                writer.writerow(header)
                line += 1 + line_breaks(header)
                expected = first[0] + 1
            else:
                expected = -1  # a following sheet's rows go on from the line after the last
            width = len(header)
            for number, cells in rows:
                if limit is not None and written >= limit:
                    break  # a sample (leadpulse inspect) needs no more
                written += 1
                if number != expected:
                    read.marks.append((line, current.name, number))
                if len(cells) < width:
                    cells.extend([""] * (width - len(cells)))
                writer.writerow(cells)
                count += 1
                extra = line_breaks(cells)
                line += 1 + extra
                expected = number + 1
                if extra:
                    read.marks.append((line, current.name, expected))
            read.sheets.append(SheetRead(current.name, count, first[0]))
        left = set(read.other_sheets)
        read.other_sheets = [s.name for s in found if s.name in left]  # in tab order
        return read

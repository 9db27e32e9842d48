"""Event contracts: one JSON object per event, the same on Kafka and in JSON Lines.

Every event has ``event_id``, ``customer_id``, ``ts`` and a ``type`` that picks
the model (a discriminated union). Unknown extra fields are kept (a segment or
region can ride along for fairness reports) but never feed a model unless a
feature names them.

Decoding never raises: :func:`decode` returns either an event or an
:class:`EventError` whose ``reason`` says what was wrong, so the streaming
layer can dead-letter it with the original bytes.

>>> ev = decode(b'{"event_id":"e1","customer_id":"c1","ts":"2024-05-01T10:00:00+02:00",'
...             b'"type":"purchase","order_id":"o1","amount":42.5,"currency":"eur"}')
>>> ev.type, ev.ts_ms, ev.currency
('purchase', 1714550400000, 'EUR')
>>> bad = decode(b'{"event_id":"e2","type":"purchase"}')
>>> bad.reason[:52]
'validation: customer_id: Field required; ts: Field r'
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

MAX_EVENT_BYTES = 64 * 1024
# Outside these bounds a timestamp is a bug upstream, not a customer's history. The floor is
# 10^11 ms (1973-03-03): a number below it is read as epoch seconds (see parse_ts_ms), so no
# valid time changes meaning, and 0 (the epoch, the usual unset time) is refused. Histories
# from the 1970s and 1980s (donor files, old retail panels) pass.
MIN_TS_MS = 10**11
MIN_TS_TEXT = datetime.fromtimestamp(MIN_TS_MS / 1000, UTC).date().isoformat()  # 1973-03-03
MAX_TS_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
# An event stamped later than this beyond the wall clock is a clock or bug upstream: taken
# as valid, it would move its customer's clock ahead, and every real event of that customer
# after it would then be dropped as later than the allowed lateness, lost instead of
# dead-lettered. A device clock a few hours ahead still passes.
MAX_FUTURE_MS = 86_400_000

WebAction = Literal[
    "page_view", "product_view", "add_to_cart", "remove_from_cart", "search", "signup", "login"
]
CampaignAction = Literal[
    "sent", "delivered", "opened", "clicked", "converted", "unsubscribed", "bounced"
]
Channel = Literal["email", "sms", "push", "web", "ads"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def parse_ts_ms(value: Any) -> int:
    """Epoch milliseconds from RFC 3339 text (with offset), or an epoch number of seconds,
    milliseconds, microseconds or nanoseconds.

    A number below 10^11 is read as seconds: as milliseconds it would fall
    before 1973-03-03, outside the accepted times, so no valid timestamp changes
    meaning. Likewise from 10^14 on (as milliseconds, after the year 5000) it is
    microseconds, and from 10^17 nanoseconds (Debezium's ``ts_us`` and ``ts_ns``,
    Spark), cut to whole milliseconds. Accepted: from 1973-03-03 to the end of 2099.

    >>> parse_ts_ms("2024-01-01T00:00:00Z"), parse_ts_ms(1704067200000)
    (1704067200000, 1704067200000)
    >>> parse_ts_ms(1704067200), parse_ts_ms("1704067200.25")
    (1704067200000, 1704067200250)
    >>> parse_ts_ms("2038-12-10T00:48:30.436Z"), parse_ts_ms("2024-03-01T10:00:00.1239+01:00")
    (2175554910436, 1709283600123)
    >>> parse_ts_ms(1704067200123999), parse_ts_ms("1704067200123999999")
    (1704067200123, 1704067200123)
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be RFC 3339 text or epoch milliseconds")
    if isinstance(value, int | float):
        ms = _epoch_ms(value)
    elif isinstance(value, str):
        text = value.strip()
        if _epoch_text(text):
            ms = _epoch_ms(float(text) if "." in text else int(text))
        else:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError as exc:
                raise ValueError(f"not an RFC 3339 timestamp: {text[:40]!r}") from exc
            if parsed.tzinfo is None:
                raise ValueError("timestamp has no UTC offset")
            # Exact: timestamp() is a float, and x1000 put 0.6% of millisecond times 1 ms early.
            ms = (parsed - _EPOCH) // _ONE_MS
    else:
        raise ValueError("timestamp must be RFC 3339 text or epoch milliseconds")
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise ValueError(f"timestamp outside {MIN_TS_TEXT}..2100 (absurd)")
    return ms


def _event_ts_ms(value: Any) -> int:
    # An event's time: parse_ts_ms, and not more than MAX_FUTURE_MS ahead of the clock.
    ms = parse_ts_ms(value)
    if ms > int(time.time() * 1000) + MAX_FUTURE_MS:
        raise ValueError("timestamp more than a day ahead of the clock (a clock or bug upstream)")
    return ms


def _epoch_ms(number: float) -> int:
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("timestamp is not a number")
    if abs(number) < 1e11:
        return round(number * 1000)  # seconds
    if abs(number) >= 1e17:
        return int(number) // 1_000_000  # nanoseconds
    if abs(number) >= 1e14:
        return int(number) // 1_000  # microseconds
    return int(number)


def id_text(value: Any) -> Any:
    """Ids may come as JSON integers (many systems number their customers); they are text here.
    Text is read in Unicode's composed form (NFC): "Zoë" typed on one system and decomposed
    (o + combining diaeresis) by another is one customer.

    >>> id_text(42), id_text("c42"), id_text(True), id_text("Zoe\u0308") == id_text("Zo\u00eb") == "Zo\u00eb"
    ('42', 'c42', True, True)
    """
    if type(value) is int:
        return str(value)
    if type(value) is str and not value.isascii():
        return unicodedata.normalize("NFC", value)
    return value


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, str_strip_whitespace=True)

    event_id: Annotated[str, Field(min_length=1, max_length=200)]
    customer_id: Annotated[str, Field(min_length=1, max_length=200)]
    ts_ms: int = Field(alias="ts")

    @field_validator("ts_ms", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> int:
        return _event_ts_ms(value)

    _ids = field_validator("event_id", "customer_id", mode="before")(id_text)

    def extra(self, name: str) -> Any:
        """An unknown field carried on the event (``None`` when absent)."""
        return (self.model_extra or {}).get(name)


class WebEvent(_Base):
    """A visitor's action on the site or app (``action``), optionally in a session.

    >>> ev = decode('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00+01:00",'
    ...             '"type":"web","action":"add_to_cart","product_id":"p9","segment":"smb"}')
    >>> type(ev).__name__, ev.action, ev.ts_ms, ev.extra("segment")
    ('WebEvent', 'add_to_cart', 1709283600000, 'smb')
    """

    type: Literal["web"]
    action: WebAction
    session_id: str | None = None
    url: str | None = None
    product_id: str | None = None
    category: str | None = None


# A quadrillion in any currency: far above any order, and far enough below the largest float
# that spend features summing a customer's orders stay finite (two orders of 1e308 made
# infinity, then NaN in the model's scaler, and stopped the replay).
MAX_AMOUNT = 1e15


class Item(BaseModel):
    """One line of an order (optional: spend features read the order's ``amount``).

    >>> Item(product_id="p1", quantity=2, price=9.5).quantity
    2.0
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    product_id: str | None = None
    category: str | None = None
    quantity: Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)] = 1
    price: Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)] = 0.0


class PurchaseEvent(_Base):
    """An order: completed (the default) or refunded. Ids may be JSON integers.

    >>> ev = decode('{"event_id":1,"customer_id":42,"ts":1709287200,"type":"purchase",'
    ...             '"order_id":"o1","amount":80,"currency":"eur"}')
    >>> ev.customer_id, ev.event_id, ev.currency, ev.status, ev.ts_ms
    ('42', '1', 'EUR', 'completed', 1709287200000)
    """

    type: Literal["purchase"]
    order_id: Annotated[str, Field(min_length=1)]
    amount: Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]
    items: list[Item] | None = None
    status: Literal["completed", "refunded"] = "completed"

    _order_id = field_validator("order_id", mode="before")(id_text)

    @field_validator("amount", mode="before")
    @classmethod
    def _not_a_flag(cls, value: Any) -> Any:
        # Lax mode reads true as 1.0: a flag in the amount's place is a mapping mistake.
        if isinstance(value, bool):
            raise ValueError("a number, not true or false")
        return value

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


class CampaignEvent(_Base):
    """What happened to one campaign message for one customer (sent, opened, clicked, ...).

    >>> ev = decode('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
    ...             '"type":"campaign","campaign_id":"spring","channel":"email","action":"clicked"}')
    >>> ev.campaign_id, ev.channel, action_of(ev)
    ('spring', 'email', 'clicked')
    """

    type: Literal["campaign"]
    campaign_id: Annotated[str, Field(min_length=1)]
    channel: Channel
    action: CampaignAction

    _campaign_id = field_validator("campaign_id", mode="before")(id_text)


Event = Annotated[WebEvent | PurchaseEvent | CampaignEvent, Field(discriminator="type")]
AnyEvent = WebEvent | PurchaseEvent | CampaignEvent
_ADAPTER: TypeAdapter[AnyEvent] = TypeAdapter(Event)


def action_of(event: AnyEvent) -> str:
    """What happened: the web or campaign action; for a purchase, its status.

    >>> action_of(decode('{"event_id":"e","customer_id":"c","ts":1704067200000,"type":"purchase",'
    ...                  '"order_id":"o","amount":1,"currency":"EUR","status":"refunded"}'))
    'refunded'
    """
    return event.status if event.type == "purchase" else event.action


# Per event model: the names of its declared fields (ts_ms, not its alias ts).
_DECLARED = {cls: frozenset(cls.model_fields) for cls in (WebEvent, PurchaseEvent, CampaignEvent)}


def event_field(event: AnyEvent, name: str) -> Any:
    """The value of an event's field ``name``: a declared one, else an extra one (``None``: absent).

    Never another attribute: an extra field called ``copy``, ``json`` or ``model_dump``
    (the ad copy variant, say) is the event's value, not the pydantic method of that name.

    >>> ev = decode('{"event_id":"e1","customer_id":"c1","ts":1704067200000,"type":"campaign",'
    ...             '"campaign_id":"k1","channel":"email","action":"sent","copy":"A"}')
    >>> event_field(ev, "campaign_id"), event_field(ev, "copy"), event_field(ev, "json"), event_field(ev, "x")
    ('k1', 'A', None, None)
    """
    declared = _DECLARED.get(type(event))
    if declared is None:  # a subclass: its own declared fields
        declared = frozenset(type(event).model_fields)
    if name in declared:
        return getattr(event, name)
    return (event.model_extra or {}).get(name)


@dataclass(frozen=True, slots=True)
class EventError:
    """A line or message that is not a valid event: the original bytes and why.

    >>> err = decode(b'{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z","type":"web"}')
    >>> err.reason, err.raw[:13]
    ('validation: action: Field required', b'{"event_id":"')
    """

    raw: bytes
    reason: str


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "event"
        # A discriminated union puts the tag in the path; users think in field names.
        if len(err["loc"]) > 1 and err["loc"][0] in ("web", "purchase", "campaign"):
            loc = ".".join(str(p) for p in err["loc"][1:])
        loc = "ts" if loc == "ts_ms" else loc
        parts.append(f"{loc}: {err['msg']}")
    return "validation: " + "; ".join(parts)


def decode(raw: bytes | str, max_bytes: int = MAX_EVENT_BYTES) -> AnyEvent | EventError:
    """Parse and validate one event; never raises.

    >>> decode(b'{not json').reason[:12]
    'invalid JSON'
    >>> decode(b'[1, 2]').reason
    'not a JSON object'
    """
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        return EventError(data, f"oversized: {len(data)} bytes > {max_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return EventError(data, f"invalid JSON: {str(exc)[:120]}")
    if not isinstance(obj, dict):
        return EventError(data, "not a JSON object")
    if obj.get("type") not in ("web", "purchase", "campaign"):
        return EventError(data, f"unknown type: {str(obj.get('type'))[:40]!r}")
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        return EventError(data, _describe(exc))
    except Exception as exc:  # noqa: BLE001 - a validator bug must not crash a consumer
        return EventError(data, f"validation: {type(exc).__name__}")


def encode(event: AnyEvent) -> bytes:
    """Canonical JSON for an event (``ts`` as RFC 3339 UTC), extra fields included.

    >>> ev = decode('{"event_id":"e","customer_id":"c","ts":1704067200000,"type":"web","action":"login","region":"north"}')
    >>> encode(ev)
    b'{"event_id":"e","customer_id":"c","ts":"2024-01-01T00:00:00.000+00:00","type":"web","action":"login","region":"north"}'

    """
    body = event.model_dump(by_alias=True, exclude_none=True)
    body["ts"] = ms_to_iso(event.ts_ms)
    return orjson.dumps(body)


def compact(data: bytes) -> bytes:
    """A copy of orjson's output that holds only its length, for bytes that are kept.

    orjson writes into a buffer of at least 4 KiB and shrinks it in place when done;
    the block stays whole in memory (its tail is a hole that small objects never
    reuse). A million kept event lines took 4.3 GB; their copies, 0.3 GB.

    >>> data = orjson.dumps({"a": 1})
    >>> kept = compact(data)
    >>> kept == data and kept is not data
    True
    """
    return bytes(memoryview(data))


def ms_to_iso(ms: int) -> str:
    """RFC 3339 text in UTC for epoch milliseconds.

    Every published score, alert and label carries one: the date part is made once per
    day, the time of day by integer arithmetic (exact, where a float of seconds rounds).

    >>> ms_to_iso(1704067200000), ms_to_iso(-1)
    ('2024-01-01T00:00:00.000+00:00', '1969-12-31T23:59:59.999+00:00')
    """
    day, rest = divmod(ms, 86_400_000)
    date = _DATES.get(day)
    if date is None:
        if len(_DATES) >= 4096:
            _DATES.clear()
        date = _DATES[day] = (_EPOCH + timedelta(days=day)).isoformat()[:11]
    hour, rest = divmod(rest, 3_600_000)
    minute, rest = divmod(rest, 60_000)
    second, milli = divmod(rest, 1000)
    return f"{date}{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}+00:00"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATES: dict[int, str] = {}  # days since the epoch -> "YYYY-MM-DDT"


def read_jsonl(lines: Iterable[bytes | str]) -> Iterator[tuple[int, AnyEvent | EventError]]:
    """Decode JSON Lines, yielding ``(line_number, event_or_error)``; blank lines are skipped.

    >>> lines = [b'{"event_id":"e1","customer_id":"c1","ts":1709287200000,"type":"web","action":"login"}',
    ...          b'', b'not json']
    >>> [(n, type(item).__name__) for n, item in read_jsonl(lines)]
    [(1, 'WebEvent'), (3, 'EventError')]

    A byte order mark before the first line (Windows editors and Excel write one) is not
    part of the event:

    >>> [type(item).__name__ for _, item in read_jsonl([b"\\xef\\xbb\\xbf" + lines[0]])]
    ['WebEvent']
    """
    for number, line in enumerate(without_bom(lines), start=1):
        stripped = line.strip()
        if stripped:
            yield number, decode(stripped)


def event_time_ms(raw: bytes | None, max_bytes: int = MAX_EVENT_BYTES) -> int | None:
    """A raw event's time, read without validating the rest (``None``: not readable).

    The time :func:`decode` gives a valid event, for a fraction of its cost: the live
    worker aligns its input topics by it, and its scoring processes decode the events.

    >>> event_time_ms(b'{"type":"web","ts":"2024-01-01T01:00:00+01:00"}'), event_time_ms(b'{oops')
    (1704067200000, None)
    """
    if raw is None or len(raw) > max_bytes:
        return None
    # decode()'s own reading: one it rejects as too far ahead cannot move the frontier either.
    return _line_ts(raw, types=("web", "purchase", "campaign"), parse=_event_ts_ms)


def _epoch_text(text: str) -> bool:
    # An epoch number written as text ("1704067200", "1704067200.25", "1704067200123456").
    return text.lstrip("-").replace(".", "", 1).isdigit()


def with_zone(line: bytes, zone: tzinfo) -> bytes:
    """A line whose ``ts`` is a time or date without a UTC offset, that time read in ``zone``.

    Events carry an offset (the contract); files exported from databases often do
    not. ``backtest --timezone`` and ``replay --timezone`` read such times in the
    zone given, as ``import-transactions --timezone`` does: the ``ts`` becomes epoch
    milliseconds, and every other line is left exactly as it was (not valid JSON,
    a time with an offset, epoch numbers). A wall time that a DST change skips or
    repeats is read with the offset before the change (``fold=0``).

    >>> from zoneinfo import ZoneInfo
    >>> with_zone(b'{"ts":"2024-07-01 12:00:00","n":1}', ZoneInfo("Europe/Berlin"))
    b'{"ts":1719828000000,"n":1}'
    >>> with_zone(b'{"ts":"2024-07-01"}', UTC), with_zone(b'{"ts":"2024-07-01T12:00:00Z"}', UTC)
    (b'{"ts":1719792000000}', b'{"ts":"2024-07-01T12:00:00Z"}')
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    ts = obj.get("ts") if isinstance(obj, dict) else None
    if not isinstance(ts, str):
        return line
    text = ts.strip()
    if _epoch_text(text):
        return line  # (fromisoformat would read 8 digits as a date)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return line
    if parsed.tzinfo is not None:
        return line
    obj["ts"] = round(parsed.replace(tzinfo=zone).timestamp() * 1000)
    return orjson.dumps(obj)


def _line_ts(
    line: bytes | str, types: tuple[str, ...] | None = None, parse: Callable[[Any], int] = parse_ts_ms
) -> int | None:
    # The ``ts`` of a JSON object line (of one of ``types``, if given); None when unreadable.
    try:
        obj = orjson.loads(line)
        if not isinstance(obj, dict) or (types is not None and obj.get("type") not in types):
            return None
        return parse(obj.get("ts"))
    except (orjson.JSONDecodeError, ValueError):
        return None


def _ts_key(line: bytes | str) -> int:
    # Unreadable lines sort first: they are invalid wherever they stand.
    ts = _line_ts(line)
    return -1 if ts is None else ts


def out_of_order(lines: Iterable[bytes | str], window_ms: int) -> int:
    """How many lines carry a ``ts`` more than ``window_ms`` before a line above them.

    Replays and backtests absorb ``window_ms`` of disorder (the lateness); beyond it, the
    file is in another order (say by customer, as a SQL export often is) and must be sorted
    first. Blank and unreadable lines are not counted.

    >>> lines = ['{"ts": 1704067200000}', '{"ts": 1704070800000}', '{"ts": 1704067200000}', "x"]
    >>> out_of_order(lines, window_ms=0), out_of_order(lines, window_ms=3_600_000)
    (1, 0)
    """
    newest = None
    behind = 0
    for line in lines:
        if not line.strip():
            continue
        ts = _ts_key(line)
        if ts < 0:
            continue
        if newest is not None and ts < newest - window_ms:
            behind += 1
        newest = ts if newest is None else max(newest, ts)
    return behind


class SortedLines(list[bytes]):
    """Lines in time order; ``numbers[i]`` is the file's own (1-based) number of line ``i``."""

    numbers: list[int]


def time_sorted(lines: Iterable[bytes | str]) -> SortedLines:
    """The non-blank lines sorted by ``ts`` (stable: equal times keep the file's order).

    In memory: about the file's size again, plus a few dozen bytes a line.

    >>> out = time_sorted(['{"ts": 1704070800000, "n": 1}', "", '{"ts": 1704067200000, "n": 2}'])
    >>> out, out.numbers
    ([b'{"ts": 1704067200000, "n": 2}', b'{"ts": 1704070800000, "n": 1}'], [3, 1])
    """
    keyed = []
    for number, line in enumerate(lines):
        raw = line.encode() if isinstance(line, str) else line
        raw = raw.strip()
        if raw:
            keyed.append((_ts_key(raw), number, raw))
    keyed.sort(key=lambda item: (item[0], item[1]))
    out = SortedLines(raw for _, _, raw in keyed)
    out.numbers = [number + 1 for _, number, _ in keyed]
    return out


T = TypeVar("T", bound=bytes | str)


def without_bom(lines: Iterable[T]) -> Iterator[T]:
    r"""The lines, the first without a UTF-8 byte order mark (Windows editors and Excel write one).

    >>> list(without_bom([b'\xef\xbb\xbf{"a": 1}\n', b'{"b": 2}\n'])), list(without_bom(["\ufeffx", "y"]))
    ([b'{"a": 1}\n', b'{"b": 2}\n'], ['x', 'y'])
    """
    it = iter(lines)
    first = next(it, None)
    if first is None:
        return
    # removeprefix gives the base type back: the same type as the line's.
    yield cast(T, first.removeprefix(b"\xef\xbb\xbf") if isinstance(first, bytes) else first.removeprefix("\ufeff"))
    yield from it


def read_jsonl_file(path: str | Path) -> Iterator[tuple[int, AnyEvent | EventError]]:
    """Decode a JSON Lines file lazily (constant memory): :func:`read_jsonl` on its lines.

    >>> import os, tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
    ...     print('{"event_id":"e1","customer_id":"c1","ts":1709287200000,"type":"web","action":"login"}', file=f)
    >>> [item.customer_id for _, item in read_jsonl_file(f.name)]
    ['c1']
    >>> os.unlink(f.name)
    """
    with open(path, "rb") as handle:
        yield from read_jsonl(handle)

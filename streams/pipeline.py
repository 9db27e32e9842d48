"""The thin glue between Kafka records and the scoring core, with no Kafka in it.

The Faust agents in :mod:`streams.app` hand a batch of :class:`Incoming`
records to :meth:`Pipeline.process` and publish the :class:`OutRecord` list it
returns; everything that can be decided without a broker is decided here, so it
is unit-tested with in-process stores.

Per batch:

1. every record is decoded (:func:`features.events.decode`, which never
   raises); failures, and valid events whose message key is not their
   ``customer_id`` (they would break co-partitioning), become dead-letter
   records: the original key and bytes, and Kafka-Connect-style headers
   ``__connect.errors.topic`` / ``.partition`` / ``.offset`` /
   ``.exception.message`` (the reason);
2. valid events are grouped by source partition (the *shard*: input topics
   are co-partitioned by customer, so partition ``p`` of every input topic is
   one shard with one watermark), ordered by event time within the shard, and
   given to :meth:`scoring.core.ScoringCore.process` one shard at a time;
3. the core's outputs become JSON records keyed by ``customer_id``: score
   changes (compacted topic), alerts, triggers and matured examples for the
   central learner (the labels topic).

Output records (values are JSON objects)::

    leadpulse.scores   {"customer_id": "c1", "kind": "purchase_propensity",
                        "old_value": 21.4, "value": 63.0, "probability": 0.63,
                        "band": "hot", "old_band": "warm", "grade": 6,
                        "model_version": 1200, "source": "model",
                        "reasons": [{"feature": "carts_7d", "contribution": 0.81}],
                        "event_id": "e-981", "cause": "event", "ts": "2024-03-01T10:00:00.000+00:00"}
    leadpulse.alerts   {"customer_id": "c1", "kind": "purchase_propensity",
                        "reason": "jumped 41.6 points within 7d", "old_value": 21.4,
                        "value": 63.0, "old_band": "warm", "band": "hot",
                        "event_id": "e-981", "ts": "..."}
    leadpulse.triggers {"customer_id": "c1", "trigger": "hot_lead", "action": "route_to_sales",
                        "kind": "purchase_propensity", "value": 63.0, "band": "hot",
                        "reason": "purchase_propensity entered hot (63)", "control": false, "ts": "..."}
    leadpulse.labels   [{"kind": "churn_risk", "customer_id": "c1", "example_id": "...",
                         "t_ms": ..., "end_ms": ..., "prob": 0.2, "rule_prob": 0.3,
                         "source": "cold_start", "label": 0, "x": {"orders_total": 0.69, ...},
                         "fresh": false, "event_id": "e-981"}, ...]  (event_id: the event the
                        example was scored at, null for an idle rescore; fresh true: a learn_at: fresh sample, not a
                        matured label; a JSON array of a batch's examples, in learning order,
                        up to 256 KB a record; a single object is read too)
    leadpulse.drift    {"kind": "churn_risk", "model_version": 5120, "ts": "...",
                        "detector": "ADWIN(log loss)", "drifts_total": 2}
    leadpulse.dlq      the original bytes, headers as above
    leadpulse.late     with keep_late: valid events not applied as later than the allowed
                       lateness, the original bytes, the same headers (stage ``lateness``)

Central learning: scorers run the core with ``learn_inline=False``; matured
examples go to the single-partition labels topic, where exactly one
:class:`Learner` (the owner of partition 0 in the consumer group) learns them
in order and checkpoints model snapshots *together with the labels offset*
(one Redis transaction), so a restarted or moved learner resumes exactly
where the last snapshot ends. Scorers hot-swap newer snapshots through
:class:`ModelRefresher`.

>>> from scoring.core import ScoringCore
>>> core = ScoringCore.in_memory(learn_inline=False)
>>> pipe = Pipeline(core)
>>> good = (b'{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
...         b'"type":"purchase","order_id":"o1","amount":80,"currency":"EUR"}')
>>> batch = pipe.process([Incoming("leadpulse.events.purchase", 0, 7, b"c1", good),
...                       Incoming("leadpulse.events.web", 0, 3, b"c1", b"{oops")])
>>> sorted({r.topic for r in batch.records})
['leadpulse.dlq', 'leadpulse.scores']
>>> dead = [r for r in batch.records if r.topic == "leadpulse.dlq"][0]
>>> dead.value, dict(dead.headers)["__connect.errors.offset"]
(b'{oops', b'3')
>>> batch.counts["invalid"], batch.counts["applied"]
(1, 1)
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from features.events import MAX_EVENT_BYTES, AnyEvent, EventError, decode, id_text
from scoring.core import Labelled, ModelRegistry, Outputs, ScoringCore
from scoring.state import ModelStore
from streams.settings import Topics

Header = tuple[str, bytes]
P = TypeVar("P")

__all__ = [
    "BatchOutput",
    "EventTimeAligner",
    "Incoming",
    "Learner",
    "ModelRefresher",
    "OutRecord",
    "Pipeline",
    "dead_letter",
    "fit_record",
    "instead_of_too_large",
    "input_caught_up",
    "labelled_to_json",
    "labels_from_record",
    "labels_to_records",
]

# A labels record carries many examples: each Kafka record costs the worker's producer and
# the learner's consumer about as much as a whole label does, one per example doubled the
# records the worker moved. Kept well below Kafka's default 1 MB message limit.
LABELS_RECORD_BYTES = 256 * 1024
# Why a valid event was not applied. A redelivery of an applied event is a duplicate, not
# late, while its id is remembered: inside the lateness window, and all of a customer's up to
# 64 (features.store); past that, its id forgotten, it reads as late.
LATE_REASON = (
    "later than the allowed lateness behind the customer's newest event; not applied "
    "(or a redelivery of an event applied long before, its id forgotten)"
)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed Kafka record, as the pipeline needs it (no Kafka types)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None  # Kafka message timestamp

    @property
    def position(self) -> tuple[str, int, int]:
        """Where the record sits in Kafka: (topic, partition, offset), its identity.

        >>> Incoming("t", 2, 7, b"k", b"v").position
        ('t', 2, 7)
        """
        return (self.topic, self.partition, self.offset)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Crosses to the scoring process by the thousand: a constructor call unpickles
        # several times faster than a slotted dataclass's generic state.
        return (Incoming, (self.topic, self.partition, self.offset, self.key, self.value, self.timestamp_ms))


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to publish: JSON (or original) bytes, keyed by customer.

    ``value=None`` is a tombstone (used on the compacted scores topic when a
    customer is erased).
    """

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...] = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (OutRecord, (self.topic, self.key, self.value, self.headers))


@dataclass
class BatchOutput:
    """What one batch produced: records to publish (in order) and bookkeeping."""

    records: list[OutRecord] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # Kafka timestamps (ms) of the events that caused a published score: event-to-score latency.
    score_event_ts_ms: list[int] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)


def _key_is(key: bytes | None, customer_id: str) -> bool:
    """Whether a message's key names the event's customer, the key read as ids are: a
    decomposed "Zoë" keyed as the producer had it is the customer the event (read composed,
    features.events.id_text) names.

    >>> _key_is(b"c1", "c1"), _key_is("Zoe\u0308".encode(), "Zo\u00eb"), _key_is(b"c2", "c1"), _key_is(None, "c1")
    (True, True, False, False)
    """
    if key is None:
        return False
    if key == customer_id.encode():
        return True
    if customer_id.isascii():  # NFC changes no ASCII id: another key is another customer
        return False
    try:
        return id_text(key.decode()) == customer_id
    except UnicodeDecodeError:
        return False


def dead_letter(
    msg: Incoming, reason: str, dlq_topic: str, stage: str = "decode", source: str = "leadpulse",
    error_class: str = "features.events.EventError",
) -> OutRecord:
    """A dead-letter record: original key and bytes, Kafka Connect style error headers.

    >>> r = dead_letter(Incoming("t", 2, 9, b"k", b"raw"), "invalid JSON", "dlq")
    >>> r.value, [h for h, _ in r.headers][:4]
    (b'raw', ['__connect.errors.topic', '__connect.errors.partition', '__connect.errors.offset', '__connect.errors.exception.message'])
    """
    headers: tuple[Header, ...] = (
        ("__connect.errors.topic", msg.topic.encode()),
        ("__connect.errors.partition", str(msg.partition).encode()),
        ("__connect.errors.offset", str(msg.offset).encode()),
        ("__connect.errors.exception.message", reason.encode("utf-8", "replace")),
        ("__connect.errors.exception.class.name", error_class.encode()),
        ("__connect.errors.stage", stage.encode()),
        ("__connect.errors.connector.name", source.encode()),
    )
    return OutRecord(dlq_topic, msg.key, msg.value if msg.value is not None else b"", headers)


# A record larger than the producer may send keeps this much of its bytes, as ``leadpulse
# replay`` does with a line too large for a record; the headers below say what was cut.
DLQ_TRUNCATE_BYTES = 64 * 1024
TRUNCATED_FROM = "leadpulse.truncated_from"  # the original value's size in bytes
ORIGINAL_SHA256 = "leadpulse.sha256"  # SHA-256 (hex) of the whole original value
# What aiokafka adds to a record's key, value and headers when it checks the request size:
# a batch header (61 bytes) and at most 21 of record overhead; varint lengths on top.
_RECORD_OVERHEAD = 61 + 21


def record_size(rec: OutRecord) -> int:
    """An upper bound of the bytes ``rec`` takes in a produce request (the producer's own estimate, or more).

    >>> record_size(OutRecord("t", b"k", b"v" * 100))
    198
    """
    size = _RECORD_OVERHEAD + 5 + len(rec.key or b"") + 5 + len(rec.value or b"") + 5
    return size + sum(10 + len(name.encode()) + len(value) for name, value in rec.headers)


def truncated(rec: OutRecord, keep: int = DLQ_TRUNCATE_BYTES) -> OutRecord:
    """``rec`` with its value cut to ``keep`` bytes, and headers giving the original size and hash.

    A key longer than ``keep`` is cut too (``leadpulse.key_truncated_from``, ``leadpulse.key_sha256``).

    >>> r = truncated(OutRecord("dlq", b"c1", b"x" * 10), keep=4)
    >>> r.value, dict(r.headers)["leadpulse.truncated_from"], dict(r.headers)["leadpulse.sha256"][:12]
    (b'xxxx', b'10', b'fc11d6f28e59')
    """
    value = rec.value or b""
    headers = (*rec.headers, (TRUNCATED_FROM, str(len(value)).encode()),
               (ORIGINAL_SHA256, hashlib.sha256(value).hexdigest().encode()))
    key = rec.key
    if key is not None and len(key) > keep:
        headers += (("leadpulse.key_truncated_from", str(len(key)).encode()),
                    ("leadpulse.key_sha256", hashlib.sha256(key).hexdigest().encode()))
        key = key[:keep]
    return OutRecord(rec.topic, key, value[:keep], headers)


def fit_record(rec: OutRecord, max_bytes: int) -> OutRecord:
    """``rec`` if the producer can send it (``max_bytes``: its maximum request size), else :func:`truncated`.

    >>> fit_record(OutRecord("dlq", b"k", b"x" * 100), 1000).value == b"x" * 100
    True
    >>> len(fit_record(OutRecord("dlq", b"k", b"x" * 100_000), 70_000).value)
    65536
    """
    return rec if record_size(rec) <= max_bytes else truncated(rec)


def instead_of_too_large(rec: OutRecord, dlq_topic: str, source: str = "leadpulse") -> OutRecord | None:
    """What to send instead of a record the producer or broker refused as too large; None: nothing.

    A dead letter (or late record) goes again :func:`truncated`. Any other output goes to
    ``dlq_topic``, truncated, with the reason and its topic in the usual headers. A record
    already truncated gets None: cut to 64 KiB, it is still too large for this broker.

    >>> r = instead_of_too_large(OutRecord("scores", b"c1", b"{}"), "dlq")
    >>> r.topic, dict(r.headers)["__connect.errors.stage"], dict(r.headers)["__connect.errors.topic"]
    ('dlq', b'publish', b'scores')
    >>> instead_of_too_large(r, "dlq") is None
    True
    """
    names = {name for name, _ in rec.headers}
    if TRUNCATED_FROM in names:
        return None
    if "__connect.errors.stage" not in names:  # an output, not a dead letter
        rec = OutRecord(dlq_topic, rec.key, rec.value, (
            ("__connect.errors.topic", rec.topic.encode()),
            ("__connect.errors.exception.message", b"output record too large for the producer or broker"),
            ("__connect.errors.stage", b"publish"),
            ("__connect.errors.connector.name", source.encode()),
            *rec.headers,
        ))
    return truncated(rec)


def labelled_to_json(ex: Labelled) -> bytes:
    """A matured example for the labels topic (the model input ``x`` included).

    >>> ex = Labelled("churn_risk", "c1", "x1", 1, 2, 0.2, 0.3, "model", 1, {"a": 1.0}, event_id="e1")
    >>> labels_from_record(labelled_to_json(ex)) == [ex]
    True
    """
    return orjson.dumps({
        "kind": ex.kind, "customer_id": ex.customer_id, "example_id": ex.example_id,
        "t_ms": ex.t_ms, "end_ms": ex.end_ms, "prob": ex.prob, "rule_prob": ex.rule_prob,
        "source": ex.source, "label": ex.label, "x": ex.x, "fresh": ex.fresh, "event_id": ex.event_id,
    })


def _labelled(d: Any) -> Labelled:
    try:
        return Labelled(
            str(d["kind"]), str(d["customer_id"]), str(d["example_id"]), int(d["t_ms"]),
            int(d["end_ms"]), float(d["prob"]), float(d["rule_prob"]), str(d["source"]),
            int(d["label"]), {str(k): float(v) for k, v in d["x"].items()},
            bool(d.get("fresh", False)),  # records from before fresh learning have none
            None if d.get("event_id") is None else str(d["event_id"]),  # nor from before event ids
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"not a labelled example: {type(exc).__name__}") from exc


def labels_to_records(examples: Iterable[Labelled], topic: str, key: bytes = b"labels",
                      max_bytes: int = LABELS_RECORD_BYTES) -> list[OutRecord]:
    """Examples for the labels topic, in order, as few records as ``max_bytes`` allows.

    >>> ex = Labelled("churn_risk", "c1", "x1", 1, 2, 0.2, 0.3, "model", 1, {"a": 1.0})
    >>> records = labels_to_records([ex] * 5, "labels", max_bytes=400)
    >>> [len(labels_from_record(r.value)) for r in records]
    [2, 2, 1]
    """
    records: list[OutRecord] = []
    chunk: list[bytes] = []
    size = 0
    for ex in examples:
        item = labelled_to_json(ex)
        if chunk and size + len(item) + 1 > max_bytes:
            records.append(OutRecord(topic, key, b"[" + b",".join(chunk) + b"]"))
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        records.append(OutRecord(topic, key, b"[" + b",".join(chunk) + b"]"))
    return records


def labels_from_record(raw: bytes) -> list[Labelled]:
    """The examples of one labels record (an array, or one object as older workers wrote).

    Raises ``ValueError`` on a bad record: it is learned whole or not at all.

    >>> ex = Labelled("churn_risk", "c1", "x1", 1, 2, 0.2, 0.3, "model", 1, {"a": 1.0})
    >>> labels_from_record(labelled_to_json(ex)) == [ex]
    True
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a labels record: {type(exc).__name__}") from exc
    return [_labelled(d) for d in (data if isinstance(data, list) else [data])]


def _json(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS)


class Pipeline:
    """Decode, dead-letter, group by shard, score, and encode outputs.

    ``require_key_match``: a valid event whose message key is not its
    ``customer_id`` is dead-lettered (stage ``key_check``), because per-shard
    scoring state is only consistent when every event of a customer arrives
    on the partition its key hashes to.

    ``keep_late``: valid events not applied as later than the allowed lateness go to
    the late topic as received (stage ``lateness``); otherwise they are only counted.
    Off by default: event ids are remembered only inside the lateness window, so a
    redelivery of events applied longer ago reads as late too (a file replayed twice
    puts most of itself there).

    ``max_record_bytes`` (the producer's maximum request size): a dead letter larger than it
    keeps its first 64 KiB, with headers giving the original size and SHA-256 (:func:`truncated`).

    ``max_ahead_ms`` (the live worker: the allowed lateness): a valid event dated more than
    this ahead of ``clock()`` (the wall clock) is dead-lettered (stage ``event_time``).
    Taken, it would move its customer's clock ahead, and the customer's real events would
    then be dropped as late until the wall clock caught up. ``None`` (backtests, replays of
    history, which have no relation to the wall clock): only decode's one-day bound applies.
    """

    def __init__(
        self,
        core: ScoringCore,
        topics: Topics | None = None,
        *,
        max_event_bytes: int = MAX_EVENT_BYTES,
        require_key_match: bool = True,
        source: str = "leadpulse",
        keep_late: bool = False,
        max_ahead_ms: int | None = None,
        clock: Callable[[], float] = time.time,
        max_record_bytes: int | None = None,
    ) -> None:
        self.core = core
        self.max_record_bytes = max_record_bytes
        self.max_ahead_ms = max_ahead_ms
        self.clock = clock
        self.topics = topics or Topics()
        self.max_event_bytes = max_event_bytes
        self.require_key_match = require_key_match
        self.source = source
        self.keep_late = keep_late

    def split(
        self, messages: Iterable[Incoming]
    ) -> tuple[dict[str, list[tuple[Incoming, AnyEvent]]], list[OutRecord], Counter[str]]:
        """Decode a batch: valid events by shard (arrival order), dead letters, counts."""
        by_shard: dict[str, list[tuple[Incoming, AnyEvent]]] = {}
        dead: list[OutRecord] = []
        counts: Counter[str] = Counter()
        dlq = self.topics.dlq
        latest = None if self.max_ahead_ms is None else int(self.clock() * 1000) + self.max_ahead_ms
        for msg in messages:
            counts["in"] += 1
            if msg.value is None:
                counts["invalid"] += 1
                dead.append(dead_letter(msg, "empty message (null value)", dlq, source=self.source))
                continue
            ev = decode(msg.value, self.max_event_bytes)
            if isinstance(ev, EventError):
                counts["invalid"] += 1
                dead.append(dead_letter(msg, ev.reason, dlq, source=self.source))
                continue
            if self.require_key_match and not _key_is(msg.key, ev.customer_id):
                counts["invalid"] += 1
                counts["key_mismatch"] += 1
                reason = "message key is not the event's customer_id (input topics must be keyed by customer)"
                dead.append(dead_letter(msg, reason, dlq, stage="key_check", source=self.source))
                continue
            if latest is not None and ev.ts_ms > latest:
                counts["invalid"] += 1
                counts["ahead_of_clock"] += 1
                allowed_ms = self.max_ahead_ms or 0
                ahead_h = (ev.ts_ms - latest + allowed_ms) / 3_600_000
                reason = (f"event time {ahead_h:.2f} h ahead of the worker's clock, more than the allowed "
                          f"lateness ({allowed_ms / 3_600_000:g} h): a producer's clock is wrong; not "
                          "applied, so that the customer's real events are not dropped as late")
                dead.append(dead_letter(msg, reason, dlq, stage="event_time", source=self.source))
                continue
            by_shard.setdefault(str(msg.partition), []).append((msg, ev))
        if self.max_record_bytes is not None:
            # Any input record, whatever its size, reaches the DLQ: whole if the producer can
            # send it, else truncated (a 1 MB record was retried every 30 s, blocking all partitions).
            dead = [fit_record(r, self.max_record_bytes) for r in dead]
        return by_shard, dead, counts

    def process(self, messages: Sequence[Incoming], done: dict[str, Outputs] | None = None) -> BatchOutput:
        """One batch in, records to publish out (dead letters first, then per shard).

        ``done``: as for :meth:`score`, when retrying the same batch after an error.
        """
        by_shard, dead, counts = self.split(messages)
        out = self.score([p for pairs in by_shard.values() for p in pairs], done=done)
        out.records[:0] = dead
        out.counts.update(counts)
        return out

    def score(
        self, pairs: Sequence[tuple[Incoming, AnyEvent]], done: dict[str, Outputs] | None = None
    ) -> BatchOutput:
        """Score decoded events: grouped by shard, each shard's events in event time.

        All shards go to the core in one call (:meth:`ScoringCore.process_shards`: one
        set of Redis round trips for the batch). ``done`` keeps each shard's result as
        soon as it is complete. Pass the same dict when retrying the same batch after an
        error: shards already applied are not applied again. Run again, their events would
        count as duplicates and their outputs would be lost.
        """
        by_shard: dict[str, list[tuple[Incoming, AnyEvent]]] = {}
        for msg, ev in pairs:
            by_shard.setdefault(str(msg.partition), []).append((msg, ev))
        out = BatchOutput()
        labels: list[Labelled] = []
        shards = sorted(by_shard, key=lambda s: int(s) if s.isdigit() else s)
        for shard in shards:
            # The three input topics interleave arbitrarily inside a batch: apply a
            # shard's events in event time (stable, so equal times keep arrival order).
            by_shard[shard].sort(key=lambda p: p[1].ts_ms)
        results = self.core.process_shards(
            [(shard, [ev for _, ev in by_shard[shard]], None) for shard in shards], done=done
        )
        for shard, result in zip(shards, results, strict=True):
            out.shards.append(shard)
            out.counts.update(result.counts)
            self._encode(result, by_shard[shard], out, labels)
        # The whole batch's examples in a few records, shard by shard as the core made them.
        out.records.extend(labels_to_records(labels, self.topics.labels))
        return out

    def _encode(
        self, result: Any, pairs: list[tuple[Incoming, AnyEvent]], out: BatchOutput, labels: list[Labelled]
    ) -> None:
        topics = self.topics
        for i in result.late if self.keep_late else ():
            out.records.append(dead_letter(pairs[i][0], LATE_REASON, topics.late, stage="lateness",
                                           source=self.source, error_class="features.store.LATE"))
        sent_at = {ev.event_id: msg.timestamp_ms for msg, ev in pairs}
        for rec in result.scores:
            out.records.append(OutRecord(topics.scores, rec["customer_id"].encode(), _json(rec)))
            ts = sent_at.get(rec.get("event_id"))
            if ts is not None:
                out.score_event_ts_ms.append(ts)
        for rec in result.alerts:
            out.records.append(OutRecord(topics.alerts, rec["customer_id"].encode(), _json(rec)))
        for rec in result.triggers:
            out.records.append(OutRecord(topics.triggers, rec["customer_id"].encode(), _json(rec)))
        # Fresh samples first: in process() the core learns them before the batch's matured labels.
        labels.extend(result.fresh)
        labels.extend(result.labelled)
        for drift in result.drifts:  # only with learn_inline=True
            out.records.append(OutRecord(topics.drift, drift["kind"].encode(), _json(drift)))
        out.counts["scores_published"] += len(result.scores)
        out.counts["alerts"] += len(result.alerts)
        out.counts["triggers"] += len(result.triggers)
        out.counts["labels"] += len(result.labelled)
        out.counts["fresh_samples"] += len(result.fresh)
        out.counts["drift"] += len(result.drifts)

    def erase_records(self, customer_id: str) -> list[OutRecord]:
        """What to publish when a customer is erased: a tombstone on the compacted scores topic."""
        return [OutRecord(self.topics.scores, customer_id.encode(), None)]


class EventTimeAligner(Generic[P]):
    """Releases a shard's events across its input partitions in event-time order.

    The input topics of a shard (partition ``p`` of web, purchase and
    campaign) are separate Kafka partitions, fetched at their own pace. Live,
    they are all caught up and nothing waits. With a backlog (a replay, a
    backfill, a worker that was down) the consumer reads each partition in
    chunks of similar *size*, not similar event time: a sparse purchases
    partition races weeks ahead of a dense web partition, and the feature
    store would reject the web events as later than the allowed lateness.

    So events are held per shard and released only up to the smallest event
    time reached by the shard's partitions that still have unread records on
    the broker (``caught_up(topic, partition)`` says which have none), plus
    ``slack_ms``. A partition that is caught up holds nothing back, and the
    slack (keep it well below the allowed lateness) lets live traffic, whose
    topics are at most seconds apart, flow through at once. ``max_held``
    bounds memory: past it the oldest events go regardless.

    >>> a = EventTimeAligner(["web", "buy"], max_held=100)
    >>> a.add([(Incoming("buy", 0, 0, b"c", b""), 50, "p1"), (Incoming("web", 0, 0, b"c", b""), 10, "w1")])
    >>> [x[2] for x in a.release(lambda topic, p: False)]  # buy is at 50, web only at 10
    ['w1']
    >>> a.add([(Incoming("web", 0, 1, b"c", b""), 60, "w2")])
    >>> [x[2] for x in a.release(lambda topic, p: False)], len(a)
    (['p1'], 1)
    >>> [x[2] for x in a.release(lambda topic, p: True)]  # everything read: no reason to wait
    ['w2']
    """

    def __init__(self, inputs: Sequence[str], max_held: int = 50_000, slack_ms: int = 0) -> None:
        self.inputs = tuple(inputs)
        self.max_held = max_held
        self.slack_ms = slack_ms
        self._heaps: dict[int, list[tuple[int, int, tuple[Incoming, int, P]]]] = {}
        self._frontier: dict[tuple[str, int], int] = {}
        self._seq = 0
        self._held = 0
        self.forced = 0  # released early because of max_held

    def __len__(self) -> int:
        return self._held

    def add(self, items: Iterable[tuple[Incoming, int, P]]) -> None:
        """Hold ``(message, event time ms, payload)`` items."""
        for item in items:
            msg, ts, _ = item
            key = (msg.topic, msg.partition)
            if ts > self._frontier.get(key, -(2**62)):
                self._frontier[key] = ts
            self._seq += 1
            heapq.heappush(self._heaps.setdefault(msg.partition, []), (ts, self._seq, item))
            self._held += 1

    def release(self, caught_up: Callable[[str, int], bool]) -> list[tuple[Incoming, int, P]]:
        """Items that can go now, oldest first within each shard."""
        out: list[tuple[Incoming, int, P]] = []
        for partition, heap in self._heaps.items():
            limit: float = float("inf")
            for topic in self.inputs:
                if caught_up(topic, partition):
                    continue
                limit = min(limit, self._frontier.get((topic, partition), float("-inf")))
            limit += self.slack_ms
            while heap and heap[0][0] <= limit:
                out.append(heapq.heappop(heap)[2])
        while self._held - len(out) > self.max_held:
            heap = min((h for h in self._heaps.values() if h), key=lambda h: h[0][0])
            out.append(heapq.heappop(heap)[2])
            self.forced += 1
        self._held -= len(out)
        return out

    def flush(self) -> list[tuple[Incoming, int, P]]:
        """Everything held, and forget the partitions' progress (rebalance, shutdown)."""
        out = [heapq.heappop(h)[2] for h in self._heaps.values() for _ in range(len(h))]
        self._heaps.clear()
        self._frontier.clear()
        self._held = 0
        return out


def input_caught_up(
    received: int, high: int | None, polled_ms: int | None, shard_polled_ms: Iterable[int | None],
    idle_s: float, align_idle_s: float,
) -> bool:
    """Whether an input partition no longer holds its shard back in the :class:`EventTimeAligner`.

    ``received``: next offset the agent will receive; ``high``: the partition's high
    watermark from its last fetch response, handled at ``polled_ms`` (None: not fetched
    yet); ``shard_polled_ms``: the same time for each input partition of the shard;
    ``idle_s``: wall time since the partition last delivered (or was assigned). Caught up
    means: everything up to the high watermark received, that high watermark no older
    than any sibling's, and idle for ``align_idle_s``. The reasons are at
    :meth:`streams.app.LiveWorker._caught_up`.

    >>> input_caught_up(10, 10, 1_000, [1_000, 900, None], idle_s=2.0, align_idle_s=0.5)
    True
    >>> input_caught_up(10, 10, 900, [1_000, 900, None], idle_s=2.0, align_idle_s=0.5)  # stale
    False
    >>> input_caught_up(10, 10, 1_000, [1_000], idle_s=0.1, align_idle_s=0.5)  # just delivered
    False
    """
    if high is None or polled_ms is None or received < high:
        return False
    if any(t is not None and t > polled_ms for t in shard_polled_ms):
        return False
    return idle_s >= align_idle_s


class ModelRefresher:
    """Hot-swaps a scorer's models from the store at most every ``every_s`` seconds.

    >>> from scoring.state import InMemoryModelStore
    >>> from scoring.kinds import default_kinds
    >>> reg = ModelRegistry(default_kinds())
    >>> r = ModelRefresher(reg, InMemoryModelStore(), every_s=5, clock=lambda: 100.0)
    >>> r.maybe_refresh(), r.maybe_refresh()
    ([], [])
    """

    def __init__(
        self,
        registry: ModelRegistry,
        store: ModelStore,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.store = store
        self.every_s = every_s
        self.clock = clock
        self._last: float | None = None
        self.swaps = 0

    def maybe_refresh(self, force: bool = False) -> list[str]:
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.every_s:
            return []
        self._last = now
        swapped = self.registry.refresh(self.store)
        self.swaps += len(swapped)
        return swapped

    def versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self.registry.models.items()}


class CheckpointStore:
    """Where a learner keeps snapshots and the labels offset they cover (one transaction).

    The default implementation keeps both in memory (unit tests);
    :class:`streams.app.RedisCheckpointStore` writes them to Redis atomically.
    """

    def __init__(self, models: ModelStore | None = None) -> None:
        from scoring.state import InMemoryModelStore

        self.models: ModelStore = models or InMemoryModelStore()
        self._offset: int | None = None

    def load_offset(self) -> int | None:
        return self._offset

    def save(self, registry: ModelRegistry, next_offset: int) -> None:
        registry.save(self.models)
        self._offset = next_offset


class Learner:
    """The one central learner: labels in (in offset order), snapshots out.

    Exactly-once learning over an at-least-once labels topic: every snapshot
    stores the offset of the next label to learn, labels below it are skipped,
    and the Kafka offsets of learned labels are committed only after the
    snapshot that contains them (the caller acks what :meth:`checkpoint`
    returns). When another learner checkpointed meanwhile (the labels
    partition moved and came back), :meth:`learn` first restores its snapshot.

    >>> from scoring.kinds import default_kinds
    >>> ex = Labelled("churn_risk", "c1", "x1", 1, 2, 0.2, 0.3, "model", 1, {"a": 1.0})
    >>> learner = Learner(ModelRegistry(default_kinds()), CheckpointStore(), every_labels=2)
    >>> learner.learn([(0, ex)]), learner.due()
    ([], False)
    >>> _ = learner.learn([(0, ex), (1, ex)])  # offset 0 is a redelivery: skipped
    >>> learner.registry.models["churn_risk"].version, learner.due(), learner.checkpoint()
    (2, True, 2)
    """

    def __init__(
        self,
        registry: ModelRegistry,
        store: CheckpointStore,
        every_labels: int = 500,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = 0.0,
        refit_min_interval_s: float = 0.0,
    ) -> None:
        self.registry = registry
        self.store = store
        self.every_labels = every_labels
        self.every_s = every_s
        self.min_interval_s = min_interval_s
        # A model's scheduled refits (OnlineModel.consolidate) at most this often per kind: in a
        # backlog the schedule comes due every second or so, while scorers take a snapshot
        # every few seconds; a refit put off happens at a later label. 0 = on schedule.
        self.refit_min_interval_s = refit_min_interval_s
        self._last_refit: dict[str, float] = {}
        self.clock = clock
        self.next_offset: int | None = None  # next label offset to learn
        self.snapshot_offset: int | None = None  # what the store holds from us
        self.since_snapshot = 0
        self._last_snapshot = clock()
        self._snapshotted = False  # the interval runs from our last snapshot, not from start-up
        self._restored = False
        self.learned = 0
        self.skipped = 0

    def restore(self) -> list[str]:
        """Load the latest snapshot and the offset it covers (startup, or another learner's)."""
        swapped = self.registry.refresh(self.store.models)
        if self.refit_min_interval_s > 0:  # on the models just restored too
            for model in self.registry.models.values():
                model.refit_gate = self._refit_allowed
        offset = self.store.load_offset()
        self.next_offset = self.snapshot_offset = offset
        self.since_snapshot = 0
        self._restored = True
        return swapped

    def invalidate(self) -> None:
        """Forget unsnapshotted progress: restore from the store before learning again."""
        self._restored = False

    def learn(self, items: Sequence[tuple[int, Labelled]]) -> list[dict[str, Any]]:
        """Learn ``(offset, example)`` pairs in order; returns drift events.

        The examples of one labels record share its offset: learned all, or (a
        redelivery) skipped all.
        """
        if not self._restored or self.store.load_offset() != self.snapshot_offset:
            self.restore()
        start = self.next_offset
        todo = []
        for offset, ex in items:
            if start is not None and offset < start:
                self.skipped += 1
                continue
            todo.append(ex)
            self.next_offset = offset + 1
        drifts = self.registry.learn(todo) if todo else []
        self.learned += len(todo)
        self.since_snapshot += len(todo)
        return drifts

    def _refit_allowed(self, kind: str) -> bool:
        """Whether a kind's refit may run now (then it counts as run).

        >>> now = [0.0]
        >>> learner = Learner(ModelRegistry([]), CheckpointStore(), clock=lambda: now[0],
        ...                   refit_min_interval_s=5.0)
        >>> learner._refit_allowed("k"), learner._refit_allowed("k"), learner._refit_allowed("other")
        (True, False, True)
        >>> now[0] = 5.0; learner._refit_allowed("k")
        True
        """
        now = self.clock()
        last = self._last_refit.get(kind)
        if last is not None and now - last < self.refit_min_interval_s:
            return False
        self._last_refit[kind] = now
        return True

    def due(self) -> bool:
        """A snapshot is due: enough labels (and ``min_interval_s`` since the last), or
        enough time with at least one label.

        A snapshot holds each kind's refit window (megabytes), and scorers fetch a newer one
        only every few seconds: during a backlog, one every 500 labels was several a second,
        most of them never served.

        >>> from scoring.kinds import default_kinds
        >>> now = [0.0]
        >>> learner = Learner(ModelRegistry(default_kinds()), CheckpointStore(), every_labels=2,
        ...                   every_s=30, clock=lambda: now[0], min_interval_s=5)
        >>> ex = Labelled("churn_risk", "c1", "x1", 1, 2, 0.2, 0.3, "model", 1, {"a": 1.0})
        >>> _ = learner.learn([(0, ex), (1, ex)])
        >>> learner.due(), learner.checkpoint()
        (True, 2)
        >>> _ = learner.learn([(2, ex), (3, ex)])
        >>> now[0] = 4.0
        >>> learner.due()  # enough labels, too soon
        False
        >>> now[0] = 5.0
        >>> learner.due()
        True
        """
        if self.since_snapshot <= 0:
            return False
        elapsed = self.clock() - self._last_snapshot
        if elapsed >= self.every_s:
            return True
        return self.since_snapshot >= self.every_labels and (not self._snapshotted or elapsed >= self.min_interval_s)

    def checkpoint(self) -> int | None:
        """Save the snapshot with its offset; returns the offset now covered (None if nothing)."""
        if self.next_offset is None:
            return None
        self.store.save(self.registry, self.next_offset)
        self.snapshot_offset = self.next_offset
        self.since_snapshot = 0
        self._last_snapshot = self.clock()
        self._snapshotted = True
        return self.next_offset

    def versions(self) -> dict[str, int]:
        return {name: m.version for name, m in self.registry.models.items()}


class OrderedAcks(Generic[P]):
    """Acks each partition's messages in offset order.

    Faust commits the first run of consecutive acked offsets, and before a
    partition's first commit it does not check that the run starts where the
    partition does. Acking offset 11 while 10 is still held (by the event-time
    aligner, or a dead letter acked before a held event) could then commit past
    10, and a crash would lose it. So an offset is acked only when every lower
    offset received on its partition is done.

    >>> acks = OrderedAcks()
    >>> for off in (10, 11, 12):
    ...     acks.received(("t", 0), off)
    >>> acks.done(("t", 0), 11, "e11"), acks.done(("t", 0), 10, "e10"), acks.done(("t", 0), 12, "e12")
    ([], ['e10', 'e11'], ['e12'])
    """

    def __init__(self) -> None:
        self._outstanding: dict[Any, list[int]] = {}
        self._known: dict[Any, set[int]] = {}  # the same offsets, for membership
        self._done: dict[Any, dict[int, P]] = {}

    def received(self, tp: Any, offset: int) -> None:
        heapq.heappush(self._outstanding.setdefault(tp, []), offset)
        self._known.setdefault(tp, set()).add(offset)

    def done(self, tp: Any, offset: int, item: P) -> list[P]:
        """Mark one message done; returns the items that may be acked now, in offset order.

        A message received before :meth:`clear` is never acked (Kafka delivers it
        again) and is not kept: Faust waits at a rebalance until its unacked
        messages are acked or gone.

        >>> acks = OrderedAcks()
        >>> acks.received(("t", 0), 5); acks.clear()
        >>> acks.done(("t", 0), 5, "e5"), acks._done
        ([], {})
        """
        known = self._known.get(tp)
        if known is None or offset not in known:
            return []
        done = self._done.setdefault(tp, {})
        done[offset] = item
        heap = self._outstanding[tp]
        out = []
        while heap and heap[0] in done:
            first = heapq.heappop(heap)
            known.discard(first)
            out.append(done.pop(first))
        return out

    def clear(self) -> None:
        """Forget everything (rebalance, shutdown): unacked messages are delivered again."""
        self._outstanding.clear()
        self._known.clear()
        self._done.clear()


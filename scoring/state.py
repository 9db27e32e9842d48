"""Per-customer scoring state and where it is kept.

Each customer has one small, bounded record: per score kind the last
published value and band, when it was last scored, registered and alerted,
when an idle rescore is due, and the pending examples waiting for their
label. A store keeps these records plus a *due index* per shard (the earliest
time something must happen for a customer: a pending label's horizon or an
idle rescore) and the shard's watermark, so a restart loses nothing.

>>> store = InMemoryStateStore()
>>> rec = CustomerScoring()
>>> rec.pending.append(Pending("churn_risk", "e1", 10, 100, {"x": 1.0}, 0.3, "model"))
>>> store.save({"0": ShardSave({"c1": rec}, watermark=5)})
{}
>>> store.save({"0": ShardSave({}, due_until=100)}), store.save({"0": ShardSave({}, due_until=101)})
({'0': []}, {'0': ['c1']})
>>> store.shard_states(["0"])["0"].watermark
5
>>> CustomerScoring.from_json(rec.to_json()) == rec
True
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from features.events import compact
from scoring.rfm import RfmGrader

DUE_LIMIT = 10_000  # customers handed out by one save (ShardSave.due_until)


@dataclass(slots=True)
class Pending:
    """A scored moment waiting for its label (the model input as it was then).

    ``outcome`` turns True when the kind's outcome happens inside ``(t_ms, end_ms]``;
    the label is final at ``end_ms`` (see :class:`scoring.core.ScoringCore`).

    >>> p = Pending("purchase_propensity", "purchase_propensity:c1:10", 10, 10 + 7 * 86_400_000,
    ...             {"orders_total": 0.69}, 0.12, "model", rule_prob=0.2)
    >>> p.outcome, p.end_ms - p.t_ms == 7 * 86_400_000
    (False, True)
    """

    kind: str
    example_id: str
    t_ms: int
    end_ms: int
    x: dict[str, float]
    prob: float
    source: str
    match: str | None = None
    outcome: bool = False
    rule_prob: float = 0.0
    # The id of the event the example was scored at (None for an idle rescore). Records saved
    # before it existed have none.
    event_id: str | None = None
    # This example's JSON while ``outcome`` is what it was encoded with (nothing else
    # changes once registered): a record is saved after every batch that touches its
    # customer, and its examples' model inputs were most of what got encoded again.
    _json: tuple[bool, orjson.Fragment] | None = field(default=None, repr=False, compare=False)

    def fragment(self) -> orjson.Fragment:
        """This example as JSON, encoded once.

        >>> p = Pending("k", "e1", 1, 2, {"a": 1.0}, 0.5, "model")
        >>> orjson.dumps(p.fragment()) == orjson.dumps(p.fragment()) == orjson.dumps(_fields(p))
        True
        """
        cached = self._json
        if cached is None or cached[0] is not self.outcome:
            cached = self._json = (self.outcome, orjson.Fragment(compact(orjson.dumps(_fields(self)))))
        return cached[1]


def _fields(p: Pending) -> dict[str, Any]:
    fields = {
        "kind": p.kind, "example_id": p.example_id, "t_ms": p.t_ms, "end_ms": p.end_ms, "x": p.x,
        "prob": p.prob, "source": p.source, "match": p.match, "outcome": p.outcome, "rule_prob": p.rule_prob,
    }
    if p.event_id is not None:  # an idle rescore's example keeps the layout workers wrote before
        fields["event_id"] = p.event_id
    return fields


@dataclass(slots=True)
class KindState:
    """One customer's state for one score kind: the last published value and band, when it
    was scored, registered an example, alerted and triggered, when an idle rescore is due,
    and recent values (for jumps).

    >>> KindState(value=42.0, band="warm").triggered
    {}
    """

    value: float | None = None
    band: str | None = None
    scored_at: int | None = None
    registered_at: int | None = None
    next_tick: int | None = None
    alerted_at: int | None = None
    triggered: dict[str, int] = field(default_factory=dict)
    history: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True)
class CustomerScoring:
    """One customer's scoring record: a :class:`KindState` per kind, and the pending examples.

    >>> rec = CustomerScoring()
    >>> rec.kind("churn_risk").next_tick = 500
    >>> rec.pending.append(Pending("churn_risk", "e1", 10, 300, {}, 0.3, "model"))
    >>> rec.next_due()  # the earlier of a label's horizon (once past it) and an idle rescore
    301
    """

    kinds: dict[str, KindState] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    # Where the shard's RFM base counts this customer (see scoring.rfm.RfmGrader.key);
    # None until an RFM kind graded it. Saved with the grader: both or neither survive.
    rfm_key: tuple[int, int, int] | None = None
    # The shard (source partition) that last processed the customer: another shard's events
    # for it mean the input is not co-partitioned (see scoring.core.ScoringCore). None in
    # records written before it existed, until their next save.
    shard: str | None = None

    def kind(self, name: str) -> KindState:
        ks = self.kinds.get(name)
        if ks is None:
            ks = self.kinds[name] = KindState()
        return ks

    def next_due(self) -> int | None:
        # An example matures once the watermark is past its end (ScoringCore._due_customers).
        times = [p.end_ms + 1 for p in self.pending]
        times += [k.next_tick for k in self.kinds.values() if k.next_tick is not None]
        return min(times) if times else None

    def to_json(self) -> bytes:
        # orjson serialises dataclasses natively (same JSON as asdict), ~25x faster:
        # asdict deep-copies every pending example's feature dict.
        data: dict[str, Any] = {"kinds": self.kinds, "pending": [p.fragment() for p in self.pending]}
        if self.rfm_key is not None:
            data["rfm_key"] = self.rfm_key
        if self.shard is not None:
            data["shard"] = self.shard
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, blob: bytes | str) -> CustomerScoring:
        data: dict[str, Any] = orjson.loads(blob)
        kinds = {}
        for name, k in data.get("kinds", {}).items():
            k["history"] = [tuple(h) for h in k.get("history", [])]
            kinds[name] = KindState(**k)
        key = data.get("rfm_key")
        return cls(kinds, [Pending(**p) for p in data.get("pending", [])], None if key is None else tuple(key),
                   data.get("shard"))


class ShardState(NamedTuple):
    """What a shard keeps besides its customers: its RFM grader and its watermark (``None``: none yet)."""

    grader: RfmGrader | None
    watermark: int | None


class ShardSave(NamedTuple):
    """What :meth:`StateStore.save` writes for one shard.

    ``records``: the shard's customers' records (their due times go to the shard's
    index); ``watermark`` and ``grader`` when they changed; ``due_until``: after the
    save, hand out the shard's customers due by then (due time, then id; at most
    ``DUE_LIMIT``). The caller saves every customer handed out so, in its next save:
    until then a store may keep them due (Redis does, so a round that fails loses none),
    or lists it in ``drop``: customers taken out of the shard's due index, their records
    not written (another shard owns them now; taken out before ``due_until`` hands out).
    """

    records: dict[str, CustomerScoring]
    watermark: int | None = None
    grader: RfmGrader | None = None
    due_until: int | None = None
    drop: Sequence[str] = ()


class StateStore(Protocol):
    """Where scoring state lives; ``save`` also maintains the due index and watermark.

    A shard also keeps its RFM grader (the counts of its buying customers): saved
    with the batch that changed it, so a restarted or reassigned shard grades on from
    where it was, whichever worker holds it.
    """

    def load(self, customer_ids: Sequence[str]) -> dict[str, CustomerScoring]: ...

    def save(self, shards: dict[str, ShardSave], token: str | None = None) -> dict[str, list[str]]:
        """Save each shard's part; returns the customers handed out per shard that asked
        (``due_until``). On Redis, all of it is one round trip.

        With a ``token`` the save is all or nothing, and :meth:`landed` tells afterwards
        whether it was made: a save that raised (the connection lost) may have been made
        all the same, its reply lost on the way back.
        """
        ...

    def landed(self, token: str) -> bool:
        """Whether the last save given ``token`` was made (see :meth:`save`)."""
        ...

    def shard_states(self, shards: Sequence[str]) -> dict[str, ShardState]:
        """Each shard's grader and watermark (one round trip on Redis)."""
        ...

    def erase(self, customer_id: str) -> None: ...


class InMemoryStateStore:
    """Scoring state in process: live objects, a heap per shard for the due index.

    >>> store = InMemoryStateStore()
    >>> recs = store.load(["c1", "c2"])
    >>> recs["c1"].kind("engagement").next_tick, recs["c2"].kind("engagement").next_tick = 50, 20
    >>> store.save({"0": ShardSave(recs, due_until=60)})  # handed out once
    {'0': ['c2', 'c1']}
    >>> store.save({"0": ShardSave({}, due_until=60)})
    {'0': []}
    """

    def __init__(self) -> None:
        self._records: dict[str, CustomerScoring] = {}
        self._due: dict[str, list[tuple[int, str]]] = {}
        self._due_at: dict[str, tuple[str, int]] = {}
        self._watermarks: dict[str, int] = {}
        self._graders: dict[str, RfmGrader] = {}
        self._landed: str | None = None

    def load(self, customer_ids: Sequence[str]) -> dict[str, CustomerScoring]:
        # A customer not seen yet gets a new record, kept once saved: a read (the API's
        # current scores of an unknown id) adds nothing, as on Redis.
        records = self._records
        return {cid: records.get(cid) or CustomerScoring() for cid in customer_ids}

    def save(self, shards: dict[str, ShardSave], token: str | None = None) -> dict[str, list[str]]:
        handed_out = {}
        for shard, (records, watermark, grader, due_until, drop) in shards.items():
            if grader is not None:
                self._graders[shard] = grader
            for cid in drop:
                found = self._due_at.get(cid)
                if found is not None and found[0] == shard:
                    del self._due_at[cid]
            heap = self._due.setdefault(shard, [])
            for cid, rec in records.items():
                self._records[cid] = rec
                due = rec.next_due()
                if due is None:
                    self._due_at.pop(cid, None)
                elif self._due_at.get(cid) != (shard, due):
                    self._due_at[cid] = (shard, due)
                    heapq.heappush(heap, (due, cid))
            if watermark is not None:
                self._watermarks[shard] = watermark
            if due_until is not None:
                handed_out[shard] = self._take_due(shard, due_until)
        if token is not None:
            self._landed = token
        return handed_out

    def landed(self, token: str) -> bool:
        return token == self._landed

    def _take_due(self, shard: str, until_ms: int) -> list[str]:
        heap = self._due.get(shard, [])
        out: list[str] = []
        while heap and heap[0][0] <= until_ms and len(out) < DUE_LIMIT:
            due, cid = heapq.heappop(heap)
            # Lazy deletion: an entry counts only if it is still the customer's current due time.
            if self._due_at.get(cid) == (shard, due):
                del self._due_at[cid]
                out.append(cid)
        return out

    def shard_states(self, shards: Sequence[str]) -> dict[str, ShardState]:
        return {s: ShardState(self._graders.get(s), self._watermarks.get(s)) for s in shards}

    def erase(self, customer_id: str) -> None:
        self._records.pop(customer_id, None)
        self._due_at.pop(customer_id, None)

    def __len__(self) -> int:
        return len(self._records)


class ModelStore(Protocol):
    """Where model snapshots persist: ``(version, bytes)`` per score kind."""

    def load_model(self, kind: str) -> tuple[int, bytes] | None: ...

    def save_model(self, kind: str, version: int, blob: bytes) -> None: ...

    def model_version(self, kind: str) -> int | None:
        """The stored snapshot's version alone: a scorer checks it before fetching the snapshot."""
        ...


class InMemoryModelStore:
    """Model snapshots in process (the backtest, tests).

    >>> store = InMemoryModelStore()
    >>> store.save_model("churn_risk", 3, b"snapshot")
    >>> store.model_version("churn_risk"), store.load_model("churn_risk"), store.load_model("x")
    (3, (3, b'snapshot'), None)
    """

    def __init__(self) -> None:
        self._models: dict[str, tuple[int, bytes]] = {}

    def load_model(self, kind: str) -> tuple[int, bytes] | None:
        return self._models.get(kind)

    def save_model(self, kind: str, version: int, blob: bytes) -> None:
        self._models[kind] = (version, blob)

    def model_version(self, kind: str) -> int | None:
        found = self._models.get(kind)
        return None if found is None else found[0]

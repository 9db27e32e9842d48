"""Feature stores: where per-customer state lives.

A store applies batches of :class:`Update` idempotently and returns each
touched customer's state *before* the batch, so the caller can replay the
batch with :func:`features.engine.apply_ops` and score at any event inside it.
Two stores share these semantics exactly: :class:`InMemoryFeatureStore`
(backtests, unit tests) and :class:`features.redis_store.RedisFeatureStore`
(production).

Per update, in this order:

1. ``duplicate``: its event id was applied before (a redelivery, however far
   behind the customer's newest event it is); nothing changes.
2. ``late``: its time is older than the customer's newest event minus the
   allowed lateness; nothing changes.
3. ``applied``: operations applied, event id remembered, newest time advanced.

Event ids are remembered while they are inside the lateness window (and all of a
customer's, up to ``FORGET_AFTER``); a redelivery of an event whose id was
forgotten is ``late``, so memory stays bounded and nothing counts twice.

>>> from features.engine import FeatureEngine
>>> from features.events import decode
>>> engine, store = FeatureEngine(), InMemoryFeatureStore(lateness_ms=3_600_000)
>>> ev = decode('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
...             '"type":"web","action":"page_view","session_id":"s1"}')
>>> up = Update.of(ev, engine.ops_for(ev))
>>> store.apply([up, up]).statuses
['applied', 'duplicate']
>>> engine.vector(store.read(["c1"])["c1"], ev.ts_ms)["page_views_24h"]
1.0
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from features.engine import TIME_FIELD, Op, State, apply_ops
from features.events import AnyEvent

# The in-process store forgets a customer's expired event ids only once it holds more than
# this many (apply.lua does the same): a customer of a few events never pays for it.
FORGET_AFTER = 64

APPLIED, DUPLICATE, LATE = "applied", "duplicate", "late"


@dataclass(frozen=True, slots=True)
class Update:
    """One event's effect on one customer: its id, its time and the operations it causes.

    >>> from features.events import decode
    >>> ev = decode('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
    ...             '"type":"web","action":"login"}')
    >>> Update.of(ev, (("a", "logins", 1.0),))
    Update(customer_id='c1', event_id='e1', ts_ms=1709287200000, ops=(('a', 'logins', 1.0),))
    """

    customer_id: str
    event_id: str
    ts_ms: int
    ops: tuple[Op, ...]

    @classmethod
    def of(cls, event: AnyEvent, ops: tuple[Op, ...]) -> Update:
        return cls(event.customer_id, event.event_id, event.ts_ms, ops)


@dataclass(slots=True)
class BatchResult:
    """Per-update status (same order as the batch) and pre-batch state per customer."""

    statuses: list[str]
    before: dict[str, State] = field(default_factory=dict)


class FeatureStore(Protocol):
    """What the scoring core needs from a store; see the module docstring for semantics."""

    def apply(self, updates: Sequence[Update]) -> BatchResult: ...

    def read(self, customer_ids: Sequence[str]) -> dict[str, State]: ...

    def erase(self, customer_id: str) -> int: ...


def apply_update(state: State, up: Update) -> bool:
    """Apply an accepted update to a state in place; whether it moved the customer's clock.

    Every store applies an update this way (the Redis script mirrors it).

    >>> st: State = {}
    >>> apply_update(st, Update("c1", "e1", 5, (("a", "n", 1.0),))), st
    (True, {'n': 1.0, '_t': 5.0})
    """
    newest = state.get(TIME_FIELD)
    apply_ops(state, up.ops)
    if newest is None or up.ts_ms > newest:
        state[TIME_FIELD] = float(up.ts_ms)
        return True
    return False


class InMemoryFeatureStore:
    """The reference store: plain dicts, same semantics as Redis, no TTL.

    >>> store = InMemoryFeatureStore(lateness_ms=1_000)
    >>> one = (("a", "n", 1.0),)
    >>> store.apply([Update("c1", "e1", 10_000, one), Update("c1", "e0", 8_000, one)]).statuses
    ['applied', 'late']
    >>> store.apply([Update("c1", "e2", 9_500, one)]).before  # within lateness: applied
    {'c1': {'n': 1.0, '_t': 10000.0}}
    >>> store.read(["c1", "c2"])
    {'c1': {'n': 2.0, '_t': 10000.0}, 'c2': {}}
    >>> store.erase("c1"), store.erase("c1"), store.read(["c1"])
    (1, 0, {'c1': {}})
    """

    def __init__(self, lateness_ms: int = 3_600_000) -> None:
        self.lateness_ms = lateness_ms
        self._states: dict[str, State] = {}
        self._ids: dict[str, dict[str, int]] = {}
        # A customer's remembered ids as a min-heap of (time, id), kept only while the
        # customer holds more than FORGET_AFTER ids: forgetting then pops the expired ones
        # instead of scanning every id at each event (a burst of 100,000 events within the
        # lateness cost 400 us an event at 40,000 ids, growing with their number).
        self._expiry: dict[str, list[tuple[int, str]]] = {}

    def apply(self, updates: Sequence[Update]) -> BatchResult:
        result = BatchResult([])
        for up in updates:
            cid = up.customer_id
            state = self._states.get(cid)
            if state is None:
                state = self._states[cid] = {}
                self._ids[cid] = {}
            if cid not in result.before:
                result.before[cid] = dict(state)
            result.statuses.append(self._apply_one(state, self._ids[cid], up))
        return result

    def _apply_one(self, state: State, ids: dict[str, int], up: Update) -> str:
        if up.event_id in ids:
            return DUPLICATE
        newest = state.get(TIME_FIELD)
        if newest is not None and up.ts_ms < newest - self.lateness_ms:
            return LATE
        advanced = apply_update(state, up)
        ids[up.event_id] = up.ts_ms
        if len(ids) > FORGET_AFTER:
            heap = self._expiry.get(up.customer_id)
            if heap is None:
                heap = self._expiry[up.customer_id] = [(t, e) for e, t in ids.items()]
                heapq.heapify(heap)
            else:
                heapq.heappush(heap, (up.ts_ms, up.event_id))
            if advanced:
                self._forget_old_ids(up.customer_id, ids, heap, up.ts_ms - self.lateness_ms)
        return APPLIED

    def _forget_old_ids(self, cid: str, ids: dict[str, int], heap: list[tuple[int, str]], horizon: int) -> None:
        while heap and heap[0][0] < horizon:
            del ids[heapq.heappop(heap)[1]]
        if len(ids) <= FORGET_AFTER:
            del self._expiry[cid]  # rebuilt from the ids if they grow past the mark again

    def read(self, customer_ids: Sequence[str]) -> dict[str, State]:
        return {c: dict(self._states.get(c, {})) for c in customer_ids}

    def erase(self, customer_id: str) -> int:
        found = customer_id in self._states
        self._states.pop(customer_id, None)
        self._ids.pop(customer_id, None)
        self._expiry.pop(customer_id, None)
        return int(found)

    def absorb(self, other: InMemoryFeatureStore) -> None:
        """Take in another store's customers (stores that held disjoint customers, such as a
        replay's workers); a customer in both keeps the other's state.

        >>> a, b = InMemoryFeatureStore(), InMemoryFeatureStore()
        >>> _ = b.apply([Update("c2", "e1", 5, (("a", "n", 1.0),))])
        >>> a.absorb(b); a.read(["c2"]), a.remembered_ids("c2")
        ({'c2': {'n': 1.0, '_t': 5.0}}, {'e1'})
        """
        self._states.update(other._states)
        self._ids.update(other._ids)
        for cid in other._ids:  # an expiry heap goes with the ids it was built from
            self._expiry.pop(cid, None)
        self._expiry.update(other._expiry)

    def remembered_ids(self, customer_id: str) -> set[str]:
        """Event ids kept for de-duplication (tests compare this with Redis)."""
        return set(self._ids.get(customer_id, {}))

    def __len__(self) -> int:
        return len(self._states)

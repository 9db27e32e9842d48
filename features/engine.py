"""One engine for every feature: events become state operations, state becomes vectors.

The engine splits feature computation in three pure steps so that every store
shares the same semantics:

1. :meth:`FeatureEngine.ops_for` turns an event into a handful of primitive
   operations (add to a time bucket, keep a max, decay-and-add, ...).
2. :func:`apply_ops` applies operations to a customer's flat state
   (``dict[str, float]``). The in-process store calls it directly; the Redis
   store runs the same primitives in a Lua script (``features/apply.lua``), and
   a shared test suite proves the two agree.
3. :meth:`FeatureEngine.vector` reads the state *as of* an event time.

Everything is event time. Sliding windows are rings of ``buckets + 1`` time
buckets, so state stays bounded and a late event lands in its own bucket when
that bucket is still inside the window.

>>> from features.events import decode
>>> engine = FeatureEngine(default_catalog())
>>> ev = decode('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
...             '"type":"purchase","order_id":"o1","amount":80,"currency":"EUR"}')
>>> state = {}
>>> apply_ops(state, engine.ops_for(ev))
>>> v = engine.vector(state, ev.ts_ms + 2 * DAY_MS)
>>> v["orders_90d"], v["spend_total"], v["days_since_last_purchase"]
(1.0, 80.0, 2.0)
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Mapping
from typing import Any

from features.events import MAX_AMOUNT, AnyEvent, action_of, event_field
from features.spec import (
    ACTIONS,
    DAY_MS,
    DEFAULT_SENSITIVE,
    Catalog,
    DerivedSpec,
    FeatureSpec,
    default_catalog,
    sensitive_word,
)

State = dict[str, float]
# Operations are plain tuples: cheap to build, to JSON-encode for Lua, to compare.
#   ("r", name, slots, bucket_index, amount, mode)   ring bucket; mode 0 = add, 1 = max
#   ("a", field, amount)                            add
#   ("x", field, value) / ("n", field, value)       keep max / keep min
#   ("d", name, ts, amount, half_life_ms)           exponentially decayed sum
#   ("s", base, value, ts, cap)                     distinct value, last seen at ts
Op = tuple[Any, ...]
TIME_FIELD = "_t"  # the customer's newest event time: the clock for lateness

# Keys built for every operation and every read, one shared (interned) string each: formatting
# them anew cost more than the rest of an operation, every state held its own copies, and
# set operations on the keys find a shared string by identity.
_SLOT_KEYS: dict[tuple[str, int], tuple[str, str]] = {}
_DECAYED_KEYS: dict[str, tuple[str, str]] = {}


def slot_keys(name: str, slot: int) -> tuple[str, str]:
    """The fields of one ring slot: its bucket index and its value.

    >>> slot_keys("orders_90d", 3)
    ('orders_90d|3i', 'orders_90d|3v')
    """
    keys = _SLOT_KEYS.get((name, slot))
    if keys is None:
        keys = _SLOT_KEYS[(name, slot)] = (sys.intern(f"{name}|{slot}i"), sys.intern(f"{name}|{slot}v"))
    return keys


def decayed_keys(name: str) -> tuple[str, str]:
    """The fields of a decayed sum: its value and the time it was last updated."""
    keys = _DECAYED_KEYS.get(name)
    if keys is None:
        keys = _DECAYED_KEYS[name] = (sys.intern(f"{name}|v"), sys.intern(f"{name}|t"))
    return keys


def apply_ops(state: State, ops: tuple[Op, ...] | list[Op]) -> None:
    """Apply operations to a flat state in place: the reference semantics.

    >>> s = {}
    >>> apply_ops(s, [("a", "n", 1.0), ("a", "n", 2.0), ("x", "m", 5.0), ("x", "m", 3.0)])
    >>> s
    {'n': 3.0, 'm': 5.0}
    """
    for op in ops:
        code = op[0]
        if code == "r":
            _, name, slots, idx, amount, mode = op
            ikey, vkey = _SLOT_KEYS.get((name, idx % slots)) or slot_keys(name, idx % slots)
            held = state.get(ikey)
            if held is None or idx > held:
                state[ikey] = float(idx)
                state[vkey] = float(amount)
            elif idx == held:
                state[vkey] = max(state[vkey], amount) if mode else state[vkey] + amount
            # idx < held: the slot already serves a newer bucket; the event is out of window.
        elif code == "a":
            state[op[1]] = state.get(op[1], 0.0) + op[2]
        elif code == "x":
            held = state.get(op[1])
            if held is None or op[2] > held:
                state[op[1]] = float(op[2])
        elif code == "n":
            held = state.get(op[1])
            if held is None or op[2] < held:
                state[op[1]] = float(op[2])
        elif code == "d":
            _, name, ts, amount, half_life = op
            vkey, tkey = _DECAYED_KEYS.get(name) or decayed_keys(name)
            last = state.get(tkey)
            if last is None:
                state[vkey], state[tkey] = float(amount), float(ts)
            elif ts >= last:
                state[vkey] = state[vkey] * 2.0 ** (-(ts - last) / half_life) + amount
                state[tkey] = float(ts)
            else:
                state[vkey] = state[vkey] + amount * 2.0 ** (-(last - ts) / half_life)
        elif code == "s":
            _, base, value, ts, cap = op
            key, nkey = f"{base}|d|{value}", f"{base}|n"
            held = state.get(key)
            if held is None:
                state[key] = float(ts)
                state[nkey] = state.get(nkey, 0.0) + 1.0
                if state[nkey] > cap:
                    _evict_oldest(state, f"{base}|d|", nkey)
            elif ts > held:
                state[key] = float(ts)
        else:
            raise ValueError(f"unknown operation {code!r}")


def _evict_oldest(state: State, prefix: str, nkey: str) -> None:
    # Smallest (time, value) goes: deterministic whatever order events came in.
    oldest = min((v, k) for k, v in state.items() if k.startswith(prefix))
    del state[oldest[1]]
    state[nkey] -= 1.0


def _number(value: Any) -> float | None:
    # An extra field a custom feature sums is not validated as an amount is: the same bound
    # keeps its sums finite.
    if isinstance(value, bool) or not isinstance(value, int | float) or not -MAX_AMOUNT <= value <= MAX_AMOUNT:
        return None
    return float(value)


Reader = Callable[[State, int], float | None]
# A sliding window as vector() reads it: (feature, bucket ms, buckets, keeps max?, default).
_Ring = tuple[str, int, int, bool, float | None]


class FeatureEngine:
    """Compiles a :class:`~features.spec.Catalog` into event dispatch and vector readers.

    ``sensitive`` names fields that must never become feature values, matched as words of
    the field's name (``features.spec.sensitive_word``); a spec that reads one is refused.
    """

    def __init__(self, catalog: Catalog | None = None, sensitive: tuple[str, ...] = DEFAULT_SENSITIVE) -> None:
        self.catalog = catalog or default_catalog()
        for spec in self.catalog.features:
            if sensitive_word(spec.field, sensitive):
                raise ValueError(f"{spec.name} reads sensitive attribute {spec.field!r}")
        self._dispatch: dict[tuple[str, str], list[FeatureSpec]] = {}
        self._distinct_caps: dict[str, int] = {}
        for spec in self.catalog.features:
            for etype, actions in spec.selectors():
                types = ("web", "purchase", "campaign") if etype == "any" else (etype,)
                for t in types:
                    for action in actions or sorted(ACTIONS[t]):
                        self._dispatch.setdefault((t, action), []).append(spec)
            if spec.agg == "distinct":
                base = self._distinct_base(spec)
                self._distinct_caps[base] = max(self._distinct_caps.get(base, 0), spec.cap)
        self._readers: list[tuple[str, Reader, float | None]] = []  # (name, read, value when absent)
        self._distinct_specs: dict[str, list[tuple[str, int, int]]] = {}
        for spec in self.catalog.features:
            reader = self._reader(spec)
            if reader is None:
                self._distinct_specs.setdefault(self._distinct_base(spec), []).append(
                    (spec.name, spec.window_ms, spec.cap)
                )
            else:
                self._readers.append((spec.name, reader, reader({}, 0)))
        self._derived = [(d.name, _compile_derived(d)) for d in self.catalog.derived]
        self._reader_by_name = {name: read for name, read, _ in self._readers}
        self._value_plans: dict[tuple[str, ...], Any] = {}
        self._compile_bulk()

    def _compile_bulk(self) -> None:
        """Plain data for :meth:`vector`, which reads every feature in one go.

        The per-feature readers probe every slot of a ring, though a customer's ring
        holds a couple of buckets: 26 rings x 13 slots of probes per vector. In bulk,
        set operations in C find which keys the state holds, and Python touches only those.
        """
        # Every feature's value for an empty state, in the vector's order (derived last).
        self._empty: dict[str, float | None] = {name: empty for name, _, empty in self._readers}
        for specs in self._distinct_specs.values():
            self._empty.update((name, 0.0) for name, _, _ in specs)
        self._empty.update((name, None) for name, _ in self._derived)
        self._plain: list[tuple[str, float | None]] = []
        self._decayed: list[tuple[str, str, str, int]] = []
        # Ring slots in (ring, slot) order, the order the per-feature reader sums them in:
        # rank of the slot's index key, and (ring, index key, value key).
        self._slot_rank: dict[str, int] = {}
        self._slots: list[tuple[_Ring, str, str]] = []
        known = {TIME_FIELD, *(f"{base}|n" for base in self._distinct_specs)}
        for spec in self.catalog.features:
            name = spec.name
            if spec.agg == "distinct":
                continue
            if spec.window:
                n = spec.buckets
                ring = (name, spec.window_ms // n, n, spec.agg == "max", spec.default)
                for s in range(n + 1):
                    ikey, vkey = slot_keys(name, s)
                    self._slot_rank[ikey] = len(self._slots)
                    self._slots.append((ring, ikey, vkey))
                    known.update((ikey, vkey))
            elif spec.agg == "decayed":
                vkey, tkey = decayed_keys(name)
                self._decayed.append((name, vkey, tkey, spec.half_life_ms))
                known.update((vkey, tkey))
            else:
                self._plain.append((name, spec.default))
                known.add(name)
        self._ring_keys = frozenset(self._slot_rank)
        self._distinct_reads = [
            (f"{base}|n", f"{base}|d|", specs) for base, specs in self._distinct_specs.items()
        ]
        # Keys that are never a distinct value: what is left of a state is a handful of values.
        prefixes = tuple(prefix for _, prefix, _ in self._distinct_reads)
        self._known = frozenset(k for k in known if not (prefixes and k.startswith(prefixes)))

    @staticmethod
    def _distinct_base(spec: FeatureSpec) -> str:
        # Windows over the same values share one map: sessions_1h..30d keep one set of ids.
        return f"{spec.source}:{spec.field}"

    def ops_for(self, event: AnyEvent) -> tuple[Op, ...]:
        """The state operations one event causes (empty when no feature cares)."""
        action = action_of(event)
        specs = self._dispatch.get((event.type, action), ())
        ts = event.ts_ms
        ops: list[Op] = []
        seen_bases: set[str] = set()
        for spec in specs:
            agg = spec.agg
            if spec.field and agg != "distinct":
                raw = _number(event_field(event, spec.field))
                if raw is None:
                    continue
                amount = raw * spec.weights.get(action, 1.0)
            else:
                amount = float(spec.weights.get(action, 1.0))
            if agg == "distinct":
                assert spec.field is not None
                value = event_field(event, spec.field)
                base = self._distinct_base(spec)
                if value is None or base in seen_bases:
                    continue
                seen_bases.add(base)
                ops.append(("s", base, str(value)[:100], ts, self._distinct_caps[base]))
            elif spec.window:
                bucket = spec.window_ms // spec.buckets
                mode = 1 if agg == "max" else 0
                ops.append(("r", spec.name, spec.buckets + 1, ts // bucket, amount, mode))
            elif agg in ("count", "sum"):
                ops.append(("a", spec.name, amount))
            elif agg == "max":
                ops.append(("x", spec.name, amount))
            elif agg == "min":
                ops.append(("n", spec.name, amount))
            elif agg == "first_time":
                ops.append(("n", spec.name, float(ts)))
            elif agg == "last_time":
                ops.append(("x", spec.name, float(ts)))
            elif agg == "decayed":
                ops.append(("d", spec.name, ts, amount, spec.half_life_ms))
        return tuple(ops)

    def _reader(self, spec: FeatureSpec) -> Reader | None:
        """A function reading one feature from state; ``None`` for distinct counts (read in bulk)."""
        default = spec.default
        name = spec.name
        if spec.agg == "distinct":
            return None
        if spec.window:
            bucket = spec.window_ms // spec.buckets
            n = spec.buckets
            keys = tuple(slot_keys(name, s) for s in range(n + 1))
            use_max = spec.agg == "max"

            def read_ring(state: State, as_of: int) -> float | None:
                lo = as_of // bucket - n
                hi = lo + n
                get = state.get
                total = 0.0
                best: float | None = None
                for ikey, vkey in keys:
                    idx = get(ikey)
                    if idx is not None and lo < idx <= hi:
                        if use_max:
                            v = state[vkey]
                            best = v if best is None or v > best else best
                        else:
                            total += state[vkey]
                return (best if best is not None else default) if use_max else total

            return read_ring
        if spec.agg == "decayed":
            vkey, tkey = decayed_keys(name)
            half_life = spec.half_life_ms

            def read_decayed(state: State, as_of: int) -> float | None:
                last = state.get(tkey)
                if last is None:
                    return 0.0
                return state[vkey] * 2.0 ** (-max(as_of - last, 0) / half_life)

            return read_decayed

        def read_plain(state: State, as_of: int) -> float | None:
            return state.get(name, default)

        return read_plain

    def read(self, state: Mapping[str, float], name: str, as_of_ms: int) -> float | None:
        """One base feature as of an event time, without computing the vector.

        ``None`` for no value yet, and for a name that is not a base feature of
        the catalogue (derived and distinct features need the vector).

        >>> engine = FeatureEngine(default_catalog())
        >>> engine.read({"orders_total": 2.0}, "orders_total", 0), engine.read({}, "nope", 0)
        (2.0, None)
        """
        read = self._reader_by_name.get(name)
        st = state if isinstance(state, dict) else dict(state)
        return None if read is None else read(st, as_of_ms)

    def vector(self, state: Mapping[str, float], as_of_ms: int) -> dict[str, float | None]:
        """The customer's features as of an event time (``None`` = no value yet).

        The same values as reading each feature with its reader (:meth:`read`).
        ``as_of_ms`` is at or after the newest event the state holds: a state keeps no
        history to undo, so reading it earlier gives today's counts. Point-in-time rows
        come from reading as events are applied, as the scoring core does.
        """
        st = state if isinstance(state, dict) else dict(state)
        get = st.get
        values = self._empty.copy()
        for name, default in self._plain:
            values[name] = get(name, default)
        for name, vkey, tkey, half_life in self._decayed:
            last = get(tkey)
            if last is not None:
                values[name] = st[vkey] * 2.0 ** (-max(as_of_ms - last, 0) / half_life)
        # The frozenset walks the state's keys (a keys view & a frozenset walks the frozenset).
        live = self._ring_keys.intersection(st)
        if live:
            self._read_rings(st, as_of_ms, sorted(map(self._slot_rank.__getitem__, live)), values)
        if self._distinct_specs:
            self._read_distinct(st, as_of_ms, values)
        for name, derive in self._derived:
            values[name] = derive(values, as_of_ms)
        return values

    def values(self, state: Mapping[str, float], as_of_ms: int, names: tuple[str, ...]) -> dict[str, float | None]:
        """Some features as of an event time: for each name, what :meth:`vector` has for it.

        Cheaper than the vector when a few features are all a score needs (the RFM
        grade: recency, frequency, money). Base and derived features; distinct counts
        need the whole vector.

        >>> from features.events import decode, parse_ts_ms
        >>> engine = FeatureEngine(default_catalog())
        >>> st = {}
        >>> apply_ops(st, engine.ops_for(decode('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
        ...     '"type":"purchase","order_id":"o1","amount":80,"currency":"EUR"}')))
        >>> t = parse_ts_ms("2024-03-04T10:00:00Z")
        >>> engine.values(st, t, ("orders_total", "days_since_last_purchase"))
        {'orders_total': 1.0, 'days_since_last_purchase': 3.0}
        """
        plan = self._value_plans.get(names)
        if plan is None:
            plan = self._value_plans[names] = self._plan_values(names)
        reads, derives = plan
        st = state if isinstance(state, dict) else dict(state)
        out: dict[str, float | None] = {name: read(st, as_of_ms) for name, read in reads}
        for name, derive in derives:
            out[name] = derive(out, as_of_ms)
        return {name: out[name] for name in names}

    def _plan_values(self, names: tuple[str, ...]) -> tuple[list[tuple[str, Reader]], list[tuple[str, Any]]]:
        inputs = {d.name: d.inputs for d in self.catalog.derived}
        need: set[str] = set()
        stack = list(names)
        while stack:  # a derived feature needs its inputs, which may be derived too
            name = stack.pop()
            if name in need:
                continue
            need.add(name)
            stack.extend(inputs.get(name, ()))
        unknown = need - set(self._reader_by_name) - set(inputs)
        if unknown:
            raise ValueError(f"values() reads base and derived features only, not {sorted(unknown)}")
        reads = [(name, read) for name, read in self._reader_by_name.items() if name in need]
        # Catalogue order, as vector() derives them.
        return reads, [(name, derive) for name, derive in self._derived if name in need]

    def _read_rings(
        self, st: State, as_of: int, ranks: list[int], values: dict[str, float | None]
    ) -> None:
        # Slots come grouped by ring and in slot order: sums add in the readers' order.
        slots = self._slots
        ring = None
        lo = hi = total = 0.0
        best: float | None = None
        for rank in ranks:
            owner, ikey, vkey = slots[rank]
            if owner is not ring:
                if ring is not None:
                    values[ring[0]] = (best if best is not None else ring[4]) if ring[3] else total
                ring = owner
                # Floats: indices are stored as floats, and float-to-int comparisons are slow.
                hi = float(as_of // ring[1])
                lo = hi - ring[2]
                total, best = 0.0, None
            idx = st[ikey]
            if lo < idx <= hi:
                if ring[3]:
                    v = st[vkey]
                    best = v if best is None or v > best else best
                else:
                    total += st[vkey]
        if ring is not None:
            values[ring[0]] = (best if best is not None else ring[4]) if ring[3] else total

    def _read_distinct(self, st: State, as_of: int, values: dict[str, float | None]) -> None:
        # Values are the keys no feature declares: a C-level set difference finds them all.
        rest: set[str] | None = None
        for nkey, prefix, specs in self._distinct_reads:
            if not st.get(nkey):
                continue  # zeros from the template
            if rest is None:
                # set(st) first: a keys view minus a set walks the (larger) set instead.
                rest = set(st).difference(self._known)
            keys = [k for k in rest if k.startswith(prefix)]
            times = [t for t in (st[k] for k in keys) if t <= as_of]
            for name, window, cap in specs:
                since = as_of - window
                if cap < len(keys):
                    # The map is shared with a feature of a larger cap: this one reads the values
                    # it would keep alone, its cap most recent (apply_ops evicts the smallest
                    # (time, key)).
                    own = heapq.nlargest(cap, [(st[k], k) for k in keys])
                    values[name] = float(len([t for t, _ in own if since < t <= as_of]))
                else:
                    values[name] = float(len([t for t in times if t > since]))


def _compile_derived(d: DerivedSpec) -> Callable[[dict[str, float | None], int], float | None]:
    inputs, default = d.inputs, d.default
    if d.kind == "ratio":
        (num_name, den_name), (prior_num, prior_den) = inputs, d.prior

        def ratio(v: dict[str, float | None], as_of: int) -> float | None:
            den = (v[den_name] or 0.0) + prior_den
            return ((v[num_name] or 0.0) + prior_num) / den if den > 0 else default

        return ratio
    if d.kind == "after":
        a_name, b_name = inputs

        def after(v: dict[str, float | None], as_of: int) -> float | None:
            a, b = v[a_name], v[b_name]
            return 1.0 if a is not None and (b is None or a > b) else 0.0

        return after
    if d.kind == "present":
        (a_name,) = inputs
        return lambda v, as_of: 0.0 if v[a_name] is None else 1.0
    if d.kind == "days_since":
        (a_name,) = inputs

        def days_since(v: dict[str, float | None], as_of: int) -> float | None:
            t = v[a_name]
            return default if t is None else max(as_of - t, 0) / DAY_MS

        return days_since
    if d.kind == "mean_gap":
        first_name, last_name, count_name = inputs

        def mean_gap(v: dict[str, float | None], as_of: int) -> float | None:
            first, last, count = v[first_name], v[last_name], v[count_name] or 0.0
            if first is None or last is None or count < 2:
                return default
            return (last - first) / (count - 1) / DAY_MS

        return mean_gap
    raise ValueError(f"unknown derived kind {d.kind!r}")

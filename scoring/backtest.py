"""Replay history through the scoring core and judge the scores.

Events are replayed in event-time order (a bounded reorder buffer absorbs the
small disorder real exports have), in batches, through the same
:class:`~scoring.core.ScoringCore` the live worker runs. Evaluation is
prequential: each example is scored before its label exists and the model
learns from it only when its horizon closes. Examples whose horizon reaches
past the end of the data are censored (never labelled), not counted as
negatives. Given a :class:`~scoring.parallel.ShardedCore` instead, the same
batches are scored by worker processes, each holding some of the customers.

Beside the online model, every example is also scored by two baselines on the
same point-in-time labels:

- ``rule``: the kind's rule score (RFM / engagement points), what a team with
  no model would use;
- ``batch_weekly``: a scikit-learn logistic regression refitted every week on
  the labels matured so far (the most recent ``batch_max_rows``), what a team
  with a nightly job would run.

With ``change_at_ms`` (a known change: a new offer, a tracking change, a
season), each learned kind also gets ``change``: AUC in the weeks before and
after it, online and batch on the same examples (see :func:`_change`).

>>> import json, tempfile
>>> from scoring.simulator import SimulationConfig, simulate
>>> lines = [json.dumps(e) for e in simulate(SimulationConfig(customers=30, days=20, seed=3))]
>>> report = run_backtest(lines, BacktestConfig())
>>> report["events"] > 0 and report["invalid"] == 0
True
"""

from __future__ import annotations

import csv
import dataclasses
import heapq
import math
import time
import tracemalloc
import zlib
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from threadpoolctl import threadpool_limits

from features.events import AnyEvent, EventError, ms_to_iso, read_jsonl
from features.importer import RepeatBuyers
from features.spec import DAY_MS
from scoring.core import Labelled, Outputs, ScoringCore
from scoring.metrics import Floats, Labels, auc, auc_difference_ci, calibration, log_loss, summarize
from scoring.parallel import ShardedCore

WEEK_MS = 7 * DAY_MS
MAX_ORDER_GAPS = 1_000_000  # gaps between a customer's orders kept for their quartiles
# A span this long without any event is reported (report.json's gaps; a note on the command line).
GAP_NOTE_MS = 30 * DAY_MS


@dataclass
class BacktestConfig:
    batch_size: int = 500
    # A batch also ends when it spans this much event time: on sparse histories 500 events
    # can cover months, and labels would mature (and be learned) that much too late.
    max_batch_span_ms: int = 3_600_000
    reorder_window_ms: int = 3_600_000
    drop_types: tuple[str, ...] = ()  # e.g. ("web", "campaign") for a purchases-only replay
    batch_baseline: bool = True
    batch_retrain_ms: int = WEEK_MS
    batch_max_rows: int = 20_000
    group_by: str | None = None  # an extra field on events (segment, region) for the fairness table
    scores_out: Path | None = None
    # Every customer scored as of the last event (.csv, else JSON Lines): who to act on now.
    customers_out: Path | None = None
    measure_memory: bool = False
    progress: Callable[[int], None] | None = None  # called with lines read so far
    # Called with every matured example, model input included, in the order they mature
    # (scripts/hindsight_bound.py fits models in hindsight on exactly these examples).
    on_labelled: Callable[[Labelled], None] | None = None
    change_at_ms: int | None = None  # a known change (offer, season, tracking): before/after figures
    change_weeks: int = 4
    # Replay only this percent of the customers (all of each one's events; see in_sample).
    sample_pct: int = 100


def in_sample(customer_id: str, pct: int) -> bool:
    """Whether a customer is in a ``pct`` % sample: a hash of the id, the same on every run.

    A customer is in or out with all of their events, so the features, labels and figures
    of the sample are those of a history that holds only these customers. Samples nest:
    the 10% sample is inside the 20% one.

    >>> ids = [f"c{i}" for i in range(10_000)]
    >>> sum(in_sample(c, 10) for c in ids), all(in_sample(c, 20) for c in ids if in_sample(c, 10))
    (992, True)
    """
    return pct >= 100 or zlib.crc32(customer_id.encode()) % 100 < pct


def _note_invalid(examples: dict[str, list[int]], reason: str, line: int, most: int = 50) -> None:
    """Count a full invalid reason with its first line (at most ``most`` distinct reasons kept).

    >>> seen: dict[str, list[int]] = {}
    >>> for n, r in enumerate(["a", "b", "a"], start=1):
    ...     _note_invalid(seen, r, n)
    >>> seen
    {'a': [2, 1], 'b': [1, 2]}
    """
    found = examples.get(reason)
    if found is not None:
        found[0] += 1
    elif len(examples) < most:
        examples[reason] = [1, line]


def _reordered(events: Iterator[AnyEvent], window_ms: int, counts: Counter[str]) -> Iterator[AnyEvent]:
    """Yield events in time order, holding at most ``window_ms`` of disorder.

    An event older than one already released is beyond that: it still goes through
    (the core judges lateness per customer) and counts as ``out_of_order``.
    """
    heap: list[tuple[int, int, AnyEvent]] = []
    newest = released = None

    def release() -> AnyEvent:
        nonlocal released
        out = heapq.heappop(heap)[2]
        if released is not None and out.ts_ms < released:
            counts["out_of_order"] += 1
        released = out.ts_ms if released is None else max(released, out.ts_ms)
        return out

    for seq, ev in enumerate(events):
        heapq.heappush(heap, (ev.ts_ms, seq, ev))
        newest = ev.ts_ms if newest is None else max(newest, ev.ts_ms)
        while heap and heap[0][0] < newest - window_ms:
            yield release()
    while heap:
        yield release()


class BatchBaseline:
    """A logistic regression refitted weekly on matured labels, scored point in time.

    Rows are kept dense (a column per input name, in order of first sight) in
    a rolling buffer of the most recent ``max_rows`` labels, so memory stays
    bounded however long the history.
    """

    def __init__(self, retrain_ms: int, max_rows: int, frozen_at_ms: int | None = None) -> None:
        self.retrain_ms = retrain_ms
        self.max_rows = max_rows
        # With a known change: the last fit before it, kept to score the examples after it, as
        # a model that stopped learning at the change would (see :meth:`observe`).
        self.frozen_at_ms = frozen_at_ms
        self._frozen: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = None
        self.columns: dict[str, int] = {}
        # The rolling rows, dense: row i is (ends[i], values[i], labels[i]), oldest first;
        # a column per input name, 0.0 where a row lacks it.
        self.values = np.zeros((0, 0))
        self.ends = np.zeros(0, dtype=np.int64)
        self.labels = np.zeros(0, dtype=np.int8)
        self.size = 0
        # (boundary, (mean, scale, coef, intercept) or None), ascending by boundary
        self.fits: list[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray, float] | None]] = []
        self.fitted_until = -1
        self._warm: Any = None
        self._at: dict[tuple[str, ...], np.ndarray] = {}  # column indices per key order (_dense)

    def _dense(self, x: dict[str, float]) -> np.ndarray:
        """Write ``x`` into the next free row (not yet counted in ``size``) and return it."""
        columns = self.columns
        for k in x:
            if k not in columns:
                columns[k] = len(columns)
        capacity, width = self.values.shape
        if self.size >= capacity or len(columns) > width:
            # Doubling; the buffer never holds more than 1.2 x max_rows + 1 (observe trims).
            grown = np.zeros((max(2 * capacity, 1024) if self.size >= capacity else capacity,
                              max(len(columns) + 8, width)))
            grown[: self.size, :width] = self.values[: self.size]
            ends = np.zeros(len(grown), dtype=np.int64)
            labels = np.zeros(len(grown), dtype=np.int8)
            ends[: self.size], labels[: self.size] = self.ends[: self.size], self.labels[: self.size]
            self.values, self.ends, self.labels = grown, ends, labels
        row = self.values[self.size]
        row[:] = 0.0
        # Inputs come from one template, so a few key orders recur: one index array each.
        keys = tuple(x)
        at = self._at.get(keys)
        if at is None:
            if len(self._at) >= 256:
                self._at.clear()
            at = self._at[keys] = np.fromiter(map(columns.__getitem__, keys), dtype=np.intp, count=len(keys))
        row[at] = np.fromiter(x.values(), dtype=np.float64, count=len(keys))
        return row

    def _fit(self, boundary: int) -> None:
        from sklearn.linear_model import LogisticRegression

        # The rolling buffer holds up to 1.2x max_rows (it trims in steps): train on max_rows,
        # the same window as the online model's refits.
        train = np.flatnonzero(self.ends[: self.size] <= boundary)[-self.max_rows :]
        labels = self.labels[train].astype(np.int64)
        fit = None
        if len(train) >= 50 and 0 < labels.sum() < len(labels):
            m = self.values[train, : len(self.columns)]
            mean, scale = m.mean(axis=0), m.std(axis=0)
            scale[scale == 0] = 1.0
            # Warm start from last week's fit: a nightly job would do the same, and it is 5x faster.
            # Newton steps (Cholesky) for a few dozen inputs: 3 iterations to the optimum, where
            # lbfgs took a median of 37 and stopped up to 0.3 from it in a weight (8.7x slower).
            if self._warm is None or self._warm.coef_.shape[1] != m.shape[1]:
                self._warm = LogisticRegression(
                    max_iter=200, C=1.0, warm_start=True, solver="newton-cholesky"
                )
            model = self._warm
            model.fit((m - mean) / scale, labels)
            fit = (mean, scale, model.coef_[0].copy(), float(model.intercept_[0]))
        self.fits.append((boundary, fit))
        if self.frozen_at_ms is not None and boundary <= self.frozen_at_ms and fit is not None:
            self._frozen = fit

    def observe(self, ex: Labelled) -> tuple[float | None, float | None]:
        """Score ``ex`` with the model of the last weekly fit before it, then keep it for training.

        Returns that probability and, for an example scored after the known change,
        the probability of the fit frozen at the change (else None for each).
        """
        row = self._dense(ex.x)
        boundary = (ex.end_ms // self.retrain_ms) * self.retrain_ms
        if boundary > self.fitted_until:
            self._fit(boundary)
            self.fitted_until = boundary
        prob = None
        for b, fit in reversed(self.fits):
            if b <= ex.t_ms:
                prob = _fitted_probability(fit, row)
                break
        frozen = None
        if self.frozen_at_ms is not None and ex.t_ms >= self.frozen_at_ms:
            frozen = _fitted_probability(self._frozen, row)
        self.ends[self.size], self.labels[self.size] = ex.end_ms, ex.label
        self.size += 1
        if self.size > self.max_rows * 1.2:
            keep = slice(self.size - self.max_rows, self.size)
            n = self.max_rows
            self.values[:n], self.ends[:n], self.labels[:n] = (
                self.values[keep].copy(), self.ends[keep].copy(), self.labels[keep].copy()
            )
            self.size = n
        # Old fits serve only examples scored before them; examples mature in time order.
        while len(self.fits) > 2 and self.fits[1][0] <= ex.t_ms - 400 * DAY_MS:
            self.fits.pop(0)
        return prob, frozen


def _fitted_probability(
    fit: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None, row: np.ndarray
) -> float | None:
    """A weekly fit's probability for one dense row (None: no fit yet).

    >>> one = (np.zeros(1), np.ones(1), np.array([2.0]), 0.0)
    >>> round(_fitted_probability(one, np.array([1.0, 5.0])), 4), _fitted_probability(None, np.zeros(1))
    (0.8808, None)
    """
    if fit is None:
        return None
    mean, scale, coef, intercept = fit
    n = len(coef)  # rows grow as new inputs appear; the fit knows the first n
    z = float(((row[:n] - mean) / scale) @ coef) + intercept
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


@dataclass
class _KindLog:
    # Typed arrays, not lists of float and int objects: a long history has millions of
    # labels, and a list holds each figure as a 24-32 byte object beside its pointer.
    probs: array[float] = field(default_factory=lambda: array("d"))
    rule: array[float] = field(default_factory=lambda: array("d"))
    batch: array[float] = field(default_factory=lambda: array("d"))  # nan where the batch model had no fit yet
    frozen: array[float] = field(default_factory=lambda: array("d"))  # after a known change: the fit frozen at it, else nan
    labels: array[int] = field(default_factory=lambda: array("b"))
    times: array[int] = field(default_factory=lambda: array("q"))  # when each example was scored
    moments: list[str] = field(default_factory=list)  # event or idle (Labelled.moment)
    groups: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # model, cold_start or rule, per example
    customers: list[str] = field(default_factory=list)  # for intervals that resample customers
    # With a known change: the model inputs of the examples scored in the weeks after it, by
    # index into the lists above (for the hindsight fit; bounded by those weeks' labels).
    after_change_x: dict[int, dict[str, float]] = field(default_factory=dict)


def _week_iso(week: int) -> str:
    return datetime.fromtimestamp(week * WEEK_MS / 1000, tz=UTC).date().isoformat()


def run_backtest(
    lines: Iterable[bytes | str], config: BacktestConfig, core: ScoringCore | ShardedCore | None = None
) -> dict[str, Any]:
    """Replay JSON Lines through a core and return the report (see module docs).

    Bad lines are counted, never raised; a redelivered event (same id) counts once.

    >>> order = ('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
    ...          '"type":"purchase","order_id":"o1","amount":80,"currency":"EUR"}')
    >>> report = run_backtest([order, order, "not json"], BacktestConfig(batch_baseline=False))
    >>> report["events"], report["duplicates"], report["invalid_reasons"], report["scored"]
    (2, 1, {'invalid JSON': 1}, 4)
    """
    # The refits are small (at most tens of thousands of rows): BLAS threads cost more than they
    # give, and on a shared 2-core machine their spin-waits made whole replays 3-4x slower.
    if isinstance(lines, str | bytes):  # a path or one line: iterated, it is one character a line
        raise TypeError("run_backtest takes lines (an open file, a list), not one string: open(path, 'rb') it first")
    with threadpool_limits(limits=1):
        return _run_backtest(lines, config, core)


def _run_backtest(
    lines: Iterable[bytes | str], config: BacktestConfig, core: ScoringCore | ShardedCore | None
) -> dict[str, Any]:
    core = core or ScoringCore.in_memory(lateness_ms=config.reorder_window_ms)
    sharded = core if isinstance(core, ShardedCore) else None
    # The core that scores (or, sharded, the one merged from the workers at the end).
    scoring = core if isinstance(core, ScoringCore) else None
    # The report counts score changes; nobody reads their reasons here (restored below).
    explained, core.explain = core.explain, False
    if config.measure_memory:
        tracemalloc.start()
    started = time.perf_counter()
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seen_customers: dict[str, None] = {}  # in order of first event (for customers_out)
    currencies: Counter[str] = Counter()  # purchases by currency: amounts are summed as given
    buyers = RepeatBuyers()  # none repeating usually means an order-level customer column
    # Time from a customer's order to its next: set against a churn horizon (report.json's
    # order_gap_days; the first MAX_ORDER_GAPS gaps of the file, which comes in time order).
    last_order: dict[str, tuple[int, str]] = {}
    order_gaps: list[int] = []
    examples: dict[str, list[int]] = {}  # full reason -> [count, first line]
    logs: dict[str, _KindLog] = defaultdict(_KindLog)
    baselines: dict[str, BatchBaseline] = {}
    groups: dict[str, str] = {}
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    fired: Counter[str] = Counter()  # triggers by rule
    bands_per_week: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    drifts: list[dict[str, Any]] = []
    first_ts: int | None = None
    last_ts: int | None = None
    # Closed in the finally below; a with-block would have to wrap the whole replay.
    scores_out: IO[bytes] | None = open(config.scores_out, "wb") if config.scores_out else None  # noqa: SIM115

    sampling = config.sample_pct < 100

    def valid_events() -> Iterator[AnyEvent]:
        for number, item in read_jsonl(lines):
            counts["lines"] += 1
            if config.progress and number % 10_000 == 0:
                config.progress(number)
            if isinstance(item, EventError):
                counts["invalid"] += 1
                reasons[item.reason.split(":")[0]] += 1
                _note_invalid(examples, item.reason, number)
                continue
            if item.type in config.drop_types:
                counts["dropped_by_type"] += 1
                continue
            if sampling and not in_sample(item.customer_id, config.sample_pct):
                counts["sampled_out"] += 1
                continue
            if config.customers_out:
                seen_customers[item.customer_id] = None
            if item.type == "purchase":
                currencies[item.currency] += 1
                if item.status == "completed":
                    buyers.add(item.customer_id, item.order_id)
                    last = last_order.get(item.customer_id)
                    if last is None or last[1] != item.order_id:
                        if last is not None and item.ts_ms > last[0] and len(order_gaps) < MAX_ORDER_GAPS:
                            order_gaps.append(item.ts_ms - last[0])
                        last_order[item.customer_id] = (item.ts_ms, item.order_id)
            if config.group_by:
                value = item.extra(config.group_by)
                if value is not None:
                    groups[item.customer_id] = str(value)
            yield item

    def collect(out: Outputs) -> None:
        counts.update(out.counts)
        for rec in out.scores:
            day = rec["ts"][:10]
            per_day[day]["scores"] += 1
            week = rec["ts"][:10]
            bands_per_week[rec["kind"]][week][rec["band"]] += 1
        for rec in out.alerts:
            per_day[rec["ts"][:10]]["alerts"] += 1
        for rec in out.triggers:
            per_day[rec["ts"][:10]]["triggers"] += 1
            fired[rec["trigger"]] += 1
        drifts.extend(out.drifts)
        for ex in out.labelled:
            if config.on_labelled:
                config.on_labelled(ex)
            log = logs[ex.kind]
            log.probs.append(ex.prob)
            log.rule.append(ex.rule_prob)
            log.labels.append(ex.label)
            log.times.append(ex.t_ms)
            log.moments.append(ex.moment)
            log.sources.append(ex.source)
            log.customers.append(ex.customer_id)
            log.groups.append(groups.get(ex.customer_id, "unknown"))
            batch_p = frozen_p = None
            if config.batch_baseline:
                base = baselines.setdefault(
                    ex.kind,
                    BatchBaseline(config.batch_retrain_ms, config.batch_max_rows, config.change_at_ms),
                )
                batch_p, frozen_p = base.observe(ex)
            log.batch.append(math.nan if batch_p is None else batch_p)
            log.frozen.append(math.nan if frozen_p is None else frozen_p)
            at = config.change_at_ms
            if at is not None and at <= ex.t_ms < at + config.change_weeks * WEEK_MS and ex.x is not None:
                log.after_change_x[len(log.probs) - 1] = ex.x
            if scores_out:
                rec = ex.record()
                rec["batch_probability"] = None if batch_p is None else round(batch_p, 6)
                if config.change_at_ms is not None:
                    rec["frozen_probability"] = None if frozen_p is None else round(frozen_p, 6)
                scores_out.write(orjson.dumps(rec) + b"\n")

    def run(events: list[AnyEvent]) -> None:
        if sharded is None:
            assert scoring is not None
            collect(scoring.process(events))
            return
        done = sharded.submit(events)  # the workers score it while this process reads on
        if done is not None:
            collect(done)

    batch: list[AnyEvent] = []
    # The history's shape, for notes: spans without any event (a business that paused or
    # stopped; one late line after months), and events at the very instant of an earlier
    # event of the same customer (dates without a time: an outcome then never follows its score).
    gaps: list[tuple[int, int, int]] = []  # (last time before, first time after, events before)
    replayed = same_instant = 0
    instant: int | None = None
    at_instant: dict[str, str | None] = {}  # customer -> order id of its first event at the instant
    try:
        for ev in _reordered(valid_events(), config.reorder_window_ms, counts):
            ts = ev.ts_ms
            first_ts = ts if first_ts is None else first_ts
            if last_ts is not None and ts - last_ts >= GAP_NOTE_MS:
                gaps.append((last_ts, ts, replayed))
            last_ts = ts
            order = ev.order_id if ev.type == "purchase" else None
            if ts != instant:
                instant, at_instant = ts, {ev.customer_id: order}
            elif ev.customer_id in at_instant:
                # One order's purchase and refund (an import splits a part-refunded order) are
                # one thing at one instant, not two events whose order is unknown.
                if order is None or at_instant[ev.customer_id] != order:
                    same_instant += 1
            else:
                at_instant[ev.customer_id] = order
            replayed += 1
            if batch and ev.ts_ms - batch[0].ts_ms > config.max_batch_span_ms:
                run(batch)
                batch = []
            batch.append(ev)
            if len(batch) >= config.batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
        if sharded is not None:
            collect(sharded.finish())
            scoring = sharded.merged()
    finally:
        core.explain = explained
        if sharded is not None:
            sharded.close()
        if scores_out:
            scores_out.close()
    seconds = time.perf_counter() - started
    assert scoring is not None  # sharded: merged from the workers above
    customers_written = None
    if config.customers_out and last_ts is not None:
        customers_written = write_customer_scores(scoring, list(seen_customers), last_ts, config.customers_out)
    peak = None
    if config.measure_memory:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    kinds_report = {}
    for name, log in sorted(logs.items()):
        kinds_report[name] = _kind_report(log, config)
    processed = counts["events"]
    report: dict[str, Any] = {
        "lines": counts["lines"],
        "events": processed,
        "invalid": counts["invalid"],
        "invalid_reasons": dict(reasons.most_common()),
        # The reasons in full (they carry field names, never values), most frequent first.
        "invalid_examples": [
            {"reason": r, "count": c, "first_line": line}
            for r, (c, line) in sorted(examples.items(), key=lambda kv: (-kv[1][0], kv[1][1]))[:10]
        ],
        "duplicates": counts["duplicates"],
        "late": counts["late"],
        # Beyond the reorder window: the file was not in time order (the CLI sorts it first).
        "out_of_order": counts["out_of_order"],
        "dropped_by_type": counts["dropped_by_type"],
        # A sample of the customers (backtest --sample): the events of the others, left out.
        **({"sample_pct": config.sample_pct, "sampled_out": counts["sampled_out"]} if sampling else {}),
        "purchase_currencies": dict(currencies.most_common()),
        "buyers": buyers.buyers,
        "repeat_buyers": buyers.repeats,
        "order_gap_days": _gap_days(order_gaps),
        **({"customers_out": {"path": str(config.customers_out), "customers": customers_written,
                              "as_of": ms_to_iso(last_ts)}}
           if customers_written is not None and last_ts is not None else {}),
        "seconds": round(seconds, 3),
        "events_per_second": round(processed / seconds, 1) if seconds > 0 else None,
        # On sparse histories the work is in labels (idle customers rescored on schedule),
        # not events: this rate says what a longer history of the same shape will take.
        "labels_per_second": (
            round(sum(len(log.labels) for log in logs.values()) / seconds, 1) if seconds > 0 else None
        ),
        # In milliseconds, as ms_to_iso writes every published time (not datetime's microseconds).
        "first_event": None if first_ts is None else ms_to_iso(first_ts),
        "last_event": None if last_ts is None else ms_to_iso(last_ts),
        # Spans of GAP_NOTE_MS or more without an event, and what came after each.
        "gaps": [{"from": ms_to_iso(a), "to": ms_to_iso(b), "days": round((b - a) / DAY_MS, 1),
                  "events_after": replayed - before} for a, b, before in gaps],
        # Events at the same instant as an earlier one of the same customer (redelivered lines aside).
        "same_instant_events": max(0, same_instant - counts["duplicates"]),
        "scored": counts["scored"],
        "idle_rescores": counts["idle_rescores"],
        "scores_published": sum(c["scores"] for c in per_day.values()),
        "alerts": sum(c["alerts"] for c in per_day.values()),
        "triggers": sum(c["triggers"] for c in per_day.values()),
        # Per rule, every rule of the policy listed (0: it never fired on this history).
        "triggers_by_rule": {rule.name: fired[rule.name] for rule in core.policy.triggers},
        "drifts": drifts,
        "kinds": kinds_report,
        # Each learned kind's model at the end of the replay: what it weighs on this history.
        "models": {name: model.summary() for name, model in scoring.registry.models.items()},
        "per_day": {d: dict(c) for d, c in sorted(per_day.items())},
        "bands_per_week": {
            # Bands sorted: counted in the order scored, which sharding (--workers) changes.
            # Kinds in the configuration's order, not in the order of their first scores.
            k.name: [{"week": w, **dict(sorted(c.items()))} for w, c in sorted(_by_week(bands_per_week[k.name]).items())]
            for k in core.kinds if k.name in bands_per_week
        },
        "peak_memory_bytes": peak,
        "config": {
            "batch_size": config.batch_size,
            "max_batch_span_ms": config.max_batch_span_ms,
            # Processes the replay ran on (scoring.parallel); None: the plain replay.
            "workers": sharded.workers if sharded is not None else None,
            "reorder_window_ms": config.reorder_window_ms,
            "drop_types": list(config.drop_types),
            "group_by": config.group_by,
            "kinds": [k.name for k in core.kinds],
            "tick_growth": {k.name: float(k.tick_growth) for k in core.kinds if k.tick_ms},
            # What produced the report: each kind's settings and the policy, as the config gave them.
            "kind_settings": {k.name: dataclasses.asdict(k) for k in core.kinds},
            "policy": {key: value for key, value in dataclasses.asdict(core.policy).items() if key != "control_salt"},
        },
    }
    return report


def write_customer_scores(core: ScoringCore, customer_ids: Sequence[str], as_of_ms: int, path: Path) -> int:
    """Score every customer as of one moment (the end of a replay) into a file; returns how many.

    ``.csv`` gives a column per kind and figure (value, band, source; probability and
    reasons for learned kinds; segment and R-F-M grades for RFM), empty where a kind
    does not apply; any other suffix gives JSON Lines, one object per customer.
    Scoring changes nothing (:meth:`ScoringCore.scores_now`).
    """
    # The days since the customer's last event and last completed purchase: why a kind is
    # the rule's (a learned kind past LONG_SILENT_DAYS of silence: source long_silent) or
    # empty (churn risk once the last purchase is past its window, a refund after it or not).
    fields = ["customer_id", "as_of", "days_silent", "days_since_purchase"]
    for kind in core.kinds:
        if kind.only_on:
            continue  # scored only at its events (a campaign send): see scores_now
        fields += [f"{kind.name}_{f}" for f in ("value", "band", "source")]
        if kind.learned:
            fields += [f"{kind.name}_probability", f"{kind.name}_reasons"]
        if kind.type == "rfm":
            fields += [f"{kind.name}_segment", f"{kind.name}_rfm"]
    as_of = ms_to_iso(as_of_ms)  # milliseconds, as every published time
    as_csv = path.suffix.lower() == ".csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    # RFM grades against the base's counts as they are at the end, not ranks up to 1% of the
    # base's moves old (the stream's shortcut): the file's grades are the base's own quintiles.
    with open(path, "w", newline="", encoding="utf-8") as handle, core.rfm.exact():
        # Extra keys (a rule kind's probability and reasons) are not columns: ignored.
        writer = csv.DictWriter(handle, fields, extrasaction="ignore") if as_csv else None
        if writer:
            writer.writeheader()
        for start in range(0, len(customer_ids), 1000):
            chunk = customer_ids[start:start + 1000]
            states = core.features.read(chunk)
            for cid in chunk:
                vector = core.engine.vector(states[cid], as_of_ms)
                scores = core.scores_now(vector, as_of_ms)
                days = {name: None if v is None else round(v, 1) for name, v in (
                    ("days_silent", vector.get("days_since_last_event")),
                    ("days_since_purchase", vector.get("days_since_last_purchase")))}
                if writer is None:
                    handle.write(orjson.dumps({"customer_id": cid, "as_of": as_of, **days,
                                               "scores": scores}).decode() + "\n")
                    continue
                row: dict[str, Any] = {"customer_id": _sheet_safe(cid), "as_of": as_of, **days}
                for name, sc in scores.items():
                    row.update({f"{name}_{f}": sc[f] for f in ("value", "band", "source")})
                    row[f"{name}_probability"] = sc["probability"]
                    row[f"{name}_reasons"] = "; ".join(f"{r['feature']} {r['contribution']:+.3f}" for r in sc["reasons"])
                    row.update({f"{name}_{f}": sc[f] for f in ("segment", "rfm") if f in sc})
                writer.writerow(row)
    return len(customer_ids)


def _gap_days(gaps: list[int]) -> dict[str, Any] | None:
    """Quartiles of the days between a customer's consecutive orders (``None`` without any).

    >>> _gap_days([d * DAY_MS for d in (10, 20, 30, 40, 50)])
    {'gaps': 5, 'p25': 20.0, 'median': 30.0, 'p75': 40.0}
    """
    if not gaps:
        return None
    p25, median, p75 = np.percentile(np.asarray(gaps, dtype=float) / DAY_MS, [25, 50, 75])
    return {"gaps": len(gaps), "p25": round(float(p25), 1), "median": round(float(median), 1),
            "p75": round(float(p75), 1)}


def _sheet_safe(text: str) -> str:
    """A cell a spreadsheet shows as text: one that starts like a formula gets a leading quote.

    Customer ids come from the user's systems, and a CSV is opened in spreadsheets.

    >>> _sheet_safe("c-42"), _sheet_safe("=HYPERLINK(1)"), _sheet_safe("-7")
    ('c-42', "'=HYPERLINK(1)", '-7')
    """
    return "'" + text if text[:1] in ("=", "+", "@", "\t", "\r") else text


def _by_week(days: dict[str, Counter[str]]) -> dict[str, Counter[str]]:
    weeks: dict[str, Counter[str]] = defaultdict(Counter)
    for day, c in days.items():
        ms = int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)
        weeks[_week_iso(ms // WEEK_MS)].update(c)
    return weeks


def _kind_report(log: _KindLog, config: BacktestConfig) -> dict[str, Any]:
    # Numpy arrays and masks, not lists picked index by index: CDNOW's 890,643 propensity
    # labels took 150 MB more while the lists stood (the replay's own peak is below that).
    probs, rule, labels = _floats(log.probs), _floats(log.rule), np.asarray(log.labels, dtype=np.int64)
    customers = _sorted_codes(log.customers)
    out: dict[str, Any] = dict(summarize(probs, labels))
    out["sources"] = dict(Counter(log.sources))
    # Pooled over the whole replay, ``auc`` mixes cold-start rule scores (another scale) with
    # model scores; the model's own figures are the ones a team sees once it is warm.
    model = np.fromiter((source == "model" for source in log.sources), dtype=bool, count=len(log.sources))
    if model.any() and not model.all():
        out["model_only"] = {
            key: value for key, value in summarize(probs[model], labels[model]).items() if key != "decile_rates"
        }
        # The rule on the same examples: the pooled comparison mixes the cold-start stretch in.
        rule_there = auc(rule[model], labels[model])
        out["model_only"]["rule_auc"] = None if rule_there is None else round(rule_there, 6)
    out["calibration"] = calibration(probs, labels)
    out["gains"] = _gains(probs, labels)
    baselines: dict[str, Any] = {"rule": summarize(rule, labels)}
    baselines["rule"]["gains"] = _gains(rule, labels)
    # Whether the online model's lead (or lag) is more than noise: 95% bootstrap interval of
    # online minus baseline AUC on the same examples, resampling whole customers.
    baselines["rule"]["online_minus_rule_ci95"] = _interval(auc_difference_ci(probs, rule, labels, customers))
    rule_auc = baselines["rule"].get("auc")
    if rule_auc is not None and rule_auc < 0.5:
        # Backwards or merely useless: the rule against a constant (AUC 0.5 in every draw).
        baselines["rule"]["rule_minus_chance_ci95"] = _interval(
            auc_difference_ci(rule, np.full(len(rule), 0.5), labels, customers))
    batch = _floats(log.batch)
    has_batch = ~np.isnan(batch)
    if config.batch_baseline and has_batch.any():
        y = labels[has_batch]
        b = summarize(batch[has_batch], y)
        # On the same examples, for a fair comparison (the batch model needs a first week of labels).
        online = probs[has_batch]
        online_same = summarize(online, y)
        b["online_on_same_examples"] = {k: online_same[k] for k in ("auc", "top_bottom_decile_ratio", "lift_top_decile")}
        b["online_minus_batch_ci95"] = _interval(
            auc_difference_ci(online, batch[has_batch], y, customers[has_batch])
        )
        b["coverage"] = round(float(has_batch.mean()), 4)
        b["gains"] = _gains(batch[has_batch], y)
        baselines["batch_weekly"] = b
    out["baselines"] = baselines
    weekly = []
    weeks = np.asarray(log.times, dtype=np.int64) // WEEK_MS
    for w in sorted(set(weeks.tolist())):
        week = weeks == w
        y = labels[week]
        row = {
            "week": _week_iso(w),
            "labels": int(week.sum()),
            "positives": int(y.sum()),
            "auc": _r(auc(probs[week], y)),
            "rule_auc": _r(auc(rule[week], y)),
            "log_loss": _r(log_loss(probs[week], y)),
            "rule_log_loss": _r(log_loss(rule[week], y)),
        }
        both = week & has_batch
        row["batch_auc"] = _r(auc(batch[both], labels[both])) if both.any() else None
        row["batch_log_loss"] = _r(log_loss(batch[both], labels[both])) if both.any() else None
        weekly.append(row)
    out["weekly"] = weekly
    if "idle" in log.moments:
        out["by_moment"] = _by_moment(log, probs, labels, batch)
    if config.change_at_ms is not None:
        out["change"] = _change(log, config.change_at_ms, config.change_weeks)
    if config.group_by:
        out["fairness"] = _fairness(log)
    return out


def _floats(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _sorted_codes(values: Sequence[str]) -> np.ndarray:
    """Each value's rank among the distinct values, in sorted order: the codes ``np.unique``
    gives strings, without an array of fixed-width strings (a million ids: tens of MB).

    >>> _sorted_codes(["c2", "c10", "c2", "a"]).tolist()
    [2, 1, 2, 0]
    """
    rank = {v: i for i, v in enumerate(sorted(set(values)))}
    return np.fromiter(map(rank.__getitem__, values), dtype=np.int64, count=len(values))


def _interval(ci: tuple[float, float] | None) -> list[float | None] | None:
    return None if ci is None else [_r(v) for v in ci]


def _by_moment(log: _KindLog, probs: np.ndarray, labels: np.ndarray, batch: np.ndarray) -> dict[str, Any]:
    """The figures apart for examples scored at an event and at an idle rescore.

    The two are different populations: right after a purchase most customers are
    far from churning; weeks into a silence most are. A decile ratio over both
    mixes them, so each is reported on its own too, with the online model and the
    batch LR on the examples both scored.
    """
    out: dict[str, Any] = {}
    for moment in ("event", "idle"):
        at = np.fromiter((m == moment for m in log.moments), dtype=bool, count=len(log.moments))
        if not at.any():
            continue
        figures = {k: v for k, v in summarize(probs[at], labels[at]).items() if k != "decile_rates"}
        both = at & ~np.isnan(batch)
        if both.any():
            keys = ("labels", "auc", "top_bottom_decile_ratio", "top_bottom_ratio_low", "bottom_decile_positives")
            figures["online_on_batch_examples"] = {
                k: v for k, v in summarize(probs[both], labels[both]).items() if k in keys
            }
            figures["batch_weekly"] = {k: v for k, v in summarize(batch[both], labels[both]).items() if k in keys}
        out[moment] = figures
    return out


def _change(log: _KindLog, at_ms: int, weeks: int) -> dict[str, Any]:
    """AUC before and after a known change, week by week, online vs batch on the same examples.

    Examples are placed by the time they were scored. ``before`` pools the
    ``weeks`` weeks before the change; ``after`` gives each week after it, and
    ``after_pooled`` all of them. Only examples the batch model also scored count,
    so the two columns rank the same customers at the same moments. Without a
    batch baseline (``--no-batch-baseline``) every example counts, for the online
    model alone.

    ``before`` and ``after_pooled`` carry 95% bootstrap intervals of online minus batch
    (and minus frozen) AUC, resampling customers: week-by-week gaps of a few thousandths
    are often inside them.

    After the change, ``frozen_auc`` is the AUC of the weekly LR's last fit
    before the change, on the same examples: a model that stopped learning
    there. Online minus frozen is what learning on after the change was worth;
    if it is small, the change did not make old knowledge wrong, so there was
    little for any model to recover.

    ``after_pooled`` also has ``hindsight_auc``: a logistic regression fitted
    on those after-change examples themselves, out of fold by customer (see
    :func:`hindsight_probabilities`). It knows the new regime as no model
    running at the time could, so it bounds, roughly, what any model of this
    family on these inputs could have recovered: hindsight minus frozen is how
    much there was to win back.
    """
    times = np.asarray(log.times, dtype=np.int64)
    batch = np.asarray(log.batch, dtype=float)
    frozen = np.asarray(log.frozen, dtype=float)
    both = ~np.isnan(batch)
    with_batch = bool(both.any())
    if not with_batch:
        both[:] = True

    def figures(lo: int, hi: int, pooled: bool = False) -> dict[str, Any]:
        idx = np.flatnonzero(both & (times >= lo) & (times < hi))
        y = [log.labels[i] for i in idx]
        row: dict[str, Any] = {
            "labels": len(idx), "positives": int(sum(y)),
            "online_auc": _r(auc([log.probs[i] for i in idx], y)),
            "batch_auc": _r(auc([float(batch[i]) for i in idx], y)) if with_batch else None,
        }
        if lo >= at_ms:
            # Every example the batch model scored after the change has a frozen score too,
            # unless the batch model had no fit before the change (then none has).
            kept = [i for i in idx if not math.isnan(frozen[i])] if with_batch else []
            row["frozen_auc"] = (
                _r(auc([float(frozen[i]) for i in kept], y)) if kept and len(kept) == len(idx) else None
            )
        if pooled:
            online = [log.probs[i] for i in idx]
            who = [log.customers[i] for i in idx]
        if pooled and with_batch:
            # How sure the difference is: customers resampled, 95% bootstrap interval.
            ci = auc_difference_ci(online, [float(batch[i]) for i in idx], y, who)
            row["online_minus_batch_ci95"] = _interval(ci)
            if row.get("frozen_auc") is not None:
                ci = auc_difference_ci(online, [float(frozen[i]) for i in idx], y, who)
                row["online_minus_frozen_ci95"] = _interval(ci)
        if pooled and lo >= at_ms:
            # Every pooled example was logged with its inputs (learned kinds always have them).
            rows = [x for i in idx if (x := log.after_change_x.get(int(i))) is not None]
            hindsight = hindsight_probabilities(rows, y, who) if len(rows) == len(idx) else None
            row["hindsight_auc"] = None if hindsight is None else _r(auc(hindsight, y))
            if hindsight is not None:
                row["online_minus_hindsight_ci95"] = _interval(auc_difference_ci(online, hindsight, y, who))
        return row

    span = weeks * WEEK_MS
    after = [{"week": n + 1, **figures(at_ms + n * WEEK_MS, at_ms + (n + 1) * WEEK_MS)} for n in range(weeks)]
    return {
        "at": ms_to_iso(at_ms), "weeks": weeks,
        "before": figures(at_ms - span, at_ms, pooled=True),
        "after": after,
        "after_pooled": figures(at_ms, at_ms + span, pooled=True),
    }


def hindsight_probabilities(
    rows: Sequence[dict[str, float]], labels: Sequence[int], customers: Sequence[str], folds: int = 5
) -> list[float] | None:
    """Out-of-fold probabilities of a logistic regression fitted on the examples themselves.

    Customers are split into ``folds`` groups; each group's examples are scored by
    a fit on the other groups (standardised inputs, absent inputs 0, C=1), so no
    customer is scored by a model that saw it. ``None`` when there are fewer
    customers than folds or a training split holds one class only.

    >>> rows = [{"x": float(i % 2), "noise": float(i % 7)} for i in range(200)]
    >>> labels = [i % 2 for i in range(200)]
    >>> who = [f"c{i // 4}" for i in range(200)]
    >>> probs = hindsight_probabilities(rows, labels, who)
    >>> auc(probs, labels) > 0.99
    True
    >>> hindsight_probabilities(rows[:8], labels[:8], who[:8]) is None  # 2 customers, 5 folds
    True
    """
    from sklearn.linear_model import LogisticRegression

    groups = np.unique(np.asarray(customers), return_inverse=True)[1]
    if groups.max(initial=-1) + 1 < folds:
        return None
    names = sorted({k for r in rows for k in r})
    column = {k: j for j, k in enumerate(names)}
    x = np.zeros((len(rows), len(names)))
    for i, r in enumerate(rows):
        for k, v in r.items():
            x[i, column[k]] = v
    y = np.asarray(labels, dtype=np.int64)
    # Customers dealt to folds in a fixed shuffled order: the same input gives the same figure.
    fold_of = np.random.default_rng(0).permutation(groups.max() + 1)[groups] % folds
    out = np.zeros(len(rows))
    for f in range(folds):
        test, train = fold_of == f, fold_of != f
        if not test.any():
            continue
        if y[train].min() == y[train].max():
            return None
        mean, scale = x[train].mean(axis=0), x[train].std(axis=0)
        scale[scale == 0] = 1.0
        fit = LogisticRegression(C=1.0, max_iter=300).fit((x[train] - mean) / scale, y[train])
        out[test] = fit.predict_proba((x[test] - mean) / scale)[:, 1]
    return out.tolist()


def _fairness(log: _KindLog, top_fraction: float = 0.2) -> dict[str, Any]:
    """Per group: mean score, outcome rate and share flagged at the same threshold (top 20%)."""
    probs = np.asarray(log.probs)
    labels = np.asarray(log.labels)
    threshold = float(np.quantile(probs, 1 - top_fraction)) if len(probs) else 1.0
    rows: dict[str, dict[str, Any]] = {}
    for g in sorted(set(log.groups)):
        idx = np.flatnonzero(np.asarray(log.groups) == g)
        rows[g] = {
            "examples": len(idx),
            "mean_score": round(float(probs[idx].mean()), 6),
            "outcome_rate": round(float(labels[idx].mean()), 6),
            "selected_rate": round(float((probs[idx] >= threshold).mean()), 6),
            "auc": _r(auc(probs[idx].tolist(), labels[idx].tolist())),
            # p10, p25, p50, p75, p90 of the score: the distribution a fairness review looks at.
            "score_quantiles": [round(float(q), 6) for q in np.quantile(probs[idx], [0.1, 0.25, 0.5, 0.75, 0.9])],
        }
    rates = [r["selected_rate"] for r in rows.values() if r["examples"] >= 30]
    ratio = (max(rates) / min(rates)) if rates and min(rates) > 0 else None
    return {"threshold": round(threshold, 6), "top_fraction": top_fraction, "groups": rows,
            "selected_rate_ratio_max_min": None if ratio is None else round(ratio, 4)}


def _gains(probs: Floats, labels: Labels, points: int = 20) -> list[list[float]]:
    """Cumulative gains: ``[share of examples targeted, share of positives captured]``.

    Highest scores first; within a group of equal scores the positives count as
    spread evenly (what random tie-breaking gives on average), so a points score
    with many ties is not judged by the order its examples happened to arrive in.
    ``points + 1`` pairs from ``[0, 0]`` to ``[1, 1]``, empty when there is no positive.

    >>> _gains([0.9, 0.8, 0.2, 0.1], [1, 0, 1, 0], points=2)
    [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
    >>> _gains([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0], points=2)
    [[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]
    """
    y = np.asarray(labels, dtype=float)
    if len(y) == 0 or y.sum() == 0:
        return []
    p = np.asarray(probs, dtype=float)
    order = np.argsort(-p, kind="mergesort")
    captured = np.concatenate([[0.0], np.cumsum(y[order])]) / y.sum()
    ranked = p[order]
    bounds = np.concatenate([[0], np.flatnonzero(ranked[1:] != ranked[:-1]) + 1, [len(y)]])
    cuts = np.linspace(0, 1, points + 1)
    shares = np.interp(cuts, bounds / len(y), captured[bounds])
    return [[round(float(c), 4), round(float(g), 4)] for c, g in zip(cuts, shares, strict=True)]


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 6)


def write_report(report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write ``report.json`` into ``out_dir`` (created if needed)."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    target = path / "report.json"
    target.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return target

"""The scoring core: events in; score changes, alerts, triggers and labels out.

Pure and synchronous: every effect goes through the feature store, the state
store and the returned :class:`Outputs`. The Faust worker, the replay
backtest and the tests all call :meth:`ScoringCore.process` the same way.

For each batch:

1. the feature store applies the batch (idempotently) and returns each
   customer's state before it; the core replays the batch on that state with
   :func:`features.engine.apply_ops`, so it can score at any event;
2. outcomes mark pending examples (a purchase labels propensity examples
   positive and churn examples "stayed");
3. scoring points (declared per kind) produce scores; meaningful changes are
   published, jumps and band entries become alerts and triggers, and the
   moment's model input is kept as a pending example;
4. the watermark (largest event time minus lateness) advances; customers
   whose idle rescore or label horizon is due are processed;
5. matured examples are learned in horizon order (by default only when their
   horizon closes, so the model never sees a stream skewed to the class that
   resolves early), or handed out for a central learner.

>>> from features.events import decode
>>> core = ScoringCore.in_memory()
>>> ev = decode('{"event_id":"e1","customer_id":"c1","ts":"2024-03-01T10:00:00Z",'
...             '"type":"purchase","order_id":"o1","amount":80,"currency":"EUR"}')
>>> out = core.process([ev])
>>> sorted({s["kind"] for s in out.scores})
['churn_risk', 'engagement', 'purchase_propensity', 'rfm_segment']
>>> core.process([ev]).counts["duplicates"]
1
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from features.engine import TIME_FIELD, FeatureEngine, State, apply_ops
from features.events import (
    AnyEvent,
    CampaignEvent,
    PurchaseEvent,
    WebEvent,
    action_of,
    event_field,
    id_text,
    ms_to_iso,
)
from features.spec import DAY_MS, DEFAULT_SENSITIVE, Catalog
from features.store import DUPLICATE, LATE, BatchResult, FeatureStore, InMemoryFeatureStore, Update
from scoring.kinds import ScoreKind, default_kinds
from scoring.models import (
    OnlineModel,
    model_input,
    points_to_probability,
    rule_explain,
    rule_points,
)
from scoring.rfm import METRICS as RFM_METRICS
from scoring.rfm import RfmGrader, RfmKey
from scoring.state import (
    CustomerScoring,
    InMemoryStateStore,
    KindState,
    ModelStore,
    Pending,
    ShardSave,
    StateStore,
)
from scoring.triggers import BAND_RANK, Policy, in_control, jump_from, remember_score

log = logging.getLogger(__name__)

IDLE = ":idle"  # suffix of the example ids of idle rescores


def _id_part(text: str) -> str:
    """A customer or campaign id as a part of an example id: its colons escaped, so that two
    examples' ids differ (customer ``a`` sent campaign ``5:m`` at 5, and customer ``a:5``
    campaign ``m``, gave one id). Ids without ``:`` or ``%`` are as they were.

    >>> _id_part("c1"), _id_part("a:5"), _id_part("50%")
    ('c1', 'a%3A5', '50%25')
    """
    return text.replace("%", "%25").replace(":", "%3A") if ":" in text or "%" in text else text


# Per customer and kind: a flood of sends must not grow a customer's record without bound.
MAX_PENDING_PER_KIND = 32


# Silent longer than this (days since the customer's last event), a customer is no longer
# rescored on schedule, so no model learns from such silence: scores_now serves such a
# customer the cold-start rule (source "long_silent"), not a model extrapolating past it.
LONG_SILENT_DAYS = 180.0
# What an RFM grade reads, and the idle check before it (see _process_due_once).
RFM_INPUTS = (*RFM_METRICS.values(), "days_since_last_event")


@dataclass(frozen=True, slots=True)
class Labelled:
    """A matured example: the features of the scored moment and the final label."""

    kind: str
    customer_id: str
    example_id: str
    t_ms: int
    end_ms: int
    prob: float
    rule_prob: float
    source: str
    label: int
    x: dict[str, float]
    # A sample of the fresh stream (learn_at: fresh), not a matured example: its label is
    # the slow class at registration, or the outcome's class when the outcome happened.
    fresh: bool = False
    # The event the example was scored at; None for an idle rescore (no event caused it).
    event_id: str | None = None

    def record(self) -> dict[str, Any]:
        """The ``--scores-out`` line (no features)."""
        return {
            "example_id": self.example_id,
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "ts": ms_to_iso(self.t_ms),
            "kind": self.kind,
            "probability": round(self.prob, 6),
            "rule_probability": round(self.rule_prob, 6),
            "source": self.source,
            "moment": self.moment,
            "label": self.label,
        }

    @property
    def moment(self) -> str:
        """``event`` (scored at one of the customer's events) or ``idle`` (a scheduled rescore).

        The event says so; the id's suffix only for examples saved before they kept their
        event (a campaign called ``idle`` ends its examples' ids the same way).
        """
        return "idle" if self.event_id is None and self.example_id.endswith(IDLE) else "event"


@dataclass
class Outputs:
    """What one call produced; the caller publishes or aggregates it."""

    scores: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    labelled: list[Labelled] = field(default_factory=list)
    fresh: list[Labelled] = field(default_factory=list)  # learn_at: fresh samples, in order
    drifts: list[dict[str, Any]] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    # Positions in the batch of the events not applied as later than the allowed lateness:
    # the live pipeline keeps their records on the late topic instead of losing them.
    late: list[int] = field(default_factory=list)

    def extend(self, other: Outputs) -> None:
        """Append what ``other`` produced (a later step, or another worker's part; the
        positions of late events are not kept)."""
        self.scores += other.scores
        self.alerts += other.alerts
        self.triggers += other.triggers
        self.labelled += other.labelled
        self.fresh += other.fresh
        self.drifts += other.drifts
        self.counts.update(other.counts)


class ModelRegistry:
    """One model per learned score kind; snapshots go to a ModelStore."""

    def __init__(self, kinds: Sequence[ScoreKind], exclude: Sequence[str] = ()) -> None:
        self.kinds = {k.name: k for k in kinds}
        self.exclude = tuple(exclude)
        self.models = {
            k.name: OnlineModel(
                k.name, k.model, k.min_labels, k.min_per_class, k.consolidate_every, k.window,
                k.consolidate_max, half_life=k.half_life, drift_refit=k.drift_refit,
                drift_min_rows=k.drift_min_rows, indicators=k.missing_indicators, trial=k.trial,
                trial_max=k.trial_max,
                fresh=k.learn_at == "fresh", outcome_label=k.label_on_outcome,
            )
            for k in kinds
            if k.learned
        }
        self.skipped_fresh = 0  # fresh samples for a kind that learns at horizon close
        self._ignored: set[tuple[str, int]] = set()  # snapshots of the other learning mode

    def learn(self, examples: Sequence[Labelled]) -> list[dict[str, Any]]:
        """Learn matured examples and fresh samples in order; returns drift events."""
        drifts = []
        for ex in examples:
            model = self.models.get(ex.kind)
            if model is None:
                continue
            if ex.fresh and not model.fresh:
                # A fresh sample for a kind that learns at horizon close: learn_at changed while
                # such records were still on the labels topic. Not this model's stream.
                self.skipped_fresh += 1
                continue
            if ex.fresh:
                # A registration sample is known when the example is scored (end = start).
                model.learn_fresh(ex.x, ex.label, ex.example_id if ex.end_ms == ex.t_ms else None)
            elif model.learn(ex.x, ex.label, ex.prob if ex.source == "model" else None, ex.rule_prob,
                             ex.example_id):
                drifts.append(
                    {"kind": ex.kind, "model_version": model.version, "ts": ms_to_iso(ex.end_ms),
                     "detector": "ADWIN(log loss)", "drifts_total": model.drifts}
                )
        return drifts

    def save(self, store: ModelStore) -> None:
        for name, model in self.models.items():
            store.save_model(name, model.version, model.snapshot())

    def refresh(self, store: ModelStore) -> list[str]:
        """Hot-swap models whose stored snapshot is newer; returns the kinds swapped.

        The stored version is read first: a snapshot (megabytes, with its refit window) is
        fetched only when it is not the one held or one already set aside.
        """
        swapped = []
        for name, model in self.models.items():
            version = store.model_version(name)
            if version is None or version == model.version or (name, version) in self._ignored:
                continue
            found = store.load_model(name)
            if found and found[0] != model.version:
                restored = OnlineModel.restore(found[1])
                if _identity(restored) != _identity(model):
                    # Another model than this config's (learn_at, model or the label's sense
                    # changed): its stream, its estimator or its classes do not fit. Keep ours;
                    # our learner's next snapshot replaces the stored one.
                    self._ignored.add((name, found[0]))  # not fetched again (see above)
                    log.warning("snapshot of %s ignored: learned as %s, the config says %s", name,
                                _identity(restored), _identity(model))
                    continue
                self.models[name] = restored
                swapped.append(name)
        return swapped


ShardBatch = tuple[str, Sequence[AnyEvent], "int | None"]  # (shard, its events, newest of the whole batch)


@dataclass(slots=True)
class _ShardRun:
    """One shard's part of a :meth:`ScoringCore.process_shards` call."""

    shard: str
    out: Outputs
    grader: RfmGrader
    watermark: int
    seen: int = field(init=False)  # the grader's count when last saved (or read)

    def __post_init__(self) -> None:
        self.seen = self.grader.seen

    def unsaved_grader(self) -> RfmGrader | None:
        # Saved with the records of the batch that changed it: both or neither survive a crash.
        return None if self.grader.seen == self.seen else self.grader

    def grader_saved(self) -> None:
        self.seen = self.grader.seen


_RoundDone = tuple[_ShardRun, list[Labelled], Outputs]  # a shard's part of a round of due customers


@dataclass(slots=True)
class _Attempt:
    """How far the call on a batch got: the same batch again (a retry) resumes there."""

    key: tuple[tuple[str, tuple[str, ...]], ...]  # each shard and its event ids
    applied: BatchResult  # the feature store applied the batch: applying it again finds duplicates
    outs: list[Outputs] | None = None  # the events' outputs, saved; the rounds of due customers are left
    runs: list[_ShardRun] | None = None
    # A save that raised may have been made all the same, its reply lost (the connection dropped
    # after Redis ran it): its token (StateStore.landed) and what it saved, until the retry asks.
    unsure_events: tuple[str, list[Outputs], list[_ShardRun]] | None = None
    unsure_round: tuple[str, list[_RoundDone]] | None = None


_EVENT_TYPES = (WebEvent, PurchaseEvent, CampaignEvent)


def _customer_key(customer_id: str | int) -> str:
    # As the event contract reads an id (features.events.id_text: integers as text, composed
    # Unicode; then spaces trimmed, as the event models do).
    if isinstance(customer_id, bool) or not isinstance(customer_id, str | int):
        raise TypeError(f"a customer id is text or a whole number, not {type(customer_id).__name__}")
    return str(id_text(customer_id)).strip()


def _overlapping(batches: Sequence[ShardBatch]) -> bool:
    """Whether a customer comes up in more than one shard's batch (each shard comes up once)."""
    owner: dict[str, str] = {}
    for shard, events, _ in batches:
        for ev in events:
            if owner.setdefault(ev.customer_id, shard) != shard:
                return True
    return False


def _later(previous: int | None, candidate: int) -> int:
    """A watermark never goes backwards."""
    return candidate if previous is None else max(candidate, previous)


def _identity(model: OnlineModel) -> str:
    """What a snapshot must share with the configured model to stand in for it.

    >>> _identity(OnlineModel("k", "tree"))
    'model=tree, learn_at=horizon, label_on_outcome=1'
    """
    return (f"model={model.model_name}, learn_at={'fresh' if model.fresh else 'horizon'}, "
            f"label_on_outcome={model.outcome_label}")


class ScoringCore:
    """Feature updates, scores, alerts, triggers and label join for batches of events."""

    def __init__(
        self,
        engine: FeatureEngine,
        features: FeatureStore,
        state: StateStore,
        registry: ModelRegistry | None = None,
        kinds: Sequence[ScoreKind] | None = None,
        policy: Policy | None = None,
        lateness_ms: int = 3_600_000,
        learn_inline: bool = True,
        sensitive: Sequence[str] = DEFAULT_SENSITIVE,
        explain: bool = True,
    ) -> None:
        self.engine = engine
        # Reasons cost a model pass per published score; a replay that only counts scores skips them.
        self.explain = explain
        self.features = features
        self.state = state
        self.kinds = list(kinds or default_kinds())
        self.sensitive = tuple(sensitive)
        self.registry = registry or ModelRegistry(self.kinds, self.sensitive)
        self.policy = policy or Policy()
        self.lateness_ms = lateness_ms
        self.learn_inline = learn_inline
        # The RFM grader of the shard being processed: each shard counts its own buying
        # customers and keeps the counts with its state (see StateStore), so they go on from
        # where they were whichever worker holds the shard, and across a restart. Read at
        # every batch.
        self.rfm = RfmGrader()
        self._attempt: _Attempt | None = None
        self._tokens = itertools.count()
        self._token_base = os.urandom(6).hex()  # tokens of another core (a restart) never match
        # A replay sharded by customer (scoring.parallel) sets this to a list: RFM grades then
        # use the counts as they stood at the batch's start, and each customer's move is kept
        # here as (time, customer, (old key, new key)) for the replay's grader to apply.
        self.rfm_deferred: list[tuple[int, str, tuple[RfmKey | None, RfmKey | None]]] | None = None
        # Kind names per event key: a kind missing from a list of kinds costs a dataclass
        # __eq__ (every field) per element, a name missing from a set one hash lookup.
        self._on_event: dict[str, set[str]] = {}
        self._rescore_on: dict[str, frozenset[str]] = {}
        for kind in self.kinds:
            for key in kind.only_on or kind.score_on:
                self._on_event.setdefault(key, set()).add(kind.name)
            self._rescore_on[kind.name] = frozenset(kind.rescore_on)
        # An idle regrade reads the grade's features, and the customer's own silence where the
        # catalogue has it: tick_growth and min_idle_days triggers do not count our sends.
        self._rfm_inputs = RFM_INPUTS + tuple(n for n in ("days_since_last_active",) if n in engine.vector({}, 0))
        self._triggers_by_kind: dict[str, list[Any]] = {}
        for rule in self.policy.triggers:
            self._triggers_by_kind.setdefault(rule.kind, []).append(rule)

    @classmethod
    def in_memory(
        cls, catalog: Catalog | None = None, lateness_ms: int = 3_600_000, **kw: Any
    ) -> ScoringCore:
        """A core with in-process stores: backtests, tests, notebooks.

        The engine refuses a feature over a sensitive field (``sensitive``, by default
        ``DEFAULT_SENSITIVE``), as a scoring config does.
        """
        sensitive = tuple(kw.get("sensitive", DEFAULT_SENSITIVE))
        return cls(
            FeatureEngine(catalog, sensitive), InMemoryFeatureStore(lateness_ms), InMemoryStateStore(),
            lateness_ms=lateness_ms, **kw,
        )

    # ------------------------------------------------------------------ batches
    def process(self, events: Sequence[AnyEvent], shard: str = "0", newest: int | None = None) -> Outputs:
        """Apply, score and label one batch of decoded events from one shard.

        Labels mature and idle customers are rescored at the end of each call, up to the
        batch's watermark: keep a batch to little event time (``run_backtest`` cuts them at
        an hour, ``BacktestConfig.max_batch_span_ms``), or the rescores due inside it are
        made late or not at all. Events come in event-time order, within the lateness.

        ``newest``: the event time of the newest event of the whole batch when this call
        gets a part of it (a replay sharded by customer): the watermark follows it, so every
        part's labels mature and idle customers tick as in one process.
        """
        return self.process_shards([(shard, events, newest)])[0]

    def process_shards(self, batches: Sequence[ShardBatch], done: dict[str, Outputs] | None = None) -> list[Outputs]:
        """:meth:`process` for several shards' batches: the outputs of one call each, in order.

        Each store step serves every shard at once: a live worker's batch spans its
        partitions, and on Redis that is a handful of round trips per batch instead of a
        handful per partition. Shards go one by one when models learn inline (one shard's
        labels change the next one's scores) or when a customer is in more than one shard
        (together, a later shard's events would come before an earlier shard's round of due
        customers, which can hold the same customer). Each shard may come up once.

        ``done`` receives each shard's outputs as soon as they are complete (one by one,
        or all at once); shards already in it are not processed again (a retry).

        >>> core = ScoringCore.in_memory()
        >>> [o.counts["applied"] for o in core.process_shards([("0", [], None), ("1", [], None)])]
        [0, 0]
        """
        if len({shard for shard, _, _ in batches}) != len(batches):
            raise ValueError("each shard may come up once in a call")
        for _, events, _ in batches:
            wrong = next((ev for ev in events if not isinstance(ev, _EVENT_TYPES)), None)
            if wrong is not None:  # a dict, a line, or decode's EventError for a bad one
                reason = getattr(wrong, "reason", None)
                raise TypeError(f"process takes decoded events (features.events.decode), not {type(wrong).__name__}"
                                + (f": {reason}" if reason else ""))
        memo: dict[str, Outputs] = {} if done is None else done
        todo = [b for b in batches if b[0] not in memo]
        if len(todo) > 1 and (self.learn_inline or _overlapping(todo)):
            for b in todo:
                memo[b[0]] = self._process_together([b])[0]
        elif todo:
            memo.update(zip([b[0] for b in todo], self._process_together(todo), strict=True))
        return [memo[shard] for shard, _, _ in batches]

    def _process_together(self, batches: Sequence[ShardBatch]) -> list[Outputs]:
        # A call that fails (Redis away) after the features took the batch leaves an attempt
        # behind: the same batch again goes on from there, instead of finding its events
        # duplicates and losing their scores, and a failed round of due customers is redone.
        outs = [Outputs() for _ in batches]
        work = [(out, shard, events, newest) for out, (shard, events, newest) in zip(outs, batches, strict=True)
                if events]
        if not work:
            return outs
        batch_key = tuple((shard, tuple(ev.event_id for ev in events)) for _, shard, events, _ in work)
        attempt = self._attempt
        if attempt is not None and attempt.key != batch_key:
            attempt = self._attempt = None  # another batch: the failed one was given up
        if attempt is not None and attempt.unsure_events is not None:
            token, saved_outs, saved_runs = attempt.unsure_events
            if self.state.landed(token):  # saved, its reply lost: scoring again would find it done
                for run in saved_runs:
                    run.grader_saved()
                attempt.outs, attempt.runs = saved_outs, saved_runs
            attempt.unsure_events = None  # answered (had asking raised, the next retry would ask again)
        if attempt is not None and attempt.outs is not None and attempt.runs is not None:
            return self._finish_due(attempt, attempt.outs, attempt.runs)
        heads = self.state.shard_states([shard for _, shard, _, _ in work])
        everything = [ev for _, _, events, _ in work for ev in events]
        updates = [Update.of(ev, self.engine.ops_for(ev)) for ev in everything]
        result = self.features.apply(updates) if attempt is None else attempt.applied
        attempt = self._attempt = _Attempt(batch_key, result)
        customers = list(dict.fromkeys(ev.customer_id for ev in everything))
        records = self.state.load(customers)
        working: dict[str, State] = {c: dict(result.before.get(c, {})) for c in customers}
        runs: list[_ShardRun] = []
        saves: dict[str, ShardSave] = {}
        first = 0
        for out, shard, events, newest in work:
            grader, previous = heads[shard]
            run = _ShardRun(shard, out, grader or RfmGrader(), 0)
            self._use(run)
            out.counts["events"] += len(events)
            last = first + len(events)
            for i, (ev, up, status) in enumerate(
                zip(events, updates[first:last], result.statuses[first:last], strict=True)
            ):
                rec = records[ev.customer_id]
                if rec.shard != shard:  # the record is saved with this shard's: it is ours now
                    self._take_over(ev.customer_id, rec, run, ev.ts_ms)
                if status == LATE:
                    out.counts["late"] += 1
                    out.late.append(i)
                    continue
                key = f"{ev.type}:{action_of(ev)}"
                if status == DUPLICATE:
                    # Outcomes are idempotent, so a redelivered outcome still labels what it should.
                    out.counts["duplicates"] += 1
                    self._mark_outcomes(rec, ev, key, out)
                    continue
                out.counts["applied"] += 1
                state = working[ev.customer_id]
                apply_ops(state, up.ops)
                # The customer's clock, as the store moves it: an event that came out of order
                # inside this batch is then scored as of the newest one, as across batches.
                if ev.ts_ms > state.get(TIME_FIELD, ev.ts_ms - 1):
                    state[TIME_FIELD] = float(ev.ts_ms)
                self._mark_outcomes(rec, ev, key, out)
                self._score_event(ev, key, rec, state, out)
            first = last
            self._learn_fresh(out, 0)
            newest = max(ev.ts_ms for ev in events) if newest is None else newest
            run.watermark = _later(previous, newest - self.lateness_ms)
            mine = records if len(work) == 1 else {c: records[c] for c in dict.fromkeys(ev.customer_id for ev in events)}
            saves[shard] = ShardSave(mine, run.watermark, run.unsaved_grader(), due_until=run.watermark)
            runs.append(run)
        token = self._token()
        attempt.unsure_events = (token, outs, runs)
        due = self.state.save(saves, token)
        attempt.unsure_events = None
        for run in runs:
            run.grader_saved()
        attempt.outs, attempt.runs = outs, runs
        self._process_due(runs, due, attempt)
        self._attempt = None
        return outs

    def _finish_due(self, attempt: _Attempt, outs: list[Outputs], runs: list[_ShardRun]) -> list[Outputs]:
        """The rounds of due customers of a batch whose events were scored and saved."""
        self._attempt = attempt
        # The graders as saved: a failed round may have graded some of its customers already.
        heads = self.state.shard_states([run.shard for run in runs])
        for run in runs:
            run.grader = heads[run.shard].grader or RfmGrader()
            run.grader_saved()
        if attempt.unsure_round is not None:
            token, done = attempt.unsure_round
            if self.state.landed(token):  # the failed round was saved, its reply lost: its outputs stand
                self._round_saved(done)
            attempt.unsure_round = None
        # Due customers of a failed round are still in the index (see StateStore.save).
        self._process_due(runs, self.state.save({run.shard: ShardSave({}, due_until=run.watermark) for run in runs}),
                          attempt)
        self._attempt = None
        return outs

    def _token(self) -> str:
        return f"{self._token_base}-{next(self._tokens)}"

    def advance(self, shard: str, until_ms: int) -> Outputs:
        """Move a shard's watermark to ``until_ms`` with no new events (end of a replay, idle shard)."""
        out = Outputs()
        grader, previous = self.state.shard_states([shard])[shard]
        run = _ShardRun(shard, out, grader or RfmGrader(), _later(previous, until_ms))
        self._process_due([run], self.state.save({shard: ShardSave({}, run.watermark, due_until=run.watermark)}))
        return out

    def _take_over(self, cid: str, rec: CustomerScoring, run: _ShardRun, ts: int) -> None:
        """Make ``run``'s shard the owner of a customer's record.

        A record that names another shard (its customer's events came on another partition:
        a producer with another partitioner or key, or more partitions) is counted
        (``shard_changes``) and taken over: this shard's due index schedules it from now on
        (the other shard drops it when its index hands it out, see ``_process_due_once``),
        and this shard's RFM base counts it under its key. The other shard's base keeps
        counting it where it last was: only that shard may write its base. A record that
        names no shard yet (new, or saved before records named theirs) is just stamped.
        """
        if rec.shard is not None:
            run.out.counts["shard_changes"] += 1
            if rec.rfm_key is not None:
                # Counted here from now on, so its next move here leaves no count below 0.
                self._move_rfm(cid, ts, None, rec.rfm_key)
        rec.shard = run.shard

    def _move_rfm(self, cid: str, ts: int, old: RfmKey | None, new: RfmKey | None) -> None:
        """Count a customer under ``new`` instead of ``old`` in the RFM base of the shard being
        processed, or keep the move for a sharded replay's grader (see ``rfm_deferred``)."""
        if self.rfm_deferred is None:
            self.rfm.move(old, new)
        else:
            self.rfm_deferred.append((ts, cid, (old, new)))

    def _use(self, run: _ShardRun) -> None:
        # Scoring grades RFM with the grader of the shard being processed.
        self.rfm = run.grader

    # ------------------------------------------------------------------ events
    def _mark_outcomes(self, rec: CustomerScoring, ev: AnyEvent, key: str, out: Outputs) -> None:
        if not rec.pending:
            return
        for p in rec.pending:
            kind = self.registry.kinds[p.kind]
            if (
                key in kind.outcome
                and p.t_ms < ev.ts_ms <= p.end_ms
                and (kind.match_field is None or str(event_field(ev, kind.match_field)) == p.match)
            ):
                if not p.outcome and kind.learn_at == "fresh":
                    # The example's second sample, with the features of its scored moment.
                    out.fresh.append(Labelled(p.kind, ev.customer_id, p.example_id, p.t_ms, ev.ts_ms,
                                              p.prob, p.rule_prob, p.source, kind.label_on_outcome,
                                              p.x, True, p.event_id))
                p.outcome = True

    def _learn_fresh(self, out: Outputs, start: int) -> None:
        if self.learn_inline and len(out.fresh) > start:
            self.registry.learn(out.fresh[start:])

    def _score_event(
        self, ev: AnyEvent, key: str, rec: CustomerScoring, state: State, out: Outputs
    ) -> None:
        strong = self._on_event.get(key, ())
        vector: dict[str, float | None] | None = None
        x: dict[str, float] | None = None
        # Out-of-order events within lateness: the state may already hold later events.
        as_of = max(ev.ts_ms, int(state.get(TIME_FIELD, ev.ts_ms)))
        for kind in self.kinds:
            if kind.only_on and kind.name not in strong:
                continue
            if kind.name not in strong:
                allowed = self._rescore_on[kind.name]
                if allowed and ev.type not in allowed and key not in allowed:
                    continue
                ks = rec.kinds.get(kind.name)
                if ks is not None and ks.scored_at is not None and as_of - ks.scored_at < kind.rescore_ms:
                    continue
            if not self._may_be_eligible(kind, state, as_of):
                continue  # decided from two stored values: no vector for a kind that cannot score
            if vector is None:
                vector = self.engine.vector(state, as_of)
            if not self._eligible(kind, vector):
                continue
            match = None
            if kind.match_field:
                field_value = event_field(ev, kind.match_field)
                if field_value is None:
                    continue  # nothing for an outcome to match: its label would always be the same
                match = str(field_value)
            if kind.learned and x is None:
                x = model_input(vector, self.sensitive)
            inputs = x
            if kind.learned and ev.type == "campaign" and x is not None:
                inputs = {**x, f"channel_{ev.channel}": 1.0}
            self._score(ev.customer_id, rec, kind, vector, as_of, ev.event_id, match, inputs, out)

    def _may_be_eligible(self, kind: ScoreKind, state: State, as_of: int) -> bool:
        # The cheap half of _eligible, from the state: False only where _eligible is False too.
        if not (kind.requires_purchase or kind.active_within_ms):
            return True
        if not (self.engine.read(state, "orders_total", as_of) or 0) >= 1:
            return False
        if kind.active_within_ms:
            last = self.engine.read(state, "last_purchase_at", as_of)
            if last is not None and as_of - last > kind.active_within_ms:
                return False
        return True

    def _eligible(self, kind: ScoreKind, vector: dict[str, float | None]) -> bool:
        if kind.requires_purchase and not (vector.get("orders_total") or 0) >= 1:
            return False
        if kind.active_within_ms:
            since = vector.get("days_since_last_purchase")
            if since is None or since * DAY_MS > kind.active_within_ms:
                return False
        return True

    # ------------------------------------------------------------------ scoring
    def compute(
        self, kind: ScoreKind, vector: dict[str, float | None], x: dict[str, float] | None = None,
        at_ms: int = 0,
    ) -> dict[str, Any]:
        """One score for a feature vector, as of ``at_ms`` (what an RFM grade needs), changing nothing.

        ``reasons`` is a function: explanations cost time and are built only for
        scores that get published.
        """
        extra: dict[str, Any] = {}
        rule_p = points_to_probability(rule_points(vector, kind.rule_weights), kind.rule_scale)
        version = 0
        if kind.type == "rfm":
            r, f, m, seg = self.rfm.grade(vector, at_ms)
            prob = (r + f + m - 3) / 12.0
            grades = [("recency", float(r)), ("frequency", float(f)), ("monetary", float(m))]
            source, reasons = "rule", (lambda: grades)
            extra = {"segment": seg, "rfm": f"{r}{f}{m}"}
            x = {}
        elif kind.type == "rule":
            prob, source = rule_p, "rule"
            reasons = lambda: rule_explain(vector, kind.rule_weights)  # noqa: E731
            x = {}
        else:
            model = self.registry.models[kind.name]
            if x is None:
                x = model_input(vector, self.sensitive)
            version = model.version
            inputs = x
            silent = vector.get("days_since_last_event")
            if model.ready and not (silent is not None and silent > LONG_SILENT_DAYS):
                prob, source = model.predict(inputs), "model"
                reasons = lambda: model.explain(inputs)  # noqa: E731
            else:
                prob = model.calibrate_rule(rule_p)
                source = "cold_start" if not model.ready else "long_silent"
                reasons = lambda: rule_explain(vector, kind.rule_weights)  # noqa: E731
        return {
            "probability": prob, "rule_probability": rule_p, "source": source,
            "model_version": version, "reasons": reasons, "x": x, **extra,
        }

    def _score(
        self,
        cid: str,
        rec: CustomerScoring,
        kind: ScoreKind,
        vector: dict[str, float | None],
        ts: int,
        event_id: str | None,
        match: str | None,
        x: dict[str, float] | None,
        out: Outputs,
    ) -> None:
        if kind.type == "rfm":
            # Counted in the shard's base under its values now, then graded against it.
            key = RfmGrader.key(vector, ts)
            if key != rec.rfm_key:
                self._move_rfm(cid, ts, rec.rfm_key, key)
                rec.rfm_key = key
        res = self.compute(kind, vector, x, ts)
        prob = res["probability"]
        value = round(100.0 * prob, 1)
        ks = rec.kind(kind.name)
        band = kind.bands.of(value, ks.band)
        out.counts["scored"] += 1
        old_value, old_band = ks.value, ks.band
        jumped = False
        if old_value is None or abs(value - old_value) >= self.policy.min_change or band != old_band:
            record = {
                "customer_id": cid, "kind": kind.name, "old_value": old_value, "value": value,
                "probability": round(prob, 6), "band": band, "old_band": old_band,
                "grade": int(round(prob * 10)), "model_version": res["model_version"],
                "source": res["source"],
                "reasons": (
                    [{"feature": f, "contribution": c} for f, c in res["reasons"]()] if self.explain else []
                ),
                "event_id": event_id, "cause": "event" if event_id else "idle_rescore",
                "ts": ms_to_iso(ts),
            }
            for extra_key in ("segment", "rfm"):
                if extra_key in res:
                    record[extra_key] = res[extra_key]
            out.scores.append(record)
            jumped = self._alert(cid, kind, ks, value, band, old_value, old_band, ts, event_id, out)
            ks.value, ks.band = value, band
        self._trigger(cid, kind, ks, vector, band, old_band, value, ts, out)
        if jumped:
            ks.history = []  # a jump told: the next one is a new rise from here
        ks.history = remember_score(ks.history, ts, value, self.policy.jump_window_ms)
        ks.scored_at = ts
        if kind.tick_ms:
            wait = kind.tick_ms
            if event_id is None and kind.tick_growth > 1.0:
                # The customer's own silence: our sends to a dormant customer are not news.
                silence = vector.get("days_since_last_active", vector.get("days_since_last_event")) or 0.0
                wait = max(wait, int((kind.tick_growth - 1.0) * silence * DAY_MS))
            ks.next_tick = ts + wait
        if kind.learned and (ks.registered_at is None or ts - ks.registered_at >= kind.register_ms):
            if sum(1 for p in rec.pending if p.kind == kind.name) >= MAX_PENDING_PER_KIND:
                out.counts["pending_capped"] += 1
                return
            ks.registered_at = ts
            # Idle rescores say so in the id: their examples are another population (silent
            # customers) than those scored at an event, and the backtest reports both apart.
            example_id = (f"{kind.name}:{_id_part(cid)}:{ts}" + (f":{_id_part(match)}" if match else "")
                          + ("" if event_id else IDLE))
            # The rule prior rides along: it is the rule-only baseline of the backtest.
            rec.pending.append(
                Pending(kind.name, example_id, ts, ts + kind.horizon_ms, res["x"], prob,
                        res["source"], match, False, res["rule_probability"], event_id)
            )
            if kind.learn_at == "fresh":
                out.fresh.append(Labelled(kind.name, cid, example_id, ts, ts, prob,
                                          res["rule_probability"], res["source"],
                                          kind.label_without_outcome, res["x"], True, event_id))

    def _alert(
        self, cid: str, kind: ScoreKind, ks: KindState, value: float, band: str,
        old_value: float | None, old_band: str | None, ts: int, event_id: str | None, out: Outputs,
    ) -> bool:
        """Alert on a jump or a higher band; whether it was a jump."""
        if old_value is None:
            return False  # a first score is news to nobody
        if ks.alerted_at is not None and ts - ks.alerted_at < self.policy.alert_cooldown_ms:
            return False
        jump = jump_from(ks.history, value, ts, self.policy.jump_window_ms)
        reason = None
        # A jump is told as the score rises: a fall, however high above the window's low, is not one.
        jumped = value > old_value and jump >= self.policy.jump_points
        if jumped:
            reason = f"jumped {jump:.1f} points within {self.policy.jump_window}"
        elif BAND_RANK[band] > BAND_RANK[old_band]:
            reason = f"entered {band} band"
        if reason:
            ks.alerted_at = ts
            out.alerts.append({
                "customer_id": cid, "kind": kind.name, "reason": reason, "old_value": old_value,
                "value": value, "old_band": old_band, "band": band, "event_id": event_id,
                "ts": ms_to_iso(ts),
            })
        return jumped

    def _trigger(
        self, cid: str, kind: ScoreKind, ks: KindState, vector: dict[str, float | None],
        band: str, old_band: str | None, value: float, ts: int, out: Outputs,
    ) -> None:
        for rule in self._triggers_by_kind.get(kind.name, ()):
            last = ks.triggered.get(rule.name)
            if last is not None and ts - last < rule.cooldown_ms:
                continue
            if rule.requires_purchase and not (vector.get("orders_total") or 0) >= 1:
                continue
            reason = None
            if rule.band and band == rule.band and BAND_RANK[band] > BAND_RANK[old_band]:
                reason = f"{kind.name} entered {band} ({value:.0f})"
            elif rule.min_idle_days is not None:
                # The customer's own silence, as for tick_growth: our sends to a dormant customer
                # (a newsletter a week) are not activity, and kept a win-back from ever firing.
                idle = vector.get("days_since_last_active", vector.get("days_since_last_event"))
                if idle is not None and idle >= rule.min_idle_days:
                    reason = f"no activity for {idle:.0f} days"
            if reason:
                ks.triggered[rule.name] = ts
                out.triggers.append({
                    "customer_id": cid, "trigger": rule.name, "action": rule.action,
                    "kind": kind.name, "value": value, "band": band, "reason": reason,
                    "control": in_control(cid, self.policy.control_salt, self.policy.control_fraction),
                    "ts": ms_to_iso(ts),
                })

    # ------------------------------------------------------------------ time
    def _process_due(
        self, runs: list[_ShardRun], due: dict[str, list[str]], attempt: _Attempt | None = None, max_rounds: int = 64,
    ) -> None:
        # An idle customer's rescore moves one tick per round: keep going until nothing is due,
        # so a watermark that jumps (sparse history, a quiet shard) leaves no work behind.
        # Each save hands out the next round's customers (on Redis in the save's round trip),
        # except the last round's: what it would hand out stays in the index for the next batch.
        for round_ in range(max_rounds):
            active = [(run, due[run.shard]) for run in runs if due.get(run.shard)]
            if not active:
                return
            due = self._process_due_once(active, last=round_ == max_rounds - 1, attempt=attempt)

    def _process_due_once(
        self, active: list[tuple[_ShardRun, list[str]]], last: bool, attempt: _Attempt | None = None,
    ) -> dict[str, list[str]]:
        records = self.state.load([cid for _, due in active for cid in due])
        # A customer another shard took over (see _take_over) leaves this shard's index
        # unprocessed: its owner schedules it, and writing its record here would undo that.
        dropped: dict[str, list[str]] = {}
        for i, (run, due) in enumerate(active):
            foreign = [cid for cid in due if (owner := records[cid].shard) is not None and owner != run.shard]
            if foreign:
                dropped[run.shard] = foreign
                gone = set(foreign)
                active[i] = (run, [cid for cid in due if cid not in gone])
        # Most customers are due only because an example matured: that needs no feature
        # state, and on Redis each state read is a round trip's worth of decoding.
        ticking = [
            cid for run, due in active for cid in due
            if any(ks.next_tick is not None and ks.next_tick <= run.watermark
                   for ks in records[cid].kinds.values())
        ]
        states = self.features.read(ticking) if ticking else {}
        saves: dict[str, ShardSave] = {}
        done: list[_RoundDone] = []
        for run, due in active:
            self._use(run)
            # Kept apart until the round is saved: a round that fails adds nothing.
            round_out = Outputs()
            matured = self._due_customers(run, due, records, states, round_out)
            drop = dropped.get(run.shard, ())
            mine = records if len(active) == 1 and not drop else {cid: records[cid] for cid in due}
            for rec in mine.values():
                if rec.shard is None:  # saved before records named their shard
                    rec.shard = run.shard
            saves[run.shard] = ShardSave(mine, None, run.unsaved_grader(),
                                         due_until=None if last else run.watermark, drop=drop)
            done.append((run, matured, round_out))
        token = None
        if attempt is not None:  # a batch's round: its retry asks whether this save was made
            token = self._token()
            attempt.unsure_round = (token, done)
        handed_out = self.state.save(saves, token)
        if attempt is not None:
            attempt.unsure_round = None
        self._round_saved(done)
        return handed_out

    def _round_saved(self, done: list[_RoundDone]) -> None:
        """A saved round's outputs, into each shard's; its labels learned when learning inline."""
        for run, matured, round_out in done:
            run.grader_saved()
            out = run.out
            fresh_from = len(out.fresh)
            out.extend(round_out)
            matured.sort(key=lambda e: (e.end_ms, e.example_id.removesuffix(IDLE)))
            out.labelled.extend(matured)
            out.counts["labelled"] += len(matured)
            self._learn_fresh(out, fresh_from)
            if self.learn_inline and matured:
                out.drifts.extend(self.registry.learn(matured))

    def _due_customers(
        self, run: _ShardRun, due: list[str], records: dict[str, CustomerScoring], states: dict[str, State],
        out: Outputs,
    ) -> list[Labelled]:
        """Idle rescores (into ``out``) and matured examples of a shard's due customers; returns the matured."""
        watermark = run.watermark
        matured: list[Labelled] = []
        for cid in due:
            rec = records[cid]
            # Ticks of several kinds often fall on one moment (7d and 14d after a purchase):
            # one vector and one model input per moment.
            moments: dict[int, list[Any]] = {}
            for kind in self.kinds:
                ks = rec.kinds.get(kind.name)
                if ks is None or ks.next_tick is None or ks.next_tick > watermark:
                    continue
                # Never score a moment earlier than what the state already contains.
                as_of = max(ks.next_tick, int(states[cid].get(TIME_FIELD, 0)))
                ks.next_tick = None
                if not self._may_be_eligible(kind, states[cid], as_of):
                    continue
                moment = moments.get(as_of)
                if moment is None:
                    moment = moments[as_of] = [None, None]
                if moment[0] is not None:
                    vector = moment[0]
                elif kind.type == "rfm":
                    # An idle regrade needs three features, not the vector (with the default
                    # kinds RFM comes last: a moment another kind scored has its vector already).
                    vector = self.engine.values(states[cid], as_of, self._rfm_inputs)
                else:
                    vector = moment[0] = self.engine.vector(states[cid], as_of)
                idle = vector.get("days_since_last_event")
                if idle is not None and idle > LONG_SILENT_DAYS:
                    continue  # long gone: stop rescoring until the customer shows up again
                if self._eligible(kind, vector):
                    out.counts["idle_rescores"] += 1
                    if kind.learned and moment[1] is None:
                        moment[1] = model_input(vector, self.sensitive)
                    x = moment[1] if kind.learned else None
                    self._score(cid, rec, kind, vector, as_of, None, None, x, out)
            keep = []
            for p in rec.pending:
                # An event at the watermark is not late (late is more than the lateness behind):
                # an example ending there may still get its outcome until the watermark passes it.
                if p.end_ms < watermark:
                    kind = self.registry.kinds[p.kind]
                    label = kind.label_on_outcome if p.outcome else kind.label_without_outcome
                    matured.append(Labelled(p.kind, cid, p.example_id, p.t_ms, p.end_ms, p.prob,
                                            p.rule_prob, p.source, label, p.x, False, p.event_id))
                else:
                    keep.append(p)
            rec.pending = keep
        return matured

    # ------------------------------------------------------------------ queries
    def scores_now(
        self, vector: dict[str, float | None], at_ms: int | None = None,
        types: tuple[str, ...] = ("learned", "rule", "rfm"),
    ) -> dict[str, dict[str, Any]]:
        """Every kind's score for one feature vector (the engine's as of ``at_ms``), changing nothing.

        Nothing is published, learned or kept, and RFM grades against the shard's base as
        last counted (``at_ms`` is needed for it: without it, RFM kinds are refused). A kind
        the customer is not eligible for (churn risk for one who never bought, or who has
        been silent longer than its window) is left out, and so is a kind scored only at
        certain events (``only_on``: campaign response is about one send). Reasons are the
        top contributing features, as in published scores.
        A customer silent longer than ``LONG_SILENT_DAYS`` gets the cold-start rule for a
        learned kind (source ``long_silent``): no model learned from such silence, and a
        linear one extrapolates (a subscriber gone 900 days scored 100 to buy, as the model
        weighed the days since a purchase up to a month). ``types`` keeps only kinds of these types.

        >>> core = ScoringCore.in_memory()
        >>> at = 1_704_067_200_000
        >>> scores = core.scores_now(core.engine.vector({}, at), at)
        >>> sorted(scores), scores["engagement"]["band"]
        (['engagement', 'purchase_propensity'], 'cold')
        """
        if at_ms is None and "rfm" in types and any(k.type == "rfm" for k in self.kinds):
            raise ValueError("scores_now: an RFM grade needs the vector's time (at_ms)")
        out: dict[str, dict[str, Any]] = {}
        for kind in self.kinds:
            if kind.only_on or kind.type not in types or not self._eligible(kind, vector):
                continue
            res = self.compute(kind, vector, at_ms=at_ms or 0)
            prob = res["probability"]
            value = round(100.0 * prob, 1)
            out[kind.name] = {
                "value": value, "probability": round(prob, 6), "band": kind.bands.of(value),
                "source": res["source"], "model_version": res["model_version"],
                "reasons": [{"feature": f, "contribution": c} for f, c in res["reasons"]()],
                **{k: res[k] for k in ("segment", "rfm") if k in res},
            }
        return out

    def current(self, customer_id: str | int) -> dict[str, Any]:
        """A customer's last published scores (for the HTTP API).

        The id is read as events read it (features.events.id_text, spaces trimmed): ``42`` and
        ``" 42 "`` are customer ``"42"``, a decomposed "Zoë" the composed one.
        """
        customer_id = _customer_key(customer_id)
        rec = self.state.load([customer_id])[customer_id]
        return {
            name: {"value": ks.value, "band": ks.band, "scored_at": ks.scored_at and ms_to_iso(ks.scored_at)}
            for name, ks in rec.kinds.items()
            if ks.value is not None
        }

    def erase(self, customer_id: str | int) -> None:
        """Forget a customer everywhere (deletion on request).

        The id is read as events read it: ``erase(42)`` forgets the customer whose events
        said ``"customer_id": 42`` (stored as ``"42"``); a padded ``" 42 "`` is that one too.

        >>> from features.events import decode
        >>> core = ScoringCore.in_memory()
        >>> _ = core.process([decode('{"event_id":1,"customer_id":42,"ts":1709287200,"type":"purchase",'
        ...                          '"order_id":"o1","amount":80,"currency":"eur"}')])
        >>> bool(core.current(42)), core.erase(42), core.current("42")
        (True, None, {})
        """
        customer_id = _customer_key(customer_id)
        self.features.erase(customer_id)
        self.state.erase(customer_id)

"""Online models: River pipelines, global per score kind, snapshot and restore.

Feature vectors become model inputs through :func:`model_input`: absolute
timestamps and sensitive attributes are dropped, missing values get an
indicator, and magnitudes are log-compressed so a whale customer does not
dominate an online learner.

>>> m = OnlineModel("demo", min_labels=2, min_per_class=1)
>>> for i in range(40):
...     _ = m.learn({"x": float(i % 2)}, i % 2)
>>> m.predict({"x": 1.0}) > m.predict({"x": 0.0})
True
>>> clone = OnlineModel.restore(m.snapshot())
>>> clone.predict({"x": 1.0}) == m.predict({"x": 1.0}), clone.version
(True, 40)
"""

from __future__ import annotations

import heapq
import math
import pickle
import sys
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np
from river import compose, drift, forest, linear_model, optim, preprocessing, tree

from features.spec import sensitive_word
from scoring.metrics import auc

ModelInput = dict[str, float]
# A trial needs this many labels of each class before its AUCs mean anything.
TRIAL_MIN_PER_CLASS = 30
# The cold-start rule is calibrated once, on its first this many matured labels (or more,
# until TRIAL_MIN_PER_CLASS of each class have come).
RULE_FIT_LABELS = 200
RULE_FLOOR = 0.001  # the cold-start rule's probability before its Platt fit: 0.001 to 0.999
# A logistic model that learns at horizon close fits its labels this many at a time (and at
# every refit), in numpy instead of River's per-label dict work: see OnlineModel._flush.
# Staler gradients the larger it is: on the simulator (5,000 customers), churn AUC was
# within 0.0011 of per-label learning with chunks of 8, 16 or 32, and 0.0035 below it at 64.
CHUNK = 32
# ... and while labels are few, one label in this many (chunk = version // CHUNK_GROWTH).
CHUNK_GROWTH = 16
# A tree's or forest's reasons try this many inputs, the farthest from their means (explain).
EXPLAIN_CANDIDATES = 10


def model_input(vector: Mapping[str, float | None], exclude: Iterable[str] = ()) -> ModelInput:
    """Feature vector -> model input (log-compressed, missing indicators, no raw times).

    >>> model_input({"orders_total": 3.0, "last_purchase_at": 1.7e12, "days_since_last_click": None})
    {'orders_total': 1.3862943611198906, 'days_since_last_click_missing': 1.0}

    ``exclude`` names sensitive attributes, matched as words of a feature's name:

    >>> model_input({"orders_total": 3.0, "gender_codes_30d": 2.0, "page_views_7d": 1.0}, ("gender", "age"))
    {'orders_total': 1.3862943611198906, 'page_views_7d': 0.6931471805599453}
    """
    skip = exclude if isinstance(exclude, tuple) else tuple(exclude)
    plans = _PLANS.get(skip)
    if plans is None:
        plans = _PLANS[skip] = {}
    # Vectors come from one template, so their names come in one order: the plan is decided
    # once per order, and the loop walks names, plan and values side by side.
    names = tuple(vector)
    plan = plans.get(names)
    if plan is None:
        if len(plans) >= 64:
            plans.clear()  # bounded, whatever callers pass
        # Per name: dropped ("") or the name of its missing indicator.
        plan = plans[names] = tuple(
            "" if name.endswith("_at") or sensitive_word(name, skip) else name + "_missing" for name in names
        )
    log1p = math.log1p
    out: ModelInput = {}
    for name, missing, value in zip(names, plan, vector.values(), strict=True):
        if not missing:
            continue
        if value is None:
            out[missing] = 1.0
        elif not value:
            # One shared 0.0, not a new float from log1p(0): most inputs of a sparse history
            # are 0 (62% on CDNOW), and pending examples hold their inputs for months.
            out[name] = 0.0
        else:
            # One float object per count: counts repeat (log1p(1), log1p(2), ...), and a kept
            # input holds its own float otherwise. Whole numbers only (amounts and ages rarely
            # repeat), and at most 65,536 of them.
            shared = _LOG1P.get(value)
            if shared is None:
                shared = log1p(value) if value >= 0 else -log1p(-value)
                if value % 1 == 0 and len(_LOG1P) < 65_536:
                    _LOG1P[value] = shared
            out[name] = shared
    return out


_LOG1P: dict[float, float] = {}  # model_input's signed log1p of whole numbers, by input value


# Per excluded-names tuple, per order of a vector's names: what each name becomes (see above).
_PLANS: dict[tuple[str, ...], dict[tuple[str, ...], tuple[str, ...]]] = {}


def _pipeline(model: str) -> Any:
    if model == "tree":
        # At most 8 deep (2^8 leaves, each with its per-input statistics), as the forest's trees:
        # unbounded, the tree only grows on a long history, and it is snapshotted whole.
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, max_depth=8, seed=0),
        )
    if model == "forest":
        # A tree ensemble: Adaptive Random Forest (Gomes et al. 2017), ten Hoeffding trees on
        # random feature subsets, each replaced in the background when its own drift detector
        # fires. The scaler changes no split; it keeps explain() on one scale for every model.
        # Bounded: with River's defaults (unbounded depth, a split try every 50 labels, each
        # label learned about 6 times) a snapshot after 20,000 labels of 45 inputs was 147 MB
        # and 1.6 ms a label; depth 8, 200 and once (Oza's online bagging) made it 11 MB and
        # 0.4 ms, ranking as well on that stream (AUC 0.856 against 0.848).
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            forest.ARFClassifier(n_models=10, max_depth=8, grace_period=200, lambda_value=1, seed=0),
        )
    if model != "logistic":
        raise ValueError(f"unknown model {model!r}: logistic, tree or forest")
    # AdaGrad adapts the step per feature: rare signals (a click, a refund) still move their weight.
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=AdaGrad(0.1), l2=1e-4),
    )


class AdaGrad(optim.AdaGrad):
    """River's AdaGrad, with the learning rate read once per step instead of once per weight.

    The same arithmetic in the same order, so the same weights bit for bit:

    >>> a, b = AdaGrad(0.1), optim.AdaGrad(0.1)
    >>> for _ in range(3):
    ...     wa = a.step({"x": 1.0, "y": -2.0}, {"x": 0.3, "y": -0.1})
    ...     wb = b.step({"x": 1.0, "y": -2.0}, {"x": 0.3, "y": -0.1})
    >>> wa == wb
    True
    """

    def _step_with_dict(self, w: Any, g: Any) -> Any:
        lr, eps, g2 = self.learning_rate, self.eps, self.g2
        for i, gi in g.items():
            acc = g2[i] + gi**2  # one lookup fewer than g2[i] += ... then g2[i]
            g2[i] = acc
            w[i] -= lr / (acc + eps) ** 0.5 * gi
        return w


class Window:
    """The most recent ``maxlen`` learned rows, dense, oldest first: what a refit fits.

    A ring buffer of one row per label over a growing column index (a column per input
    name, in order of first sight; absent inputs are 0 and not ``present``), so a refit
    stacks 20,000 rows with one fancy index instead of a Python loop.

    >>> w = Window(maxlen=3)
    >>> for i in range(4):
    ...     w.extend(np.full((1, i % 2 + 1), float(i)), np.ones((1, i % 2 + 1), bool), np.array([i % 2]))
    >>> values, present, labels = w.matrices(2)
    >>> len(w), values.tolist(), labels.tolist()
    (3, [[1.0, 1.0], [2.0, 0.0], [3.0, 3.0]], [1, 0, 1])
    """

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.values = np.zeros((0, 0))
        self.present = np.zeros((0, 0), dtype=bool)
        self.labels = np.zeros(0, dtype=np.int8)
        self.start = 0  # slot of the oldest row
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _slots(self) -> np.ndarray:
        return (self.start + np.arange(self.size)) % max(len(self.labels), 1)

    def _reserve(self, rows: int, width: int) -> None:
        capacity, held = self.values.shape
        rows = min(rows, self.maxlen)
        if rows <= capacity and width <= held:
            return
        # Doubling: a window that fills label by label is copied a logarithmic number of times.
        capacity = min(self.maxlen, max(rows, 2 * capacity, 256)) if rows > capacity else capacity
        width = max(width, held) + (8 if width > held else 0)
        order = self._slots()
        values = np.zeros((capacity, width))
        present = np.zeros((capacity, width), dtype=bool)
        labels = np.zeros(capacity, dtype=np.int8)
        values[: self.size, :held] = self.values[order]
        present[: self.size, :held] = self.present[order]
        labels[: self.size] = self.labels[order]
        self.values, self.present, self.labels, self.start = values, present, labels, 0

    def extend(self, values: np.ndarray, present: np.ndarray, labels: np.ndarray) -> None:
        """Append rows (oldest first); the oldest rows beyond ``maxlen`` go."""
        values, present, labels = values[-self.maxlen :], present[-self.maxlen :], labels[-self.maxlen :]
        n, width = values.shape
        self._reserve(self.size + n, width)
        capacity = len(self.labels)
        slots = (self.start + self.size + np.arange(n)) % capacity
        self.values[slots] = 0.0
        self.values[slots, :width] = values
        self.present[slots] = False
        self.present[slots, :width] = present
        self.labels[slots] = labels
        overflow = max(self.size + n - capacity, 0)
        self.start = (self.start + overflow) % capacity
        self.size += n - overflow

    def keep_last(self, rows: int) -> None:
        """Drop the oldest rows, keeping ``rows``."""
        if self.size > rows:
            self.start = (self.start + self.size - rows) % len(self.labels)
            self.size = rows

    def matrices(self, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of values, presence and labels, oldest first, over the first ``width`` columns."""
        capacity, held = self.values.shape
        cols = min(width, held)
        # The rows sit in at most two runs of slots (the ring wraps once): slices, not a gather.
        first = slice(self.start, min(self.start + self.size, capacity))
        second = slice(0, max(self.start + self.size - capacity, 0))
        values = np.zeros((self.size, width))
        present = np.zeros((self.size, width), dtype=bool)
        split = first.stop - first.start
        values[:split, :cols] = self.values[first, :cols]
        values[split:, :cols] = self.values[second, :cols]
        present[:split, :cols] = self.present[first, :cols]
        present[split:, :cols] = self.present[second, :cols]
        return values, present, np.concatenate([self.labels[first], self.labels[second]])


class OnlineModel:
    """One River pipeline with the bookkeeping a production score needs.

    ``version`` counts the labels learned, so two snapshots with the same
    version make the same predictions. The model is *ready* once it has seen
    ``min_labels`` labels with at least ``min_per_class`` of each class; until
    then callers use a cold-start rule. A drift detector (ADWIN) watches the
    prequential log loss.

    Adapting to change (settings, all constructor arguments):

    - ``consolidate_max`` (1,000): most labels between two refits. The refit is
      what follows a change, so it runs every few days of labels, not weekly.
    - ``half_life`` (0 = off): exponential forgetting in the refit; a label
      ``half_life`` labels older than the newest weighs half.
    - ``drift_refit`` (off) with ``drift_min_rows`` (1,000): on an ADWIN drift,
      keep only the labels of ADWIN's window (at least ``drift_min_rows``) and
      refit at once.
    - ``indicators`` (on): missing indicators are 0.0 when absent, so the model
      can use missingness (River's scaler maps a feature it only ever sees as
      1.0 to 0).

    ``half_life`` and ``drift_refit`` are off by default because they cost accuracy on the
    backtests: labels arrive in bursts (a campaign send matures thousands of
    examples at once with a few dozen positives), so a short window or
    half-life leaves too few positives, and ADWIN on log loss raises false
    alarms on real histories.

    >>> m = OnlineModel("demo", min_labels=20, min_per_class=5, consolidate_every=50,
    ...                 half_life=100)
    >>> for i in range(800):  # the concept flips at label 400; one label in 7 is noise
    ...     x = i % 2
    ...     y = x if i < 400 else 1 - x
    ...     _ = m.learn({"x": float(x)}, y if i % 7 else 1 - y)
    >>> m.predict({"x": 1.0}) < m.predict({"x": 0.0})
    True
    """

    def __init__(
        self,
        kind: str,
        model: str = "logistic",
        min_labels: int = 200,
        min_per_class: int = 20,
        consolidate_every: int = 0,
        window: int = 20_000,
        consolidate_max: int = 1_000,
        *,
        half_life: int = 0,
        drift_refit: bool = False,
        drift_min_rows: int = 1_000,
        indicators: bool = True,
        trial: int = 0,
        trial_max: int = 0,
        fresh: bool = False,
        outcome_label: int = 1,
    ) -> None:
        self.kind = kind
        self.model_name = model
        self.min_labels = min_labels
        self.min_per_class = min_per_class
        self.pipeline = _pipeline(model)
        # Consolidation: a warm-started full refit of the same logistic model on the most
        # recent ``window`` labels. Geometric schedule: after ``consolidate_every`` labels,
        # then every 20% more labels (at most ``consolidate_max``), so refits are frequent
        # while labels are few and cost stays bounded later. 0 = pure SGD.
        self.consolidate_every = consolidate_every if model == "logistic" else 0
        self.consolidate_max = consolidate_max
        self.recent = Window(window)
        self.columns: dict[str, int] = {}
        # Labels fitted but not yet in the pipeline (fewer than CHUNK; see _flush). They count
        # in ``version``, and a snapshot keeps them, so a model's state after a stream of labels
        # does not depend on how the stream was split into calls.
        self.batched = model == "logistic" and not fresh
        # Each with its label and how many missing indicators were known then (see _dense).
        self._buffer: list[tuple[ModelInput, int, int]] = []
        # predict's linear form of the pipeline (see _compile); derived, never pickled.
        self._linear: tuple[dict[str, tuple[float, float]], float] | None = None
        self.since_consolidation = 0
        self.consolidations = 0
        self.version = 0
        self.positives = 0
        # Forgetting: in a refit, a label ``half_life`` labels older than the newest counts
        # half as much (exponential weights, 0 = all labels in the window count the same).
        self.half_life = half_life
        # On a drift the detector signals, drop the labels from before the change (ADWIN keeps
        # only the recent part of its window that is consistent: its width, at least
        # ``drift_min_rows``) and refit at once instead of waiting for the schedule.
        self.drift_refit = drift_refit and self.consolidate_every > 0
        self.drift_min_rows = drift_min_rows
        self.drift = drift.ADWIN(delta=0.002)
        self.drifts = 0
        # Missing indicators (``<name>_missing``) are present only when 1: River's scaler
        # then sees a constant and maps it to 0, so the model could not use missingness.
        # With ``indicators`` every indicator seen once is passed as 0.0 when absent.
        self.indicators: dict[str, None] | None = {} if indicators else None
        # Champion/challenger against the cold-start rule (0 = serve as soon as ready).
        self.trial = trial
        self.proven = trial == 0
        # The trial window reaches back further (up to ``trial_max`` labels) while the last
        # ``trial`` hold fewer than TRIAL_MIN_PER_CLASS of a class: with outcomes rarer than
        # 3%, a fixed 1,000-label window never did, and the model never served.
        self.trial_max = max(trial_max, trial)
        self._trial: deque[tuple[float, float, int]] = deque(maxlen=max(self.trial_max, 1))
        self._since_check = 0
        # Until the model serves, the rule does: its points-to-probability map is a shape, not
        # a rate. Platt scaling on the matured labels turns it into one (see calibrate_rule).
        self._prior: deque[tuple[float, int]] = deque(maxlen=max(5 * RULE_FIT_LABELS, self.trial_max))
        self._prior_positives = 0  # among _prior
        self.rule_fit: tuple[float, float] | None = None
        self._prior_seen = 0
        # Fresh learning (fake-negative calibration): the model learns the stream of
        # learn_fresh samples, in which every example counts once with the slow class at
        # once and a second time with the outcome's class if the outcome comes; predict
        # turns that stream's probability back into the outcome's (see fnc_correct).
        self.fresh = fresh
        self.outcome_label = outcome_label
        self._trial_preds: dict[str, float] = {}  # fresh, on trial: example id -> prediction
        # Asked before a scheduled refit (with the kind's name); False puts it off to a later
        # label. None: refit on schedule. The live learner sets one (a minimum interval in
        # wall time, see streams.pipeline.Learner); never pickled, so a replay never has one.
        self.refit_gate: Callable[[str], bool] | None = None

    @property
    def ready(self) -> bool:
        """Whether the model serves scores: enough labels, and it has beaten the rule on trial."""
        return self.proven and self._enough_labels

    @property
    def _enough_labels(self) -> bool:
        negatives = self.version - self.positives
        return (
            self.version >= self.min_labels
            and self.positives >= self.min_per_class
            and negatives >= self.min_per_class
        )

    @property
    def window_labels(self) -> int:
        """Labels the next refit fits: the window, and the buffered labels it will take in."""
        return min(len(self.recent) + len(self._buffer), self.recent.maxlen)

    def _try(self, x: ModelInput, y: int, rule_prob: float, model_prob: float | None = None) -> None:
        """Trial: score the example before learning it, beside the rule; promote on a win.

        A model fitted on a few hundred labels often ranks worse than a sensible
        prior, and for weeks (measured: simulator churn, the model at AUC 0.58-0.63
        while its prior ranked the same customers at 0.66-0.68). So it serves only
        once it ranks ``trial`` matured labels (the most recent, a full window) at
        least as well as the rule did, with at least ``TRIAL_MIN_PER_CLASS`` of each
        class among them.
        """
        self._trial.append((self.predict(x) if model_prob is None else model_prob, rule_prob, y))
        self._since_check += 1
        # Checked every tenth of the window: a check costs the window's length.
        if self._since_check < max(self.trial // 10, 10, len(self._trial) // 10):
            return
        self._since_check = 0
        # A full window: on a few hundred labels, AUC differences of a few hundredths are noise.
        take = recent_with_both(np.fromiter((y for _, _, y in self._trial), dtype=np.int8),
                                self.trial, TRIAL_MIN_PER_CLASS)
        if take is None:
            return
        rows = np.asarray(self._trial)[-take:]
        outcomes = [int(v) for v in rows[:, 2]]
        if (auc(rows[:, 0].tolist(), outcomes) or 0.0) >= (auc(rows[:, 1].tolist(), outcomes) or 0.0):
            self.proven = True
            self._trial.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # Buffered inputs name their keys with the caller's string objects; pickle shares equal
        # strings only when they are one object. Spelled with the column index's own keys, a
        # snapshot of a restored model pickles to the same bytes as the model it came from.
        names = {k: k for k in self.columns}
        state["_buffer"] = [({names.get(k, k): v for k, v in x.items()}, y, n) for x, y, n in self._buffer]
        state["_linear"] = None
        state.pop("refit_gate", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Snapshots taken before these settings existed keep the behaviour they had.
        state.setdefault("half_life", 0)
        state.setdefault("drift_refit", False)
        state.setdefault("drift_min_rows", 1_000)
        state.setdefault("indicators", None)
        state.setdefault("trial", 0)
        state.setdefault("proven", True)
        state.setdefault("_trial", deque(maxlen=1))
        state.setdefault("_since_check", 0)
        state.setdefault("_prior", deque(maxlen=1))
        state.setdefault("rule_fit", None)
        state.setdefault("_prior_seen", 0)
        state.setdefault("fresh", False)
        state.setdefault("outcome_label", 1)
        state.setdefault("_trial_preds", {})
        state.setdefault("trial_max", state.get("trial", 0))
        if "_prior_positives" not in state:
            state["_prior_positives"] = sum(y for _, y in state.get("_prior", ()))
        state.setdefault("batched", False)
        state.setdefault("_buffer", [])
        state.setdefault("_linear", None)
        state["refit_gate"] = None
        # The pipeline's step names are its classes' own names in a new pipeline (interned
        # strings), so a snapshot pickles each once; unpickled, they are new strings and
        # pickled twice. The interned ones again: restore(s).snapshot() == s.
        steps = getattr(state.get("pipeline"), "steps", None)
        if isinstance(steps, dict):
            named = [(sys.intern(k) if type(k) is str else k, v) for k, v in steps.items()]
            steps.clear()
            steps.update(named)
        recent = state.get("recent")
        if isinstance(recent, deque):  # the window before it was a ring buffer
            window = Window(recent.maxlen or len(recent))
            for values, mask, y in recent:
                window.extend(values[None, :], mask[None, :], np.array([y]))
            state["recent"] = window
        self.__dict__.update(state)

    def _complete(self, x: ModelInput, learning: bool = False) -> ModelInput:
        """``x`` with every known missing indicator that is absent set to 0.0."""
        known = self.indicators
        if known is None:
            return x
        # Only learning extends the model's inputs: predict has no side effect. The set
        # difference (in C) is nearly always empty; new names are added in x's order.
        if learning and x.keys() - known.keys():
            for k in x:
                if k not in known and k.endswith("_missing"):
                    known[k] = None
        absent = [k for k in known if k not in x]
        return {**x, **dict.fromkeys(absent, 0.0)} if absent else x

    def calibrate_rule(self, rule_prob: float) -> float:
        """The cold-start rule's probability, Platt-scaled on its first matured labels.

        Identity until ``RULE_FIT_LABELS`` labels have matured (with
        ``TRIAL_MIN_PER_CLASS`` of each class); then fitted once, and frozen. Scaling
        is monotone, so the rule ranks exactly as before; what changes is that its
        0-100 value (and band) now means a rate on the model's scale, so the
        hand-over to the model does not jump, and pooled metrics do not mix
        two scales.

        >>> m = OnlineModel("demo", min_labels=10_000, min_per_class=5, trial=100)
        >>> for i in range(400):
        ...     _ = m.learn({"x": 0.0}, int(i % 10 == 0), rule_prob=0.9 if i % 10 == 0 else 0.6)
        >>> m.calibrate_rule(0.6) < 0.1 < m.calibrate_rule(0.9), m.calibrate_rule(0.6) < m.calibrate_rule(0.7)
        (True, True)
        """
        if self.rule_fit is None:
            # Before the fit, the rule's own value, kept off 0 and 1: a rule with no points says
            # "no chance", and every such customer who then bought (or churned) cost the
            # report's log loss 16 (its clip). Monotone, so the ranking is the rule's.
            return RULE_FLOOR + (1.0 - 2 * RULE_FLOOR) * rule_prob
        a, b = self.rule_fit
        return _sigmoid(a * _logit(rule_prob) + b)

    def _observe_rule(self, rule_prob: float, y: int) -> None:
        # One fit, then frozen: every refit would move every cold-start score at once, and
        # customers scored before and after it would no longer rank on one scale (measured:
        # refitting every 50 labels took simulator churn's monthly AUC from 0.66 to 0.60).
        if self.rule_fit is not None:
            return
        if len(self._prior) == self._prior.maxlen:
            self._prior_positives -= self._prior[0][1]
        self._prior.append((rule_prob, y))
        self._prior_positives += y
        self._prior_seen += 1
        if self._prior_seen < RULE_FIT_LABELS or self._prior_seen % 50:
            return
        if min(self._prior_positives, len(self._prior) - self._prior_positives) >= TRIAL_MIN_PER_CLASS:
            rows = np.asarray(self._prior)
            self.rule_fit = _platt(rows[:, 0], rows[:, 1])

    def for_serving(self) -> OnlineModel:
        """A copy that scores as this model does, without what only learning reads.

        The refit window, the chunk not yet fitted, the trial's and the rule fit's
        labels and the drift detector stay behind, so the copy is kilobytes where a
        snapshot is megabytes: what a sharded replay ships its workers after each batch
        (:mod:`scoring.parallel`). It must not learn.

        >>> m = OnlineModel("demo", min_labels=2, min_per_class=1, consolidate_every=100)
        >>> for i in range(300):
        ...     _ = m.learn({"x": float(i % 3)}, i % 2)
        >>> copy = m.for_serving()
        >>> copy.predict({"x": 2.0}) == m.predict({"x": 2.0}), copy.ready, len(copy.recent), len(m.recent)
        (True, True, 0, 300)
        """
        copy = object.__new__(OnlineModel)
        state = self.__dict__.copy()
        state.update(recent=Window(0), _buffer=[], _linear=None, drift=None, _trial_preds={},
                     _trial=deque(maxlen=1), _prior=deque(maxlen=1), refit_gate=None)
        copy.__dict__.update(state)
        return copy

    def predict(self, x: ModelInput) -> float:
        if self.batched:
            return self._predict_linear(x)
        proba = self.pipeline.predict_proba_one(self._complete(x))
        p = float(proba.get(True, 0.0))
        return fnc_correct(p, self.outcome_label) if self.fresh else p

    def learn(
        self, x: ModelInput, y: int, prob: float | None = None, rule_prob: float | None = None,
        example_id: str | None = None,
    ) -> bool:
        """Learn one matured example; returns True when drift was detected.

        ``prob`` is the served probability (drift watch), ``rule_prob`` the
        cold-start rule's on the same example (the trial; without it a model on
        trial is promoted as soon as it has enough labels). A ``fresh`` model
        does not fit matured labels (it learned them through :meth:`learn_fresh`);
        they still drive its trial, its rule calibration and its drift watch. Its
        trial uses the prediction it made before it first learned the example
        (kept by ``example_id``), not one from a model that has fitted it.
        """
        if y not in (0, 1):
            raise ValueError(f"{self.kind}: a label is 0 or 1, not {y!r}")
        if not -1e150 < sum(x.values()) < 1e150:  # one NaN, inf or 1e300 makes its scaler NaN for good
            bad = [k for k, v in x.items() if not -1e150 < v < 1e150]
            raise ValueError(f"{self.kind}: inputs are finite numbers below 1e150 (log-compress large ones), not {bad}")
        held = self._trial_preds.pop(example_id, None) if self.fresh and example_id else None
        if not self.ready and rule_prob is not None:  # the rule serves: calibrated, trial or not
            self._observe_rule(rule_prob, y)
        if not self.proven and self._enough_labels:
            if rule_prob is None:
                self.proven = True
            elif not self.fresh:
                self._try(x, y, rule_prob)
            elif held is not None:
                self._try(x, y, rule_prob, held)
            if self.proven:
                self._trial_preds.clear()
        if prob is not None:
            p = min(max(prob, 1e-6), 1 - 1e-6)
            self.drift.update(-math.log(p if y else 1 - p))
        if not self.fresh:
            self._fit_one(x, y)
        if prob is not None and self.drift.drift_detected:
            self.drifts += 1
            if self.drift_refit:
                self._flush()  # the labels up to this one belong to the window it trims
                self.recent.keep_last(max(int(self.drift.width), self.drift_min_rows))
                if self._enough_labels:
                    self.consolidate()
            return True
        return False

    def learn_fresh(self, x: ModelInput, y: int, example_id: str | None = None) -> None:
        """Learn one sample of the fresh stream (only a model built with ``fresh=True``).

        Every example is learned once with the class that needs the whole horizon
        (``1 - outcome_label``) when it is registered, and once more with
        ``outcome_label`` when its outcome happens: the model sees new behaviour
        within days instead of a horizon later, and :func:`fnc_correct` undoes the
        bias this stream has (Ktena et al. 2019, fake negative calibration).
        ``example_id`` on the first sample of an example (its registration) keeps
        the model's prediction before fitting it, for the trial at maturity.
        """
        if not self.fresh:
            raise ValueError(f"{self.kind}: learn_fresh on a model that learns at horizon close")
        if example_id is not None and not self.proven:
            self._trial_preds[example_id] = self.predict(x)
        self._fit_one(x, y)

    def _predict_linear(self, x: ModelInput) -> float:
        """``predict_proba_one`` of the pipeline, as one pass over ``x``'s inputs.

        Scaling then the dot product is linear in each input: ``a * value + c`` per
        input, with every known missing indicator's term for "absent" (value 0) in
        the constant. Equal to River's arithmetic up to float rounding:

        >>> m = OnlineModel("demo", min_labels=2, min_per_class=1)
        >>> for i in range(200):
        ...     _ = m.learn({"x": float(i % 3), "y_missing": 1.0} if i % 2 else {"x": 1.0}, i % 2)
        >>> river = m.pipeline.predict_proba_one(m._complete({"x": 2.0}))[True]
        >>> abs(m.predict({"x": 2.0}) - river) < 1e-12
        True
        """
        coef, z = self._linear or self._compile()
        get = coef.get
        for k, v in x.items():
            term = get(k)
            if term is not None:
                z += term[0] * v + term[1]
        return _sigmoid(z)

    def _compile(self) -> tuple[dict[str, tuple[float, float]], float]:
        scaler = self.pipeline["StandardScaler"]
        lr = self.pipeline["LogisticRegression"]
        weights = lr.weights
        known = self.indicators or {}
        coef: dict[str, tuple[float, float]] = {}
        constant = lr.intercept
        for k, var in scaler.vars.items():
            w = weights.get(k, 0.0)
            if not var or not w:
                continue  # River standardises a constant input to 0; no weight, no term
            std = var**0.5
            offset = -w * scaler.means[k] / std
            if k in known:
                constant += offset  # absent reads 0.0
                coef[k] = (w / std, 0.0)
            else:
                coef[k] = (w / std, offset)
        self._linear = coef, constant
        return self._linear

    def _fit_one(self, x: ModelInput, y: int) -> None:
        label = int(bool(y))
        self.version += 1
        self.positives += label
        if self.batched:
            known = self.indicators
            if known is not None and not self.columns.keys() >= x.keys():
                self._complete(x, learning=True)  # registers new indicators, in x's order
            self._buffer.append((x, label, 0 if known is None else len(known)))
            # Chunks grow with the labels seen (one in CHUNK_GROWTH, up to CHUNK): while labels are few,
            # each one still moves the model at once.
            if len(self._buffer) >= min(CHUNK, max(1, self.version // CHUNK_GROWTH)):
                self._flush()
        else:
            x = self._complete(x, learning=True)
            self.pipeline.learn_one(x, bool(y))
            if self.consolidate_every:
                self._remember(x, label)
        if self.consolidate_every:
            self.since_consolidation += 1
            due = max(self.consolidate_every, min(self.version // 5, self.consolidate_max))
            if self.since_consolidation >= due and self._enough_labels and (
                self.refit_gate is None or self.refit_gate(self.kind)
            ):
                self.consolidate()

    def consolidate(self) -> None:
        """Refit the logistic weights on the recent window, in the scaler's current space.

        Per-label SGD steps keep the model fresh between refits; the refit brings it
        toward the optimum a batch job would reach on the same labels, which matters
        most while labels are few. Bounded: ``window`` rows, warm-started. lbfgs stops
        at ``tol=1e-3``, short of the optimum (weights up to 0.6 apart on the 2k-customer
        simulation's windows); refits converged with newton-cholesky, at the same cost,
        moved AUC by -0.002 to +0.002 there, with and without web and campaign events, and
        on CDNOW lowered churn from 0.686 to 0.683 (propensity 0.743 both): the early stop
        regularises.
        """
        from sklearn.linear_model import LogisticRegression

        self._flush()
        self.since_consolidation = 0
        names = list(self.columns)
        raw, present, labels = self.recent.matrices(len(names))
        if not len(labels) or labels.min() == labels.max():
            return
        scaler = self.pipeline["StandardScaler"]
        lr = self.pipeline["LogisticRegression"]
        means = np.array([scaler.means.get(k, 0.0) for k in names])
        stds = np.sqrt(np.array([scaler.vars.get(k, 0.0) for k in names]))
        safe = np.where(stds > 0, stds, 1.0)
        # Absent inputs contribute nothing in River's linear model: keep them at 0 here too.
        # In place, the same arithmetic as (raw - means) / safe without two temporaries.
        z = raw
        z -= means
        z /= safe
        z[~(present & (stds > 0))] = 0.0
        current = lr.weights
        fit = LogisticRegression(C=1.0, max_iter=200, tol=1e-3, warm_start=True)
        fit.coef_ = np.array([[current.get(k, 0.0) for k in names]])
        fit.intercept_ = np.array([lr.intercept])
        fit.classes_ = np.array([0, 1])
        weights = None
        if self.half_life > 0:
            age = np.arange(len(labels) - 1, -1, -1, dtype=np.float64)
            weights = np.exp2(-age / self.half_life)
            # Same total weight as the rows, so C keeps its meaning as the window shrinks.
            weights *= len(labels) / weights.sum()
        fit.fit(z, labels, sample_weight=weights)
        for col, k in enumerate(names):
            lr._weights[k] = float(fit.coef_[0, col])
        lr.intercept = float(fit.intercept_[0])
        self._linear = None
        self.consolidations += 1

    def _remember(self, x: ModelInput, y: int) -> None:
        values, present = self._dense([x], [0])
        self.recent.extend(values, present, np.array([y], dtype=np.int8))

    def _dense(self, xs: Sequence[ModelInput], known: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows over the growing column index (new names get the next columns, in order).

        Row ``i`` also has the first ``known[i]`` missing indicators present (as 0.0
        where absent): what :meth:`_complete` gave it when it was learned.
        """
        columns = self.columns
        # Inputs come from one vector template: rows with the same names in the same order
        # share one column lookup and fill one block.
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, x in enumerate(xs):
            names = tuple(x)
            rows = groups.get(names)
            if rows is None:
                rows = groups[names] = []
                for k in names:
                    if k not in columns:
                        columns[k] = len(columns)
            rows.append(i)
        values = np.zeros((len(xs), len(columns)))
        present = np.zeros((len(xs), len(columns)), dtype=bool)
        for names, rows in groups.items():
            at = np.fromiter(map(columns.__getitem__, names), dtype=np.intp, count=len(names))
            block = np.fromiter(chain.from_iterable(xs[i].values() for i in rows), dtype=np.float64,
                                count=len(rows) * len(names)).reshape(len(rows), len(names))
            cells = np.ix_(np.asarray(rows, dtype=np.intp), at)
            values[cells] = block
            present[cells] = True
        if self.indicators and any(known):
            indicator_cols = np.fromiter(map(columns.__getitem__, self.indicators), dtype=np.intp)
            counts = np.asarray(known)[:, None]
            present[:, indicator_cols] |= np.arange(len(indicator_cols)) < counts
        return values, present

    def _flush(self) -> None:
        """Fit the buffered labels into the pipeline: scaler statistics, then AdaGrad steps.

        River's ``learn_one`` per label spent most of its time on dict work. Here the
        chunk is one dense matrix: the scaler merges the chunk's mean and variance
        into its running ones (Chan et al.; what ``StandardScaler.learn_many`` does,
        per column over the rows that have the input), and the logistic regression
        takes one AdaGrad step per label in order, with every gradient taken at the
        weights from before the chunk. The step sizes are the per-label ones (the
        squared gradients accumulate label by label); only the gradients are up to
        ``CHUNK`` labels stale, a small difference next to the refit that follows.
        """
        if not self._buffer:
            return
        xs = [x for x, _, _ in self._buffer]
        labels = np.array([y for _, y, _ in self._buffer], dtype=np.int8)
        known = [n for _, _, n in self._buffer]
        self._buffer = []
        self._linear = None
        values, present = self._dense(xs, known)
        names = list(self.columns)
        seen = np.flatnonzero(present.any(axis=0))
        keys = [names[j] for j in seen]
        mean, std = self._scale_many(keys, values[:, seen], present[:, seen])
        self._sgd_many(keys, values[:, seen], present[:, seen], labels, mean, std)
        if self.consolidate_every:
            self.recent.extend(values, present, labels)

    def _scale_many(
        self, keys: list[str], values: np.ndarray, present: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merge a chunk into the scaler's running statistics; returns the new means and stds."""
        scaler = self.pipeline["StandardScaler"]
        count = present.sum(axis=0).astype(np.float64)
        chunk_mean = values.sum(axis=0) / count  # values are 0 where absent
        deviation = np.where(present, values - chunk_mean, 0.0)
        chunk_var = (deviation * deviation).sum(axis=0) / count
        old_count = np.array([scaler.counts.get(k, 0) for k in keys], dtype=np.float64)
        old_mean = np.array([scaler.means.get(k, 0.0) for k in keys])
        old_var = np.array([scaler.vars.get(k, 0.0) for k in keys])
        total = old_count + count
        delta = chunk_mean - old_mean
        mean = old_mean + delta * (count / total)
        # Population variance, as River's Welford update keeps it.
        var = (old_count * old_var + count * chunk_var + delta * delta * (old_count * count / total)) / total
        for k, n, m, v in zip(keys, total.tolist(), mean.tolist(), var.tolist(), strict=True):
            scaler.counts[k] = int(n)
            scaler.means[k] = m
            scaler.vars[k] = v
        return mean, np.sqrt(var)

    def _sgd_many(
        self, keys: list[str], values: np.ndarray, present: np.ndarray, labels: np.ndarray,
        mean: np.ndarray, std: np.ndarray,
    ) -> None:
        """One AdaGrad step per row, in order, each with its gradient at the chunk's start."""
        lr = self.pipeline["LogisticRegression"]
        opt = lr.optimizer
        # River standardises an input of zero variance to 0, and a present input with a zero
        # value still takes its L2 shrinkage; an absent one takes no step at all.
        z = np.where(present & (std > 0), (values - mean) / np.where(std > 0, std, 1.0), 0.0)
        current = lr.weights
        w = np.array([current.get(k, 0.0) for k in keys])
        raw = np.clip(z @ w + lr.intercept, -50.0, 50.0)
        loss_gradient = 1.0 / (1.0 + np.exp(-raw)) - labels  # log loss: sigmoid(raw) - y
        grad = np.where(present, loss_gradient[:, None] * z + lr.l2 * w, 0.0)
        start = opt.n_iterations
        rates = _rates(opt.lr, start, len(labels))
        g2 = np.array([opt.g2.get(k, 0.0) for k in keys]) + np.cumsum(grad * grad, axis=0)
        w = w - (rates[:, None] / np.sqrt(g2 + opt.eps) * grad).sum(axis=0)
        intercept_rates = _rates(lr.intercept_lr, start, len(labels))
        lr.intercept = float(lr.intercept - (intercept_rates * loss_gradient).sum())
        opt.n_iterations = start + len(labels)
        for k, wk, acc in zip(keys, w.tolist(), g2[-1].tolist(), strict=True):
            lr._weights[k] = wk
            opt.g2[k] = acc

    def explain(self, x: ModelInput, top: int = 3) -> list[tuple[str, float]]:
        """Top contributing features.

        Linear models: weight x standardised value (the term's share of the
        log-odds). Trees and forests have no additive terms: each input's
        contribution is the log-odds the score loses when that input alone is
        moved to its mean (occlusion; for a linear model it is exactly the term
        above). Only the ``EXPLAIN_CANDIDATES`` inputs farthest from their means
        (by z-score) are tried, so a reason costs that many predictions.

        >>> m = OnlineModel("demo", "tree", min_labels=2, min_per_class=1)
        >>> for i in range(600):  # "a" decides the label; "b" is noise
        ...     _ = m.learn({"a": float(i % 2), "b": float(i % 7)}, i % 2)
        >>> [name for name, _ in m.explain({"a": 1.0, "b": 6.0}, top=1)]
        ['a']
        """
        scaler = self.pipeline["StandardScaler"]
        full = self._complete(x)
        z = scaler.transform_one(full)
        if self.model_name == "logistic":
            weights = self.pipeline["LogisticRegression"].weights
            terms = {k: weights.get(k, 0.0) * v for k, v in z.items()}
        else:
            terms = self._occlusion(full, z, scaler.means)
        ranked = heapq.nsmallest(top, terms.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        return [(k, round(v, 4)) for k, v in ranked if v != 0.0]

    def _occlusion(self, x: ModelInput, z: Mapping[str, float], means: Mapping[str, float]) -> dict[str, float]:
        base = _logit(self.predict(x))
        unusual = heapq.nsmallest(EXPLAIN_CANDIDATES, z.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        return {
            k: base - _logit(self.predict({**x, k: means.get(k, 0.0)}))
            for k, zk in unusual if zk != 0.0
        }

    def summary(self, top: int = 10) -> dict[str, Any]:
        """What the model is now, for people: labels, whether it serves, and what it weighs.

        ``weights`` (logistic models): the largest coefficients, per standard
        deviation of the (log-compressed) input, so they compare across features;
        positive raises the probability. Labels still buffered for the next chunk
        are not in them yet. Reading changes nothing.

        >>> m = OnlineModel("demo", min_labels=2, min_per_class=1, trial=0)
        >>> for i in range(64):
        ...     _ = m.learn({"visits": float(i % 2), "noise": 1.0}, i % 2)
        >>> s = m.summary(top=1)
        >>> s["labels"], s["positives"], s["serving"], s["weights"][0]["feature"]
        (64, 32, True, 'visits')
        """
        out: dict[str, Any] = {
            "kind": self.kind, "model": self.model_name, "labels": self.version,
            "positives": self.positives, "serving": self.ready, "trial_passed": self.proven,
            "rule_calibrated": self.rule_fit is not None, "refits": self.consolidations,
            "drifts": self.drifts,
        }
        if self.model_name == "logistic":
            lr = self.pipeline["LogisticRegression"]
            weights = dict(lr.weights)  # a copy: the learner may add inputs meanwhile
            ranked = heapq.nsmallest(top, weights.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
            out["intercept"] = round(float(lr.intercept), 4)
            out["weights"] = [{"feature": k, "weight": round(float(w), 4)} for k, w in ranked if w]
        return out

    def snapshot(self) -> bytes:
        """Bytes that :meth:`restore` turns back into an identical model (trusted storage only)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def restore(blob: bytes) -> OnlineModel:
        model = pickle.loads(blob)  # noqa: S301 - snapshots come from our own store
        if not isinstance(model, OnlineModel):
            raise TypeError("not an OnlineModel snapshot")
        return model


def _rates(schedule: Any, start: int, n: int) -> np.ndarray:
    """A River learning-rate schedule's rates for steps ``start`` .. ``start + n - 1``.

    >>> _rates(optim.schedulers.Constant(0.1), 5, 3).tolist()
    [0.1, 0.1, 0.1]
    """
    if isinstance(schedule, optim.schedulers.Constant):
        return np.full(n, float(schedule.learning_rate))  # ours: no call per step
    return np.array([schedule.get(t) for t in range(start, start + n)], dtype=np.float64)


def recent_with_both(labels: np.ndarray, least: int, per_class: int) -> int | None:
    """How many of the most recent labels to take: at least ``least``, and as many more as it
    takes to hold ``per_class`` of each class; None if even all of them do not.

    >>> recent_with_both(np.array([0, 1, 1, 0, 1, 0]), 2, 2)  # the last 4 hold two of each
    4
    >>> recent_with_both(np.array([0, 1, 1, 0, 1, 0]), 5, 2), recent_with_both(np.array([0, 0, 1]), 2, 2)
    (5, None)
    """
    n = len(labels)
    if n < least:
        return None
    ones = np.cumsum(labels[::-1], dtype=np.int64)
    zeros = np.arange(1, n + 1) - ones
    both = np.flatnonzero((ones >= per_class) & (zeros >= per_class))
    return max(least, int(both[0]) + 1) if both.size else None


def fnc_correct(p: float, outcome_label: int = 1) -> float:
    """The outcome-based probability behind a model of the fake-negative stream.

    In that stream every example appears once with the slow class and, if its
    outcome happens (probability ``q``), once more with ``outcome_label``; a
    calibrated model of it gives ``r = q / (1 + q)`` for the outcome's class, so
    ``q = r / (1 - r)`` (Ktena et al. 2019, "Addressing delayed feedback for
    continuous training with neural networks in CTR prediction"). Monotone: the
    ranking, and so the AUC, is the stream model's.

    >>> round(fnc_correct(0.2), 4), fnc_correct(0.5), fnc_correct(0.9)
    (0.25, 1.0, 1.0)
    >>> round(fnc_correct(0.8, outcome_label=0), 4)  # churn: the outcome (a purchase) is class 0
    0.75
    """
    r = p if outcome_label == 1 else 1.0 - p
    q = 1.0 if r >= 0.5 else r / (1.0 - r)
    return q if outcome_label == 1 else 1.0 - q


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def _platt(probs: np.ndarray, labels: np.ndarray, iterations: int = 25) -> tuple[float, float]:
    """``(a, b)`` of ``sigmoid(a * logit(p) + b)`` by Newton's method (lightly ridged); ``a > 0``.

    >>> a, b = _platt(np.array([0.2, 0.2, 0.8, 0.8]), np.array([0, 1, 1, 1]))
    >>> a > 0 and _sigmoid(a * _logit(0.8) + b) > _sigmoid(a * _logit(0.2) + b)
    True
    """
    z = np.log(np.clip(probs, 1e-6, 1 - 1e-6) / (1 - np.clip(probs, 1e-6, 1 - 1e-6)))
    x = np.column_stack([z, np.ones_like(z)])
    w = np.zeros(2)
    ridge = 1e-3 * np.eye(2)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (p - labels) + ridge @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    # A rule that ranks backwards must not be turned around here (nor flattened to ties).
    return max(float(w[0]), 1e-3), float(w[1])


def rule_points(vector: Mapping[str, float | None], weights: Mapping[str, float]) -> float:
    """Points of a rule score: sum of weight x feature value (missing counts as 0).

    >>> rule_points({"a": 2.0, "b": None}, {"a": 3.0, "b": 5.0})
    6.0
    """
    # A loop, not sum() over a generator: the same additions in the same order, in less time.
    total = 0.0
    get = vector.get
    for name, w in weights.items():
        total += w * (get(name) or 0.0)
    return total


def points_to_probability(points: float, scale: float) -> float:
    """Saturating map of points to [0, 1): ``1 - exp(-points / scale)``.

    >>> round(points_to_probability(40, 40), 3), points_to_probability(-5, 40)
    (0.632, 0.0)
    """
    return 1.0 - math.exp(-max(points, 0.0) / scale)


def rule_explain(vector: Mapping[str, float | None], weights: Mapping[str, float], top: int = 3) -> list[tuple[str, float]]:
    """Top point contributions of a rule score: weight x value, largest magnitude first.

    >>> rule_explain({"clicks_30d": 2.0, "orders_90d": 1.0, "unsubscribed": 0.0},
    ...              {"clicks_30d": 4.0, "orders_90d": 10.0, "unsubscribed": -50.0})
    [('orders_90d', 10.0), ('clicks_30d', 8.0)]
    """
    terms = {n: w * (vector.get(n) or 0.0) for n, w in weights.items()}
    ranked = sorted(terms.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    return [(k, round(v, 4)) for k, v in ranked[:top] if v != 0.0]

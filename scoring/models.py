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
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from river import compose, drift, linear_model, optim, preprocessing, tree

from scoring.metrics import auc

ModelInput = dict[str, float]
# A trial needs this many labels of each class before its AUCs mean anything.
TRIAL_MIN_PER_CLASS = 30
# The cold-start rule is calibrated once, on its first this many matured labels (or more,
# until TRIAL_MIN_PER_CLASS of each class have come).
RULE_FIT_LABELS = 200


def model_input(vector: Mapping[str, float | None], exclude: Iterable[str] = ()) -> ModelInput:
    """Feature vector -> model input (log-compressed, missing indicators, no raw times).

    >>> model_input({"orders_total": 3.0, "last_purchase_at": 1.7e12, "days_since_last_click": None})
    {'orders_total': 1.3862943611198906, 'days_since_last_click_missing': 1.0}
    """
    skip = exclude if isinstance(exclude, tuple) else tuple(exclude)
    plan = _PLANS.get(skip)
    if plan is None:
        plan = _PLANS[skip] = {}
    log1p = math.log1p
    out: ModelInput = {}
    for name, value in vector.items():
        missing = plan.get(name)
        if missing is None:
            # Decided once per name: dropped ("") or the name of its missing indicator.
            missing = plan[name] = "" if name.endswith("_at") or name in skip else name + "_missing"
        if not missing:
            continue
        if value is None:
            out[missing] = 1.0
        elif value >= 0:
            out[name] = log1p(value)
        else:
            out[name] = -log1p(-value)
    return out


# Per excluded-names tuple: feature name -> its missing-indicator name, or "" if dropped.
_PLANS: dict[tuple[str, ...], dict[str, str]] = {}


def _pipeline(model: str) -> Any:
    if model == "tree":
        return compose.Pipeline(
            preprocessing.StandardScaler(),
            tree.HoeffdingAdaptiveTreeClassifier(grace_period=100, seed=0),
        )
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
        self.recent: deque[tuple[np.ndarray, np.ndarray, int]] = deque(maxlen=window)
        self.columns: dict[str, int] = {}
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
        self._trial: deque[tuple[float, float, int]] = deque(maxlen=max(trial, 1))
        self._since_check = 0
        # Until the model serves, the rule does: its points-to-probability map is a shape, not
        # a rate. Platt scaling on the matured labels turns it into one (see calibrate_rule).
        self._prior: deque[tuple[float, int]] = deque(maxlen=5 * RULE_FIT_LABELS)
        self.rule_fit: tuple[float, float] | None = None
        self._prior_seen = 0
        # Fresh learning (fake-negative calibration): the model learns the stream of
        # learn_fresh samples, in which every example counts once with the slow class at
        # once and a second time with the outcome's class if the outcome comes; predict
        # turns that stream's probability back into the outcome's (see fnc_correct).
        self.fresh = fresh
        self.outcome_label = outcome_label
        self._trial_preds: dict[str, float] = {}  # fresh, on trial: example id -> prediction

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
        if self._since_check < max(self.trial // 10, 10):
            return
        self._since_check = 0
        rows = np.asarray(self._trial)
        labels = rows[:, 2]
        positives = int(labels.sum())
        # A full window: on a few hundred labels, AUC differences of a few hundredths are noise.
        if len(labels) < self.trial or min(positives, len(labels) - positives) < TRIAL_MIN_PER_CLASS:
            return
        outcomes = [int(v) for v in labels]
        if (auc(rows[:, 0].tolist(), outcomes) or 0.0) >= (auc(rows[:, 1].tolist(), outcomes) or 0.0):
            self.proven = True
            self._trial.clear()

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
            return rule_prob
        a, b = self.rule_fit
        return _sigmoid(a * _logit(rule_prob) + b)

    def _observe_rule(self, rule_prob: float, y: int) -> None:
        # One fit, then frozen: every refit would move every cold-start score at once, and
        # customers scored before and after it would no longer rank on one scale (measured:
        # refitting every 50 labels took simulator churn's monthly AUC from 0.66 to 0.60).
        if self.rule_fit is not None:
            return
        self._prior.append((rule_prob, y))
        self._prior_seen += 1
        if self._prior_seen < RULE_FIT_LABELS or self._prior_seen % 50:
            return
        rows = np.asarray(self._prior)
        positives = int(rows[:, 1].sum())
        if min(positives, len(rows) - positives) >= TRIAL_MIN_PER_CLASS:
            self.rule_fit = _platt(rows[:, 0], rows[:, 1])

    def predict(self, x: ModelInput) -> float:
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
        held = self._trial_preds.pop(example_id, None) if self.fresh and example_id else None
        if not self.proven and rule_prob is not None:
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
                keep = max(int(self.drift.width), self.drift_min_rows)
                while len(self.recent) > keep:
                    self.recent.popleft()
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

    def _fit_one(self, x: ModelInput, y: int) -> None:
        x = self._complete(x, learning=True)
        self.pipeline.learn_one(x, bool(y))
        self.version += 1
        self.positives += int(bool(y))
        if self.consolidate_every:
            self._remember(x, int(bool(y)))
            self.since_consolidation += 1
            due = max(self.consolidate_every, min(self.version // 5, self.consolidate_max))
            if self.since_consolidation >= due and self._enough_labels:
                self.consolidate()

    def consolidate(self) -> None:
        """Refit the logistic weights on the recent window, in the scaler's current space.

        Per-label SGD steps keep the model fresh between refits; the refit brings it
        to the optimum a batch job would reach on the same labels, which matters
        most while labels are few. Bounded: ``window`` rows, warm-started.
        """
        from sklearn.linear_model import LogisticRegression

        self.since_consolidation = 0
        n = len(self.recent)
        labels = np.fromiter((y for _, _, y in self.recent), dtype=np.int8, count=n)
        if labels.min() == labels.max():
            return
        scaler = self.pipeline["StandardScaler"]
        lr = self.pipeline["LogisticRegression"]
        names = list(self.columns)
        width = len(names)
        raw = np.zeros((n, width))
        present = np.zeros((n, width), dtype=bool)
        for i, (values, mask, _) in enumerate(self.recent):
            raw[i, : len(values)] = values
            present[i, : len(mask)] = mask
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
        self.consolidations += 1

    def _remember(self, x: ModelInput, y: int) -> None:
        # Dense rows over a growing column index: the refit stacks them without dict work.
        columns = self.columns
        if x.keys() - columns.keys():
            for k in x:
                if k not in columns:
                    columns[k] = len(columns)
        at = np.fromiter(map(columns.__getitem__, x), dtype=np.intp, count=len(x))
        values = np.zeros(len(columns))
        values[at] = np.fromiter(x.values(), dtype=np.float64, count=len(x))
        mask = np.zeros(len(columns), dtype=bool)
        mask[at] = True
        self.recent.append((values, mask, y))

    def explain(self, x: ModelInput, top: int = 3) -> list[tuple[str, float]]:
        """Top contributing features.

        Linear models: weight x standardised value (the term's share of the
        log-odds). Trees: the most unusual inputs by absolute z-score (what sets
        this customer apart), since a tree has no additive terms.
        """
        scaler = self.pipeline["StandardScaler"]
        z = scaler.transform_one(self._complete(x))
        if self.model_name == "logistic":
            weights = self.pipeline["LogisticRegression"].weights
            terms = {k: weights.get(k, 0.0) * v for k, v in z.items()}
        else:
            terms = dict(z)
        ranked = heapq.nsmallest(top, terms.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        return [(k, round(v, 4)) for k, v in ranked if v != 0.0]

    def snapshot(self) -> bytes:
        """Bytes that :meth:`restore` turns back into an identical model (trusted storage only)."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def restore(blob: bytes) -> OnlineModel:
        model = pickle.loads(blob)  # noqa: S301 - snapshots come from our own store
        if not isinstance(model, OnlineModel):
            raise TypeError("not an OnlineModel snapshot")
        return model


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
    return float(sum(w * (vector.get(name) or 0.0) for name, w in weights.items()))


def points_to_probability(points: float, scale: float) -> float:
    """Saturating map of points to [0, 1): ``1 - exp(-points / scale)``.

    >>> round(points_to_probability(40, 40), 3), points_to_probability(-5, 40)
    (0.632, 0.0)
    """
    return 1.0 - math.exp(-max(points, 0.0) / scale)


def rule_explain(vector: Mapping[str, float | None], weights: Mapping[str, float], top: int = 3) -> list[tuple[str, float]]:
    """Top point contributions of a rule score."""
    terms = {n: w * (vector.get(n) or 0.0) for n, w in weights.items()}
    ranked = sorted(terms.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
    return [(k, round(v, 4)) for k, v in ranked[:top] if v != 0.0]

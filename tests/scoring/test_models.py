"""Online model adaptation: forgetting in the refit, drift-triggered refit, missing
indicators, snapshots."""

from __future__ import annotations

import math
import pickle
import random
from collections import deque
from collections.abc import Iterator

import numpy as np
import pytest

from scoring.metrics import auc
from scoring.models import OnlineModel

Example = tuple[dict[str, float], int]


def _stream(n: int, seed: int, flip_at: int | None = None) -> Iterator[Example]:
    """Two signals; at ``flip_at`` the concept flips (what predicted a purchase now predicts none)."""
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(0, 1)
        sign = -1.0 if flip_at is not None and i >= flip_at else 1.0
        logit = sign * (2.0 * a - 1.0 * b) - 0.5
        yield {"a": a, "b": b}, int(rng.random() < 1 / (1 + math.exp(-logit)))


def _run(model: OnlineModel, rows: list[Example]) -> list[float]:
    """Prequential: score each example, then learn it with its score; returns per-example log loss."""
    losses = []
    for x, y in rows:
        p = min(max(model.predict(x), 1e-9), 1 - 1e-9)
        losses.append(-math.log(p if y else 1 - p))
        model.learn(x, y, p if model.ready else None)
    return losses


def _model(**kw: object) -> OnlineModel:
    # Positional arguments as the registry passes them: kind, model, min_labels, min_per_class,
    # consolidate_every, window.
    return OnlineModel("k", "logistic", 50, 10, 200, 20_000, **kw)  # type: ignore[arg-type]


FLIP = 8_000
AFTER = 2_000
# Both adaptive settings on (the defaults leave them off: see OnlineModel's docstring).
ADAPTIVE = {"half_life": 2_000, "drift_refit": True}


def test_adaptive_model_recovers_faster_after_a_concept_flip() -> None:
    rows = list(_stream(FLIP + 6_000, seed=1, flip_at=FLIP))
    plain = _model(half_life=0, drift_refit=False)
    adaptive = _model(**ADAPTIVE)
    plain_loss = _run(plain, rows)
    adaptive_loss = _run(adaptive, rows)
    window = slice(FLIP, FLIP + AFTER)
    plain_after = sum(plain_loss[window]) / AFTER
    adaptive_after = sum(adaptive_loss[window]) / AFTER
    assert adaptive.drifts >= 1 and adaptive.consolidations > plain.consolidations
    # The plain model still averages the two concepts over its 20k window: near chance after 2k labels.
    assert adaptive_after < plain_after - 0.1
    # And the adaptive model is back near the loss it had before the flip.
    before = sum(adaptive_loss[FLIP - AFTER : FLIP]) / AFTER
    late = sum(adaptive_loss[FLIP + AFTER : FLIP + 2 * AFTER]) / AFTER
    assert late < before + 0.05


def test_adaptive_model_loses_little_when_nothing_changes() -> None:
    rows = list(_stream(14_000, seed=2))
    plain = _model(half_life=0, drift_refit=False)
    adaptive = _model(**ADAPTIVE)
    plain_loss = _run(plain, rows)
    adaptive_loss = _run(adaptive, rows)
    tail = slice(4_000, None)
    n = len(rows) - 4_000
    assert sum(adaptive_loss[tail]) / n < sum(plain_loss[tail]) / n + 0.01


def test_drift_keeps_only_the_labels_since_the_change_and_refits() -> None:
    model = _model(half_life=0, drift_refit=True, drift_min_rows=300)
    rows = list(_stream(FLIP + 3_000, seed=3, flip_at=FLIP))
    _run(model, rows[:FLIP])
    assert model.drifts == 0 and model.window_labels == FLIP
    refits_before = model.consolidations
    detected_at = None
    for i, (x, y) in enumerate(rows[FLIP:], start=FLIP):
        if model.learn(x, y, model.predict(x)):
            detected_at = i
            break
    assert detected_at is not None, "the flip was not detected"
    # At once: a refit, on ADWIN's kept window (at least drift_min_rows), not on the schedule.
    assert model.consolidations == refits_before + 1
    assert model.window_labels == max(int(model.drift.width), 300) < FLIP
    # A thousand labels later, the old concept is gone from the refit; without the drift
    # handling the window would still hold 8,000 labels of it.
    _run(model, rows[detected_at + 1 : FLIP + 1_000])
    assert model.pipeline["LogisticRegression"].weights["a"] < 0
    plain = _model(half_life=0, drift_refit=False)
    _run(plain, rows[: FLIP + 1_000])
    assert plain.pipeline["LogisticRegression"].weights["a"] > 0


def test_drift_refit_off_changes_nothing_but_the_count() -> None:
    model = _model(half_life=0, drift_refit=False)
    _run(model, list(_stream(FLIP + 3_000, seed=3, flip_at=FLIP)))
    assert model.drifts >= 1 and model.window_labels == FLIP + 3_000


def test_forgetting_weights_recent_labels_more() -> None:
    """Without a detector's help, a short half-life alone follows the flipped concept."""
    rows = list(_stream(FLIP + 3_000, seed=4, flip_at=FLIP))
    forgetful = _model(half_life=1_000, drift_refit=False)
    plain = _model(half_life=0, drift_refit=False)
    for m in (forgetful, plain):
        for x, y in rows:
            m.learn(x, y)
        m.consolidate()
    assert forgetful.pipeline["LogisticRegression"].weights["a"] < 0
    assert plain.pipeline["LogisticRegression"].weights["a"] > 0


def _state(m: OnlineModel) -> tuple[object, ...]:
    lr = m.pipeline["LogisticRegression"]
    scaler = m.pipeline["StandardScaler"]
    rows = [a.tolist() for a in m.recent.matrices(len(m.columns))] + [m._buffer]
    return (dict(lr.weights), lr.intercept, dict(scaler.means), dict(scaler.vars), rows, m.version,
            m.positives, m.drifts, m.consolidations, m.since_consolidation,
            m.drift.width, m.drift.estimation, m.drift.variance)


def test_snapshot_restore_is_identical_after_drift_handling() -> None:
    rows = list(_stream(FLIP + 4_000, seed=5, flip_at=FLIP))
    model = _model(**ADAPTIVE)
    _run(model, rows[: FLIP + 2_000])
    assert model.drifts >= 1 and model.window_labels < FLIP + 2_000
    clone = OnlineModel.restore(model.snapshot())
    assert _state(clone) == _state(model)
    rest = rows[FLIP + 2_000 :]
    # The same scores, bit for bit, and the same drift handling from there on.
    assert _run(clone, rest) == _run(model, rest)
    assert _state(clone) == _state(model)
    # The same bytes from the first round trip on (the pipeline's step names pickled twice
    # after a restore, once before it).
    assert clone.snapshot() == model.snapshot()
    again = OnlineModel.restore(clone.snapshot())
    assert again.snapshot() == clone.snapshot()


@pytest.mark.parametrize("name", ["logistic", "tree", "forest"])
@pytest.mark.parametrize("fresh", [False, True])
def test_a_restored_model_snapshots_to_the_same_bytes(name: str, fresh: bool) -> None:
    model = OnlineModel("k", name, 2, 1, 50, fresh=fresh)
    for i in range(300):
        x = {"a": float(i % 3), "b": float(i % 5), "c_missing": 1.0} if i % 4 else {"a": float(i % 3), "b": 1.0}
        (model.learn_fresh if fresh else model.learn)(x, i % 2)
    blob = model.snapshot()
    clone = OnlineModel.restore(blob)
    assert clone.snapshot() == blob
    probe = [{"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 1.0, "c_missing": 1.0}]
    assert [clone.predict(x) for x in probe] == [model.predict(x) for x in probe]


def test_same_stream_same_model() -> None:
    rows = list(_stream(FLIP + 2_000, seed=6, flip_at=FLIP))
    a, b = _model(**ADAPTIVE), _model(**ADAPTIVE)
    _run(a, rows)
    _run(b, rows)
    assert a.snapshot() == b.snapshot()


def test_missing_indicators_carry_information() -> None:
    """Only missingness predicts the label: usable only when an absent indicator reads 0."""
    rng = random.Random(7)
    rows: list[Example] = []
    for _ in range(3_000):
        missing = rng.random() < 0.5
        x = {"noise": rng.gauss(0, 1)} | ({"last_click_missing": 1.0} if missing else {"last_click": 1.0})
        rows.append((x, int(rng.random() < (0.1 if missing else 0.6))))
    with_ind, without = _model(), _model(indicators=False)
    for m in (with_ind, without):
        for x, y in rows:
            m.learn(x, y)
    never, clicked = {"noise": 0.0, "last_click_missing": 1.0}, {"noise": 0.0, "last_click": 1.0}
    assert with_ind.predict(clicked) - with_ind.predict(never) > 0.3
    # Without: both inputs standardise to nothing (constant when present), the model cannot tell.
    assert abs(without.predict(clicked) - without.predict(never)) < 0.05
    assert list(with_ind.indicators or {}) == ["last_click_missing"]


def test_only_learning_adds_an_indicator() -> None:
    model = _model()
    for x, y in list(_stream(500, seed=8)):
        model.learn(x, y)
    model.predict({"a": 1.0, "new_missing": 1.0})
    assert model.indicators == {}
    model.learn({"a": 1.0, "new_missing": 1.0}, 1)
    assert list(model.indicators or {}) == ["new_missing"]


def test_snapshots_from_before_the_settings_keep_their_behaviour() -> None:
    model = _model(indicators=False)
    rows = list(_stream(600, seed=9))
    _run(model, rows[:300])
    state = pickle.loads(pickle.dumps(vars(model)))  # a deep copy, as a stored snapshot is
    for name in ("half_life", "drift_refit", "drift_min_rows", "indicators", "trial", "proven",
                 "_trial", "_since_check", "_prior", "rule_fit", "_prior_seen"):
        del state[name]
    old = OnlineModel.__new__(OnlineModel)
    old.__setstate__(state)
    assert (old.half_life, old.drift_refit, old.indicators) == (0, False, None)
    assert _run(old, rows[300:]) == _run(model, rows[300:])


def _trial_run(rule_knows_more: bool) -> tuple[OnlineModel, int | None]:
    """Serve the rule until the model is ready; returns the model and the label it took over at.

    The model sees only ``b``. The rule either sees the whole signal (``a`` too: no model
    on ``b`` alone can rank as well) or is noise.
    """
    model = _model(trial=400)
    noise = random.Random(1)
    took_over = None
    for i, (x, y) in enumerate(_stream(4_000, seed=4)):
        if model.ready and took_over is None:
            took_over = i
        signal = 2.0 * x["a"] - 1.0 * x["b"]
        rule = 1 / (1 + math.exp(-signal)) if rule_knows_more else noise.random()
        model.learn({"b": x["b"]}, y, None, rule)
    return model, took_over


def test_a_model_on_trial_serves_only_once_it_ranks_as_well_as_the_rule() -> None:
    beats_noise, at = _trial_run(rule_knows_more=False)
    # The trial opens at 50 labels (the cold-start minimum) and judges a full window of 400.
    assert beats_noise.ready and at is not None and 450 <= at <= 500
    loses, never = _trial_run(rule_knows_more=True)
    assert not loses.ready and never is None
    assert loses.version == 4_000  # it kept learning all along, on trial
    assert not _model(trial=400).ready and _model(trial=0).proven


def test_without_the_rule_probability_a_trial_ends_when_labels_suffice() -> None:
    model = _model(trial=400)
    for x, y in _stream(60, seed=2):
        model.learn(x, y)
    assert model.ready


def test_the_rule_serving_cold_start_is_calibrated_to_the_matured_labels() -> None:
    # A rule that ranks well but speaks another scale: probabilities of 0.5-0.9 for an outcome
    # that happens about 10% of the time.
    rng = random.Random(3)
    model = _model(trial=1_000)
    rows = []
    for _ in range(3_000):
        signal = rng.random()
        y = int(rng.random() < 0.2 * signal)
        rows.append((0.5 + 0.4 * signal, y))
    for rule, y in rows[:1_500]:
        model.learn({"c": 1.0}, y, None, rule)  # a model with nothing to learn from stays on trial
    assert not model.ready
    held_out = rows[1_500:]
    served = [model.calibrate_rule(rule) for rule, _ in held_out]
    observed = sum(y for _, y in held_out) / len(held_out)
    assert abs(sum(served) / len(served) - observed) < 0.02  # the rate, not the rule's 0.7
    ranked = sorted(held_out, key=lambda r: r[0])
    assert [model.calibrate_rule(r) for r, _ in ranked] == sorted(model.calibrate_rule(r) for r, _ in ranked)
    # No labels yet: the rule as it is, kept off certainty (0 points is not "no chance").
    fresh = _model()
    assert abs(fresh.calibrate_rule(0.7) - 0.7) < 0.001 and 0 < fresh.calibrate_rule(0.0) < fresh.calibrate_rule(0.01)
    assert fresh.calibrate_rule(1.0) < 1.0


@pytest.mark.parametrize("trial", [1_000, 0])
def test_the_cold_start_rule_is_calibrated_while_it_serves_whatever_the_trial(trial: int) -> None:
    # trial: 0 switched the calibration off: it ran only while the model was unproven.
    model = OnlineModel("k", min_labels=2_000, min_per_class=10, trial=trial)
    for i in range(600):  # 10% positives; the rule says 0.9 for them, 0.6 for the rest
        model.learn({"x": float(i % 10 == 0)}, int(i % 10 == 0), rule_prob=0.9 if i % 10 == 0 else 0.6)
    assert not model.ready and model.rule_fit is not None
    assert model.calibrate_rule(0.6) < 0.05 < 0.5 < model.calibrate_rule(0.9)


def _sparse_stream(n: int, seed: int) -> Iterator[Example]:
    """Inputs as model_input gives them: some missing, with their indicator instead."""
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.gauss(0, 1), rng.gauss(3, 2)
        x: dict[str, float] = {"a": a}
        x |= {"b": b} if rng.random() < 0.7 else {"b_missing": 1.0}
        if rng.random() < 0.1:
            x["rare_missing"] = 1.0
        yield x, int(rng.random() < 1 / (1 + math.exp(-(1.5 * a - 0.5 * b + 0.5))))


def _per_label(model: OnlineModel) -> OnlineModel:
    model.batched = False  # River's learn_one per label, as before chunks
    return model


def test_chunked_learning_keeps_the_scaler_statistics_of_per_label_learning() -> None:
    chunked, per_label = _model(), _per_label(_model())
    for x, y in _sparse_stream(3_000, seed=10):
        chunked.learn(x, y)
        per_label.learn(x, y)
    chunked._flush()
    a, b = chunked.pipeline["StandardScaler"], per_label.pipeline["StandardScaler"]
    assert dict(a.counts) == dict(b.counts)
    for k in b.means:
        assert math.isclose(a.means[k], b.means[k], rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(a.vars[k], b.vars[k], rel_tol=1e-9, abs_tol=1e-12)
    # The refit window holds the same rows, completed with the indicators known at the time.
    width = len(b.counts)
    assert list(chunked.columns) == list(per_label.columns)
    for got, want in zip(chunked.recent.matrices(width), per_label.recent.matrices(width), strict=True):
        assert np.array_equal(got, want)


def test_chunked_learning_ranks_like_per_label_learning() -> None:
    rows = list(_sparse_stream(6_000, seed=11))
    chunked, per_label = _model(), _per_label(_model())
    for m in (chunked, per_label):
        for x, y in rows[:5_000]:
            m.learn(x, y)
    held_out = rows[5_000:]
    labels = [y for _, y in held_out]
    aucs = [auc([m.predict(x) for x, _ in held_out], labels) or 0.0 for m in (chunked, per_label)]
    assert aucs[0] > aucs[1] - 0.005
    gaps = [abs(chunked.predict(x) - per_label.predict(x)) for x, _ in held_out]
    assert sum(gaps) / len(gaps) < 0.01 and max(gaps) < 0.05  # measured: 0.005 and 0.024


def test_predict_is_the_pipelines_probability() -> None:
    model = _model()
    for x, y in _sparse_stream(2_000, seed=12):
        model.learn(x, y)
    for x, _ in _sparse_stream(200, seed=13):
        river = model.pipeline.predict_proba_one(model._complete(x))[True]
        assert math.isclose(model.predict(x), river, rel_tol=1e-9, abs_tol=1e-12)
    assert model.predict({"never_seen": 5.0}) == model.predict({})


def test_a_split_stream_gives_the_same_model() -> None:
    rows = list(_sparse_stream(1_500, seed=14))
    whole = _model()
    for x, y in rows:
        whole.learn(x, y)
    first = _model()
    for x, y in rows[:777]:
        first.learn(x, y)
    assert first._buffer, "the snapshot must hold labels not yet fitted"
    second = OnlineModel.restore(first.snapshot())
    for x, y in rows[777:]:
        second.learn(x, y)
    assert second.snapshot() == OnlineModel.restore(whole.snapshot()).snapshot()


def test_snapshots_with_the_old_window_still_refit_the_same() -> None:
    model = _per_label(_model())
    for x, y in _sparse_stream(1_000, seed=15):
        model.learn(x, y)
    values, present, labels = model.recent.matrices(len(model.columns))
    state = pickle.loads(pickle.dumps(vars(model)))
    state["recent"] = deque(zip(values, present, labels.tolist(), strict=True), maxlen=20_000)
    old = OnlineModel.__new__(OnlineModel)
    old.__setstate__(state)
    assert len(old.recent) == 1_000
    model.consolidate()
    old.consolidate()
    assert old.pipeline["LogisticRegression"].weights == model.pipeline["LogisticRegression"].weights


def test_trial_reaches_back_far_enough_for_a_rare_outcome() -> None:
    # 1% positives: the last 1,000 labels hold about 10, never the 30 per class a trial needs.
    # A fixed window never promotes the model; one that reaches back (trial_max) does.
    import random

    from scoring.models import OnlineModel

    rnd = random.Random(4)
    stream = []
    for _ in range(12_000):
        y = int(rnd.random() < 0.01)
        stream.append(({"x": rnd.gauss(2.0 * y, 1.0)}, y, rnd.random()))  # the rule is noise
    fixed = OnlineModel("k", min_labels=50, min_per_class=5, trial=1_000)
    reaching = OnlineModel("k", min_labels=50, min_per_class=5, trial=1_000, trial_max=20_000)
    for x, y, rule in stream:
        fixed.learn(x, y, rule_prob=rule)
        reaching.learn(x, y, rule_prob=rule)
    assert not fixed.ready and reaching.ready
    # The rule's calibration needs 30 of each class too: it reaches back as far.
    assert fixed.rule_fit is None and reaching.rule_fit is not None
    # Restored from a snapshot, the window settings stay.
    again = OnlineModel.restore(reaching.snapshot())
    assert again.trial_max == 20_000 and again.ready


def test_model_inputs_of_equal_value_share_one_float() -> None:
    # Pending examples hold their inputs for a horizon (60 days for churn): a float per
    # input each was most of a sparse history's memory (62% of CDNOW's inputs are 0).
    from scoring.models import model_input

    a = model_input({"orders_total": 0.0, "web_events_7d": 3.0, "spend_total": -2.0})
    b = model_input({"orders_total": 0, "web_events_7d": 3, "spend_total": -2.0})
    assert a == b == {"orders_total": 0.0, "web_events_7d": math.log1p(3.0), "spend_total": -math.log1p(2.0)}
    assert all(a[k] is b[k] for k in a)


def test_a_forest_learns_and_restores_bit_for_bit() -> None:
    # The tree ensemble (model: forest): it ranks the stream's two signals, and a snapshot
    # taken mid-stream, its random state included, scores and learns on exactly as the original.
    rows = list(_stream(3_000, seed=9))
    model = OnlineModel("k", "forest", 50, 10)
    losses = _run(model, rows[:2_000])
    assert model.ready
    probe = [x for x, _ in rows[2_000:2_300]]
    got = auc([model.predict(x) for x in probe], [y for _, y in rows[2_000:2_300]])
    assert got is not None and got > 0.75
    assert sum(losses[1_000:]) / 1_000 < math.log(2)  # better than a coin after its first labels
    clone = OnlineModel.restore(model.snapshot())
    assert [clone.predict(x) for x in probe] == [model.predict(x) for x in probe]
    assert clone.explain(probe[0]) == model.explain(probe[0])
    # Learning on draws from the forest's random state (Poisson weights, new trees on drift).
    assert _run(clone, rows[2_000:]) == _run(model, rows[2_000:])


def test_occlusion_reasons_are_the_linear_terms_for_a_linear_model() -> None:
    # The trees' method (log-odds lost when one input moves to its mean) gives a logistic
    # model's own terms, weight x standardised value: one meaning for every model's reasons.
    model = _model()
    for x, y in _stream(2_000, seed=10):
        model.learn(x, y)
    x = {"a": 1.7, "b": -0.4}
    scaler = model.pipeline["StandardScaler"]
    full = model._complete(x)
    occluded = model._occlusion(full, scaler.transform_one(full), scaler.means)
    linear = dict(model.explain(x, top=2))
    assert occluded.keys() == linear.keys() == {"a", "b"}
    for k in occluded:
        assert abs(occluded[k] - linear[k]) < 1e-4


def test_a_forest_s_reasons_name_the_input_that_decides() -> None:
    # "noise" sits far from its mean and decides nothing: a z-score ranking would put it first.
    rng = random.Random(11)
    model = OnlineModel("k", "forest", 50, 10)
    for _ in range(2_000):
        a, noise = rng.gauss(0, 1), rng.gauss(0, 1)
        model.learn({"a": a, "noise": noise}, int(a > 0.3))
    reasons = model.explain({"a": 1.5, "noise": 3.0}, top=2)
    assert reasons[0][0] == "a" and reasons[0][1] > 0  # it raises the score
    assert len(reasons) == 1 or abs(reasons[1][1]) < abs(reasons[0][1])


@pytest.mark.parametrize(("x", "y", "says"), [
    ({"x": float("nan")}, 1, "inputs are finite numbers"),
    ({"x": float("inf")}, 0, "inputs are finite numbers"),
    ({"x": 1e300}, 1, "inputs are finite numbers"),
    ({"x": 1.0}, 2, "a label is 0 or 1"),
    ({"x": 1.0}, 0.5, "a label is 0 or 1"),
])
def test_an_input_or_label_that_would_spoil_the_model_is_refused(x, y, says) -> None:
    # One NaN made the scaler's statistics NaN: the input carried no signal ever after.
    m = OnlineModel("demo", min_labels=2, min_per_class=1)
    with pytest.raises(ValueError, match=says):
        m.learn(x, y)
    for i in range(200):
        m.learn({"x": float(i % 2)}, i % 2)
    assert m.predict({"x": 1.0}) > 0.8 > 0.2 > m.predict({"x": 0.0})  # unharmed

"""Fresh learning (``learn_at: fresh``): fake negatives at once, the outcome when it comes.

The default learns every example at its horizon close (no label-timing bias). The
fresh mode learns each example at once with the slow class and again when its
outcome happens, and corrects the model for that stream (fake negative calibration,
Ktena et al. 2019). These tests pin where the samples land on hand-built timelines,
that a restart changes nothing, and that the correction gives back the outcome's rate.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from features.spec import DAY_MS
from scoring.backtest import BacktestConfig, run_backtest
from scoring.config import scoring_config_from_dict
from scoring.core import Labelled, ModelRegistry, ScoringCore
from scoring.kinds import ScoreKind
from scoring.models import OnlineModel, fnc_correct
from scoring.simulator import SimulationConfig, write_jsonl
from streams.pipeline import labelled_to_json, labels_from_record
from tests.scoring.test_label_join import T0, _timeline, pending, purchase, restart

FRESH = {"kinds": {k: {"learn_at": "fresh"} for k in ("purchase_propensity", "churn_risk", "campaign_response")}}


def fresh_core() -> ScoringCore:
    return ScoringCore.in_memory(kinds=scoring_config_from_dict(FRESH).kinds)


def test_fresh_samples_land_at_registration_and_at_the_outcome_once() -> None:
    core = fresh_core()
    out = core.process([purchase("a", T0, "p1")])
    [prop] = pending(core, "a", "purchase_propensity")
    [churn] = pending(core, "a", "churn_risk")
    by_kind = {s.kind: s for s in out.fresh}
    # At registration: the slow class (no purchase within 7 days; churned), the moment's features.
    assert by_kind["purchase_propensity"].label == 0 and by_kind["churn_risk"].label == 1
    assert by_kind["purchase_propensity"].x == prop.x and by_kind["churn_risk"].x == churn.x
    assert all(s.fresh and s.end_ms == T0 for s in out.fresh)
    assert out.labelled == []

    out = core.process([purchase("a", T0 + 2 * DAY_MS, "p2")])
    # The outcome: a second sample of each example, with the outcome's class and the
    # features of the scored moment (never the features that contain the outcome).
    outcome = {(s.kind, s.example_id): s for s in out.fresh}
    assert outcome[("purchase_propensity", prop.example_id)].label == 1
    assert outcome[("churn_risk", churn.example_id)].label == 0
    assert outcome[("purchase_propensity", prop.example_id)].x == prop.x
    assert outcome[("churn_risk", churn.example_id)].end_ms == T0 + 2 * DAY_MS

    # A second outcome for the same examples adds nothing; neither does a redelivery.
    redelivered = core.process([purchase("a", T0 + 2 * DAY_MS, "p2")])
    assert redelivered.counts["duplicates"] == 1 and redelivered.fresh == []
    again = core.process([purchase("a", T0 + 3 * DAY_MS, "p3")])
    assert [s for s in again.fresh if s.example_id in (prop.example_id, churn.example_id)] == []

    # At horizon close the matured labels are the true ones, for the metrics; they are not
    # fitted a second time (a fresh model's version counts fresh samples only).
    versions = {k: m.version for k, m in core.registry.models.items()}
    done = core.advance("0", T0 + 61 * DAY_MS)
    labels = {(x.kind, x.example_id): x.label for x in done.labelled}
    assert labels[("purchase_propensity", prop.example_id)] == 1
    assert labels[("churn_risk", churn.example_id)] == 0
    fitted_after = sum(1 for s in done.fresh)
    assert sum(m.version for m in core.registry.models.values()) == sum(versions.values()) + fitted_after


def test_outcome_after_the_horizon_adds_no_sample() -> None:
    core = fresh_core()
    core.process([purchase("a", T0, "p1")])
    [prop] = pending(core, "a", "purchase_propensity")
    out = core.process([purchase("a", T0 + 7 * DAY_MS + 1, "p2")])
    assert [s for s in out.fresh if s.example_id == prop.example_id] == []


def test_models_learn_fresh_samples_as_they_come() -> None:
    core = fresh_core()
    core.process([purchase("a", T0, "p1")])
    models = core.registry.models
    assert models["purchase_propensity"].version == 1 and models["churn_risk"].version == 1
    assert models["churn_risk"].positives == 1  # churned, until a purchase says otherwise
    core.process([purchase("a", T0 + DAY_MS, "p2")])
    assert models["churn_risk"].version == 2 and models["churn_risk"].positives == 1


def _run(core: ScoringCore, events: list) -> list[tuple]:
    outs: list[tuple] = []
    for i in range(0, len(events), 50):
        out = core.process(events[i : i + 50])
        outs += [(s["customer_id"], s["kind"], s["value"], s["ts"]) for s in out.scores]
        outs += [(x.example_id, x.label, x.fresh, round(x.prob, 12)) for x in out.fresh + out.labelled]
    return outs


def test_restart_in_the_middle_changes_nothing_when_learning_fresh() -> None:
    events = _timeline()
    half = (len(events) // 100) * 50
    expected = _run(fresh_core(), events)

    first = fresh_core()
    got = _run(first, events[:half])
    got += _run(restart(first, fresh_core()), events[half:])
    assert got == expected
    assert any(t[2] for t in expected if len(t) == 4), "the timeline must produce fresh samples"


def test_fake_negative_calibration_gives_back_the_outcome_rate() -> None:
    # Truth: P(outcome | x) = 0.1 for x=0 and 0.4 for x=1. The fresh stream holds every
    # example once as a negative, and once more as a positive when the outcome happens.
    rng = random.Random(3)
    model = OnlineModel("demo", min_labels=10, min_per_class=5, consolidate_every=200, fresh=True)
    for _ in range(20_000):
        x = rng.random() < 0.5
        model.learn_fresh({"x": float(x)}, 0)
        if rng.random() < (0.4 if x else 0.1):
            model.learn_fresh({"x": float(x)}, 1)
    assert model.predict({"x": 0.0}) == pytest.approx(0.1, abs=0.02)
    assert model.predict({"x": 1.0}) == pytest.approx(0.4, abs=0.03)
    # Uncorrected, the stream model would say 0.09 and 0.29.
    raw = model.pipeline.predict_proba_one(model._complete({"x": 1.0}))[True]
    assert raw == pytest.approx(0.4 / 1.4, abs=0.02)
    clone = OnlineModel.restore(model.snapshot())
    assert clone.predict({"x": 1.0}) == model.predict({"x": 1.0}) and clone.fresh


def test_correction_for_an_outcome_of_class_zero() -> None:
    # Churn: the outcome (a purchase) is label 0; P(churn) = 1 - q.
    for q in (0.0, 0.2, 0.5, 0.9):
        stream_p_churn = 1.0 / (1.0 + q)  # the stream's share of label 1 (the fake one)
        assert fnc_correct(stream_p_churn, outcome_label=0) == pytest.approx(1.0 - q)
    assert all(0.0 <= fnc_correct(p / 10, o) <= 1.0 for p in range(11) for o in (0, 1))


def test_a_model_that_learns_at_horizon_close_refuses_fresh_samples() -> None:
    with pytest.raises(ValueError, match="horizon close"):
        OnlineModel("demo").learn_fresh({"x": 1.0}, 1)
    with pytest.raises(ValueError, match="learn_at"):
        ScoreKind("k", learn_at="early")  # type: ignore[arg-type]


def test_fresh_samples_round_trip_through_the_labels_topic() -> None:
    ex = Labelled("churn_risk", "c1", "x1", 1, 1, 0.2, 0.3, "model", 1, {"a": 1.0}, True)
    assert labels_from_record(labelled_to_json(ex)) == [ex]
    old = b'{"kind":"k","customer_id":"c","example_id":"e","t_ms":1,"end_ms":2,"prob":0.1,' \
          b'"rule_prob":0.2,"source":"model","label":0,"x":{}}'
    assert labels_from_record(old)[0].fresh is False


def test_backtest_scores_the_same_examples_in_both_modes(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    write_jsonl(SimulationConfig(customers=150, days=90, seed=5), path)
    reports, cores = {}, {}
    for mode, cfg in (("horizon", {}), ("fresh", FRESH)):
        core = cores[mode] = ScoringCore.in_memory(kinds=scoring_config_from_dict(cfg).kinds)
        with open(path, "rb") as lines:
            reports[mode] = run_backtest(lines, BacktestConfig(batch_baseline=False), core)
    for kind in ("purchase_propensity", "churn_risk", "campaign_response"):
        h, f = reports["horizon"]["kinds"][kind], reports["fresh"]["kinds"][kind]
        # Registration never depends on the model: the same examples, the same true labels.
        assert (h["labels"], h["positives"]) == (f["labels"], f["positives"]), kind
        assert h["labels"] > 0
        # Horizon: each matured example fitted once. Fresh: each registered one (matured or
        # still pending at the end) once, and each with its outcome once more.
        assert cores["horizon"].registry.models[kind].version == h["labels"]
        outcome_class = cores["fresh"].registry.kinds[kind].label_on_outcome
        matured_outcomes = f["positives"] if outcome_class == 1 else f["labels"] - f["positives"]
        assert cores["fresh"].registry.models[kind].version >= f["labels"] + matured_outcomes


def test_the_trial_of_a_fresh_model_uses_its_prediction_from_before_it_learned_the_example() -> None:
    core = fresh_core()
    core.process([purchase("a", T0, "p1")])
    [prop] = pending(core, "a", "purchase_propensity")
    model = core.registry.models["purchase_propensity"]
    assert not model.proven and prop.example_id in model._trial_preds
    core.advance("0", T0 + 8 * DAY_MS)
    assert prop.example_id not in model._trial_preds  # used (or dropped) at maturity


def test_a_snapshot_of_the_other_learning_mode_is_not_loaded() -> None:
    from scoring.state import InMemoryModelStore

    store = InMemoryModelStore()
    horizon = ModelRegistry(scoring_config_from_dict({}).kinds)
    horizon.models["purchase_propensity"].learn({"x": 1.0}, 1)
    horizon.save(store)
    fresh = ModelRegistry(scoring_config_from_dict(FRESH).kinds)
    assert "purchase_propensity" not in fresh.refresh(store)
    assert fresh.models["purchase_propensity"].fresh
    # ...and a fresh sample left on the labels topic after switching back is skipped, not fatal.
    sample = Labelled("purchase_propensity", "c1", "e1", 1, 1, 0.1, 0.1, "model", 0, {"x": 1.0}, True)
    horizon.learn([sample])
    assert horizon.skipped_fresh == 1 and horizon.models["purchase_propensity"].version == 1

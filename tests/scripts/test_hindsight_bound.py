"""The hindsight bound: it fits on exactly the backtest's matured examples, and its splits keep time."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from scoring.backtest import BacktestConfig, run_backtest
from scoring.core import Labelled
from scoring.simulator import SimulationConfig, write_jsonl


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hindsight") / "history.jsonl"
    write_jsonl(SimulationConfig(customers=300, days=150, seed=5), path)
    return path


def test_it_reports_every_matured_example_of_the_backtest_and_its_served_auc(
    load_script: Callable[[str], ModuleType], history: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bound.json"
    assert load_script("hindsight_bound").main([str(history), "--folds", "3", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    with history.open("rb") as lines:
        report = run_backtest(lines, BacktestConfig(batch_baseline=False))
    assert set(figures) == set(report["kinds"]) and "purchase_propensity" in figures
    for kind, f in figures.items():
        r = report["kinds"][kind]
        assert (f["n"], f["pos"]) == (r["labels"], r["positives"])
        assert f["online"]["auc"] == pytest.approx(r["auc"], abs=1e-6)
        assert f["rule"]["auc"] == pytest.approx(r["baselines"]["rule"]["auc"], abs=1e-6)
    fitted = figures["purchase_propensity"]
    for column in ("lr_oof", "gbdt_oof", "lr_fwd", "gbdt_fwd", "online_2nd"):
        assert 0.5 < fitted[column]["auc"] <= 1.0 and fitted[column]["ratio"] > 1.0
    printed = capsys.readouterr().out
    assert "lr_oof" in printed and "ratio" in printed


def _example(t: int, end: int, x: float, y: int, customer: str) -> Labelled:
    return Labelled("k", customer, f"k:{customer}:{t}", t, end, 0.5, 0.5, "model", y, {"a": x})


def test_the_forward_fit_learns_only_labels_that_had_matured_at_the_split(
    load_script: Callable[[str], ModuleType],
) -> None:
    hb = load_script("hindsight_bound")
    rng = np.random.default_rng(0)
    examples = hb.Examples()
    # Every label matures after the split (at 10,000 and later): a batch job at the split has none.
    for i, x in enumerate(rng.normal(size=400)):
        examples.add(_example(i, 10_000 + i, float(x), int(x > 0), f"c{i}"))
    figures = hb.bound(examples, folds=3)
    assert figures["lr_fwd"]["auc"] is None and figures["gbdt_fwd"]["auc"] is None
    assert figures["lr_oof"]["auc"] > 0.95  # the labels follow the input exactly: in hindsight, found
    # Labels known at once: the forward fit now learns from the first half.
    early = hb.Examples()
    for ex in [_example(i, i, float(x), int(x > 0), f"c{i}") for i, x in enumerate(rng.normal(size=400))]:
        early.add(ex)
    assert hb.bound(early, folds=3)["lr_fwd"]["auc"] > 0.95


def test_absent_inputs_are_zero_columns_in_name_order(load_script: Callable[[str], ModuleType]) -> None:
    examples = load_script("hindsight_bound").Examples()
    examples.add(Labelled("k", "c1", "e1", 0, 1, 0.5, 0.5, "model", 1, {"b": 2.0}))
    examples.add(Labelled("k", "c2", "e2", 0, 1, 0.5, 0.5, "cold_start", 0, {"a": 1.0, "b": 3.0}))
    assert examples.matrix().tolist() == [[0.0, 2.0], [1.0, 3.0]]

"""The latent-truth ceiling: its counts and online AUCs match the scores file, its ceilings are AUCs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from scoring.backtest import BacktestConfig, run_backtest
from scoring.simulator import SimulationConfig, write_jsonl

WORLD = ["--customers", "300", "--days", "120", "--seed", "5"]


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ceiling")
    history, scores_out = tmp / "history.jsonl", tmp / "scores.jsonl"
    write_jsonl(SimulationConfig(customers=300, days=120, seed=5), history)
    with history.open("rb") as lines:
        run_backtest(lines, BacktestConfig(batch_baseline=False, scores_out=scores_out))
    return scores_out


def _rows(path: Path) -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        by_kind.setdefault(row["kind"], []).append(row)
    return by_kind


def test_every_kind_is_reported_with_the_counts_and_online_aucs_of_the_file(
    load_script: Callable[[str], ModuleType], scores: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ceiling.json"
    assert load_script("simulator_ceiling").main([str(scores), *WORLD, "--folds", "3", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    rows = _rows(scores)
    assert set(figures) == set(rows) and "churn_risk" in rows
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[1:]] == sorted(rows)
    for kind, rs in rows.items():
        f, labels = figures[kind], [r["label"] for r in rs]
        assert (f["n"], f["pos"]) == (len(rs), sum(labels))
        assert f["online"] == pytest.approx(roc_auc_score(labels, [r["probability"] for r in rs]))
        assert f["rule"] == pytest.approx(roc_auc_score(labels, [r["rule_probability"] for r in rs]))
        for column in ("latent", "static", "dormant"):
            assert 0.0 <= f[column] <= 1.0, (kind, column, f[column])
    churn = figures["churn_risk"]
    assert churn["latent"] > churn["dormant"] or 0.5 < churn["latent"] <= 1.0


def test_a_world_that_does_not_match_the_file_is_refused(
    load_script: Callable[[str], ModuleType], scores: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        load_script("simulator_ceiling").main([str(scores), "--customers", "100", "--days", "120", "--seed", "5"])
    assert exit_.value.code == 2
    assert "not in the simulated world" in capsys.readouterr().err


def test_dormancy_is_judged_on_instants_and_counted_from_the_spell_start(
    load_script: Callable[[str], ModuleType],
) -> None:
    script = load_script("simulator_ceiling")
    truth = {"c1": {
        "propensity": 0.1, "engagement": 0.2, "responsiveness": 0.3, "churn_hazard": 0.4,
        "one_shot": 0.5, "wake_rate": 0.6, "segment": "smb",
        "dormant_spells": [["2024-01-10T00:00:00.000+00:00", "2024-01-20T00:00:00.000+00:00"],
                           ["2024-02-01T00:00:00.000+00:00", None]],
    }}
    rows = [
        {"customer_id": "c1", "ts": "2024-01-10T01:00:00+02:00", "moment": "event"},  # 23:00Z the day before
        {"customer_id": "c1", "ts": "2024-01-20T01:00:00+02:00", "moment": "idle"},  # 23:00Z, still dormant
        {"customer_id": "c1", "ts": "2024-01-19T23:00:00-02:00", "moment": "idle"},  # 01:00Z, woken
        {"customer_id": "c1", "ts": "2024-03-02T00:00:00+00:00", "moment": "idle"},  # open spell
    ]
    x = script.latent_matrix(rows, truth, {"c1": script._spells(truth["c1"])})
    assert x[:, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert x[:, 1] == pytest.approx([-1.0, 9 + 23 / 24, -1.0, 30.0])
    assert x[0, 2:].tolist() == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0, 0.0]
    assert np.array_equal(x[:, -1], [0.0, 1.0, 1.0, 1.0])

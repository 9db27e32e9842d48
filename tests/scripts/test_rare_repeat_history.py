"""The rare-repeat history: a model still gets to serve when its outcome is rarer than 1%."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from scoring.backtest import BacktestConfig, run_backtest
from scoring.core import ScoringCore
from scoring.kinds import default_kinds


def _propensity_sources(path: Path, trial_max: int | None = None) -> dict[str, int]:
    kinds = default_kinds()
    if trial_max is not None:
        kinds = [dataclasses.replace(k, trial_max=trial_max) for k in kinds]
    core = ScoringCore.in_memory(kinds=kinds)
    with path.open("rb") as lines:
        report = run_backtest(lines, BacktestConfig(batch_baseline=False), core)
    k = report["kinds"]["purchase_propensity"]
    assert k["positives"] < 0.01 * k["labels"]  # rarer than 1%: 1,000 labels hold about 5
    return k["sources"]


def test_the_model_serves_on_a_history_of_rare_repeat_purchases(
    load_script: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    path = tmp_path / "rare.jsonl"
    events = load_script("rare_repeat_history").write_history(path, customers=3_000)
    assert events == len(path.read_bytes().splitlines()) > 3_000
    assert _propensity_sources(path).get("model", 0) > 0
    # A trial on exactly the last 1,000 labels never sees 30 positives: the rule serves forever.
    assert _propensity_sources(path, trial_max=0).get("model", 0) == 0

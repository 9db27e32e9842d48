"""scripts/bench_river_floor.py on a small simulated history: its counts are the backtest's."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from scoring.simulator import SimulationConfig, write_jsonl


def test_floor_counts_every_label_the_backtest_learned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], load_script: Callable[[str], ModuleType]
) -> None:
    path = tmp_path / "h.jsonl"
    write_jsonl(SimulationConfig(customers=60, days=40, seed=3), path)
    script = load_script("bench_river_floor")
    report, learned, predictions = script.record(path)
    for kind, examples in learned.items():
        assert len(examples) == report["kinds"][kind]["labels"] > 0
    assert sum(predictions.values()) > 0  # (a model predicts once it serves, after cold start)
    assert script.main(["--file", str(path), "--runs", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["events"] == report["events"]
    assert out["labels_per_event"] == round(sum(len(e) for e in learned.values()) / report["events"], 3)
    assert out["ceiling_events_per_second"] > 0 and out["river_share_of_backtest"] > 0

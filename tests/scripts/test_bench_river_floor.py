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
    # The floor is the parts' sum (each part printed rounded to 10 ms).
    parts = out["online_model_seconds"] + sum(out[k] for k in ("decode_s", "apply_s", "vectors_s", "model_inputs_s"))
    assert out["floor_us_per_event"] * out["events"] / 1e6 == pytest.approx(parts, abs=0.03)
    assert out["floor_events_per_second"] == pytest.approx(1e6 / out["floor_us_per_event"], rel=0.01)
    assert out["vectors_per_event"] > 0 and out["model_inputs_per_event"] > 0


def test_floor_times_the_moments_the_replay_read(
    tmp_path: Path, load_script: Callable[[str], ModuleType]
) -> None:
    """Each sampled state, read again, gives the vector the replay read then: the floor times real moments."""
    path = tmp_path / "h.jsonl"
    write_jsonl(SimulationConfig(customers=40, days=30, seed=5), path)
    script = load_script("bench_river_floor")
    every = script.Moments(1)
    script.record(path, every)
    assert every.vectors == len(every.states) == len(every.read) > 0
    assert every.inputs > 0
    from features.engine import FeatureEngine

    engine = FeatureEngine()
    assert [engine.vector(state, at) for state, at in every.states] == every.read
    sampled = script.Moments(7)
    script.record(path, sampled)
    assert sampled.vectors == every.vectors and len(sampled.states) == -(-every.vectors // 7)

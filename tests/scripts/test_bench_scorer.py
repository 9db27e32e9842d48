"""scripts/bench_scorer.py: each run starts from an empty Redis, so runs publish the same."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType


def test_runs_start_empty_and_score_every_event(tmp_path: Path, load_script: Callable[[str], ModuleType]) -> None:
    script = load_script("bench_scorer")
    out = tmp_path / "bench.json"
    assert script.main(["--events", "600", "--batch-size", "100", "--runs", "2", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["events"] for r in runs] == [599, 599]
    assert runs[0]["records_out"] == runs[1]["records_out"] > 0
    assert all(r["cpu_us_per_event"] > 0 and r["redis_us_per_event"] >= 0 for r in runs)


def test_redis_a_hop_away_publishes_the_same(tmp_path: Path, load_script: Callable[[str], ModuleType]) -> None:
    script = load_script("bench_scorer")
    near, far = tmp_path / "near.json", tmp_path / "far.json"
    args = ["--events", "600", "--batch-size", "100", "--runs", "1", "--json"]
    assert script.main([*args, str(near)]) == 0
    assert script.main([*args, str(far), "--delay-ms", "0.2"]) == 0  # through the delaying proxy
    [a], [b] = json.loads(near.read_text())["runs"], json.loads(far.read_text())["runs"]
    assert a["records_out"] == b["records_out"] > 0 and b["events"] == 599

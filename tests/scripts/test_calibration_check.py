"""scripts/calibration_check.py: a Platt layer repairs overconfidence and leaves calibrated scores be."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from features.events import ms_to_iso
from features.spec import DAY_MS

START = 1_704_067_200_000  # 2024-01-01


def _scores(path: Path, sharpen: float, n: int = 6_000, seed: int = 7) -> list[tuple[float, int]]:
    """Propensity examples, one an hour: true rate sigmoid(z), served sigmoid(sharpen * z)."""
    rng = random.Random(seed)
    served = []
    with path.open("w") as out:
        for i in range(n):
            z = rng.gauss(-2.0, 1.2)
            label = int(rng.random() < 1 / (1 + math.exp(-z)))
            p = 1 / (1 + math.exp(-sharpen * z))
            served.append((p, label))
            out.write(json.dumps({
                "example_id": f"e{i}", "customer_id": f"c{i}", "ts": ms_to_iso(START + i * DAY_MS // 24),
                "kind": "purchase_propensity", "probability": p, "rule_probability": 0.5,
                "source": "model", "moment": "event", "label": label,
            }) + "\n")
        # Rule-served examples and rule kinds are not the model's: left out.
        out.write(json.dumps({"example_id": "r", "customer_id": "c", "ts": ms_to_iso(START), "kind":
                              "purchase_propensity", "probability": 0.9, "rule_probability": 0.9,
                              "source": "cold_start", "moment": "event", "label": 0}) + "\n")
    return served


def test_platt_lowers_the_log_loss_of_overconfident_scores(
    tmp_path: Path, load_script: Callable[[str], ModuleType]
) -> None:
    script = load_script("calibration_check")
    path = tmp_path / "scores.jsonl"
    served = _scores(path, sharpen=2.5)
    k = script.check(path)["purchase_propensity"]
    assert k["examples"] == len(served) and k["positives"] == sum(y for _, y in served)
    expected = -sum(math.log(p if y else 1 - p) for p, y in served) / len(served)
    assert math.isclose(k["served"]["log_loss"], expected, abs_tol=1e-5)
    assert k["platt"]["log_loss"] < k["served"]["log_loss"] - 0.01
    top = k["served"]["bins"][-1]
    assert top["predicted"] > top["observed"] + 0.1  # what overconfidence looks like in the table


def test_calibrated_scores_gain_nothing(tmp_path: Path, load_script: Callable[[str], ModuleType]) -> None:
    script = load_script("calibration_check")
    path = tmp_path / "scores.jsonl"
    _scores(path, sharpen=1.0)
    out = tmp_path / "check.json"
    assert script.main([str(path), "--json", str(out)]) == 0
    k = json.loads(out.read_text())["purchase_propensity"]
    assert abs(k["platt"]["log_loss"] - k["served"]["log_loss"]) < 0.005
    assert all(abs(b["predicted"] - b["observed"]) < 0.1 for b in k["served"]["bins"] if b["n"] >= 200)

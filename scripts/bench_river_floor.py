"""How fast could the backtest be, if everything but River took no time?

The backtest's throughput target asks for 20,000 events/s. This script measures the
part of the work no engineering on our side removes while the models are River
pipelines learning one example at a time: ``learn_one`` per matured label and
``predict_proba_one`` per model score, on the very inputs a backtest produced.

1. Replays a history through the core (in process) and records, per learned kind,
   every model input it learned from, and counts every model prediction.
2. Times a fresh River pipeline of the same configuration learning those inputs in
   the same order, and predicting them, ``--runs`` times (medians).
3. Prints the ceiling: events/s if features, labels, scoring logic and I/O were free.
4. Times the same inputs through :class:`scoring.models.OnlineModel` as the core uses
   it (logistic kinds: labels fitted in chunks, predictions through the pipeline's
   linear form; no refits), and prints that ceiling too.

    python scripts/bench_river_floor.py --customers 1000 --days 365 --runs 3
    python scripts/bench_river_floor.py --file history.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scoring import models  # noqa: E402
from scoring.backtest import BacktestConfig, run_backtest  # noqa: E402
from scoring.core import ModelRegistry  # noqa: E402
from scoring.kinds import default_kinds  # noqa: E402


def record(path: Path) -> tuple[dict[str, Any], dict[str, list[tuple[dict[str, float], bool]]], Counter[str]]:
    """One backtest; the inputs each model learned (completed as it saw them) and predictions made."""
    learned: dict[str, list[tuple[dict[str, float], bool]]] = defaultdict(list)
    predictions: Counter[str] = Counter()
    learn, predict = models.OnlineModel.learn, models.OnlineModel.predict

    def spy_learn(self: models.OnlineModel, x: dict[str, float], y: int, *a: Any, **kw: Any) -> bool:
        learned[self.kind].append((self._complete(dict(x)), bool(y)))
        return learn(self, x, y, *a, **kw)

    def spy_predict(self: models.OnlineModel, x: dict[str, float]) -> float:
        predictions[self.kind] += 1
        return predict(self, x)

    models.OnlineModel.learn = spy_learn  # type: ignore[method-assign]
    models.OnlineModel.predict = spy_predict  # type: ignore[method-assign]
    try:
        with open(path, "rb") as lines:
            report = run_backtest(lines, BacktestConfig(batch_baseline=False))
    finally:
        models.OnlineModel.learn, models.OnlineModel.predict = learn, predict  # type: ignore[method-assign]
    return report, learned, predictions


def time_river(examples: list[tuple[dict[str, float], bool]], model: str) -> tuple[float, float]:
    """Seconds for a fresh pipeline to learn every example in order, and to predict each."""
    pipe = models._pipeline(model)
    start = time.perf_counter()
    for x, y in examples:
        pipe.learn_one(x, y)
    learn_s = time.perf_counter() - start
    start = time.perf_counter()
    for x, _ in examples:
        pipe.predict_proba_one(x)
    return learn_s, time.perf_counter() - start


def time_model(examples: list[tuple[dict[str, float], bool]], kind: str, model: str) -> tuple[float, float]:
    """Seconds for a fresh OnlineModel (no refits, no trial) to learn every example, and to predict each."""
    online = models.OnlineModel(kind, model)
    start = time.perf_counter()
    for x, y in examples:
        online.learn(x, int(y))
    online._flush()
    learn_s = time.perf_counter() - start
    start = time.perf_counter()
    for x, _ in examples:
        online.predict(x)
    return learn_s, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="a JSON Lines history (default: simulate one)")
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            from scoring.simulator import SimulationConfig, write_jsonl

            path = Path(tmp) / "history.jsonl"
            write_jsonl(SimulationConfig(customers=args.customers, days=args.days, seed=args.seed), path)
        report, learned, predictions = record(path)

    model_of = {name: m.model_name for name, m in ModelRegistry(default_kinds()).models.items()}
    events = report["events"]
    rows = []
    learn_total = predict_total = model_total = 0.0
    for kind, examples in sorted(learned.items()):
        name = model_of.get(kind, "logistic")
        # Alternating, so machine noise hits both alike.
        timings, online = [], []
        for _ in range(args.runs):
            timings.append(time_river(examples, name))
            online.append(time_model(examples, kind, name))
        learn_us = statistics.median(t[0] for t in timings) / len(examples) * 1e6
        predict_us = statistics.median(t[1] for t in timings) / len(examples) * 1e6
        model_learn_us = statistics.median(t[0] for t in online) / len(examples) * 1e6
        model_predict_us = statistics.median(t[1] for t in online) / len(examples) * 1e6
        learn_total += learn_us * len(examples)
        predict_total += predict_us * predictions[kind]
        model_total += model_learn_us * len(examples) + model_predict_us * predictions[kind]
        rows.append({
            "kind": kind, "labels": len(examples), "predictions": predictions[kind],
            "inputs_per_example": round(statistics.mean(len(x) for x, _ in examples), 1),
            "learn_one_us": round(learn_us, 1), "predict_proba_one_us": round(predict_us, 1),
            "online_model_learn_us": round(model_learn_us, 1),
            "online_model_predict_us": round(model_predict_us, 1),
        })
    river_s = (learn_total + predict_total) / 1e6
    model_s = model_total / 1e6
    out = {
        "events": events, "backtest_events_per_second": report["events_per_second"],
        "labels_per_event": round(sum(r["labels"] for r in rows) / events, 3),
        "predictions_per_event": round(sum(r["predictions"] for r in rows) / events, 3),
        "river_seconds": round(river_s, 2), "backtest_seconds": report["seconds"],
        "river_share_of_backtest": round(river_s / report["seconds"], 3),
        "ceiling_events_per_second": round(events / river_s) if river_s else None,
        "online_model_seconds": round(model_s, 2),
        "online_model_ceiling_events_per_second": round(events / model_s) if model_s else None,
        "kinds": rows, "runs": args.runs,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

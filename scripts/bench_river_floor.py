"""How fast could the backtest be, if everything but River (and the features) took no time?

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
5. Times the feature side no scoring logic skips either: decoding every line, applying
   every event to its customer's state, a feature vector at each moment the core read
   one, and a model input for each vector the models read (a sample of the moments,
   ``--sample-every``). With step 4 that is the floor of a replay in one Python process
   (``floor_events_per_second``): what is left for everything else (the label join,
   score records, RFM, alerts, triggers, batching) is the rest of the target's budget.

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

from features.engine import FeatureEngine, apply_ops  # noqa: E402
from features.events import EventError, decode  # noqa: E402
from features.spec import DEFAULT_SENSITIVE  # noqa: E402
from scoring import core as core_module  # noqa: E402
from scoring import models  # noqa: E402
from scoring.backtest import BacktestConfig, run_backtest  # noqa: E402
from scoring.core import ModelRegistry  # noqa: E402
from scoring.kinds import default_kinds  # noqa: E402


class Moments:
    """Every ``every``-th feature vector the core read (a copy of the state and the time),
    every ``every``-th vector it turned into a model input, and how many of each."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.vectors = self.inputs = 0
        self.states: list[tuple[dict[str, float], int]] = []
        self.read: list[dict[str, float | None]] = []  # what the replay read at each sampled moment
        self.vectors_in: list[dict[str, float | None]] = []


def record(
    path: Path, moments: Moments | None = None,
) -> tuple[dict[str, Any], dict[str, list[tuple[dict[str, float], bool]]], Counter[str]]:
    """One backtest; the inputs each model learned (completed as it saw them) and predictions made."""
    learned: dict[str, list[tuple[dict[str, float], bool]]] = defaultdict(list)
    predictions: Counter[str] = Counter()
    learn, predict = models.OnlineModel.learn, models.OnlineModel.predict
    vector, model_input = FeatureEngine.vector, core_module.model_input  # the names the core calls

    def spy_vector(self: FeatureEngine, state: Any, as_of_ms: int) -> dict[str, float | None]:
        values = vector(self, state, as_of_ms)
        if moments is not None:
            if moments.vectors % moments.every == 0:
                moments.states.append((dict(state), as_of_ms))
                moments.read.append(dict(values))
            moments.vectors += 1
        return values

    def spy_input(v: Any, exclude: Any = ()) -> dict[str, float]:
        if moments is not None:
            if moments.inputs % moments.every == 0:
                moments.vectors_in.append(dict(v))
            moments.inputs += 1
        return model_input(v, exclude)

    def spy_learn(self: models.OnlineModel, x: dict[str, float], y: int, *a: Any, **kw: Any) -> bool:
        learned[self.kind].append((self._complete(dict(x)), bool(y)))
        return learn(self, x, y, *a, **kw)

    def spy_predict(self: models.OnlineModel, x: dict[str, float]) -> float:
        predictions[self.kind] += 1
        return predict(self, x)

    models.OnlineModel.learn = spy_learn  # type: ignore[method-assign]
    models.OnlineModel.predict = spy_predict  # type: ignore[method-assign]
    FeatureEngine.vector = spy_vector  # type: ignore[method-assign]
    core_module.model_input = spy_input
    try:
        with open(path, "rb") as lines:
            report = run_backtest(lines, BacktestConfig(batch_baseline=False))
    finally:
        models.OnlineModel.learn, models.OnlineModel.predict = learn, predict  # type: ignore[method-assign]
        FeatureEngine.vector = vector  # type: ignore[method-assign]
        core_module.model_input = model_input
    return report, learned, predictions


def time_features(path: Path, moments: Moments, runs: int) -> dict[str, float]:
    """Seconds, medians of ``runs``: decoding every line, applying every valid event to its
    customer's state in file order, and (scaled up from the sample) the vectors and model
    inputs the replay made."""
    lines = path.read_bytes().splitlines()
    events = [ev for ev in map(decode, lines) if not isinstance(ev, EventError)]
    engine = FeatureEngine()
    exclude = DEFAULT_SENSITIVE  # what the replay's core left out of model inputs

    def decode_all() -> None:
        for line in lines:
            decode(line)

    def apply_all() -> None:
        states: dict[str, dict[str, float]] = {}
        for ev in events:
            state = states.get(ev.customer_id)
            if state is None:
                state = states[ev.customer_id] = {}
            apply_ops(state, engine.ops_for(ev))

    def vectors() -> None:
        for state, as_of in moments.states:
            engine.vector(state, as_of)

    def inputs() -> None:
        for v in moments.vectors_in:
            models.model_input(v, exclude)

    def median_s(work: Any) -> float:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    scale_v = moments.vectors / max(len(moments.states), 1)
    scale_i = moments.inputs / max(len(moments.vectors_in), 1)
    return {
        "decode_s": median_s(decode_all), "apply_s": median_s(apply_all),
        "vectors_s": median_s(vectors) * scale_v, "model_inputs_s": median_s(inputs) * scale_i,
    }


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
    parser.add_argument("--sample-every", type=int, default=10,
                        help="time every Nth feature vector and model input of the replay (default 10)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            from scoring.simulator import SimulationConfig, write_jsonl

            path = Path(tmp) / "history.jsonl"
            write_jsonl(SimulationConfig(customers=args.customers, days=args.days, seed=args.seed), path)
        moments = Moments(max(args.sample_every, 1))
        report, learned, predictions = record(path, moments)
        features = time_features(path, moments, args.runs)

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
        "vectors_per_event": round(moments.vectors / events, 3),
        "model_inputs_per_event": round(moments.inputs / events, 3),
        **{k: round(v, 2) for k, v in features.items()},
    }
    floor_s = model_s + sum(features.values())
    out["floor_us_per_event"] = round(floor_s / events * 1e6, 1)
    out["floor_events_per_second"] = round(events / floor_s) if floor_s else None
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

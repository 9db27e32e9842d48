"""Are the served probabilities rates? A reliability table from ``backtest --scores-out``.

For each learned kind, over the examples the model served (``source`` model): predicted
against observed rate in ten probability bins, log loss and AUC. Beside them, the same
for a prequential Platt layer on the model's logit, as a serving-time recalibration
would have done it: each example is rescaled with a fit on the examples that had
matured before it was scored (its time plus the kind's horizon), the last ``--window``
of them, refitted every ``--refit-every`` new ones. If the layer does not lower the log
loss, the model's own probabilities need no rescaling.

    .venv/bin/leadpulse backtest events.jsonl --out out/ --scores-out out/scores.jsonl
    .venv/bin/python scripts/calibration_check.py out/scores.jsonl [--config scoring.yaml]
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.events import parse_ts_ms  # noqa: E402
from scoring.config import load_scoring_config  # noqa: E402
from scoring.metrics import auc, calibration, log_loss  # noqa: E402
from scoring.models import _platt  # noqa: E402

EPS = 1e-6
MIN_PER_CLASS = 30  # a Platt fit needs both classes, as the rule's calibration does


def reliability(p: list[float], y: list[int]) -> list[dict[str, float]]:
    """:func:`scoring.metrics.calibration` as records (empty bins left out).

    >>> reliability([0.05, 0.05, 0.95], [0, 1, 1])
    [{'predicted': 0.05, 'observed': 0.5, 'n': 2}, {'predicted': 0.95, 'observed': 1.0, 'n': 1}]
    """
    return [{"predicted": round(m, 4), "observed": round(o, 4), "n": n} for m, o, n in calibration(p, y)]


def prequential_platt(t: np.ndarray, end: np.ndarray, p: np.ndarray, y: np.ndarray,
                      window: int, refit_every: int) -> np.ndarray:
    """Each probability rescaled by a Platt fit on what had matured before it (identity until then)."""
    matured = np.argsort(end, kind="stable")
    ends = end[matured]
    logit = np.log(np.clip(p, EPS, 1 - EPS) / (1 - np.clip(p, EPS, 1 - EPS)))
    out = p.copy()
    fit: tuple[float, float] | None = None
    fitted_at = 0
    for i in np.argsort(t, kind="stable"):
        n = bisect.bisect_right(ends, t[i])
        if n - fitted_at >= refit_every:
            rows = matured[max(0, n - window):n]
            positives = int(y[rows].sum())
            if min(positives, len(rows) - positives) >= MIN_PER_CLASS:
                fit, fitted_at = _platt(p[rows], y[rows].astype(float)), n
        if fit is not None:
            out[i] = 1.0 / (1.0 + math.exp(-(fit[0] * logit[i] + fit[1])))
    return out


def _figures(probs: list[float], labels: list[int]) -> dict[str, Any]:
    return {"log_loss": round(log_loss(probs, labels) or 0.0, 5), "auc": auc(probs, labels),
            "bins": reliability(probs, labels)}


def check(scores: Path, config: str | None = None, window: int = 20_000, refit_every: int = 200) -> dict[str, Any]:
    """Per learned kind: the served probabilities, and with the Platt layer."""
    horizons = {k.name: k.horizon_ms for k in load_scoring_config(config).kinds if k.learned}
    rows: dict[str, list[tuple[int, float, int]]] = {}
    with scores.open("rb") as handle:
        for line in handle:
            r = json.loads(line)
            if r["source"] == "model" and r["kind"] in horizons:
                rows.setdefault(r["kind"], []).append((parse_ts_ms(r["ts"]), r["probability"], int(r["label"])))
    report: dict[str, Any] = {}
    for kind, items in sorted(rows.items()):
        t = np.array([i[0] for i in items], dtype=np.int64)
        p = np.array([i[1] for i in items], dtype=float)
        y = np.array([i[2] for i in items], dtype=float)
        labels = [i[2] for i in items]
        platt = prequential_platt(t, t + horizons[kind], p, y, window, refit_every)
        report[kind] = {
            "examples": len(items), "positives": int(y.sum()),
            **{name: _figures(q.tolist(), labels) for name, q in (("served", p), ("platt", platt))},
        }
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scores", type=Path, help="a backtest's --scores-out file")
    ap.add_argument("--config", help="the scoring config the backtest ran with (horizons)")
    ap.add_argument("--window", type=int, default=20_000)
    ap.add_argument("--refit-every", type=int, default=200)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    report = check(args.scores, args.config, args.window, args.refit_every)
    for kind, k in report.items():
        print(f"{kind}: {k['examples']:,} examples served by the model, {k['positives']:,} positive")
        for name in ("served", "platt"):
            f = k[name]
            bins = "  ".join(f"{b['predicted']:.2f}->{b['observed']:.2f} ({b['n']:,})" for b in f["bins"])
            print(f"  {name:<6} log loss {f['log_loss']:.4f}  AUC {f['auc']:.4f}  | {bins}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

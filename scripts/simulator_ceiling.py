"""How much of each outcome could any model predict if it knew the simulator's hidden truth?

The simulator draws every customer's latent traits (propensity, engagement,
responsiveness, churn hazard, one-shot chance, wake rate, segment) and the
dormant spells it then lives through; :func:`scoring.simulator.ground_truth`
returns them. This script joins that truth to every labelled example of a
backtest's ``--scores-out`` file and fits a model on it, so the online model's
AUC has an honest ceiling beside it. The simulation arguments must be the ones
the scored file was simulated with (same customers, days, seed, regime change):
the truth is recomputed from them, not read from the file (``--dirty`` and
``--purchases-only`` do not change the world, so they need no counterpart here).

Columns, one row per score kind in the file:

* ``n``, ``pos``: labelled examples and positives.
* ``online``: AUC of the served ``probability`` (whatever served it: rule, trial
  or model), as the backtest saw it.
* ``rule``: AUC of ``rule_probability``, the hand-written rule alone.
* ``latent``: cross-validated AUC (``--folds``-fold GroupKFold by customer, so no
  customer is in both train and test; HistGradientBoostingClassifier) of a model
  given all the latent truth at the scored instant: dormant now (0/1), days since
  the current dormant spell began (-1 when not dormant), the static traits, the
  segment code and whether the moment is idle (0/1).
* ``static``: the same model given only the static traits and the segment code.
* ``dormant``: the raw AUC of "dormant now" (0/1) as a score, no model; below 0.5
  when dormant customers are the less likely to be positive (a purchase, a response).

These are ceilings for a model handed information no event stream contains (a
customer's true propensity, the day a dormant spell began), not targets for a
model that sees only events. The outcomes stay random given the truth, so even
``latent`` is below 1; an online AUC close to ``latent`` means little is left to
learn, a wide gap says how much the events leave hidden or the model misses.

    .venv/bin/leadpulse simulate --customers 5000 --days 365 --seed 1 --out s.jsonl
    .venv/bin/leadpulse backtest s.jsonl --out report/ --scores-out scores.jsonl
    .venv/bin/python scripts/simulator_ceiling.py scores.jsonl --customers 5000 --days 365 --seed 1
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from features.events import parse_ts_ms
from features.spec import DAY_MS
from scoring.metrics import auc
from scoring.simulator import SEGMENTS, SimulationConfig, ground_truth

TRAITS = ("propensity", "engagement", "responsiveness", "churn_hazard", "one_shot", "wake_rate")
# Columns of the latent-truth matrix: [dormant, days_dormant, *TRAITS, segment, idle].
STATIC = slice(2, 2 + len(TRAITS) + 1)  # the traits and the segment code
COLUMNS = ("n", "pos", "online", "rule", "latent", "static", "dormant")


def _spells(truth: dict[str, Any]) -> list[tuple[float, float]]:
    """Dormant spells as [start, end) epoch ms; an open spell ends at infinity."""
    return [(parse_ts_ms(a), math.inf if b is None else parse_ts_ms(b)) for a, b in truth["dormant_spells"]]


def load_scores(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The labelled examples of a ``--scores-out`` file, grouped by kind (in file order)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    with path.open("rb") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                by_kind.setdefault(row["kind"], []).append(row)
    return by_kind


def latent_matrix(
    rows: list[dict[str, Any]],
    truth: dict[str, dict[str, Any]],
    spells: dict[str, list[tuple[float, float]]],
) -> np.ndarray:
    """One row of latent truth per example, at its scored instant (columns as in the docstring)."""
    codes = {name: float(i) for i, name in enumerate(SEGMENTS)}
    x = np.empty((len(rows), 3 + len(TRAITS) + 1), dtype=float)
    for i, row in enumerate(rows):
        cid = row["customer_id"]
        t = truth[cid]
        ts = parse_ts_ms(row["ts"])  # an instant: offsets compared, not wall times
        dormant, since = 0.0, -1.0
        for start, end in spells[cid]:
            if start <= ts < end:
                dormant, since = 1.0, (ts - start) / DAY_MS
                break
        x[i, 0], x[i, 1] = dormant, since
        x[i, 2 : 2 + len(TRAITS)] = [float(t[name]) for name in TRAITS]
        x[i, 2 + len(TRAITS)] = codes[t["segment"]]
        x[i, -1] = 1.0 if row["moment"] == "idle" else 0.0
    return x


def cv_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int) -> float | None:
    """Out-of-fold AUC of a gradient-boosted model, folds grouped by customer."""
    if y.min() == y.max():
        return None
    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        return None
    out = np.empty(len(y), dtype=float)
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        if y[train].min() == y[train].max():  # one class to learn from: its rate is all there is
            out[test] = float(y[train].mean())
            continue
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
        model.fit(x[train], y[train])
        out[test] = model.predict_proba(x[test])[:, 1]
    return auc(out.tolist(), y.tolist())


def _auc_of(rows: list[dict[str, Any]], field: str) -> float | None:
    """AUC of one probability field over the rows that have it."""
    kept = [r for r in rows if r.get(field) is not None]
    return auc([float(r[field]) for r in kept], [int(r["label"]) for r in kept])


def ceiling(scores: Path, config: SimulationConfig, folds: int = 5) -> dict[str, dict[str, Any]]:
    """Per kind: counts, the online and rule AUCs and the latent-truth ceilings."""
    # Small fits: OpenMP and BLAS threads cost more than they give, and on a loaded 2-core machine
    # their spin-waits made these fits several times slower (run_backtest limits them too).
    with threadpool_limits(limits=1):
        return _ceiling(scores, config, folds)


def _ceiling(scores: Path, config: SimulationConfig, folds: int) -> dict[str, dict[str, Any]]:
    by_kind = load_scores(scores)
    truth = ground_truth(config)
    unknown = {r["customer_id"] for rows in by_kind.values() for r in rows} - truth.keys()
    if unknown:
        raise ValueError(
            f"{len(unknown)} customers of the scores file are not in the simulated world "
            f"(e.g. {sorted(unknown)[0]!r}): do --customers/--days/--seed match the simulate call?"
        )
    spells = {cid: _spells(t) for cid, t in truth.items()}
    out: dict[str, dict[str, Any]] = {}
    for kind, rows in sorted(by_kind.items()):
        y = np.array([int(r["label"]) for r in rows], dtype=int)
        groups = np.array([r["customer_id"] for r in rows])
        x = latent_matrix(rows, truth, spells)
        out[kind] = {
            "n": len(rows),
            "pos": int(y.sum()),
            "online": _auc_of(rows, "probability"),
            "rule": _auc_of(rows, "rule_probability"),
            "latent": cv_auc(x, y, groups, folds),
            "static": cv_auc(x[:, STATIC], y, groups, folds),
            "dormant": auc(x[:, 0].tolist(), y.tolist()),
        }
    return out


def table(figures: dict[str, dict[str, Any]]) -> str:
    """The figures as a fixed-width text table."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:,}" if isinstance(v, int) else f"{v:.3f}"

    head = f"{'kind':<22}" + "".join(f"{c:>10}" for c in COLUMNS)
    body = [f"{kind:<22}" + "".join(f"{cell(f[c]):>10}" for c in COLUMNS) for kind, f in figures.items()]
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", help="the backtest's --scores-out file (JSON Lines)")
    parser.add_argument("--customers", type=int, required=True, help="as given to simulate")
    parser.add_argument("--days", type=int, required=True, help="as given to simulate")
    parser.add_argument("--seed", type=int, required=True, help="as given to simulate")
    parser.add_argument("--regime-change", action="store_true", help="as given to simulate")
    parser.add_argument("--regime", choices=("behaviour", "privacy"), help="as given to simulate")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, grouped by customer")
    parser.add_argument("--json", dest="json_out", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    config = SimulationConfig(
        customers=args.customers, days=args.days, seed=args.seed,
        regime_change=args.regime_change or args.regime is not None, regime=args.regime or "behaviour",
    )
    try:
        figures = ceiling(Path(args.scores), config, args.folds)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(table(figures))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

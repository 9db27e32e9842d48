"""How much better could a model do on the same examples, fitted in hindsight?

Replays a JSON Lines history through the backtest (the same core and defaults as
``leadpulse backtest``) and keeps every matured example with the model input of
its scored moment. Then, on exactly those examples, it fits models that see all
of them at once, which no online learner can:

* ``lr_oof`` / ``gbdt_oof``: logistic regression (standardised inputs) and
  gradient-boosted trees (HistGradientBoostingClassifier), out of fold by
  customer (``--folds``-fold GroupKFold: no customer is in both train and test),
  fitted on the whole history, future included;
* ``lr_fwd`` / ``gbdt_fwd``: the same models fitted once, at the median scored
  time, on the examples whose labels had matured by then (what a batch job
  could have used that day), and scored on the examples of the second half,
  beside ``online_2nd``, the online model's own AUC on that second half.

``online`` is the AUC of what the core served (rule while cold, then the model),
``rule`` the hand-written prior alone, ``model_only`` / ``cold_only`` the online
AUC on the examples the model served and on those scored before it took over.
Each AUC comes with the top/bottom decile ratio in the second table.

What it tells: the out-of-fold figures bound what these features support; if
they sit close to ``online``, no learner on these inputs would rank the same
examples much better, and a target above them needs information the inputs do
not carry. A model fitted in hindsight is optimistic (it learns the whole year
at once, from the future too); the forward split is the fair comparison for an
online model after its first months.

    .venv/bin/python scripts/hindsight_bound.py history.jsonl
    .venv/bin/python scripts/hindsight_bound.py history.jsonl --drop-types web,campaign
    .venv/bin/python scripts/hindsight_bound.py cdnow.jsonl --sample 25   # a quarter of the customers
"""

from __future__ import annotations

import argparse
import json
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from scoring.backtest import BacktestConfig, run_backtest
from scoring.core import Labelled
from scoring.metrics import auc, lift_summary

COLUMNS = ("online", "rule", "model_only", "cold_only", "lr_oof", "gbdt_oof", "online_2nd", "lr_fwd", "gbdt_fwd")
NONE: dict[str, float | None] = {"auc": None, "ratio": None}  # too few examples, or one class


class Examples:
    """The matured examples of one kind: model inputs, labels and what the core served."""

    def __init__(self) -> None:
        self.x: list[dict[str, float]] = []
        self.y: list[int] = []
        self.prob: list[float] = []
        self.rule: list[float] = []
        self.model: list[bool] = []
        self.t: list[int] = []
        self.end: list[int] = []
        self.customer: list[str] = []

    def add(self, ex: Labelled) -> None:
        self.x.append(ex.x)
        self.y.append(ex.label)
        self.prob.append(ex.prob)
        self.rule.append(ex.rule_prob)
        self.model.append(ex.source == "model")
        self.t.append(ex.t_ms)
        self.end.append(ex.end_ms)
        self.customer.append(ex.customer_id)

    def matrix(self) -> np.ndarray:
        """Inputs as columns in name order; an input absent from an example is 0, as the models read it."""
        names = sorted({name for x in self.x for name in x})
        index = {name: i for i, name in enumerate(names)}
        out = np.zeros((len(self.x), len(names)), dtype=float)
        for row, x in enumerate(self.x):
            for name, value in x.items():
                out[row, index[name]] = value
        return out


def collect(path: Path, drop_types: tuple[str, ...] = (), sample_pct: int = 100) -> dict[str, Examples]:
    """Replay ``path`` and keep the matured examples of a ``sample_pct`` % of customers (by id hash)."""
    kinds: dict[str, Examples] = {}

    def keep(ex: Labelled) -> None:
        if ex.fresh:
            return
        if sample_pct < 100 and zlib.crc32(ex.customer_id.encode()) % 100 >= sample_pct:
            return
        kinds.setdefault(ex.kind, Examples()).add(ex)

    with path.open("rb") as lines:
        run_backtest(lines, BacktestConfig(batch_baseline=False, drop_types=drop_types, on_labelled=keep))
    return kinds


def _figure(probs: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    if len(y) < 20 or y.min() == y.max():
        return dict(NONE)
    return {"auc": auc(probs.tolist(), y.tolist()), "ratio": lift_summary(probs.tolist(), y.tolist())["top_bottom_decile_ratio"]}


def _models() -> dict[str, Callable[[], Any]]:
    return {
        "lr": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "gbdt": lambda: HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0),
    }


def _fit_predict(make: Callable[[], Any], x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    if y[train].min() == y[train].max():  # one class to learn from: its rate is all there is
        return np.full(len(y[test]), float(y[train].mean()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on separable folds
        return make().fit(x[train], y[train]).predict_proba(x[test])[:, 1]


def bound(examples: Examples, folds: int = 5) -> dict[str, dict[str, float | None]]:
    """The figures of one kind (see the module docstring), each ``{"auc", "ratio"}``."""
    # Small fits: OpenMP and BLAS threads cost more than they give, and on a loaded 2-core machine
    # their spin-waits made these fits several times slower (run_backtest limits them too).
    with threadpool_limits(limits=1):
        return _bound(examples, folds)


def _bound(examples: Examples, folds: int) -> dict[str, dict[str, float | None]]:
    x, y = examples.matrix(), np.asarray(examples.y)
    prob, rule = np.asarray(examples.prob), np.asarray(examples.rule)
    model, t, end = np.asarray(examples.model), np.asarray(examples.t), np.asarray(examples.end)
    out = {
        "online": _figure(prob, y), "rule": _figure(rule, y),
        "model_only": _figure(prob[model], y[model]), "cold_only": _figure(prob[~model], y[~model]),
    }
    _, groups = np.unique(np.asarray(examples.customer), return_inverse=True)
    folds = min(folds, int(groups.max()) + 1 if len(groups) else 0)
    split = np.median(t) if len(t) else 0.0
    late, known = t >= split, end <= split  # scored after the split; labelled before it
    out["online_2nd"] = _figure(prob[late], y[late])
    for name, make in _models().items():
        if folds >= 2 and y.min() != y.max():
            oof = np.empty(len(y), dtype=float)
            for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
                oof[test] = _fit_predict(make, x, y, train, test)
            out[f"{name}_oof"] = _figure(oof, y)
        else:
            out[f"{name}_oof"] = dict(NONE)
        if late.any() and known.any() and y[known].min() != y[known].max():
            out[f"{name}_fwd"] = _figure(_fit_predict(make, x, y, known, late), y[late])
        else:
            out[f"{name}_fwd"] = dict(NONE)
    return out


def table(figures: dict[str, dict[str, Any]], field: str) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if field == "auc" else f"{v:.2f}"

    head = f"{field:<22}{'n':>10}{'pos':>9}" + "".join(f"{c:>12}" for c in COLUMNS)
    body = [
        f"{kind:<22}{f['n']:>10,}{f['pos']:>9,}" + "".join(f"{cell(f[c][field]):>12}" for c in COLUMNS)
        for kind, f in figures.items()
    ]
    return "\n".join([head, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", help="JSON Lines events, as for leadpulse backtest")
    parser.add_argument("--drop-types", default="", help="comma-separated event types to leave out (web,campaign)")
    parser.add_argument("--sample", type=int, default=100, help="percent of customers whose examples are fitted")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds, grouped by customer")
    parser.add_argument("--json", dest="json_out", help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if not 1 <= args.sample <= 100:
        parser.error("--sample is a percentage, 1 to 100")
    drop = tuple(t for t in args.drop_types.split(",") if t)
    kinds = collect(Path(args.history), drop, args.sample)
    figures: dict[str, dict[str, Any]] = {}
    for name, examples in sorted(kinds.items()):
        figures[name] = {"n": len(examples.y), "pos": int(sum(examples.y)), **bound(examples, args.folds)}
    print(table(figures, "auc"))
    print()
    print(table(figures, "ratio"))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

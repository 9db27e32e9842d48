"""How scores are judged: AUC, log loss, lift by decile, calibration.

All functions take plain sequences (or numpy arrays) of probabilities and 0/1
labels, so anyone can recompute a report's figures from ``--scores-out``.

>>> auc([0.9, 0.8, 0.3, 0.1], [1, 0, 1, 0])
0.75
>>> round(log_loss([0.9, 0.1], [1, 0]), 4)
0.1054
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Plain sequences or numpy arrays (the backtest passes arrays: a million labels as lists
# of float objects cost tens of MB each).
Floats = Sequence[float] | np.ndarray
Labels = Sequence[int] | np.ndarray


def auc(probs: Floats, labels: Labels) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); ``None`` with one class.

    >>> auc([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0]), auc([0.3, 0.7], [1, 1])
    (0.875, None)
    """
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=int)
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=float)
    # Average ranks over ties so equal scores are neither rewarded nor punished: a run of
    # equal scores from sorted position i to j gets (i + j) / 2 + 1.
    _, first, counts = np.unique(p[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts - 1) / 2.0 + 1.0, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def _weighted_auc(cells: np.ndarray, w: np.ndarray, levels: int) -> float:
    # cells: 2 x each score's rank among the distinct scores, + 1 for a positive. One pass
    # sums both classes' weights per score. Positives above negatives, ties half.
    both = np.bincount(cells, weights=w, minlength=2 * levels)
    wn, wp = both[0::2], both[1::2]
    below = np.cumsum(wn) - wn
    total = wp.sum() * wn.sum()
    return float((wp * (below + 0.5 * wn)).sum() / total) if total > 0 else float("nan")


def auc_difference_ci(
    a: Floats, b: Floats, labels: Labels, clusters: Sequence[str] | np.ndarray,
    rounds: int = 200, level: float = 0.95, seed: int = 0,
) -> tuple[float, float] | None:
    """Bootstrap interval of AUC(a) - AUC(b) on the same examples, resampling clusters.

    Examples of one customer are not independent (one is scored week after week), so
    whole customers are drawn with replacement, each bringing all of its examples;
    ``None`` when a class is missing. Deterministic for a seed.

    >>> y = [0, 1] * 50  # a ranks perfectly, b not at all: 1.0 - 0.5 in every draw
    >>> auc_difference_ci([0.2, 0.9] * 50, [0.5] * 100, y, [str(i // 4) for i in range(100)])
    (0.5, 0.5)
    """
    y = np.asarray(labels, dtype=float)
    if not 0 < y.sum() < len(y):
        return None
    _, members = np.unique(np.asarray(clusters), return_inverse=True)
    n = int(members.max()) + 1
    positive = (y > 0).astype(np.intp)
    coded = []
    for scores in (a, b):
        levels, codes = np.unique(np.asarray(scores, dtype=float), return_inverse=True)
        coded.append((2 * codes.astype(np.intp) + positive, len(levels)))
    (ca, la), (cb, lb) = coded
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)[members]
        d = _weighted_auc(ca, weights, la) - _weighted_auc(cb, weights, lb)
        if d == d:  # a draw with one class only has no AUC
            diffs.append(d)
    if not diffs:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return float(lo), float(hi)


def log_loss(probs: Floats, labels: Labels, eps: float = 1e-7) -> float | None:
    """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps].

    >>> round(log_loss([0.5, 0.5], [1, 0]), 4), round(log_loss([1.0], [0]), 2), log_loss([], [])
    (0.6931, 16.12, None)
    """
    if len(probs) == 0:
        return None
    p = np.clip(np.asarray(probs, dtype=float), eps, 1 - eps)
    y = np.asarray(labels, dtype=float)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def decile_rates(probs: Floats, labels: Labels, bins: int = 10) -> list[float]:
    """Outcome rate per score decile, highest scores first.

    Ties are broken by position (stable), so equal scores split evenly.

    >>> decile_rates([0.9, 0.1, 0.8, 0.2], [1, 0, 1, 0], bins=2)
    [1.0, 0.0]
    """
    n = len(probs)
    if n < bins:
        return []
    order = np.argsort(-np.asarray(probs, dtype=float), kind="mergesort")
    y = np.asarray(labels, dtype=float)[order]
    return [float(chunk.mean()) for chunk in np.array_split(y, bins)]


# Below this many outcomes in the bottom decile its rate, the ratio's denominator, is loose:
# reports quote the ratio's lower bound (``top_bottom_ratio_low``) and judge by it.
FEW_BOTTOM_OUTCOMES = 10


def loose_ratio_bound(figures: Mapping[str, Any]) -> float | None:
    """The figure to quote for a summary's top/bottom ratio when its bottom decile holds fewer
    than ``FEW_BOTTOM_OUTCOMES`` outcomes: the ratio's 95% lower bound (``None``: the point
    figure stands). Reports mark it (``>=``), and a bound below 1 tells nothing (``?``).

    >>> loose_ratio_bound({"top_bottom_ratio_low": 2.4, "bottom_decile_positives": 0})
    2.4
    >>> loose_ratio_bound({"top_bottom_ratio_low": 6.1, "bottom_decile_positives": 40}) is None
    True
    """
    low, bottom = figures.get("top_bottom_ratio_low"), figures.get("bottom_decile_positives")
    return low if low is not None and bottom is not None and bottom < FEW_BOTTOM_OUTCOMES else None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """A binomial proportion's 95% Wilson score interval.

    >>> [round(v, 4) for v in wilson_interval(0, 1000)], [round(v, 3) for v in wilson_interval(50, 100)]
    ([0.0, 0.0038], [0.404, 0.596])
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def lift_summary(probs: Floats, labels: Labels) -> dict[str, float | None]:
    """Top-decile lift, the top/bottom decile ratio, and the ratio's lower bound (``None``
    when undefined).

    A bottom decile with no outcome has an unbounded ratio: it is reported against half a
    case, a figure that grows with the number of labels, not with the score. The lower
    bound (the top decile's rate at its 95% Wilson low over the bottom's at its high)
    stays finite and is what a few bottom outcomes allow one to claim.

    >>> s = lift_summary([0.9, 0.1] * 10, [1, 0] * 10)
    >>> s["lift_top_decile"], s["bottom_decile_positives"], round(s["top_bottom_ratio_low"], 2)
    (2.0, 0, 0.52)
    """
    rates = decile_rates(probs, labels)
    base = float(np.mean(labels)) if len(labels) else 0.0
    if not rates or base == 0:
        return {"lift_top_decile": None, "top_bottom_decile_ratio": None, "top_bottom_ratio_low": None,
                "bottom_decile_positives": None}
    bottom = rates[-1]
    floor = 0.5 / max(1, len(labels) // 10)
    # np.array_split's sizes: the first len % 10 deciles hold one example more.
    n_top, n_bottom = -(-len(labels) // 10), len(labels) // 10
    k_top, k_bottom = round(rates[0] * n_top), round(bottom * n_bottom)
    high = wilson_interval(k_bottom, n_bottom)[1]
    return {
        "lift_top_decile": rates[0] / base,
        "top_bottom_decile_ratio": rates[0] / max(bottom, floor),
        "top_bottom_ratio_low": wilson_interval(k_top, n_top)[0] / high if high > 0 else None,
        "bottom_decile_positives": k_bottom,
    }


# The field's rule of thumb: a useful score's top decile has this many times its bottom's outcome rate.
USEFUL_RATIO = 3.0


def ratio_ceiling(labels: int | None, positives: int | None) -> float | None:
    """The highest top/bottom decile ratio any score can reach on these labels (``None``: unbounded).

    A decile holds a tenth of the examples. Above a 90% outcome rate ``r`` the other nine
    deciles cannot hold every outcome, so the bottom one holds at least ``10r - 9`` of its
    examples' outcomes: churn where nearly everyone churns (one-time buyers) cannot rank
    3 to 1, however good.

    >>> round(ratio_ceiling(1000, 986), 2), ratio_ceiling(20, 19), ratio_ceiling(1000, 726), ratio_ceiling(0, 0)
    (1.16, 2.0, None, None)
    """
    if not labels or positives is None:
        return None
    bottom = 10.0 * positives / labels - 9.0
    return None if bottom <= 0 else 1.0 / bottom


def calibration(probs: Floats, labels: Labels, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) per equal-width probability bin, empty bins dropped.

    >>> calibration([0.05, 0.15, 0.95, 0.95], [0, 1, 1, 0], bins=2)
    [(0.1, 0.5, 2), (0.95, 0.5, 2)]
    """
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        mask = idx == b
        if mask.any():
            out.append((float(p[mask].mean()), float(y[mask].mean()), int(mask.sum())))
    return out


def summarize(probs: Floats, labels: Labels) -> dict[str, object]:
    """The figures a report shows for one score kind.

    >>> s = summarize([0.9, 0.1] * 10, [1, 0] * 10)  # no outcome in the bottom decile: half a case
    >>> s["labels"], s["positives"], s["auc"], s["top_bottom_decile_ratio"]
    (20, 10, 1.0, 4.0)
    """
    a = auc(probs, labels)
    ll = log_loss(probs, labels)
    return {
        "labels": len(labels),
        "positives": int(np.asarray(labels, dtype=np.int64).sum()),  # not sum(): int8 arrays overflow
        "auc": None if a is None else round(a, 6),
        "log_loss": None if ll is None or math.isnan(ll) else round(ll, 6),
        **{k: (None if v is None else round(v, 4)) for k, v in lift_summary(probs, labels).items()},
        "decile_rates": [round(r, 6) for r in decile_rates(probs, labels)],
    }

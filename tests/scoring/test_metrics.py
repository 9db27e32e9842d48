"""Metrics agree with scikit-learn and with first principles."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from scoring.metrics import auc, calibration, decile_rates, lift_summary, log_loss


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=2, max_size=200))
def test_auc_matches_sklearn_including_ties(pairs: list[tuple[int, bool]]) -> None:
    probs = [p / 20 for p, _ in pairs]
    labels = [int(y) for _, y in pairs]
    ours = auc(probs, labels)
    if len(set(labels)) < 2:
        assert ours is None
    else:
        assert ours is not None and abs(ours - roc_auc_score(labels, probs)) < 1e-12


def test_log_loss_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 500)
    y = (rng.uniform(size=500) < p).astype(int)
    assert abs(log_loss(p.tolist(), y.tolist()) - sk_log_loss(y, p)) < 1e-9


def test_deciles_and_lift_on_a_perfect_ranking() -> None:
    probs = list(np.linspace(1, 0, 100))
    labels = [1] * 10 + [0] * 90
    rates = decile_rates(probs, labels)
    assert rates[0] == 1.0 and sum(rates[1:]) == 0.0
    summary = lift_summary(probs, labels)
    assert summary["lift_top_decile"] == 10.0
    assert summary["top_bottom_decile_ratio"] is not None and summary["top_bottom_decile_ratio"] > 3


def test_calibration_bins_cover_every_example() -> None:
    p = [0.05, 0.15, 0.15, 0.95]
    bins = calibration(p, [0, 0, 1, 1])
    assert sum(c for _, _, c in bins) == 4
    assert bins[1] == (0.15, 0.5, 2)


def test_auc_difference_interval_resamples_customers_not_examples() -> None:
    import numpy as np

    from scoring.metrics import auc_difference_ci

    rng = np.random.default_rng(4)
    n = 400
    y = (rng.random(n) < 0.3).astype(int)
    good = y + rng.normal(0, 0.8, n)  # ranks well
    poor = y + rng.normal(0, 3.0, n)  # ranks worse
    ids = [str(i) for i in range(n)]
    lo, hi = auc_difference_ci(good, poor, y, ids)
    assert 0 < lo < hi  # clearly better
    assert auc_difference_ci(good, good, y, ids) == (0.0, 0.0)
    # The same customers scored ten times each: no more information, so no narrower interval.
    rep = lambda a: np.repeat(a, 10)  # noqa: E731
    lo10, hi10 = auc_difference_ci(rep(good), rep(poor), rep(y), np.repeat(ids, 10).tolist())
    assert (hi10 - lo10) > 0.7 * (hi - lo)
    assert auc_difference_ci(good, poor, [0] * n, ids) is None


def test_a_bootstrap_draws_auc_is_the_auc_of_its_rows_repeated_by_weight() -> None:
    from scoring.metrics import _weighted_auc

    rng = np.random.default_rng(7)
    n = 300
    y = (rng.random(n) < 0.4).astype(int)
    scores = np.round(y * 0.3 + rng.random(n), 2)  # rounded: many ties
    counts = rng.integers(0, 4, n)  # a customer drawn 0 to 3 times
    levels, codes = np.unique(scores, return_inverse=True)
    got = _weighted_auc(2 * codes + y, counts.astype(float), len(levels))
    want = auc(np.repeat(scores, counts), np.repeat(y, counts))
    assert want is not None and abs(got - want) < 1e-12

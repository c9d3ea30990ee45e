"""Metrics against scikit-learn and hand-computed cases; the vectorised bootstrap against a naive one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hica.eval.metrics import (
    _weighted_binary_auc,
    bootstrap_ci,
    classification_metrics,
    confusion,
    mean_std,
    one_vs_rest_auc,
)


def _data(k: int, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    p = rng.dirichlet(np.ones(k), n)
    p[np.arange(n), y] += 0.4
    p = np.round(p / p.sum(1, keepdims=True), 2)  # rounding creates ties
    return y, p


def test_known_case() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, p)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == 0.75
    assert m["auc"] == 1.0
    assert confusion(y, p) == [[1, 1], [0, 2]]


@pytest.mark.parametrize("k", [2, 3])
def test_weighted_auc_matches_sklearn(k: int) -> None:
    y, p = _data(k)
    for c in range(k):
        yc = (y == c).astype(float)
        ours = _weighted_binary_auc(yc, p[:, c], np.ones((1, len(y))))[0]
        assert ours == pytest.approx(roc_auc_score(yc, p[:, c]), abs=1e-12)
        assert one_vs_rest_auc(y, p, c) == pytest.approx(ours)


def test_multiclass_auc_is_ovr_macro() -> None:
    y, p = _data(3)
    p = p / p.sum(1, keepdims=True)
    assert classification_metrics(y, p)["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))


@pytest.mark.parametrize("k", [2, 3])
def test_bootstrap_matches_naive_resampling(k: int) -> None:
    """Weighted resamples give the same distribution as explicit index resampling (same multinomial)."""
    y, p = _data(k, n=120)
    ci = bootstrap_ci(y, p, n_boot=400, seed=3)
    rng = np.random.default_rng(3)
    w = rng.multinomial(len(y), np.full(len(y), 1 / len(y)), size=400)
    naive = {m: [] for m in ci}
    for row in w:
        idx = np.repeat(np.arange(len(y)), row)
        for m, v in classification_metrics(y[idx], p[idx]).items():
            naive[m].append(v)
    for m, (lo, hi) in ci.items():
        arr = np.array([v for v in naive[m] if not math.isnan(v)])
        assert lo == pytest.approx(np.quantile(arr, 0.025), abs=1e-9), m
        assert hi == pytest.approx(np.quantile(arr, 0.975), abs=1e-9), m
    point = classification_metrics(y, p)
    for m, (lo, hi) in ci.items():
        assert lo <= point[m] <= hi


def test_mean_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.5]) == (0.5, 0.0)
    mu, sd = mean_std([float("nan")])
    assert math.isnan(mu) and math.isnan(sd)


def test_paired_difference_over_episodes() -> None:
    from hica.eval.stats import paired_difference

    a = {1: 0.70, 2: 0.60, 3: 0.65, 4: float("nan")}
    b = {1: 0.60, 2: 0.55, 3: 0.60, 5: 0.9}  # episode 5 is unpaired, episode 4's NaN is left out
    d = paired_difference(a, b, n_boot=2000)
    assert d["n"] == 3 and d["mean"] == pytest.approx((0.10 + 0.05 + 0.05) / 3, abs=1e-4)
    assert d["wins"] == 3 and d["losses"] == 0 and d["sign"] == "above 0"
    assert d["ci95"][0] == pytest.approx(0.05, abs=1e-4) and d["ci95"][1] == pytest.approx(0.10, abs=1e-4)
    assert d["per_episode"] == {"1": 0.1, "2": 0.05, "3": 0.05}
    same = paired_difference({1: 0.5, 2: 0.7}, {1: 0.6, 2: 0.6})
    assert same["sign"] == "CI holds 0" and same["mean"] == pytest.approx(0.0, abs=1e-9)
    assert paired_difference({}, {1: 0.5})["sign"] == "no paired episodes"


def test_tables_that_print_three_places_are_not_rounded_twice() -> None:
    """Seeds averaging 0.817485 print as 0.817 from a summary kept to 6 places; kept to 4 (0.8175) they
    would print as 0.818. The same for a paired difference."""
    from hica.eval.stats import paired_difference, seed_summary

    vals = [0.81749, 0.81748]
    assert f"{seed_summary(vals)['mean']:.3f}" == "0.818"  # the 4-place default rounds twice
    assert f"{seed_summary(vals, places=6)['mean']:.3f}" == "0.817"
    d = paired_difference({1: 0.81749, 2: 0.81748}, {1: 0.0, 2: 0.0}, n_boot=100, places=6)
    assert f"{d['mean']:.3f}" == "0.817" and d["per_episode"] == {"1": 0.81749, "2": 0.81748}

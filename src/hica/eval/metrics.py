"""Classification metrics (scikit-learn), bootstrap confidence intervals and aggregation over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")


def _rows_sum_to_one(probs: np.ndarray) -> np.ndarray:
    """Renormalise rows that do not already sum to 1 (scikit-learn's multi-class AUC requires it)."""
    sums = probs.sum(1, keepdims=True)
    return probs if np.allclose(sums, 1.0, atol=1e-6) else probs / sums


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC: positive-class AUC for 2 classes, one-vs-rest macro AUC for more; NaN if undefined."""
    n_classes = probs.shape[1]
    if len(np.unique(labels)) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    if len(np.unique(labels)) < n_classes:
        return float("nan")
    return float(
        roc_auc_score(
            labels, _rows_sum_to_one(probs), multi_class="ovr", average="macro", labels=list(range(n_classes))
        )
    )


def one_vs_rest_auc(labels: np.ndarray, probs: np.ndarray, cls: int) -> float:
    """AUC of class ``cls`` against all others (e.g. malignant vs rest)."""
    y = (labels == cls).astype(int)
    return float(roc_auc_score(y, probs[:, cls])) if 0 < y.sum() < len(y) else float("nan")


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1 and AUC of argmax predictions / probabilities."""
    labels = np.asarray(labels)
    pred = probs.argmax(1)
    k = probs.shape[1]
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=list(range(k)), zero_division=0)),
        "auc": auc(labels, probs),
    }


def confusion(labels: np.ndarray, probs: np.ndarray) -> list[list[int]]:
    """Confusion matrix, rows = true class, columns = predicted."""
    k = probs.shape[1]
    return confusion_matrix(labels, probs.argmax(1), labels=list(range(k))).tolist()


def _weighted_binary_auc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC for each row of sample weights ``w`` (B, n); ties count one half."""
    order = np.argsort(score, kind="mergesort")
    s, y, w = score[order], y[order], w[:, order]
    _, start = np.unique(s, return_index=True)  # groups of equal scores
    pos_w, neg_w = w * y, w * (1 - y)
    neg_group = np.add.reduceat(neg_w, start, axis=1)
    pos_group = np.add.reduceat(pos_w, start, axis=1)
    neg_below = np.cumsum(neg_group, axis=1) - neg_group
    num = (pos_group * (neg_below + 0.5 * neg_group)).sum(1)
    den = pos_w.sum(1) * neg_w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def bootstrap_draws(
    labels: np.ndarray, probs: np.ndarray, w: np.ndarray, per_class: bool = False
) -> dict[str, np.ndarray]:
    """Each metric on every bootstrap resample, given as rows of multinomial image weights ``w`` (B, n).

    Every metric is a weighted sum, so all resamples are computed at once. Keys: accuracy,
    balanced_accuracy, macro_f1, auc; with ``per_class`` also ``recall/<c>`` and ``ovr_auc/<c>``.
    """
    labels = np.asarray(labels)
    probs = _rows_sum_to_one(probs)  # as classification_metrics' AUC sees them
    n, k = probs.shape
    pred = probs.argmax(1)
    out: dict[str, np.ndarray] = {"accuracy": (w @ (pred == labels).astype(float)) / n}
    recalls, f1s, aucs = [], [], []
    for c in range(k):
        yc, pc = (labels == c).astype(float), (pred == c).astype(float)
        tp, fp, fn = w @ (yc * pc), w @ ((1 - yc) * pc), w @ (yc * (1 - pc))
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(w @ yc > 0, tp / (w @ yc), np.nan))
            f1s.append(np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0))
        if k > 2 or per_class:
            aucs.append(_weighted_binary_auc(yc, probs[:, c], w))
        if per_class:
            out[f"recall/{c}"], out[f"ovr_auc/{c}"] = recalls[-1], aucs[-1]
    with np.errstate(invalid="ignore"):
        out["balanced_accuracy"] = np.nanmean(np.stack(recalls), axis=0)
    out["macro_f1"] = np.mean(np.stack(f1s), axis=0)
    if k == 2:
        out["auc"] = _weighted_binary_auc(labels.astype(float), probs[:, 1], w)
    else:
        out["auc"] = np.mean(aucs, axis=0)  # NaN where a class is absent from the resample
    return out


def bootstrap_ci(
    labels: np.ndarray, probs: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap 95% CI of every metric, resampling test images (vectorised over resamples).

    Each resample is a multinomial weight vector over the images, so every metric is a weighted sum.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(labels)
    w = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)  # (B, n)
    draws = bootstrap_draws(labels, probs, w)
    out = {}
    for m, vals in draws.items():
        arr = vals[~np.isnan(vals)]
        out[m] = (
            (float(np.quantile(arr, alpha / 2)), float(np.quantile(arr, 1 - alpha / 2)))
            if len(arr)
            else (float("nan"), float("nan"))
        )
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), NaNs ignored."""
    arr = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0

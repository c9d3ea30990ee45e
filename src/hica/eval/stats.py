"""Statistics over seeds and evaluation images: chance levels, the seed-mean bootstrap, versus chance.

For analyses that score several seeds on the same evaluation images: every number is a mean ± std over
seeds with a 95% bootstrap CI of the seed mean (one set of image resamples for every seed), and a number
whose CI holds the chance level is "not distinguishable from chance".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

NOT_DISTINGUISHABLE = "not distinguishable from chance"
BELOW = "below chance"
ABOVE = "above chance"


def seed_summary(values: Any, per_seed: bool = False, places: int = 4) -> dict[str, Any]:
    """``{"mean", "std"}`` of per-seed values, rounded to ``places`` (sample std; 0 for one seed), with the
    rounded values themselves as ``per_seed`` when asked. A table that prints 3 decimals from these should
    ask for more than 4 places: 0.81748 stored as 0.8175 prints as 0.818."""
    a = np.asarray(values, dtype=np.float64)
    out: dict[str, Any] = {
        "mean": round(float(a.mean()), places),
        "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, places),
    }
    if per_seed:
        out["per_seed"] = [round(float(v), places) for v in a]
    return out


def chance_levels(labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """What guessing scores: uniform guessing for every metric, plus majority-class accuracy for context.

    Macro-F1 of uniform guessing: class c with prevalence π gets F1 = 2π / (1 + Cπ) (expected counts).
    """
    prev = np.bincount(labels, minlength=n_classes) / len(labels)
    return {
        "accuracy": 1 / n_classes,
        "balanced_accuracy": 1 / n_classes,
        "macro_f1": float(np.mean(2 * prev / (1 + n_classes * prev))),
        "auc": 0.5,
        "recall": 1 / n_classes,
        "ovr_auc": 0.5,
        "majority_class_accuracy": float(prev.max()),
    }


def class_recalls(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Recall of each class (NaN for a class without images), keyed by class name."""
    pred = probs.argmax(1)
    return {
        c: float((pred[labels == i] == i).mean()) if (labels == i).any() else float("nan")
        for i, c in enumerate(classes)
    }


def bootstrap_seed_mean(
    labels: np.ndarray, probs_per_seed: list[np.ndarray], n_boot: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95% percentile CI of each metric's mean over seeds, resampling evaluation images.

    One set of resamples serves every seed (the seeds score the same images), so the interval is that of
    the seed mean. Draws match ``eval.metrics.bootstrap_ci`` for a single seed. Keys: accuracy,
    balanced_accuracy, macro_f1, auc, ``recall/<c>``, ``ovr_auc/<c>`` (class index c).
    """
    from hica.eval.metrics import bootstrap_draws

    n = len(labels)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1 / n), size=n_boot).astype(float)
    per = [bootstrap_draws(np.asarray(labels), p, w, per_class=True) for p in probs_per_seed]
    out = {}
    for m in per[0]:
        with np.errstate(invalid="ignore"):
            vals = np.mean([d[m] for d in per], axis=0)
        vals = vals[~np.isnan(vals)]
        out[m] = (
            (float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975)))
            if len(vals)
            else (math.nan, math.nan)
        )
    return out


def versus_chance(ci: tuple[float, float], chance: float) -> str:
    """Whether a 95% CI lies above, holds, or lies below the chance level."""
    lo, hi = ci
    if math.isnan(lo) or lo <= chance <= hi:
        return NOT_DISTINGUISHABLE
    return ABOVE if lo > chance else BELOW


def seed_stat(
    values: list[float], ci: tuple[float, float] | None = None, chance: float | None = None
) -> dict[str, Any]:
    """Mean ± std over seeds; with a CI, the CI and (given a chance level) how it compares to chance."""
    from hica.eval.metrics import mean_std

    m, s = mean_std(values)
    out: dict[str, Any] = {"mean": m, "std": s, "per_seed": values}
    if ci is not None:
        out["ci95"] = list(ci)
    if ci is not None and chance is not None:
        out["chance"] = chance
        out["vs_chance"] = versus_chance(ci, chance)
    return out


def paired_text(d: dict) -> str:
    """A :func:`paired_difference` result as a table cell: ``+0.019 [+0.008, +0.030] (8/2)`` (mean
    [95% CI] (wins/losses)), in bold where the CI excludes 0."""
    lo, hi = d["ci95"]
    txt = f"{d['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] ({d['wins']}/{d['losses']})"
    return f"**{txt}**" if d["sign"] != "CI holds 0" else txt


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile CI of the mean of ``values`` (1-D, non-empty) from ``n_boot`` resamples of them."""
    boots = values[np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(
    a: dict[Any, float], b: dict[Any, float], n_boot: int = 10000, seed: int = 0, places: int = 4
) -> dict:
    """Mean paired difference a − b over the episodes both have (keys, e.g. seeds), with a 95% CI from a
    bootstrap over episodes (the episode is the unit that varies: support set, initialisation), and whether
    the CI lies above, below or across 0; numbers rounded to ``places``. NaN differences are left out."""
    keys = sorted(k for k in a if k in b and math.isfinite(a[k] - b[k]))
    d = np.array([a[k] - b[k] for k in keys], dtype=np.float64)
    if len(d) == 0:
        return {"n": 0, "mean": math.nan, "ci95": [math.nan, math.nan], "sign": "no paired episodes"}
    lo, hi = bootstrap_mean_ci(d, n_boot, seed)
    sign = "above 0" if lo > 0 else "below 0" if hi < 0 else "CI holds 0"
    return {
        "n": len(d),
        "mean": round(float(d.mean()), places),
        "ci95": [round(lo, places), round(hi, places)],
        "sign": sign,
        "wins": int((d > 0).sum()),
        "losses": int((d < 0).sum()),
        "per_episode": {str(k): round(float(v), places) for k, v in zip(keys, d, strict=True)},
    }

"""Validation-based selection with deterministic tie-breaks, and a single-thread scope for the many tiny
tensor operations of fitting.

Selection reads the validation shots only. A candidate's score is the tuple (accuracy, balanced accuracy,
−log-loss), compared lexicographically; on an exact tie the candidate listed first wins, so grids are
ordered from the most to the least regularised setting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import torch
import torch.nn.functional as F

from hica.errors import HicaError
from hica.runtime import deterministic

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
Score = tuple[float, float, float]


def single_threaded(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` inside ``runtime.deterministic(1)``: one torch and one BLAS thread (numpy / scipy, hence
    scikit-learn) and deterministic algorithms, restoring the caller's settings afterwards.

    Few-shot fitting is hundreds of operations on tensors of a few hundred rows: extra threads do not
    speed them up, and when another process holds the other cores every parallel region waits for a time
    slice (measured: CLAP 0.1 s single-threaded vs 10-30 s with 2 threads on a loaded 2-core machine).
    One thread also makes results independent of the machine's core count.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with deterministic(1):
            return fn(*args, **kwargs)

    return wrapper


def val_score(probs: torch.Tensor, labels: torch.Tensor) -> Score:
    """(accuracy, balanced accuracy, −cross-entropy) on validation: higher is better in each."""
    pred = probs.argmax(1)
    acc = (pred == labels).float().mean().item()
    recalls = [(pred[labels == c] == c).float().mean().item() for c in labels.unique().tolist()]
    bal = sum(recalls) / len(recalls)
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return acc, bal, -nll


def val_scores(probs: torch.Tensor, labels: torch.Tensor) -> list[Score]:
    """:func:`val_score` of each of B candidates at once: (B, M, C) probabilities → B scores.

    Same arithmetic as ``val_score`` (float32 accuracy and recalls, recalls summed in class order in
    float64), except the order in which the log-loss is summed."""
    hit = (probs.argmax(-1) == labels).float()  # (B, M)
    acc = hit.mean(-1)
    classes = labels.unique().tolist()
    bal = torch.zeros(len(probs), dtype=torch.float64)
    for c in classes:
        bal += hit[:, labels == c].mean(-1).double()
    bal /= len(classes)
    logp = probs.clamp_min(1e-12).log().gather(-1, labels.expand(len(probs), -1).unsqueeze(-1))
    return list(zip(acc.tolist(), bal.tolist(), logp.squeeze(-1).mean(-1).tolist(), strict=True))


def select(candidates: Iterable[T], score: Callable[[T], Score]) -> tuple[T, Score]:
    """The best-scoring candidate; on an exact tie the earliest one (grids go most → least regularised)."""
    best: Any = None
    best_s: Score | None = None
    for c in candidates:
        s = score(c)
        if best_s is None or s > best_s:
            best, best_s = c, s
    if best_s is None:
        raise HicaError("empty hyperparameter grid: give at least one candidate value")
    return best, best_s


def edge_picks(picks: Mapping[str, float], grids: Mapping[str, Sequence[float]]) -> list[str]:
    """Names (in ``picks`` order) whose pick is the first or last value of its grid of ≥ 2 values.

    A pick on a grid edge means the optimum may lie outside the searched range; reports count them
    (``selected["edge"]``). Names without a grid, or with a one-value grid, are never edge picks.
    """
    out = []
    for name, value in picks.items():
        grid = list(grids.get(name, ()))
        if len(grid) >= 2 and (value == grid[0] or value == grid[-1]):
            out.append(name)
    return out


def select_refined(
    approx: Sequence[Score], exact: Callable[[int], Score], tol: float = 1e-5
) -> tuple[int, Score]:
    """:func:`select` over candidates ``0 … n−1`` scored by ``exact``, calling it only where it matters.

    ``approx`` are the batched scores (:func:`val_scores`: accuracy and balanced accuracy exact, the
    log-loss up to rounding). Only candidates with the best accuracies and a log-loss within ``tol`` of the
    best are rescored exactly; the pick, its score and the tie rule are those of ``select`` on all of them.
    """
    if not approx:
        raise HicaError("empty hyperparameter grid: give at least one candidate value")
    top = max(s[:2] for s in approx)
    best = max(s[2] for s in approx if s[:2] == top)
    near = best - tol * max(1.0, abs(best))
    return select([i for i, s in enumerate(approx) if s[:2] == top and s[2] >= near], exact)

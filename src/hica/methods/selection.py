"""Validation-based selection with deterministic tie-breaks, and a single-thread scope for the many tiny
tensor operations of fitting.

Selection reads the validation shots only. A candidate's score is the tuple (accuracy, balanced accuracy,
−log-loss), compared lexicographically; on an exact tie the candidate listed first wins, so grids are
ordered from the most to the least regularised setting.

The searches whose picks are checked for grid edges (Tip-Adapter's α × β, the linear probe's coarse C) use
:func:`select_central` instead: with 1–4 validation shots per class the accuracy is flat over wide regions of
the grid, and the log-loss, which rewards confidence, then drives the pick to whichever end of the plateau is
most confident — an end of the grid (measured: results/baselines_text_head/comparison.md). The plateau of
best (accuracy, balanced accuracy) is kept whole and its centre is taken.
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


def select_central(coords: Sequence[Sequence[float]], scores: Sequence[Score]) -> tuple[int, int]:
    """(index of the pick, size of the plateau) over candidates at grid coordinates ``coords`` (e.g. their
    indices in each searched list) with ``scores`` (:func:`val_score`).

    The plateau is every candidate with the best (accuracy, balanced accuracy), contiguous or not. The pick is
    the plateau member nearest (Euclidean, in ``coords``; distances rounded to 9 decimals) to the plateau's
    centroid; then the best log-loss; then the earliest.
    A unique best is picked as by :func:`select`; only ties are resolved differently (centre, not the most
    confident end)."""
    if not scores:
        raise HicaError("empty hyperparameter grid: give at least one candidate value")
    if len(coords) != len(scores):
        raise ValueError(f"select_central: {len(coords)} grid coordinates for {len(scores)} scores")
    top = max(s[:2] for s in scores)
    tied = [i for i, s in enumerate(scores) if s[:2] == top]
    pts = torch.tensor([list(coords[i]) for i in tied], dtype=torch.float64)
    dist = (pts - pts.mean(0)).norm(dim=1).tolist()
    best = min(range(len(tied)), key=lambda j: (round(dist[j], 9), -scores[tied[j]][2], tied[j]))
    return tied[best], len(tied)


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

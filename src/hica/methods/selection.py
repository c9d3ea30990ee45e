"""Validation-based selection with deterministic tie-breaks, and a single-thread scope for the many tiny
tensor operations of fitting.

Selection reads the validation shots only. A candidate's score is the tuple (accuracy, balanced accuracy,
−log-loss), compared lexicographically; on an exact tie the candidate listed first wins, so grids are
ordered from the most to the least regularised setting.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
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

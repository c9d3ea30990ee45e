"""Shared helpers: input checks, validation-based selection with deterministic tie-breaks, and a
single-thread scope for the many tiny tensor operations of fitting.

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
from hica.methods.base import ClassText, FewShotData
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


def need_text(data: FewShotData, method: str) -> ClassText:
    """The episode's class text, checked against the number of classes."""
    if data.text is None:
        raise HicaError(
            f"{method} needs class text: give the dataset a descriptors YAML, or drop the text-using method"
        )
    n = data.text.class_emb.shape[0]
    if n != data.num_classes:
        raise HicaError(
            f"{method}: class text has {n} class embeddings but the episode has {data.num_classes}"
        )
    return data.text


def need_shots(data: FewShotData, method: str) -> None:
    """Few-shot methods need labelled support and validation shots covering every class."""
    for part, y in (("support", data.support_labels), ("validation", data.val_labels)):
        if len(y) == 0:
            raise HicaError(f"{method} needs labelled {part} shots (K >= 1); it cannot run zero-shot")
    missing = sorted(set(range(data.num_classes)) - set(data.support_labels.tolist()))
    if missing:
        raise HicaError(f"{method}: support set has no shot of class(es) {missing}")

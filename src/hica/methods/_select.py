"""Validation-based selection shared by methods: score on the validation shots, deterministic tie-breaks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F


def val_score(probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, −cross-entropy) on validation: higher is better; the loss breaks accuracy ties."""
    acc = (probs.argmax(1) == labels).float().mean().item()
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return acc, -nll


def select(candidates: Iterable[Any], score: Callable[[Any], tuple[float, float]]) -> tuple[Any, tuple]:
    """The first candidate with the best score (candidates ordered from most to least regularised)."""
    best, best_s = None, None
    for c in candidates:
        s = score(c)
        if best_s is None or s > best_s:
            best, best_s = c, s
    return best, best_s

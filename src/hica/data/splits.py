"""Split definitions: official where they exist, else a seeded stratified validation carve-out."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from hica.data.sample import Sample
from hica.errors import HicaError


def carve_validation(
    samples: list[Sample], fraction: float = 0.1, seed: int = 0, source: str = "the training images"
) -> tuple[list[Sample], list[Sample]]:
    """Split ``samples`` into (train, val), stratified by label, reproducible from ``seed``.

    The held-out part gets ``ceil(fraction * N)`` images, but at least one per class; ``source`` names
    the data in error messages.
    """
    if not 0 < fraction < 1:
        raise HicaError(f"val_fraction must be in (0, 1), got {fraction}")
    labels = np.array([s.label for s in samples])
    if len(labels) == 0 or np.bincount(labels).min() < 2:
        raise HicaError(
            f"cannot carve a stratified validation split from {source}: a class has fewer than 2 images"
        )
    n_classes = len(np.unique(labels))
    n_val = max(int(np.ceil(fraction * len(labels))), n_classes)
    if len(labels) - n_val < n_classes:
        raise HicaError(
            f"cannot carve a stratified {fraction:.0%} validation split from {source}: {len(labels)} images "
            f"in {n_classes} classes are too few; add images or give an explicit val split"
        )
    idx = np.arange(len(samples))
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=labels)
    return [samples[i] for i in sorted(tr)], [samples[i] for i in sorted(va)]

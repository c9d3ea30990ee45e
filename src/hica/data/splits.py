"""Split definitions: official where they exist, else a seeded stratified validation carve-out, per image or
per group (a patient: every image of a group on one side)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

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


def carve_validation_by_group(
    samples: list[Sample],
    groups: Sequence[str],
    fraction: float = 0.1,
    seed: int = 0,
    source: str = "the training images",
) -> tuple[list[Sample], list[Sample]]:
    """Split ``samples`` into (train, val) with every group (e.g. a patient) wholly on one side.

    ``groups[i]`` names the group of ``samples[i]``; a group's class is its most common label (ties: the
    lower label). Per class c, with n_c images in groups of class c, the validation target is
    ``max(1, ceil(fraction · n_c))`` images: the class's groups, sorted by name, are shuffled by
    ``default_rng([seed, c])`` and taken in that order whenever they still fit under the target, until it is
    met (exactly, when single-image groups remain to fill it). Deterministic whatever the order of
    ``samples``; each class keeps at least one group on each side. Both lists keep ``samples``' order.
    """
    if not 0 < fraction < 1:
        raise HicaError(f"val_fraction must be in (0, 1), got {fraction}")
    if len(groups) != len(samples):
        raise HicaError(f"{len(groups)} group names for {len(samples)} samples of {source}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list[str]] = defaultdict(list)
    for g in sorted(members):
        counts = Counter(samples[i].label for i in members[g])
        by_class[min(counts, key=lambda c: (-counts[c], c))].append(g)
    val_groups: set[str] = set()
    for c in sorted(by_class):
        names = by_class[c]
        if len(names) < 2:
            raise HicaError(
                f"cannot carve a validation split per group from {source}: class {c} has {len(names)} "
                "group(s); it needs at least 2 (one on each side)"
            )
        sizes = {g: len(members[g]) for g in names}
        target = max(1, math.ceil(fraction * sum(sizes.values())))
        order = [names[i] for i in np.random.default_rng([seed, c]).permutation(len(names))]
        taken, n = [], 0
        for g in order[:-1]:  # the last group in the shuffled order always stays in train
            if n + sizes[g] <= target:
                taken.append(g)
                n += sizes[g]
            if n == target:
                break
        val_groups.update(taken or order[:1])  # every group larger than the target: the first one
    val = [s for s, g in zip(samples, groups, strict=True) if g in val_groups]
    train = [s for s, g in zip(samples, groups, strict=True) if g not in val_groups]
    return train, val

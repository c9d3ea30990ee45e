"""K-shot episodes: deterministic support and validation shots per (dataset, K, seed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hica.data.sample import Dataset, Sample
from hica.errors import HicaError


@dataclass(frozen=True)
class Episode:
    """Sample ids of one few-shot episode; the query set is the whole test split."""

    dataset: str
    k: int
    seed: int
    support: tuple[str, ...]
    val: tuple[str, ...]

    def to_json(self) -> dict:
        return asdict(self)


def val_shots(k: int) -> int:
    """Validation shots per class for a K-shot episode: min(K, 4)."""
    return min(k, 4)


def _draw(
    samples: list[Sample], n_classes: int, n: int, rng: np.random.Generator, what: str, ds: Dataset, k: int
):
    chosen: list[str] = []
    for c in range(n_classes):
        pool = sorted(s.id for s in samples if s.label == c)
        if len(pool) < n:
            raise HicaError(
                f"K={k} needs {n} {what} shot(s) of class {ds.classes[c]!r} of {ds.name}, but its {what} "
                f"split has only {len(pool)} image(s) of it; use a smaller K"
            )
        chosen.extend(pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False)))
    return tuple(chosen)


def sample_episode(ds: Dataset, k: int, seed: int) -> Episode:
    """Draw K support images per class from ``train`` and min(K,4) per class from ``val``.

    Deterministic: the same (dataset, K, seed) gives the same ids, whatever the file order on disk.
    Test images are never drawn.
    """
    if k < 1:
        raise HicaError(f"K (shots per class) must be >= 1, got {k}")
    if seed < 0:
        raise HicaError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([seed, k])
    n = len(ds.classes)
    support = _draw(ds.split("train"), n, k, rng, "train", ds, k)
    val = _draw(ds.split("val"), n, val_shots(k), rng, "val", ds, k)
    return Episode(dataset=ds.name, k=k, seed=seed, support=support, val=val)

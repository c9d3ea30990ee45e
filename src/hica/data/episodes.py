"""K-shot episodes: deterministic support and validation shots per (dataset, K, seed, protocol).

Two protocols:

- ``standard``: K support images per class from ``train`` and min(K, 4) validation shots per class from
  ``val`` (balanced; hyperparameters are chosen on the validation shots);
- ``realistic`` (Silva-Rodríguez et al., "Few-Shot, Now for Real: Medical VLMs Adaptation without Balanced
  Sets or Validation", MICCAI 2025, arXiv 2506.17500): N = K × C support images whose class counts follow
  the ``train`` split's class prior, at least one per class (:func:`realistic_counts`), and no validation
  shots at all, so every method runs with fixed hyperparameters declared before the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from hica.data.sample import Dataset, Sample
from hica.errors import HicaError

PROTOCOLS: tuple[str, ...] = ("standard", "realistic")  # BenchmarkConfig.protocol


@dataclass(frozen=True)
class Episode:
    """Sample ids of one few-shot episode; the query set is the whole test split."""

    dataset: str
    k: int
    seed: int
    support: tuple[str, ...]
    val: tuple[str, ...]
    protocol: str = "standard"

    def to_json(self) -> dict:
        """The episode as JSON; a standard episode without its ``protocol`` key, as before protocols existed
        (its identity, stored in every part and checkpoint, is unchanged)."""
        d = asdict(self)
        if self.protocol == "standard":
            d.pop("protocol")
        return d


def val_shots(k: int) -> int:
    """Validation shots per class for a K-shot episode: min(K, 4)."""
    return min(k, 4)


def realistic_counts(prior: np.ndarray, n: int) -> list[int]:
    """Support images per class for N = ``n`` images drawn to the class ``prior`` (counts or frequencies).

    Largest remainder: ⌊N·p_c⌋ per class, at least 1, then the images still missing go one each to the
    classes with the largest remainders N·p_c − ⌊N·p_c⌋ (ties: the lower class), and any excess from the
    minimum is taken one at a time from the largest count (ties: the lower class), as the paper's code
    takes it from the majority class. The counts sum to exactly N, each ≥ 1 (so N ≥ the classes).
    """
    p = np.asarray(prior, dtype=np.float64)
    if p.ndim != 1 or len(p) == 0 or (p <= 0).any():
        raise HicaError(f"the class prior must be positive for every class, got {p.tolist()}")
    if n < len(p):
        raise HicaError(f"{n} support images cannot hold one of each of {len(p)} classes")
    exact = n * p / p.sum()
    counts = np.maximum(np.floor(exact).astype(int), 1)
    rem = exact - np.floor(exact)
    by_rem = sorted(range(len(p)), key=lambda c: (-rem[c], c))
    i = 0
    while counts.sum() < n:
        counts[by_rem[i % len(p)]] += 1
        i += 1
    while counts.sum() > n:
        c = max((c for c in range(len(p)) if counts[c] > 1), key=lambda c: (counts[c], -c))
        counts[c] -= 1
    return [int(x) for x in counts]


def _draw(
    samples: list[Sample],
    counts: list[int],
    rng: np.random.Generator,
    what: str,
    ds: Dataset,
    k: int,
) -> tuple[str, ...]:
    chosen: list[str] = []
    for c, n in enumerate(counts):
        pool = sorted(s.id for s in samples if s.label == c)
        if len(pool) < n:
            raise HicaError(
                f"K={k} needs {n} {what} shot(s) of class {ds.classes[c]!r} of {ds.name}, but its {what} "
                f"split has only {len(pool)} image(s) of it; use a smaller K"
            )
        chosen.extend(pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False)))
    return tuple(chosen)


def sample_episode(ds: Dataset, k: int, seed: int, protocol: str = "standard") -> Episode:
    """Draw one episode of ``protocol`` (module docstring): standard — K support images per class from
    ``train`` and min(K, 4) per class from ``val``; realistic — K × C support images from ``train`` following
    its class prior (≥ 1 per class) and no validation shots (``val`` is never read).

    Deterministic: the same (dataset, K, seed, protocol) gives the same ids, whatever the file order on
    disk. Test images are never drawn.
    """
    if k < 1:
        raise HicaError(f"K (shots per class) must be >= 1, got {k}")
    if seed < 0:
        raise HicaError(f"seed must be >= 0, got {seed}")
    if protocol not in PROTOCOLS:
        raise HicaError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    rng = np.random.default_rng([seed, k])
    n = len(ds.classes)
    train = ds.split("train")
    if protocol == "realistic":
        prior = np.bincount([s.label for s in train], minlength=n)
        missing = [ds.classes[c] for c in range(n) if prior[c] == 0]
        if missing:
            raise HicaError(f"{ds.name}: the train split has no image of class(es) {missing}")
        support = _draw(train, realistic_counts(prior, k * n), rng, "train", ds, k)
        return Episode(dataset=ds.name, k=k, seed=seed, support=support, val=(), protocol=protocol)
    support = _draw(train, [k] * n, rng, "train", ds, k)
    val = _draw(ds.split("val"), [val_shots(k)] * n, rng, "val", ds, k)
    return Episode(dataset=ds.name, k=k, seed=seed, support=support, val=val)

"""Merging classes for evaluation (``--merge NEW=A+B``): a 3-class model scored on 2-class data, etc."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hica.errors import HicaError


def parse_merge(items: Sequence[str] | None) -> dict[str, list[str]]:
    """``NEW=A+B`` items (``--merge``) → ``{NEW: [A, B]}``."""
    out: dict[str, list[str]] = {}
    for item in items or []:
        new, eq, old = item.partition("=")
        parts = [c.strip() for c in old.split("+") if c.strip()]
        if not (eq and new.strip() and parts):
            raise HicaError(
                f"--merge {item!r} must look like NEW=CLASS+CLASS, e.g. benign_or_normal=benign+normal"
            )
        out[new.strip()] = parts
    return out


def merge_matrix(
    classes: list[str],
    merge: dict[str, list[str]],
    target: list[str],
    source: str,
    other: Sequence[str] = (),
) -> torch.Tensor:
    """(C_model, C_target) 0/1 matrix summing model-class probabilities into ``target`` classes.

    A target class is the sum of the model classes ``merge`` lists for it, else the model class of the same
    name; every model class must land in exactly one target class. ``merge`` may also name classes of the
    data (``other``), which only relabel the data."""
    used = [c for parts in merge.values() for c in parts]
    unknown = sorted(set(used) - set(classes) - set(other))
    if unknown:
        raise HicaError(
            f"--merge names class(es) {unknown} that neither {source} ({classes}) nor the data has"
        )
    if len(used) != len(set(used)):
        raise HicaError(f"--merge uses a class twice: {used}")
    m = torch.zeros(len(classes), len(target))
    for j, t in enumerate(target):
        for c in [c for c in merge.get(t, []) if c in classes] or (
            [t] if t in classes and t not in used else []
        ):
            m[classes.index(c), j] = 1
    if (m.sum(1) != 1).any() or (m.sum(0) == 0).any():
        raise HicaError(
            f"{source} was trained for classes {classes}, which do not map onto {target}: evaluate it on "
            "data with the same classes, merge classes with --merge NEW=CLASS+CLASS (e.g. "
            "benign_or_normal=benign+normal), or use `hica predict --zero-shot --descriptors` for other "
            "classes"
        )
    return m

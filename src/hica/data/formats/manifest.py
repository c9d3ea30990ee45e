"""CSV manifest: ``path,label[,split][,mask]``; paths relative to the CSV's folder; masks ``;``-separated."""

from __future__ import annotations

import csv
from pathlib import Path

from hica.data.sample import Sample
from hica.errors import HicaError


def read_manifest(
    path: str | Path, classes: list[str] | None = None
) -> tuple[list[str], dict[str, list[Sample]]]:
    """Read a manifest into (classes, {split: samples}); rows without a split go to ``train``.

    A class not in ``classes`` (when given), a missing image or mask, or a bad header is an error naming
    the CSV line.
    """
    path = Path(path)
    if not path.is_file():
        raise HicaError(f"manifest {path} not found")
    base = path.parent
    rows: list[tuple[int, str, str, str, list[str]]] = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"path", "label"} <= fields:
            raise HicaError(f"manifest {path} needs a header with columns path,label[,split][,mask]")
        seen: dict[str, int] = {}
        for i, row in enumerate(reader, start=2):
            if not row["path"] or not row["label"]:
                raise HicaError(
                    f"{path}:{i}: every row needs a path and a label, got path {row['path']!r}, "
                    f"label {row['label']!r}"
                )
            if row["path"] in seen:
                raise HicaError(
                    f"{path}:{i}: {row['path']} is listed again (first on line {seen[row['path']]}); "
                    "each image must appear once, in one split"
                )
            seen[row["path"]] = i
            masks = [m for m in (row.get("mask") or "").split(";") if m]
            rows.append((i, row["path"], row["label"], row.get("split") or "train", masks))
    if not rows:
        raise HicaError(f"manifest {path} has no rows")
    found = sorted({r[2] for r in rows})
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            line = next(r[0] for r in rows if r[2] in unknown)
            raise HicaError(f"{path}:{line}: unknown class {unknown[0]!r}; classes are {classes}")
    splits: dict[str, list[Sample]] = {}
    for line, rel, label, split, masks in rows:
        img = (base / rel).resolve()
        if not img.is_file():
            raise HicaError(f"{path}:{line}: image {rel} not found (looked at {img})")
        mpaths = tuple((base / m).resolve() for m in masks)
        for m in mpaths:
            if not m.is_file():
                raise HicaError(f"{path}:{line}: mask {m} not found")
        splits.setdefault(split, []).append(
            Sample(id=rel, label=classes.index(label), path=img, masks=mpaths)
        )
    return classes, splits

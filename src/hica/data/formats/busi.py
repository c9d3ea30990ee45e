"""BUSI in its Kaggle layout: ``<class>/<name>.png`` with masks ``<name>_mask.png``, ``<name>_mask_1.png``…

Split files are CSVs ``file,label,split`` with ``file`` relative to the dataset folder.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from hica.data.sample import Sample
from hica.errors import HicaError

BUSI_CLASSES = ["benign", "malignant", "normal"]
_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$")


def scan_busi(root: str | Path, classes: list[str] = BUSI_CLASSES) -> dict[str, Sample]:
    """Map ``<class>/<file>`` to a Sample with its masks; a mask without an image is an error."""
    root = Path(root)
    if not root.is_dir():
        raise HicaError(f"BUSI folder {root} not found; expected {root}/{{benign,malignant,normal}}/*.png")
    out: dict[str, Sample] = {}
    for label, cname in enumerate(classes):
        folder = root / cname
        if not folder.is_dir():
            raise HicaError(f"BUSI class folder {folder} not found")
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for f in sorted(folder.glob("*.png")):
            m = _MASK.match(f.stem)
            if m:
                masks.setdefault(m.group("stem"), []).append(f)
            else:
                images[f.stem] = f
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise HicaError(
                f"mask without image in {folder}: {masks[orphans[0]][0].name} (no {orphans[0]}.png); "
                f"{len(orphans)} orphan mask group(s) in total"
            )
        if not images:
            raise HicaError(f"BUSI class folder {folder} has no images")
        for stem, path in images.items():
            sid = f"{cname}/{path.name}"
            out[sid] = Sample(id=sid, label=label, path=path, masks=tuple(sorted(masks.get(stem, []))))
    return out


def read_split_file(
    path: str | Path, by_id: dict[str, Sample], classes: list[str]
) -> dict[str, list[Sample]]:
    """Assign samples to splits from a ``file,label,split`` CSV; every row must name a known image."""
    path = Path(path)
    if not path.is_file():
        raise HicaError(f"split file {path} not found")
    splits: dict[str, list[Sample]] = {}
    seen: dict[str, tuple[int, str]] = {}  # file -> (line, split) of its first row
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"file", "label", "split"}
        if not need <= set(reader.fieldnames or []):
            raise HicaError(f"split file {path} needs columns {sorted(need)}, has {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            sid = row["file"]
            if sid not in by_id:
                raise HicaError(f"{path}:{i}: {sid!r} is not an image of the dataset")
            if row["label"] not in classes:
                raise HicaError(f"{path}:{i}: unknown class {row['label']!r}; classes are {classes}")
            s = by_id[sid]
            if classes[s.label] != row["label"]:
                raise HicaError(
                    f"{path}:{i}: {sid} is labelled {row['label']!r} but lies in {classes[s.label]}/"
                )
            if sid in seen:
                line, split = seen[sid]
                raise HicaError(
                    f"{path}:{i}: {sid} is listed again (first on line {line}, split {split!r}); "
                    "each image must appear once, in one split"
                )
            seen[sid] = (i, row["split"])
            splits.setdefault(row["split"], []).append(s)
    return splits

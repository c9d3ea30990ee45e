"""Named datasets on the data root, and generic specs (``imagefolder:PATH``, ``manifest:PATH``).

The data root comes from, in order: an explicit argument (``--data-root``), ``$HICA_DATA``, ``./data``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hica.data.formats.busi import BUSI_CLASSES, read_split_file, scan_busi
from hica.data.formats.imagefolder import scan_imagefolder
from hica.data.formats.kermany import patient_groups
from hica.data.formats.manifest import read_manifest
from hica.data.formats.medmnist import ensure_npz, read_npz
from hica.data.sample import Dataset
from hica.data.splits import carve_validation, carve_validation_by_group
from hica.errors import HicaError

VAL_SEED = 0  # the fixed seed of every validation carve-out
VAL_FRACTION = 0.1
# How a built-in dataset's carved validation split is drawn, for those whose carving changed since the first
# one (per image, stratified): part of the identity of every grid part computed on it (``split_version``),
# so parts made on the old split are never reused for the new one. Bump it whenever the carving changes.
SPLIT_VERSIONS = {"chest_xray": "val-per-patient-1"}


def data_root(explicit: str | Path | None = None) -> Path:
    """Resolve and check the data root."""
    root = Path(explicit or os.environ.get("HICA_DATA") or "data").expanduser()
    if not root.is_dir():
        raise HicaError(
            f"data root {root} not found: pass --data-root DIR or set HICA_DATA=DIR (a folder holding "
            "busi/, chest_xray/, medmnist/ as described in the README)"
        )
    return root


def _busi(root: Path, split_file: str) -> Callable[..., Dataset]:
    def load(**_: Any) -> Dataset:
        base = root / "busi"
        by_id = scan_busi(base / "Dataset_BUSI_with_GT")
        splits = read_split_file(base / split_file, by_id, BUSI_CLASSES)
        return Dataset(
            name=f"busi[{split_file}]",
            classes=list(BUSI_CLASSES),
            splits=splits,
            descriptors="busi",
            source=str(base),
        )

    return load


def _chest_xray(root: Path) -> Callable[..., Dataset]:
    def load(skip_bad: bool = False, **_: Any) -> Dataset:
        base = root / "chest_xray"
        cmap = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
        classes, train = scan_imagefolder(base / "train", ["normal", "pneumonia"], cmap, skip_bad, "train/")
        _, test = scan_imagefolder(base / "test", classes, cmap, skip_bad, "test/")
        source = str(base / "train")
        train, val = carve_validation_by_group(
            train, patient_groups(train, source), VAL_FRACTION, VAL_SEED, source
        )
        return Dataset(
            name="chest_xray",
            classes=classes,
            splits={"train": train, "val": val, "test": test},
            descriptors="chest_xray",
            source=str(base),
            notes=[
                f"validation: {VAL_FRACTION:.0%} of train per class, carved per patient (file-name patient "
                f"id; every image of a patient on one side), seed {VAL_SEED}; test: official"
            ],
        )

    return load


def _medmnist(root: Path, name: str, classes: list[str]) -> Callable[..., Dataset]:
    def load(size: int = 28, download: bool = False, **_: Any) -> Dataset:
        stem = name if size == 28 else f"{name}_{size}"
        path = ensure_npz(root / "medmnist" / f"{stem}.npz", stem, download=download)
        return Dataset(
            name=stem, classes=classes, splits=read_npz(path, stem), descriptors=name, source=str(path)
        )

    return load


def split_version(spec: str | dict[str, Any]) -> str | None:
    """The ``SPLIT_VERSIONS`` entry of a config's dataset entry (a name or a dict) when it names a built-in
    dataset that has one, else None (a dataset whose split never changed adds nothing to a run's identity)."""
    name = spec if isinstance(spec, str) else (None if spec.get("path") else spec.get("name"))
    return SPLIT_VERSIONS.get(name) if isinstance(name, str) else None


def builtin_datasets(root: Path) -> dict[str, Callable[..., Dataset]]:
    """Loaders for the datasets hica knows by name."""
    return {
        "busi": _busi(root, "splits_biomedcoop.csv"),
        "busi_medmnist_split": _busi(root, "splits_medmnist.csv"),
        "chest_xray": _chest_xray(root),
        "pneumoniamnist": _medmnist(root, "pneumoniamnist", ["normal", "pneumonia"]),
        "breastmnist": _medmnist(root, "breastmnist", ["malignant", "benign_or_normal"]),
    }


BUILTIN_NAMES = ("busi", "busi_medmnist_split", "chest_xray", "pneumoniamnist", "breastmnist")


def check_classes(name: str, classes: list[str], splits: dict[str, list[Any]]) -> None:
    """Refuse a dataset with fewer than 2 classes that have images (after any ``classes`` filter)."""
    present = sorted({s.label for samples in splits.values() for s in samples})
    if len(classes) < 2 or len(present) < 2:
        found = [classes[i] for i in present]
        raise HicaError(
            f"dataset {name}: classification needs at least 2 classes with images, got {len(found)} "
            f"({found}); add class folders / rows or widen the 'classes' filter"
        )


def _generic(kind: str, path: Path, opts: dict[str, Any]) -> Dataset:
    classes = opts.get("classes")
    name = opts.get("name") or f"{kind}:{path.resolve()}"
    if kind == "manifest":
        classes, splits = read_manifest(
            path, classes, opts.get("skip_bad", False), opts.get("allow_outside", False)
        )
    elif kind == "imagefolder":
        if (path / "train").is_dir():
            splits = {}
            for sname in ("train", "val", "test"):
                if (path / sname).is_dir():
                    classes, splits[sname] = scan_imagefolder(
                        path / sname, classes, opts.get("class_map"), opts.get("skip_bad", False), f"{sname}/"
                    )
        else:
            classes, samples = scan_imagefolder(
                path, classes, opts.get("class_map"), opts.get("skip_bad", False)
            )
            splits = {"train": samples}
    else:
        raise HicaError(f"unknown dataset format {kind!r}; use imagefolder: or manifest:")
    if "train" not in splits:
        raise HicaError(f"{path}: no train split found")
    check_classes(name, list(classes), splits)
    frac = float(opts.get("val_fraction", VAL_FRACTION))
    if "val" not in splits:
        splits["train"], splits["val"] = carve_validation(splits["train"], frac, VAL_SEED, str(path))
    if "test" not in splits:
        splits["train"], splits["test"] = carve_validation(splits["train"], frac * 2, VAL_SEED + 1, str(path))
    return Dataset(
        name=name,
        classes=list(classes),
        splits=splits,
        descriptors=opts.get("descriptors"),
        source=str(path),
    )


def load_dataset(spec: str | dict[str, Any], root: str | Path | None = None, **opts: Any) -> Dataset:
    """Load a dataset by name (``busi``, ``chest_xray``…), ``imagefolder:PATH``, ``manifest:PATH``, or a dict
    ``{"name"|"path", "format", "classes", "class_map", "descriptors", "val_fraction", "size"}``."""
    if isinstance(spec, dict):
        opts = {**spec, **opts}
        spec = (
            spec.get("path") and f"{spec.get('format', 'imagefolder')}:{spec['path']}" or spec.get("name", "")
        )
    if ":" in spec and spec.split(":", 1)[0] in ("imagefolder", "manifest"):
        kind, p = spec.split(":", 1)
        path = Path(p).expanduser()
        if not path.is_absolute() and not path.exists() and root is not None:
            path = Path(root) / path
        return _generic(kind, path, opts)
    if spec not in BUILTIN_NAMES:
        raise HicaError(
            f"unknown dataset {spec!r}; known: {', '.join(BUILTIN_NAMES)}, "
            "or imagefolder:PATH / manifest:PATH"
        )
    loaders = builtin_datasets(data_root(root))
    ds = loaders[spec](**opts)
    check_classes(ds.name, ds.classes, ds.splits)
    return ds

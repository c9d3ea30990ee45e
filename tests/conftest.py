"""Shared fixtures: the real data root, and tiny copies of real data that tests may corrupt freely.

The data root is ``$HICA_DATA`` if set, else ``<repo>/../shared/data``; tests that need it skip when it
is absent, and fail under ``CI=true`` (``needs.missing_data``). The ``tiny_*`` fixtures copy a handful
of real images into ``tmp_path`` so a test can break them without touching the shared data.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from needs import missing_data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Torch and BLAS on one thread: deterministic, and fast on a shared 2-core machine."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)


def find_data_root() -> Path:
    """``$HICA_DATA`` if set, else ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("HICA_DATA")
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data root; skips the test when it is missing (fails it under ``CI=true``)."""
    root = find_data_root()
    if not root.is_dir():
        missing_data(f"real data not found at {root}: set HICA_DATA to the shared data folder")
    return root


def _first_files(folder: Path, n: int, pattern: str = "*") -> list[Path]:
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if len(files) < n:
        missing_data(f"{folder} has only {len(files)} file(s), need {n}")
    return files[:n]


@pytest.fixture
def tiny_imagefolder(data_root: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make(n_train=6, n_test=6, name="xray")`` copies the first ``n`` real chest X-rays per class
    into ``tmp_path/name/{train,test}/{NORMAL,PNEUMONIA}/`` and returns ``tmp_path/name``."""
    src = data_root / "chest_xray"
    if not src.is_dir():
        missing_data(f"{src} not found")

    def make(n_train: int = 6, n_test: int = 6, name: str = "xray") -> Path:
        dst = tmp_path / name
        for split, n in (("train", n_train), ("test", n_test)):
            for cls in ("NORMAL", "PNEUMONIA"):
                out = dst / split / cls
                out.mkdir(parents=True)
                for f in _first_files(src / split / cls, n):
                    shutil.copy2(f, out / f.name)
        return dst

    return make


@dataclass
class TinyBusi:
    """A tiny BUSI copy: ``root/busi/Dataset_BUSI_with_GT/<class>/``, ``root/busi/splits_biomedcoop.csv``."""

    root: Path  # a data root: load_dataset("busi", root) works on it
    images: Path  # the Dataset_BUSI_with_GT folder
    split_csv: Path
    rows: list[dict[str, str]]  # the split CSV's rows


BUSI_CLASSES = ("benign", "malignant", "normal")
BUSI_SPLITS = ("train", "train", "train", "val", "test")  # per class, in file order


@pytest.fixture
def tiny_busi(data_root: Path, tmp_path: Path) -> TinyBusi:
    """5 real BUSI images per class, each with all its masks, split 3 train / 1 val / 1 test per class.

    The first benign images include ``benign (100).png``, which has two masks (``_mask`` and ``_mask_1``).
    """
    src = data_root / "busi" / "Dataset_BUSI_with_GT"
    if not src.is_dir():
        missing_data(f"{src} not found")
    root = tmp_path / "data"
    images = root / "busi" / "Dataset_BUSI_with_GT"
    rows: list[dict[str, str]] = []
    for cls in BUSI_CLASSES:
        (images / cls).mkdir(parents=True)
        stems = sorted(p.stem for p in (src / cls).glob("*.png") if "_mask" not in p.stem)[: len(BUSI_SPLITS)]
        for stem, split in zip(stems, BUSI_SPLITS, strict=True):
            for f in (src / cls).glob(f"{glob_escape(stem)}*.png"):
                if f.stem == stem or f.stem.startswith(f"{stem}_mask"):
                    shutil.copy2(f, images / cls / f.name)
            rows.append({"file": f"{cls}/{stem}.png", "label": cls, "split": split})
    split_csv = root / "busi" / "splits_biomedcoop.csv"
    write_split_csv(split_csv, rows)
    return TinyBusi(root=root, images=images, split_csv=split_csv, rows=rows)


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (BUSI names contain none today, but ``[`` would break the glob)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def write_split_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def real(data_root: Path) -> Callable[[str], object]:
    """Loader of builtin datasets from the real data root, each loaded once per session."""
    from hica.data.catalog import load_dataset

    loaded: dict[str, object] = {}

    def get(name: str) -> object:
        if name not in loaded:
            loaded[name] = load_dataset(name, data_root)
        return loaded[name]

    return get

"""The data layer on the real data, and every kind of bad input a user can hand it.

Real-data tests use the shared data root (``$HICA_DATA`` or ``../shared/data``) and skip without it.
Corruption tests work on tiny copies made by the ``tiny_*`` fixtures in conftest.py, never on the
shared files. The feature cache is exercised with a tiny stand-in encoder, not the default one.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TinyBusi, write_split_csv
from PIL import Image
from torch import nn

from hica.cache import FeatureCache
from hica.config import load_config, validate_config
from hica.data.catalog import BUILTIN_NAMES, VAL_FRACTION, data_root, load_dataset
from hica.data.episodes import sample_episode, val_shots
from hica.data.formats.busi import BUSI_CLASSES, read_split_file, scan_busi
from hica.data.formats.imagefolder import scan_imagefolder
from hica.data.formats.manifest import read_manifest
from hica.data.formats.medmnist import ZENODO, ensure_npz, read_npz
from hica.data.sample import Dataset, Sample, load_image, load_mask
from hica.encoders._common import IMAGENET_MEAN, IMAGENET_STD, image_transform
from hica.encoders.base import DualEncoder, ImageFeatures
from hica.errors import HicaError
from hica.io import atomic_write

CXR_MAP = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}

# Counts from the data README.
SPLIT_TOTALS = {
    "busi": {"train": 389, "val": 155, "test": 236},
    "busi_medmnist_split": {"train": 548, "val": 77, "test": 155},
    "pneumoniamnist": {"train": 4708, "val": 524, "test": 624},
    "breastmnist": {"train": 546, "val": 78, "test": 156},
}
BUSI_PER_CLASS = {"benign": 437, "malignant": 210, "normal": 133}
CXR_TEST = {"normal": 234, "pneumonia": 390}
CXR_TRAIN_ALL = {"normal": 1341, "pneumonia": 3875}
BUSI_MASK_FILES = 798


# -- helpers --------------------------------------------------------------------------------------------


class TinyEncoder(DualEncoder):
    """Stand-in dual encoder: a 4x4-stride conv on 32x32 inputs, an 8x8 grid of ``width``-dim tokens."""

    name = "tiny-test"

    def __init__(self, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, width, kernel_size=4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(0.1 * torch.randn(self.conv.weight.shape, generator=gen))
            self.conv.bias.zero_()
        self.embed_dim = width
        self.config = {"width": width, "seed": seed}
        self._transform = image_transform(32, IMAGENET_MEAN, IMAGENET_STD)
        self.n_encoded = 0  # images seen by encode_image

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        self.n_encoded += len(images)
        local = self.conv(images).flatten(2).transpose(1, 2)  # (B, 64, D)
        return ImageFeatures(global_=local.mean(1), local=local, grid=(8, 8))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.zeros(len(texts), self.embed_dim)

    @property
    def preprocess(self):
        return self._transform


@torch.no_grad()
def direct_global(enc: TinyEncoder, samples: list[Sample]) -> torch.Tensor:
    x = torch.stack([enc.preprocess(load_image(s)) for s in samples])
    return enc.encode_image(x).global_


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def xray_dataset(path: Path, **opts) -> Dataset:
    return load_dataset(f"imagefolder:{path}", class_map=CXR_MAP, **opts)


# -- builtin datasets on the real data ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SPLIT_TOTALS))
def test_builtin_split_sizes(real, name: str) -> None:
    ds = real(name)
    assert {s: len(v) for s, v in ds.splits.items()} == SPLIT_TOTALS[name]
    ids = [s.id for v in ds.splits.values() for s in v]
    assert len(ids) == len(set(ids)), "a sample id occurs twice (in one split or across splits)"


@pytest.mark.parametrize("name", ["busi", "busi_medmnist_split"])
def test_busi_splits_cover_every_image_once(real, name: str) -> None:
    ds = real(name)
    assert ds.classes == BUSI_CLASSES
    per_class = Counter(ds.classes[s.label] for v in ds.splits.values() for s in v)
    assert dict(per_class) == BUSI_PER_CLASS
    for s in ds.split("train")[:5]:
        assert s.path is not None and s.path.is_file()
        assert s.id == f"{ds.classes[s.label]}/{s.path.name}"


@pytest.mark.parametrize("name", ["pneumoniamnist", "breastmnist"])
def test_medmnist_samples(real, name: str) -> None:
    ds = real(name)
    assert len(ds.classes) == 2
    for split, samples in ds.splits.items():
        assert {s.label for s in samples} == {0, 1}, split
        assert samples[0].array.shape == (28, 28) and samples[0].array.dtype == np.uint8
        assert samples[0].id == f"{name}:{split}:0"
    assert load_image(ds.split("test")[0]).size == (28, 28)


def test_chest_xray_counts(real) -> None:
    ds = real("chest_xray")
    counts = ds.counts()
    assert counts["test"] == CXR_TEST
    assert {c: counts["train"][c] + counts["val"][c] for c in ds.classes} == CXR_TRAIN_ALL


def test_chest_xray_val_carveout_is_stratified_deterministic_disjoint(real, data_root: Path) -> None:
    ds = real("chest_xray")
    train, val, test = ({s.id for s in ds.split(n)} for n in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert all(i.startswith("train/") for i in val) and all(i.startswith("test/") for i in test)
    # every training image is in exactly one of train / val
    on_disk = {f"train/{p.parent.name}/{p.name}" for p in (data_root / "chest_xray" / "train").glob("*/*")}
    assert train | val == on_disk
    # stratified: each class gives VAL_FRACTION of its images, to within one image
    val_counts = ds.counts()["val"]
    for c, n in CXR_TRAIN_ALL.items():
        assert abs(val_counts[c] - VAL_FRACTION * n) <= 1, (c, val_counts[c])
    # deterministic: a fresh load gives the very same split
    again = load_dataset("chest_xray", data_root)
    assert [s.id for s in again.split("val")] == [s.id for s in ds.split("val")]
    assert again.fingerprint() == ds.fingerprint()


# -- BUSI masks on the real data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busi_scan(data_root: Path) -> dict[str, Sample]:
    return scan_busi(data_root / "busi" / "Dataset_BUSI_with_GT")


def test_busi_masks_found(busi_scan: dict[str, Sample]) -> None:
    assert len(busi_scan) == sum(BUSI_PER_CLASS.values())
    assert sum(len(s.masks) for s in busi_scan.values()) == BUSI_MASK_FILES
    assert all(s.masks for s in busi_scan.values()), "every BUSI image has at least one mask"
    for s in busi_scan.values():
        stem = s.path.stem
        assert all(m.parent == s.path.parent and m.stem.startswith(f"{stem}_mask") for m in s.masks)


def test_busi_normal_masks_are_empty(busi_scan: dict[str, Sample]) -> None:
    normal = [s for s in busi_scan.values() if s.id.startswith("normal/")]
    assert len(normal) == BUSI_PER_CLASS["normal"]
    for s in normal:
        m = load_mask(s)
        w, h = Image.open(s.path).size
        assert m.shape == (h, w) and m.dtype == bool
        assert not m.any(), f"{s.id}: a normal image's mask should be empty"
    lesions = [s for s in busi_scan.values() if not s.id.startswith("normal/")][:20]
    assert all(load_mask(s).any() for s in lesions)


def test_busi_load_mask_unions_multi_lesion_masks(busi_scan: dict[str, Sample]) -> None:
    multi = [s for s in busi_scan.values() if any(m.stem.endswith("_mask_1") for m in s.masks)]
    assert multi, "BUSI has images with a _mask_1.png"
    grew = False
    for s in multi:
        union = load_mask(s)
        singles = [np.asarray(Image.open(m).convert("L")) > 127 for m in s.masks]
        for one in singles:
            assert one.shape == union.shape
            assert (union >= one).all(), f"{s.id}: union misses pixels of a mask"
        assert (union == np.logical_or.reduce(singles)).all()
        grew |= int(union.sum()) > max(int(m.sum()) for m in singles)
    assert grew, "the union should be larger than any single mask for some multi-lesion image"


# -- episodes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["busi", "chest_xray"])
def test_episode_contract(real, name: str) -> None:
    ds = real(name)
    train, val, test = ({s.id: s.label for s in ds.split(n)} for n in ("train", "val", "test"))
    for k in (1, 2, 4, 8, 16):
        ep = sample_episode(ds, k, seed=1)
        assert ep == sample_episode(ds, k, seed=1), "same (K, seed) must give the same episode"
        assert (ep.k, ep.seed, ep.dataset) == (k, 1, ds.name)
        assert set(ep.support) <= set(train) and set(ep.val) <= set(val)
        assert not (set(ep.support) | set(ep.val)) & set(test)
        assert len(set(ep.support)) == len(ep.support) and len(set(ep.val)) == len(ep.val)
        assert Counter(train[i] for i in ep.support) == dict.fromkeys(range(len(ds.classes)), k)
        assert Counter(val[i] for i in ep.val) == dict.fromkeys(range(len(ds.classes)), val_shots(k))
        assert val_shots(k) == min(k, 4)
        json.dumps(ep.to_json())


def test_episode_differs_across_seeds_and_ignores_file_order(real) -> None:
    ds = real("busi")
    supports = [sample_episode(ds, 4, seed).support for seed in range(1, 6)]
    assert len(set(supports)) == len(supports), "different seeds should draw different shots"
    shuffled = {n: random.Random(0).sample(v, len(v)) for n, v in ds.splits.items()}
    ds2 = Dataset(name=ds.name, classes=ds.classes, splits=shuffled, source=ds.source)
    assert sample_episode(ds2, 4, 3) == sample_episode(ds, 4, 3)


def test_episode_k_too_large_names_class_and_k(real) -> None:
    ds = real("busi")
    n_normal = ds.counts()["train"]["normal"]
    with pytest.raises(HicaError) as e:
        sample_episode(ds, n_normal + 1, 1)
    msg = str(e.value)
    assert f"K={n_normal + 1}" in msg and "'normal'" in msg and str(n_normal) in msg


def test_episode_val_too_small_names_the_requested_k(real) -> None:
    ds = real("busi")
    # keep 3 val images per class: K=8 needs min(8, 4) = 4 of them
    val = [s for c in range(3) for s in [x for x in ds.split("val") if x.label == c][:3]]
    small = Dataset(name="small", classes=ds.classes, splits={**ds.splits, "val": val})
    with pytest.raises(HicaError) as e:
        sample_episode(small, 8, 1)
    msg = str(e.value)
    assert "K=8" in msg and "'benign'" in msg and "val" in msg


@pytest.mark.parametrize(("k", "seed", "what"), [(0, 1, "K"), (-2, 1, "K"), (1, -1, "seed")])
def test_episode_bad_k_or_seed(real, k: int, seed: int, what: str) -> None:
    with pytest.raises(HicaError, match=what):
        sample_episode(real("busi"), k, seed)


# -- unreadable images ----------------------------------------------------------------------------------


@pytest.fixture
def real_png_jpeg(data_root: Path) -> dict[str, Path]:
    return {
        "png": data_root / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png",
        "jpeg": next((data_root / "chest_xray" / "test" / "NORMAL").glob("*.jpeg")),
    }


@pytest.mark.parametrize("kind", ["png", "jpeg"])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.95])
def test_load_image_truncated(real_png_jpeg, tmp_path: Path, kind: str, keep: float) -> None:
    src = real_png_jpeg[kind]
    assert load_image(Sample(id="ok", label=0, path=src)).size[0] > 0
    bad = tmp_path / f"bad{src.suffix}"
    bad.write_bytes(src.read_bytes())
    truncate(bad, keep)
    with pytest.raises(HicaError) as e:
        load_image(Sample(id="bad", label=0, path=bad))
    assert str(bad) in str(e.value) and "--skip-bad" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not an image at all\n"])
def test_load_image_not_an_image(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "fake.png"
    bad.write_bytes(content)
    with pytest.raises(HicaError, match="fake.png"):
        load_image(Sample(id="bad", label=0, path=bad))
    with pytest.raises(HicaError, match="not found"):
        load_image(Sample(id="gone", label=0, path=tmp_path / "gone.png"))


def _corrupt_dataset(kind: str, tiny_imagefolder, tiny_busi: TinyBusi) -> tuple[Dataset, str, Path]:
    """A tiny real dataset with one truncated image in its test split: (dataset, split, bad file)."""
    ds = xray_dataset(tiny_imagefolder()) if kind == "jpeg" else load_dataset("busi", tiny_busi.root)
    bad = ds.split("test")[1].path
    truncate(bad)
    return ds, "test", bad


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_cache_get_corrupt_image(
    kind: str, tiny_imagefolder, tiny_busi: TinyBusi, tmp_path: Path, caplog
) -> None:
    ds, split, bad = _corrupt_dataset(kind, tiny_imagefolder, tiny_busi)
    n = len(ds.split(split))
    enc, cache = TinyEncoder(), FeatureCache(tmp_path / "cache", batch_size=4)
    with pytest.raises(HicaError) as e:
        cache.get(enc, ds, split, progress=False)
    assert str(bad) in str(e.value)

    with caplog.at_level(logging.WARNING, logger="hica.cache"):
        f = cache.get(enc, ds, split, skip_bad=True, progress=False)
    assert len(f.ids) == n - 1 and f.global_.shape == (n - 1, enc.embed_dim)
    bad_id = next(s.id for s in ds.split(split) if s.path == bad)
    assert bad_id not in f.ids
    assert "skipped 1 unreadable" in caplog.text
    good = [s for s in ds.split(split) if s.path != bad]
    torch.testing.assert_close(f.global_, direct_global(enc, good), rtol=1e-4, atol=1e-5)

    # the skip is remembered only for skip_bad runs: without it the error comes back
    with pytest.raises(HicaError, match="cannot read image"):
        cache.get(enc, ds, split, progress=False)
    # and a repaired file is encoded, not skipped forever
    shutil.copy2(good[0].path, bad)
    f = cache.get(enc, ds, split, progress=False)
    assert len(f.ids) == n
    meta = json.loads((cache.shard_dir(enc, ds, split) / "index.json").read_text())
    assert meta["bad"] == []
    assert not tmp_files(cache.root)


# -- ImageFolder ----------------------------------------------------------------------------------------


def test_imagefolder_loads(tiny_imagefolder) -> None:
    ds = xray_dataset(tiny_imagefolder())
    assert ds.classes == ["normal", "pneumonia"]
    assert ds.counts()["test"] == {"normal": 6, "pneumonia": 6}
    assert sum(len(ds.split(n)) for n in ("train", "val")) == 12
    assert ds.counts()["val"] == {"normal": 1, "pneumonia": 1}
    assert all(s.id.startswith("test/") for s in ds.split("test"))


def test_imagefolder_non_image_file(tiny_imagefolder, caplog) -> None:
    root = tiny_imagefolder()
    notes = root / "train" / "NORMAL" / "notes.txt"
    notes.write_text("scanner settings\n")
    with pytest.raises(HicaError) as e:
        scan_imagefolder(root / "train", class_map=CXR_MAP)
    assert str(notes) in str(e.value) and "--skip-bad" in str(e.value)
    with pytest.raises(HicaError, match="notes.txt"):
        xray_dataset(root)

    with caplog.at_level(logging.WARNING):
        classes, samples = scan_imagefolder(root / "train", class_map=CXR_MAP, skip_bad=True)
    assert classes == ["normal", "pneumonia"] and len(samples) == 12
    assert all(s.path.suffix == ".jpeg" for s in samples)
    assert "skipped 1 non-image" in caplog.text
    ds = xray_dataset(root, skip_bad=True)
    assert sum(len(ds.split(n)) for n in ("train", "val")) == 12


def test_imagefolder_empty_class_folder(tiny_imagefolder) -> None:
    root = tiny_imagefolder()
    empty = root / "train" / "COVID"
    empty.mkdir()
    with pytest.raises(HicaError) as e:
        scan_imagefolder(root / "train")
    assert str(empty) in str(e.value) and "no images" in str(e.value)
    # a folder holding only non-images is empty too, also with skip_bad
    (empty / "readme.md").write_text("todo\n")
    with pytest.raises(HicaError, match="COVID"):
        scan_imagefolder(root / "train", skip_bad=True)


def test_imagefolder_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(HicaError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "flat").mkdir()
    with pytest.raises(HicaError, match="no class sub-folders"):
        scan_imagefolder(tmp_path / "flat")


# -- BUSI layout and split files ------------------------------------------------------------------------


def test_tiny_busi_loads(tiny_busi: TinyBusi) -> None:
    ds = load_dataset("busi", tiny_busi.root)
    assert ds.counts() == {
        "train": dict.fromkeys(BUSI_CLASSES, 3),
        "val": dict.fromkeys(BUSI_CLASSES, 1),
        "test": dict.fromkeys(BUSI_CLASSES, 1),
    }
    multi = next(s for s in ds.split("train") if s.id == "benign/benign (100).png")
    assert [m.name for m in multi.masks] == ["benign (100)_mask.png", "benign (100)_mask_1.png"]


def test_busi_mask_without_image(tiny_busi: TinyBusi) -> None:
    (tiny_busi.images / "benign" / "benign (1).png").unlink()
    with pytest.raises(HicaError) as e:
        scan_busi(tiny_busi.images)
    assert "benign (1)_mask.png" in str(e.value) and "mask without image" in str(e.value)
    with pytest.raises(HicaError, match="mask without image"):
        load_dataset("busi", tiny_busi.root)


def test_busi_mask_size_differs_from_image(tiny_busi: TinyBusi) -> None:
    mask = tiny_busi.images / "benign" / "benign (1)_mask.png"
    with Image.open(mask) as m:
        w, h = m.size
        m.resize((w // 2, h // 2), Image.NEAREST).save(mask)
    s = scan_busi(tiny_busi.images)["benign/benign (1).png"]
    with pytest.raises(HicaError) as e:
        load_mask(s)
    msg = str(e.value)
    assert str(mask) in msg and f"{w // 2}x{h // 2}" in msg and f"{w}x{h}" in msg


def test_busi_corrupt_mask(tiny_busi: TinyBusi) -> None:
    mask = truncate(tiny_busi.images / "malignant" / "malignant (1)_mask.png", 0.3)
    s = scan_busi(tiny_busi.images)["malignant/malignant (1).png"]
    with pytest.raises(HicaError, match="cannot read mask") as e:
        load_mask(s)
    assert str(mask) in str(e.value)


def test_busi_missing_class_folder(tiny_busi: TinyBusi) -> None:
    shutil.rmtree(tiny_busi.images / "normal")
    with pytest.raises(HicaError, match="normal"):
        scan_busi(tiny_busi.images)


@pytest.mark.parametrize(
    ("row", "expect"),
    [
        ({"file": "benign/benign (9999).png", "label": "benign", "split": "train"}, "benign (9999).png"),
        ({"file": "benign/benign (1).png", "label": "cancer", "split": "train"}, "unknown class 'cancer'"),
        ({"file": "benign/benign (1).png", "label": "malignant", "split": "train"}, "lies in benign/"),
    ],
    ids=["unknown-file", "unknown-class", "wrong-folder"],
)
def test_split_csv_bad_row(tiny_busi: TinyBusi, row: dict[str, str], expect: str) -> None:
    rows = [r for r in tiny_busi.rows if r["file"] != row["file"]] + [row]
    write_split_csv(tiny_busi.split_csv, rows)
    by_id = scan_busi(tiny_busi.images)
    with pytest.raises(HicaError) as e:
        read_split_file(tiny_busi.split_csv, by_id, BUSI_CLASSES)
    line = len(rows) + 1  # header is line 1
    assert f"{tiny_busi.split_csv}:{line}:" in str(e.value) and expect in str(e.value)


def test_split_csv_duplicate_row(tiny_busi: TinyBusi) -> None:
    leak = {**tiny_busi.rows[0], "split": "test"}  # a train image listed again as test
    write_split_csv(tiny_busi.split_csv, [*tiny_busi.rows, leak])
    with pytest.raises(HicaError) as e:
        load_dataset("busi", tiny_busi.root)
    assert str(tiny_busi.split_csv) in str(e.value) and leak["file"] in str(e.value)


def test_split_csv_missing_or_bad_header(tiny_busi: TinyBusi) -> None:
    by_id = scan_busi(tiny_busi.images)
    with pytest.raises(HicaError, match="not found"):
        read_split_file(tiny_busi.split_csv.with_name("nope.csv"), by_id, BUSI_CLASSES)
    tiny_busi.split_csv.write_text("image,class\nbenign/benign (1).png,benign\n")
    with pytest.raises(HicaError, match="needs columns"):
        read_split_file(tiny_busi.split_csv, by_id, BUSI_CLASSES)


# -- CSV manifests --------------------------------------------------------------------------------------


@pytest.fixture
def manifest_dir(tiny_imagefolder) -> Path:
    return tiny_imagefolder(n_train=2, n_test=1, name="man")


def _manifest(folder: Path, lines: list[str], name: str = "m.csv") -> Path:
    p = folder / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _rel(folder: Path, split: str, cls: str, i: int = 0) -> str:
    return sorted((folder / split / cls).iterdir())[i].relative_to(folder).as_posix()


def test_manifest_loads(manifest_dir: Path) -> None:
    d = manifest_dir
    lines = ["path,label,split"]
    lines += [f"{_rel(d, 'train', c, i)},{c.lower()},train" for c in CXR_MAP for i in (0, 1)]
    lines += [f"{_rel(d, 'test', c)},{c.lower()}," for c in CXR_MAP]  # no split: train
    classes, splits = read_manifest(_manifest(d, lines))
    assert classes == ["normal", "pneumonia"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 6}
    assert all(s.path.is_file() and s.path.is_absolute() for s in splits["train"])
    ds = load_dataset(f"manifest:{d / 'm.csv'}")
    assert ds.classes == classes and set(ds.splits) == {"train", "val", "test"}


def test_manifest_unknown_class(manifest_dir: Path) -> None:
    d = manifest_dir
    m = _manifest(
        d, ["path,label", f"{_rel(d, 'train', 'NORMAL')},normal", f"{_rel(d, 'test', 'NORMAL')},covid"]
    )
    with pytest.raises(HicaError) as e:
        read_manifest(m, ["normal", "pneumonia"])
    assert f"{m}:3:" in str(e.value) and "'covid'" in str(e.value)
    assert read_manifest(m)[0] == ["covid", "normal"]  # without given classes, any label is a class


def test_manifest_missing_image(manifest_dir: Path) -> None:
    m = _manifest(manifest_dir, ["path,label", "train/NORMAL/ghost.jpeg,normal"])
    with pytest.raises(HicaError) as e:
        read_manifest(m)
    assert f"{m}:2:" in str(e.value) and "ghost.jpeg" in str(e.value)


def test_manifest_missing_mask(manifest_dir: Path) -> None:
    d = manifest_dir
    m = _manifest(d, ["path,label,mask", f"{_rel(d, 'train', 'NORMAL')},normal,masks/ghost.png"])
    with pytest.raises(HicaError, match="ghost.png"):
        read_manifest(m)


@pytest.mark.parametrize("header", ["file,label", "path,class", "", "path"])
def test_manifest_bad_header(manifest_dir: Path, header: str) -> None:
    m = _manifest(manifest_dir, [header, f"{_rel(manifest_dir, 'train', 'NORMAL')},normal"])
    with pytest.raises(HicaError) as e:
        read_manifest(m)
    assert str(m) in str(e.value) and "path,label" in str(e.value)


@pytest.mark.parametrize(
    "bad_row", ["{img}", "{img},", ",normal"], ids=["no-label", "empty-label", "no-path"]
)
def test_manifest_incomplete_row(manifest_dir: Path, bad_row: str) -> None:
    img = _rel(manifest_dir, "train", "NORMAL")
    m = _manifest(
        manifest_dir,
        ["path,label", f"{_rel(manifest_dir, 'test', 'NORMAL')},normal", bad_row.format(img=img)],
    )
    with pytest.raises(HicaError, match=rf"{m}:3:"):
        read_manifest(m)


def test_manifest_duplicate_path(manifest_dir: Path) -> None:
    img = _rel(manifest_dir, "train", "NORMAL")
    m = _manifest(manifest_dir, ["path,label,split", f"{img},normal,train", f"{img},normal,test"])
    with pytest.raises(HicaError, match=rf"{m}:3:.*{img}"):
        read_manifest(m)


def test_manifest_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(HicaError, match="not found"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(HicaError, match="no rows"):
        read_manifest(_manifest(tmp_path, ["path,label"]))


# -- MedMNIST -------------------------------------------------------------------------------------------


def test_medmnist_missing_without_download(tmp_path: Path) -> None:
    path = tmp_path / "medmnist" / "pneumoniamnist.npz"
    with pytest.raises(HicaError) as e:
        ensure_npz(path, "pneumoniamnist", download=False)
    msg = str(e.value)
    assert str(path) in msg and ZENODO.format(name="pneumoniamnist") in msg and "--download" in msg
    # the same through the catalog, on a data root without medmnist/
    with pytest.raises(HicaError, match="breastmnist.npz"):
        load_dataset("breastmnist", tmp_path)


def test_medmnist_download_without_network(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def offline(url, *a, **kw):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    path = tmp_path / "medmnist" / "breastmnist.npz"
    t = time.perf_counter()
    with pytest.raises(HicaError) as e:
        ensure_npz(path, "breastmnist", download=True)
    assert time.perf_counter() - t < 1.0
    url = ZENODO.format(name="breastmnist")
    assert calls == [url]
    msg = str(e.value)
    assert url in msg and str(path) in msg and "no network" in msg
    assert not path.exists() and not tmp_files(tmp_path)


def test_medmnist_download_md5_mismatch(tmp_path: Path, monkeypatch) -> None:
    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self) -> bytes:
            return b"<html>rate limited</html>"

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response())
    path = tmp_path / "pneumoniamnist.npz"
    with pytest.raises(HicaError, match="MD5"):
        ensure_npz(path, "pneumoniamnist", download=True)
    assert not path.exists()


def _npz(path: Path, **arrays) -> Path:
    with path.open("wb") as f:
        np.savez(f, **arrays)
    return path


def _medmnist_arrays(n: int = 3, drop: str = "") -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = np.zeros((n, 28, 28), np.uint8)
        out[f"{split}_labels"] = np.zeros((n, 1), np.uint8)
    out.pop(drop, None)
    return out


def test_npz_reads(tmp_path: Path) -> None:
    splits = read_npz(_npz(tmp_path / "ok.npz", **_medmnist_arrays()), "toy")
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "val": 3, "test": 3}
    assert splits["val"][2].id == "toy:val:2"


@pytest.mark.parametrize("drop", ["val_images", "test_labels"])
def test_npz_lacking_keys(tmp_path: Path, drop: str) -> None:
    path = _npz(tmp_path / "x.npz", **_medmnist_arrays(drop=drop))
    with pytest.raises(HicaError) as e:
        read_npz(path, "x")
    assert str(path) in str(e.value) and drop in str(e.value)


def test_npz_label_count_mismatch(tmp_path: Path) -> None:
    arrays = {**_medmnist_arrays(), "test_labels": np.zeros((2, 1), np.uint8)}
    with pytest.raises(HicaError, match="3 images but test_labels has 2"):
        read_npz(_npz(tmp_path / "x.npz", **arrays), "x")


def test_npz_corrupt(tmp_path: Path, data_root: Path) -> None:
    src = data_root / "medmnist" / "breastmnist.npz"
    for name, content in [
        ("truncated.npz", src.read_bytes()[: src.stat().st_size // 2]),
        ("text.npz", b"this is not a numpy file\n"),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(HicaError) as e:
            read_npz(path, "x")
        assert str(path) in str(e.value)
    npy = tmp_path / "single.npz"  # one array saved with np.save, not an archive
    with npy.open("wb") as f:
        np.save(f, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(HicaError, match="single.npz"):
        read_npz(npy, "x")


# -- catalog --------------------------------------------------------------------------------------------


def test_missing_data_root() -> None:
    with pytest.raises(HicaError) as e:
        data_root("/nonexistent")
    msg = str(e.value)
    assert "/nonexistent" in msg and "--data-root" in msg and "HICA_DATA" in msg
    with pytest.raises(HicaError, match="--data-root"):
        load_dataset("busi", "/nonexistent")


def test_data_root_from_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HICA_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.setenv("HICA_DATA", str(tmp_path / "gone"))
    with pytest.raises(HicaError, match="gone"):
        data_root()


def test_unknown_dataset_lists_known() -> None:
    with pytest.raises(HicaError) as e:
        load_dataset("kvasir", "/nonexistent")
    msg = str(e.value)
    assert "'kvasir'" in msg and all(n in msg for n in BUILTIN_NAMES) and "imagefolder:" in msg


# -- configs --------------------------------------------------------------------------------------------

GOOD_CFG = {"datasets": ["busi"], "methods": []}


def test_config_unknown_key() -> None:
    with pytest.raises(HicaError) as e:
        validate_config({**GOOD_CFG, "shotz": [1, 2]}, "my.yaml")
    assert "my.yaml" in str(e.value) and "shotz" in str(e.value)


def test_config_zero_shots() -> None:
    with pytest.raises(HicaError) as e:
        validate_config({**GOOD_CFG, "shots": [1, 0]}, "my.yaml")
    assert "shots" in str(e.value) and ">= 1" in str(e.value)


def test_config_unknown_method() -> None:
    try:
        from hica.methods.base import method_registry

        method_registry()
    except Exception as exc:  # the method registry is written by others; may be incomplete
        pytest.xfail(f"hica.methods does not import yet: {exc!r}")
    with pytest.raises(HicaError) as e:
        validate_config({**GOOD_CFG, "methods": ["no_such_method"]}, "my.yaml")
    assert "my.yaml" in str(e.value) and "no_such_method" in str(e.value)


def test_load_config_bad_files(tmp_path: Path, data_root: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(HicaError, match="not found"):
        load_config(missing)
    png = tmp_path / "image.yaml"  # a binary file under a YAML name
    shutil.copy2(data_root / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png", png)
    for path, content in [
        (tmp_path / "broken.yaml", "datasets: [busi\nmethods: {"),
        (tmp_path / "list.yaml", "- busi\n- chest_xray\n"),
        (png, None),
    ]:
        if content is not None:
            path.write_text(content)
        with pytest.raises(HicaError) as e:
            load_config(path)
        assert str(path) in str(e.value)
    ok = tmp_path / "ok.yaml"
    ok.write_text("datasets: [busi]\nmethods: []\nshots: [4, 1, 4]\n")
    assert load_config(ok).shots == [1, 4]


# -- feature cache --------------------------------------------------------------------------------------


@pytest.fixture
def xray(tiny_imagefolder) -> Dataset:
    return xray_dataset(tiny_imagefolder())


def test_cache_second_get_encodes_nothing(xray: Dataset, tmp_path: Path) -> None:
    enc, cache = TinyEncoder(), FeatureCache(tmp_path / "cache", batch_size=5)
    test = xray.split("test")
    f1 = cache.get(enc, xray, "test", progress=False)
    assert enc.n_encoded == len(test) and (cache.hits, cache.misses) == (0, len(test))
    assert f1.ids == [s.id for s in test] and f1.labels.tolist() == [s.label for s in test]
    torch.testing.assert_close(f1.global_, direct_global(TinyEncoder(), test), rtol=1e-4, atol=1e-5)
    assert f1.global_.dtype == torch.float32 and f1.local is None

    f2 = cache.get(enc, xray, "test", progress=False)
    assert enc.n_encoded == len(test) and (cache.hits, cache.misses) == (len(test), len(test))
    assert torch.equal(f1.global_, f2.global_)
    fresh = FeatureCache(tmp_path / "cache")  # a new process reads the shard from disk
    f3 = fresh.get(enc, xray, "test", progress=False)
    assert enc.n_encoded == len(test) and (fresh.hits, fresh.misses) == (len(test), 0)
    assert torch.equal(f1.global_, f3.global_)
    assert not tmp_files(tmp_path / "cache")


def test_cache_encodes_only_missing_samples(xray: Dataset, tmp_path: Path) -> None:
    enc, cache = TinyEncoder(), FeatureCache(tmp_path / "cache")
    test = xray.split("test")
    part = cache.get(enc, xray, "test", test[::3], progress=False)
    assert enc.n_encoded == len(test[::3])
    full = cache.get(enc, xray, "test", list(reversed(test)), progress=False)
    assert enc.n_encoded == len(test), "only the samples not yet cached are encoded"
    assert full.ids == [s.id for s in reversed(test)], "rows follow the requested order"
    rows = {sid: full.global_[i] for i, sid in enumerate(full.ids)}
    for i, sid in enumerate(part.ids):
        assert torch.equal(rows[sid], part.global_[i])
    torch.testing.assert_close(full.global_, direct_global(TinyEncoder(), list(reversed(test))))


def test_cache_shard_keyed_by_encoder_fingerprint(xray: Dataset, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    a, a2, b, c = TinyEncoder(8, 0), TinyEncoder(8, 0), TinyEncoder(8, 1), TinyEncoder(16, 0)
    dirs = {e: cache.shard_dir(e, xray, "test") for e in (a, b, c)}
    assert len(set(dirs.values())) == 3
    assert cache.shard_dir(a2, xray, "test") == dirs[a]
    assert cache.shard_dir(a, xray, "train") != dirs[a]
    for e in (a, b, c):
        f = cache.get(e, xray, "test", progress=False)
        assert f.global_.shape[1] == e.embed_dim and e.n_encoded == len(f.ids)
        assert (dirs[e] / "index.json").is_file() and (dirs[e] / "features.safetensors").is_file()
    cache.get(a2, xray, "test", progress=False)
    assert a2.n_encoded == 0, "an identical encoder reuses the shard"
    assert json.loads((dirs[b] / "index.json").read_text())["encoder"]["config"] == {"width": 8, "seed": 1}


def test_cache_local_tokens(xray: Dataset, tmp_path: Path) -> None:
    enc, cache = TinyEncoder(), FeatureCache(tmp_path / "cache")
    n = len(xray.split("test"))
    f = cache.get(enc, xray, "test", with_local=True, progress=False)
    assert f.grid == (8, 8) and f.local.shape == (n, 8 * 8, enc.embed_dim)
    assert f.local.dtype == torch.float32  # stored as float16, returned as float32
    torch.testing.assert_close(f.local.mean(1), f.global_, rtol=0, atol=2e-3)
    again = FeatureCache(tmp_path / "cache").get(enc, xray, "test", with_local=True, progress=False)
    assert enc.n_encoded == n and torch.equal(again.local, f.local)


def test_cache_mixed_local_and_global_requests(xray: Dataset, tmp_path: Path) -> None:
    enc, cache = TinyEncoder(), FeatureCache(tmp_path / "cache")
    test = xray.split("test")
    cache.get(enc, xray, "test", test[:4], with_local=True, progress=False)
    cache.get(enc, xray, "test", test, progress=False)  # more samples, global only
    f = cache.get(enc, xray, "test", test, with_local=True, progress=False)
    assert f.local.shape == (len(test), 64, enc.embed_dim)
    torch.testing.assert_close(f.local.mean(1), f.global_, rtol=0, atol=2e-3)
    torch.testing.assert_close(f.global_, direct_global(TinyEncoder(), test))


def test_cache_unreadable_shard_is_rebuilt(xray: Dataset, tmp_path: Path, caplog) -> None:
    enc, cache = TinyEncoder(), FeatureCache(tmp_path / "cache")
    ref = cache.get(enc, xray, "test", progress=False)
    d = cache.shard_dir(enc, xray, "test")
    (d / "features.safetensors").write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING, logger="hica.cache"):
        f = FeatureCache(tmp_path / "cache").get(enc, xray, "test", progress=False)
    assert str(d) in caplog.text
    assert torch.equal(f.global_, ref.global_) and enc.n_encoded == 2 * len(ref.ids)
    (d / "index.json").write_text("{")
    assert torch.equal(
        FeatureCache(tmp_path / "cache").get(enc, xray, "test", progress=False).global_, ref.global_
    )


def test_cache_write_failure_keeps_old_shard(xray: Dataset, tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch

    enc, root = TinyEncoder(), tmp_path / "cache"
    test = xray.split("test")
    FeatureCache(root).get(enc, xray, "test", test[:4], progress=False)
    d = FeatureCache(root).shard_dir(enc, xray, "test")
    before = tree_bytes(d)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        FeatureCache(root).get(enc, xray, "test", test, progress=False)
    assert tree_bytes(d) == before, "a failed write must leave the old shard (and no temp file)"
    monkeypatch.undo()

    n0 = enc.n_encoded
    f = FeatureCache(root).get(enc, xray, "test", test, progress=False)
    assert len(f.ids) == len(test) and enc.n_encoded - n0 == len(test) - 4
    assert not tmp_files(root)


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")

    def writer(p: Path) -> None:
        p.write_text("new, half")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write(target, writer)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    atomic_write(target, lambda p: p.write_text("new"))
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


# -- CLI ------------------------------------------------------------------------------------------------


def test_cli_datasets_lists_real_data(data_root: Path) -> None:
    from typer.testing import CliRunner

    from hica.cli import app

    res = CliRunner().invoke(app, ["datasets", "--data-root", str(data_root)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    out = res.output
    assert "not available" not in out
    for name in BUILTIN_NAMES:
        assert name in out
    for total in ("389", "155", "236", "548", "77", "4708", "524", "546", "624"):
        assert total in out
    assert "benign 218" in out  # BUSI BiomedCoOp train, per class


def test_cli_datasets_partial_root(tiny_busi: TinyBusi) -> None:
    from typer.testing import CliRunner

    from hica.cli import app

    res = CliRunner().invoke(app, ["datasets", "--data-root", str(tiny_busi.root)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "benign 3" in res.output and res.output.count("not available") == 4


def _hica() -> list[str]:
    for exe in (REPO / ".venv" / "bin" / "hica", Path(sys.executable).with_name("hica")):
        if exe.is_file():
            return [str(exe)]
    return [sys.executable, "-m", "hica.cli"]


@pytest.mark.parametrize("root", ["/nonexistent", "/nonexistent/[/bracketed]"])
def test_cli_user_error_exits_2_without_traceback(root: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HICA_DATA"}
    proc = subprocess.run(
        [*_hica(), "datasets", "--data-root", root], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.startswith("error:") and "--data-root" in proc.stderr
    assert root in proc.stderr, "the message must show the path verbatim"
    assert proc.stderr.count("\n") == 1, "one line"


def test_split_csv_rows_are_plain_csv(data_root: Path) -> None:
    """The shipped split files parse with the csv module and name only known classes and splits."""
    for name in ("splits_biomedcoop.csv", "splits_medmnist.csv"):
        with (data_root / "busi" / name).open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert {r["label"] for r in rows} == set(BUSI_CLASSES)
        assert {r["split"] for r in rows} == {"train", "val", "test"}
        assert len({r["file"] for r in rows}) == len(rows) == sum(BUSI_PER_CLASS.values())


def test_ci_fails_instead_of_skipping_without_data(tmp_path: Path) -> None:
    """Under CI=true a missing data root fails the tests that need it; elsewhere they skip."""
    import os
    import subprocess
    import sys

    test = Path(__file__).resolve().parent / "test_data.py"
    env = {**os.environ, "HICA_DATA": str(tmp_path / "no-data-here"), "PYTHONDONTWRITEBYTECODE": "1"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{test}::test_busi_masks_found"]
    ci = subprocess.run(args, env={**env, "CI": "true"}, capture_output=True, text=True, timeout=120)
    assert ci.returncode == 1 and "CI=true and the real data is missing" in ci.stdout, ci.stdout[-2000:]
    local = subprocess.run(args, env={**env, "CI": ""}, capture_output=True, text=True, timeout=120)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]

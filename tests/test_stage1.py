"""HiCA stage 1 and its parts: augmentations, the in-memory image store, encoder checkpoints, the runner.

Everything runs on CPU on tiny inputs (64 px, a few steps); ``run_stage1`` runs on a couple of dozen real
BUSI images with a cut-down text corpus. One torch / BLAS thread: the CPU is shared, and oversubscribed
threads make these small workloads many times slower.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from threadpoolctl import threadpool_limits

from hica.config import Stage1Config
from hica.data.sample import Sample, load_mask
from hica.encoders import create_encoder
from hica.encoders.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    load_encoder_weights,
    read_checkpoint_config,
    save_encoder,
)
from hica.errors import HicaError
from hica.jobs.stage1 import TextCorpus, build_corpus, kmeans_assign, run_stage1
from hica.model.augment import training_augment
from hica.model.imagedata import input_spec, load_store

IMAGENET_MEAN = (0.485, 0.456, 0.406)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder():
    """The default encoder at 64 px, shared read-only (tests that change weights work on a deep copy)."""
    torch.set_num_threads(1)
    return create_encoder("default", image_size=64)


@pytest.fixture(scope="module")
def busi(data_root: Path):
    from hica.data.catalog import load_dataset

    if not (data_root / "busi").is_dir():
        pytest.skip(f"BUSI not found under {data_root}")
    return load_dataset("busi", data_root)


def _one_per_class(ds, split: str = "train") -> list[Sample]:
    return [next(s for s in ds.split(split) if s.label == c) for c in range(len(ds.classes))]


# ------------------------------------------------------------------------------------------ augmentation


def _square_image(h: int = 64, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark image whose bright, off-centre rectangle is exactly the mask."""
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[10:34, 8:30] = True
    img = torch.full((3, h, w), 0.05)
    img[:, mask] = 0.95
    return img, mask


@pytest.mark.parametrize("modality", ["xray", "ultrasound", "generic"])
def test_augment_shapes_range_and_binary_mask(modality: str) -> None:
    img, mask = _square_image(48, 40)
    aug = training_augment(modality, 32)
    torch.manual_seed(0)
    for _ in range(4):
        out, m = aug(img, mask)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        assert type(out) is torch.Tensor and type(m) is torch.Tensor  # no tv_tensors leak out
        assert out.min() >= 0 and out.max() <= 1
        assert m.shape == (32, 32) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        out2, none = aug(img, None)
        assert out2.shape == (3, 32, 32) and none is None
    assert torch.equal(mask, _square_image(48, 40)[1]) and torch.equal(img, _square_image(48, 40)[0])


@pytest.mark.parametrize("modality", ["generic", "ultrasound", "xray"])
def test_augment_moves_mask_with_image(modality: str) -> None:
    """strength=0 removes brightness/contrast/gamma/speckle, so the bright region is where the geometry put
    the square: it must coincide with the transformed mask (blur may soften the edge on xray/ultrasound)."""
    img, mask = _square_image()
    aug = training_augment(modality, 48, min_scale=0.6, strength=0.0)
    torch.manual_seed(1)
    ious = []
    for _ in range(12):
        out, m = aug(img, mask)
        bright, inside = out.mean(0) > 0.5, m > 0.5
        if inside.sum() < 20:  # square cropped (almost) out of view
            continue
        ious.append(float((bright & inside).sum() / (bright | inside).sum()))
    assert len(ious) >= 8
    # aligned: mean ~0.92 (edges blur and rotate); mask and image drawn independently: mean ~0.6
    assert np.mean(ious) > 0.85 and min(ious) > 0.7, ious


def test_lesion_crop_centres_on_the_lesion_and_leaves_lesion_free_images_alone() -> None:
    """lesion_crop=1: every crop keeps the whole (small) lesion in view and enlarges it (its box × 1.5–2.5,
    at least 0.4 of the side); images without a lesion, or without a mask, draw exactly the usual crop."""
    h = w = 96
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[70:80, 10:20] = True  # 10 × 10 px, off-centre: 1.1% of the image
    img = torch.full((3, h, w), 0.05)
    img[:, mask] = 0.95
    lesion, plain = training_augment("ultrasound", 48, lesion_crop=1.0), training_augment("ultrasound", 48)
    torch.manual_seed(3)
    shares = []
    for _ in range(20):
        _, m = lesion(img, mask)
        shares.append(float(m.mean()))
    # 100 px of lesion in a crop of side 38.4 px (10 × 2.5 < 0.4 × 96, the floor): 6.8% of the crop, against
    # ~1.1–1.8% for the usual crop; the whole lesion stays in view (rotation ≤ 10° clips corners).
    assert min(shares) > 0.05, shares
    torch.manual_seed(3)
    usual = [float(plain(img, mask)[1].mean()) for _ in range(20)]
    assert max(usual) < 0.025, usual
    # A 30 × 30 px lesion is above the floor: the crop side is its box × U(1.5, 2.5) = 45–75 px, so the lesion
    # fills 900 / side² = 0.16–0.44 of the crop (the usual crop: at most 900 / (0.6 · 96²) = 0.16).
    big = torch.zeros(h, w, dtype=torch.bool)
    big[50:80, 10:40] = True
    torch.manual_seed(3)
    shares = [float(lesion(img, big)[1].mean()) for _ in range(30)]
    assert min(shares) > 0.14 and max(shares) < 0.46 and max(shares) - min(shares) > 0.15, shares
    for m_in in (torch.zeros(h, w, dtype=torch.bool), None):
        torch.manual_seed(4)
        a = lesion(img, m_in)
        torch.manual_seed(4)
        b = plain(img, m_in)
        assert torch.equal(a[0], b[0])
    with pytest.raises(HicaError, match="lesion_crop"):
        training_augment("ultrasound", 48, lesion_crop=1.5)


def test_augment_is_deterministic_under_torch_seed() -> None:
    img, mask = _square_image()
    aug = training_augment("ultrasound", 32)
    torch.manual_seed(123)
    a = [aug(img, mask) for _ in range(3)]
    torch.manual_seed(123)
    b = [aug(img, mask) for _ in range(3)]
    for (xa, ma), (xb, mb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ma, mb)
    assert not all(torch.equal(a[0][0], x) for x, _ in a[1:])  # draws differ from call to call


def test_augment_accepts_bool_and_float_masks() -> None:
    img, mask = _square_image()
    aug = training_augment("generic", 32, strength=0.0)
    torch.manual_seed(5)
    _, m_bool = aug(img, mask)
    torch.manual_seed(5)
    _, m_float = aug(img, mask.float())
    assert torch.equal(m_bool, m_float)


def test_augment_bad_arguments() -> None:
    with pytest.raises(HicaError, match="modality"):
        training_augment("mri", 32)  # type: ignore[arg-type]
    with pytest.raises(HicaError, match="min_scale"):
        training_augment("xray", 32, min_scale=0.0)
    aug = training_augment("xray", 32)
    with pytest.raises(HicaError, match=r"does not match"):
        aug(torch.rand(3, 40, 40), torch.zeros(40, 39, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- image data


def test_input_spec(encoder) -> None:
    spec = input_spec(encoder)
    assert spec.size == 64
    assert spec.mean == pytest.approx(IMAGENET_MEAN)
    x = torch.ones(2, 3, 4, 4)
    want = (1 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert torch.allclose(spec.normalize(x)[1, :, 2, 3], want)
    cfg = {"crop_size": [32, 32], "size": 40, "mean": [0.5] * 3, "std": [0.25] * 3}
    assert input_spec(SimpleNamespace(preprocess_config=cfg)).size == 32  # the crop is the input
    with pytest.raises(HicaError, match="square"):
        input_spec(SimpleNamespace(preprocess_config={**cfg, "crop_size": [32, 48]}))
    with pytest.raises(HicaError, match="does not describe its input"):
        input_spec(SimpleNamespace(name="x", preprocess_config={"repr": "Compose(...)"}))
    with pytest.raises(HicaError, match="does not describe its input"):
        input_spec(object())


def test_load_store_real_busi(busi) -> None:
    samples = _one_per_class(busi)  # benign, malignant, normal
    store = load_store(samples, 48, with_masks=True)
    assert len(store) == 3 and store.ids == [s.id for s in samples]
    assert store.labels.tolist() == [0, 1, 2]
    assert store.images.shape == (3, 3, 48, 48) and store.images.dtype == torch.uint8
    assert store.masks is not None and store.masks.shape == (3, 48, 48) and store.masks.dtype == torch.bool
    assert store.has_mask.tolist() == [True, True, True]  # every BUSI image has a mask file
    assert store.masks[0].any() and store.masks[1].any()  # lesions
    assert not store.masks[2].any()  # normal tissue: empty mask
    for i, s in enumerate(samples[:2]):  # nearest resize keeps the lesion's share of the image
        frac = load_mask(s).mean()
        assert abs(float(store.masks[i].float().mean()) - frac) < 0.03
    x = store.float_images([2, 0])
    assert x.shape == (2, 3, 48, 48) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x[1], store.images[0].float() / 255)

    plain = load_store(samples, 32)
    assert plain.masks is None and plain.has_mask.tolist() == [False] * 3
    assert plain.images.shape == (3, 3, 32, 32)


def _png(path: Path, size: tuple[int, int], mode: str = "L", value: int = 128) -> Path:
    Image.new(mode, size, value).save(path)
    return path


def test_load_store_mask_of_another_size(tmp_path: Path) -> None:
    img = _png(tmp_path / "img.png", (40, 30))
    bad_mask = _png(tmp_path / "lesion_mask.png", (20, 20), value=255)
    good_mask = _png(tmp_path / "ok_mask.png", (40, 30), value=255)
    bad = Sample(id="bad", label=0, path=img, masks=(bad_mask,))
    good = Sample(id="good", label=1, path=img, masks=(good_mask,))
    with pytest.raises(HicaError, match="lesion_mask.png"):
        load_store([good, bad], 16, with_masks=True)
    store = load_store([bad, good], 16, with_masks=True, skip_bad=True)
    assert store.ids == ["good"] and store.masks is not None and store.masks.all()
    assert load_store([bad], 16).ids == ["bad"]  # masks are not read unless asked for
    with pytest.raises(HicaError, match="no readable images"):
        load_store([bad], 16, with_masks=True, skip_bad=True)


def test_load_store_sample_without_masks_and_array_samples() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    store = load_store([Sample(id="a", label=2, array=arr)], 8, with_masks=True)
    assert store.has_mask.tolist() == [False]
    assert store.masks is not None and not store.masks.any()
    assert store.images.shape == (1, 3, 8, 8)


# ---------------------------------------------------------------------------------------------- checkpoints


def _modified(encoder):
    enc = copy.deepcopy(encoder)
    with torch.no_grad():
        enc.trunk.conv_head.weight.add_(0.5)
        enc.trunk.bn2.running_mean.add_(1.0)
        enc.text_proj.weight.mul_(2.0)  # outside the saved prefixes: must come back from the base
    return enc


@pytest.fixture(scope="module")
def ckpt(encoder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "enc"
    save_encoder(
        _modified(encoder),
        out,
        base={"name": "default", "args": {"image_size": 64}},
        prefixes=["trunk."],
        meta={"stage": "test", "path": Path("/x")},
    )
    return out


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ckpt, tmp_path / "ck"))


def test_checkpoint_round_trip(encoder, ckpt: Path) -> None:
    cfg = read_checkpoint_config(ckpt)
    trunk_keys = [k for k in encoder.state_dict() if k.startswith("trunk.")]
    assert cfg["format"] == FORMAT and cfg["prefixes"] == ["trunk."]
    assert cfg["base"]["name"] == "default" and cfg["base"]["args"] == {"image_size": 64}
    assert cfg["base"]["fingerprint"] == json.loads(json.dumps(encoder.fingerprint(), default=str))
    assert cfg["tensors"] == len(trunk_keys)
    assert cfg["meta"] == {"stage": "test", "path": "/x"}
    assert sorted(load_file(str(ckpt / WEIGHTS_FILE))) == sorted(trunk_keys)

    loaded = create_encoder("checkpoint", path=str(ckpt))
    assert not loaded.training
    want = _modified(encoder).state_dict()
    base = encoder.state_dict()
    for k, v in loaded.state_dict().items():
        ref = want[k] if k.startswith("trunk.") else base[k]
        assert torch.equal(v, ref), k
    assert not torch.equal(loaded.trunk.conv_head.weight, encoder.trunk.conv_head.weight)
    assert loaded.checkpoint_meta == {"stage": "test", "path": "/x"}
    # The feature cache is keyed by the fingerprint: an adapted encoder must not reuse the base's features.
    fp = loaded.fingerprint()
    json.dumps(fp)
    assert fp != encoder.fingerprint()
    assert fp["config"]["checkpoint"]["sha256"]


def test_checkpoint_fingerprint_follows_the_weights(encoder, ckpt: Path, tmp_path: Path) -> None:
    enc = _modified(encoder)
    with torch.no_grad():
        enc.trunk.conv_head.weight.add_(0.1)
    other = save_encoder(enc, tmp_path / "other", base={"name": "default", "args": {"image_size": 64}},
                         prefixes=["trunk.conv_head."])  # fmt: skip
    a = create_encoder("checkpoint", path=str(ckpt)).fingerprint()
    b = create_encoder("checkpoint", path=str(other)).fingerprint()
    assert a != b


def test_save_encoder_needs_matching_prefixes(encoder, tmp_path: Path) -> None:
    with pytest.raises(HicaError, match="no parameters under"):
        save_encoder(encoder, tmp_path / "x", base={"name": "default"}, prefixes=["nope."])


def test_checkpoint_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(HicaError, match="no config.json"):
        create_encoder("checkpoint", path=str(tmp_path))
    with pytest.raises(HicaError, match="no config.json"):
        read_checkpoint_config(tmp_path / "missing")


def test_checkpoint_config_not_json(ckpt: Path, tmp_path: Path) -> None:
    p = _copy(ckpt, tmp_path)
    (p / CONFIG_FILE).write_text("{format: hica", encoding="utf-8")
    with pytest.raises(HicaError, match="not valid JSON"):
        create_encoder("checkpoint", path=str(p))
    (p / CONFIG_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(HicaError, match="not valid JSON"):
        read_checkpoint_config(p)


@pytest.mark.parametrize("content", [{"format": "hica-encoder/0"}, {"base": {}}, ["hica-encoder/1"]])
def test_checkpoint_wrong_format(ckpt: Path, tmp_path: Path, content) -> None:
    p = _copy(ckpt, tmp_path)
    (p / CONFIG_FILE).write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(HicaError, match="format .* is not 'hica-encoder/1'"):
        create_encoder("checkpoint", path=str(p))


def test_checkpoint_missing_weights(ckpt: Path, tmp_path: Path) -> None:
    p = _copy(ckpt, tmp_path)
    (p / WEIGHTS_FILE).unlink()
    with pytest.raises(HicaError, match="encoder.safetensors is missing"):
        create_encoder("checkpoint", path=str(p))


def test_checkpoint_tensor_the_encoder_lacks(encoder, ckpt: Path, tmp_path: Path) -> None:
    p = _copy(ckpt, tmp_path)
    save_file({"trunk.not_a_layer.weight": torch.zeros(2)}, str(p / WEIGHTS_FILE))
    with pytest.raises(HicaError, match=r"does not have.*trunk\.not_a_layer\.weight.*different encoder"):
        load_encoder_weights(encoder, p)


def test_checkpoint_tensor_of_wrong_shape(encoder, ckpt: Path, tmp_path: Path) -> None:
    p = _copy(ckpt, tmp_path)
    save_file({"trunk.conv_head.weight": torch.zeros(4, 4)}, str(p / WEIGHTS_FILE))
    with pytest.raises(HicaError, match=r"trunk\.conv_head\.weight has shape \(4, 4\)"):
        load_encoder_weights(encoder, p)


def test_checkpoint_base_fingerprint_mismatch(ckpt: Path, tmp_path: Path) -> None:
    p = _copy(ckpt, tmp_path)
    cfg = json.loads((p / CONFIG_FILE).read_text())
    cfg["base"]["fingerprint"]["config"]["image_weights"] = "sha256:0000 (another file)"
    (p / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(HicaError, match="fingerprint mismatch"):
        create_encoder("checkpoint", path=str(p))


class _Boom:
    """Unpickling this creates ``marker``: proof that a loader executed pickle code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_checkpoint_pickle_is_never_unpickled(encoder, ckpt: Path, tmp_path: Path) -> None:
    p = _copy(ckpt, tmp_path)
    marker = tmp_path / "unpickled"
    torch.save({"trunk.conv_head.weight": torch.zeros(1), "x": _Boom(marker)}, p / WEIGHTS_FILE)
    read_checkpoint_config(p)  # config is fine; the weights file is the problem
    with pytest.raises(HicaError, match="not a readable safetensors file"):
        load_encoder_weights(encoder, p)
    (p / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(HicaError, match="not a readable safetensors file"):
        load_encoder_weights(encoder, p)
    assert not marker.exists()


def test_checkpoint_config_without_base(ckpt: Path, tmp_path: Path) -> None:
    p = _copy(ckpt, tmp_path)
    (p / CONFIG_FILE).write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(HicaError):
        create_encoder("checkpoint", path=str(p))


# ----------------------------------------------------------------------------------------------- stage 1


def test_build_corpus() -> None:
    c = build_corpus()
    assert len(c.sentences) > 300
    assert len(set(c.sentences)) == len(c.sentences)
    assert len(c.group) == len(c.sentences)
    assert sum(c.sources.values()) == len(c.sentences)
    assert all(s == " ".join(s.split()) and s for s in c.sentences)
    n_desc = sum(n for src, n in c.sources.items() if src.startswith("descriptors:"))
    n_corpus = sum(n for src, n in c.sources.items() if src.startswith("corpus:"))
    assert n_desc > 0 and n_corpus > 0 and n_desc + n_corpus == len(c.sentences)
    # descriptor sentences come first (group >= 0), then the corpus lines (group -1)
    assert all(g >= 0 for g in c.group[:n_desc]) and all(g == -1 for g in c.group[n_desc:])
    assert {"corpus:breast_ultrasound.txt", "corpus:chest_xray.txt"} <= set(c.sources)
    assert c.describe()["sentences"] == len(c.sentences)


def test_build_corpus_groups_by_class_key(tmp_path: Path) -> None:
    c = build_corpus(descriptors=["busi", "breastmnist"])
    # busi: benign, malignant, normal; breastmnist: malignant, benign_or_normal → 4 class keys
    assert len({g for g in c.group if g >= 0}) == 4
    assert set(c.sources) == {
        "descriptors:busi",
        "descriptors:breastmnist",
        "corpus:breast_ultrasound.txt",
        "corpus:chest_xray.txt",
    }
    extra = tmp_path / "extra.txt"
    extra.write_text("Zq  test   sentence one.\n\nZq test sentence one.\nZq test sentence two.\n")
    c2 = build_corpus(extra_files=[str(extra)], descriptors=["busi"])
    assert c2.sources["file:extra.txt"] == 2 and "Zq test sentence one." in c2.sentences
    assert c2.group[-1] == -1
    with pytest.raises(HicaError, match="not found"):
        build_corpus(extra_files=[str(tmp_path / "nope.txt")])


def test_kmeans_assign() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 5
    truth = np.repeat(np.arange(3), 10)
    emb = (centers[truth] + rng.normal(size=(30, 16)) * 0.1).astype(np.float32)
    labels, cent = kmeans_assign(emb, 3, pca_dim=8, seed=0)
    assert labels.shape == (30,) and labels.dtype == np.int64 and set(labels) == {0, 1, 2}
    assert cent.shape == (3, 16) and cent.dtype == np.float32
    assert np.allclose(np.linalg.norm(cent, axis=1), 1, atol=1e-5)
    for c in range(3):  # well-separated blobs are recovered exactly (up to renaming)
        assert len(set(labels[truth == c])) == 1
    again, _ = kmeans_assign(emb, 3, pca_dim=8, seed=0)
    assert np.array_equal(labels, again)
    labels5, _ = kmeans_assign(emb[:5], 5, pca_dim=64, seed=0)  # pca_dim capped at n - 1
    assert labels5.shape == (5,)
    with pytest.raises(HicaError, match="clusters"):
        kmeans_assign(emb[:4], 5, pca_dim=8, seed=0)


def _stage1_cfg(root: Path, **over) -> Stage1Config:
    raw = {
        "dataset": "busi",
        "modality": "ultrasound",
        "max_images": 24,
        "data_root": str(root),
        "image": {
            "resolution": 64,
            "epochs": 1,
            "clusters": 3,
            "batch_size": 8,
            "bn_recalibration_images": 8,
            "pca_dim": 8,
        },
        "text": {"epochs": 1, "batch_size": 16},
        "device": "cpu",
        "precision": "fp32",
    }
    raw.update(over)
    return Stage1Config.model_validate(raw)


def test_stage1_config_validation(tmp_path: Path) -> None:
    ok = _stage1_cfg(tmp_path)
    assert ok.splits == ["train"] and ok.image.clusters == 3
    with pytest.raises(ValidationError, match="test split"):
        _stage1_cfg(tmp_path, splits=["train", "test"])
    with pytest.raises(ValidationError, match="at least one split"):
        _stage1_cfg(tmp_path, splits=[])
    with pytest.raises(ValidationError, match="Extra inputs"):
        _stage1_cfg(tmp_path, epochs=3)
    with pytest.raises(ValidationError, match="Extra inputs"):
        _stage1_cfg(tmp_path, image={"resolution": 64, "clustres": 4})
    with pytest.raises(ValidationError, match="clusters"):
        _stage1_cfg(tmp_path, image={"clusters": 1})
    with pytest.raises(ValidationError, match="modality"):
        _stage1_cfg(tmp_path, modality="mri")


def _small_corpus(real):
    """``build_corpus`` cut to 24 descriptor sentences + 8 corpus lines: the full corpus is ~400 sentences,
    ~15 s of MiniLM forward/backward on one CPU thread."""

    def build(*args, **kwargs) -> TextCorpus:
        c = real(*args, **kwargs)
        keep = [i for i, g in enumerate(c.group) if g >= 0][:24] + [
            i for i, g in enumerate(c.group) if g < 0
        ][:8]
        return TextCorpus([c.sentences[i] for i in keep], [c.group[i] for i in keep], {"subset": len(keep)})

    return build


@pytest.fixture(scope="module")
def stage1_run(data_root: Path, tmp_path_factory) -> tuple[Path, dict]:
    import hica.jobs.stage1.runner as s1

    if not (data_root / "busi").is_dir():
        pytest.skip(f"BUSI not found under {data_root}")
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stage1") / "run"
    with pytest.MonkeyPatch.context() as mp, threadpool_limits(limits=1):
        mp.setattr(s1, "build_corpus", _small_corpus(s1.build_corpus))
        summary = run_stage1(_stage1_cfg(data_root), out, resume=True, progress=False)
    return out, summary


def test_run_stage1_outputs(stage1_run) -> None:
    out, summary = stage1_run
    for f in ("encoder/config.json", "encoder/encoder.safetensors", "summary.json", "config.resolved.yaml"):
        assert (out / f).is_file(), f
    img = summary["image"]
    assert img["steps"] == 3 and img["images"] == 24 and img["labels_read"] is False
    assert img["frozen"][:2] == ["trunk.conv_stem", "trunk.bn1"] and "trunk.blocks.2" in img["frozen"]
    assert img["bn_recalibration"]["images"] == 8
    assert set(img["clusterings"]) == {"0"}
    clusters = load_file(str(out / "image" / "clusters" / "epoch-000.safetensors"))
    assert clusters["labels"].shape == (24,) and clusters["centroids"].shape == (3, 512)
    txt = summary["text"]
    assert txt["corpus"]["sentences"] == 32 and txt["steps"] == 2
    assert txt["trained"] == ["text_model.encoder.layer.4.", "text_model.encoder.layer.5."]
    assert json.loads((out / "summary.json").read_text())["image"]["steps"] == 3

    cfg = read_checkpoint_config(out / "encoder")
    assert cfg["base"]["name"] == "default"
    assert cfg["prefixes"] == ["trunk.", "image_proj.", *txt["trained"]]
    assert cfg["meta"]["stage"] == 1 and "data_root" not in cfg["meta"]["config"]

    from hica.modelcard import card_summary, sha256_file, verify_model_card

    card = verify_model_card(out / "encoder")  # the stage-1 encoder carries a card matching its weights
    assert card["kind"] == "encoder" and card["k"] is None and card["labels_read"] is False
    assert card["training_data"]["episode"] is None and len(card["training_data"]["images"]) == 24
    assert [e["stage"] for e in card["encoder"]["lineage"]] == ["base", "stage1"]
    assert card["weights"]["encoder.safetensors"] == sha256_file(out / "encoder" / "encoder.safetensors")
    assert (
        "not for clinical decisions" in card["intended_use"] and (out / "encoder" / "MODEL_CARD.md").is_file()
    )
    assert card_summary(card).startswith("encoder ")


def test_run_stage1_checkpoint_loads_and_differs(stage1_run, encoder) -> None:
    out, _ = stage1_run
    adapted = create_encoder("checkpoint", path=str(out / "encoder"))
    a, base = adapted.state_dict(), encoder.state_dict()  # weights do not depend on image_size
    assert not torch.equal(a["trunk.conv_head.weight"], base["trunk.conv_head.weight"])
    assert not torch.equal(a["image_proj.weight"], base["image_proj.weight"])
    assert torch.equal(
        a["trunk.blocks.0.0.conv_dw.weight"], base["trunk.blocks.0.0.conv_dw.weight"]
    )  # frozen
    assert not torch.equal(a["trunk.bn2.running_mean"], base["trunk.bn2.running_mean"])  # recalibrated
    k5 = "text_model.encoder.layer.5.output.dense.weight"
    assert not torch.equal(a[k5], base[k5])
    k0 = "text_model.encoder.layer.0.output.dense.weight"
    assert torch.equal(a[k0], base[k0])
    assert torch.equal(a["text_proj.weight"], base["text_proj.weight"])
    assert adapted.checkpoint_meta["stage"] == 1
    assert adapted.fingerprint()["config"]["checkpoint"]["sha256"]


def test_run_stage1_never_reads_labels(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Same images, labels shuffled → bit-identical encoder: stage 1 is label-free."""
    import hica.data.catalog as catalog

    if not (data_root / "busi").is_dir():
        pytest.skip(f"BUSI not found under {data_root}")
    real = catalog.load_dataset
    calls = []

    def shuffled(name, root=None, **kw):
        ds = real(name, root, **kw)
        splits = {}
        for sp, samples in ds.splits.items():
            perm = np.random.default_rng(7).permutation(len(samples))
            splits[sp] = [
                dataclasses.replace(s, label=samples[j].label) for s, j in zip(samples, perm, strict=True)
            ]
        calls.append([s.label for s in splits["train"][:16]] != [s.label for s in ds.split("train")[:16]])
        return dataclasses.replace(ds, splits=splits)

    cfg = _stage1_cfg(
        data_root,
        max_images=16,
        encoder={"name": "default", "args": {"image_size": 64}},
        text={"enabled": False},
    )
    s1 = run_stage1(cfg, tmp_path / "a", resume=False, progress=False)
    monkeypatch.setattr(catalog, "load_dataset", shuffled)
    s2 = run_stage1(cfg, tmp_path / "b", resume=False, progress=False)
    assert calls == [True], "the patched loader was not used, or the shuffle left the labels unchanged"
    assert "text" not in s1 and s1["image"]["steps"] == s2["image"]["steps"] == 2
    wa = load_file(str(tmp_path / "a" / "encoder" / WEIGHTS_FILE))
    wb = load_file(str(tmp_path / "b" / "encoder" / WEIGHTS_FILE))
    assert sorted(wa) == sorted(wb) and all(k.startswith(("trunk.", "image_proj.")) for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_run_stage1_nothing_to_do(data_root: Path, tmp_path: Path) -> None:
    cfg = _stage1_cfg(data_root, image={"enabled": False}, text={"enabled": False})
    with pytest.raises(HicaError, match="nothing to do"):
        run_stage1(cfg, tmp_path / "x", progress=False)

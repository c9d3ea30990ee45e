"""HiCA stage 2 (``hica`` and its ablations) on a tiny real BUSI episode: 1 shot per class at 64 px.

Checks the hyperparameter validation, the ROI source each variant reports, valid probabilities, α on the
grid, that the encoder passed in is left untouched, and seed determinism. Two steps of each phase only.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from needs import missing_data

from hica.encoders import create_encoder
from hica.errors import HicaError
from hica.methods import ImageFewShotData, method_registry
from hica.methods.hica import ALPHAS, HiCA, modality_of

VARIANTS = ["hica", "hica_global_only", "hica_no_local", "hica_no_cross", "hica_class_attributes"]
FAST = {"steps": 2, "head_steps": 3, "batch_size": 3}
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def episode(data_root: Path):
    """(encoder, data with masks, val images): support = the first train image of each class, val = the
    first val image of each class, preprocessed by the encoder at 64 px; masks in the same geometry."""
    from hica.data.catalog import load_dataset
    from hica.data.descriptors import load_descriptors
    from hica.data.sample import load_image
    from hica.eval.episode_data import support_attributes
    from hica.model.imagedata import load_store

    if not (data_root / "busi").is_dir():
        missing_data(f"BUSI not found under {data_root}")
    torch.set_num_threads(1)
    enc = create_encoder("default", image_size=64)
    ds = load_dataset("busi", data_root)

    def pick(split: str) -> list:
        return [next(s for s in ds.split(split) if s.label == c) for c in range(len(ds.classes))]

    sup, val = pick("train"), pick("val")
    store = load_store(sup, 64, with_masks=True)
    data = ImageFewShotData(
        support=torch.stack([enc.preprocess(load_image(s)) for s in sup]),
        support_labels=torch.tensor([s.label for s in sup]),
        val=torch.stack([enc.preprocess(load_image(s)) for s in val]),
        val_labels=torch.tensor([s.label for s in val]),
        num_classes=3,
        seed=1,
        classes=list(ds.classes),
        descriptors=load_descriptors("busi"),
        support_masks=store.masks,
        support_has_mask=store.has_mask,
        support_attributes=support_attributes(sup, list(ds.classes), load_descriptors("busi")),
    )
    assert [a["presence"] for a in data.support_attributes] == ["mass", "mass", "no mass"]
    assert data.support.shape == (3, 3, 64, 64) and data.support_masks.shape == (3, 64, 64)
    assert data.support_masks[:2].any() and not data.support_masks[2].any()  # benign, malignant, normal
    return enc, data


def _fit(name: str, enc, data: ImageFewShotData, **hp) -> HiCA:
    return method_registry()[name](**{**FAST, **hp}).fit(enc, data, CPU, "fp32")


def _check_probs(p: torch.Tensor, n: int) -> None:
    assert p.shape == (n, 3) and p.dtype == torch.float32
    assert torch.isfinite(p).all() and (p >= 0).all()
    assert torch.allclose(p.sum(1), torch.ones(n), atol=1e-5)


# -------------------------------------------------------------------------------------------- no data


def test_registry_and_variant_switches() -> None:
    reg = method_registry()
    assert set(VARIANTS) <= set(reg)
    for name in VARIANTS:
        cls = reg[name]
        assert issubclass(cls, HiCA) and cls.name == name and cls.uses_text and cls.uses_masks
    assert reg["hica"].defaults["use_local"] and reg["hica"].defaults["use_cross"]
    assert not reg["hica_global_only"].defaults["use_local"]
    assert not reg["hica_global_only"].defaults["use_cross"]
    assert not reg["hica_no_local"].defaults["use_local"] and reg["hica_no_local"].defaults["use_cross"]
    assert reg["hica_no_cross"].defaults["use_local"] and not reg["hica_no_cross"].defaults["use_cross"]
    assert reg["hica"].defaults["attributes"] == "image"
    assert reg["hica_class_attributes"].defaults["attributes"] == "class"
    assert HiCA.defaults["use_local"]  # the variants did not change the base class


@pytest.mark.parametrize(
    ("hp", "match"),
    [
        ({"lambda_locl": 0.5}, r"unknown argument\(s\) \['lambda_locl'\]"),
        ({"lambda_local": -1}, "lambda_local"),
        ({"lambda_cross": float("nan")}, "lambda_cross"),
        ({"use_global": False, "use_local": False, "use_cross": False}, "nothing to train"),
        ({"roi": "masks"}, "roi must be 'auto' or 'proposed'"),
        ({"steps": 0}, "steps must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_bad_hyperparameters(hp: dict, match: str) -> None:
    with pytest.raises(HicaError, match=match):
        HiCA(**hp)


def test_global_only_rejects_turning_its_last_term_off() -> None:
    with pytest.raises(HicaError, match="nothing to train"):
        method_registry()["hica_global_only"](use_global=False)


def test_modality_of() -> None:
    assert modality_of("breast ultrasound (B-mode grayscale)") == "ultrasound"
    assert modality_of("Chest X-ray (frontal radiograph)") == "xray"
    assert modality_of("sonography") == "ultrasound"
    assert modality_of("dermoscopy") == "generic"


# ---------------------------------------------------------------------------------------- on the episode


def test_fit_needs_descriptors(episode) -> None:
    enc, data = episode
    with pytest.raises(HicaError, match="descriptors"):
        HiCA(**FAST).fit(enc, dataclasses.replace(data, descriptors=None), CPU, "fp32")


def test_hica_with_masks_trains_a_copy_and_is_deterministic(episode) -> None:
    enc, data = episode
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    flags = (enc.training, [p.requires_grad for p in enc.parameters()])
    m1 = _fit("hica", enc, data)
    m2 = _fit("hica", enc, data)
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "fit modified the encoder passed in"
    assert (enc.training, [p.requires_grad for p in enc.parameters()]) == flags

    assert m1.selected["roi_source"] == "lesion masks (support set)"
    assert m1.alpha in ALPHAS and m1.selected["alpha"] == m1.alpha
    assert 0 <= m1.selected["val_accuracy"] <= 1
    assert len(m1.selected["head_loss"]) == 2 and len(m1.selected["train_loss"]) == 2
    # every step's named loss terms are logged (both phases), outside ``selected`` (written to result tables)
    assert [len(m1.loss_log["head"]), len(m1.loss_log["train"])] == [FAST["head_steps"], FAST["steps"]]
    assert set(m1.selected) == {
        "alpha",
        "val_accuracy",
        "roi_source",
        "attribute_source",
        "head_loss",
        "train_loss",
    }
    assert m1.selected["attribute_source"].startswith("per-image")
    for phase in ("head", "train"):
        assert all(
            {"total", "global", "local", "cross", "local/attribute", "local/attr_acc", "cross/img"} <= set(t)
            for t in m1.loss_log[phase]
        )
    head = [round(m1.loss_log["head"][i]["total"], 4) for i in (0, -1)]
    train = [round(m1.loss_log["train"][i]["total"], 4) for i in (0, -1)]
    assert m1.selected["head_loss"] == head and m1.selected["train_loss"] == train
    assert str(m1.loss_log) == str(m2.loss_log)  # (str: a diagnostic may be nan)
    # the copy was trained: image tower (past the frozen stages) and text head moved
    trained = m1.model.encoder
    assert not torch.equal(trained.trunk.conv_head.weight, enc.trunk.conv_head.weight)
    assert torch.equal(trained.trunk.blocks[0][0].conv_dw.weight, enc.trunk.blocks[0][0].conv_dw.weight)
    assert not torch.equal(m1.model.text.proj.weight, enc.text_proj.weight)

    images = torch.cat([data.val, data.support])
    p1, p2 = m1.predict_proba(images), m2.predict_proba(images)
    _check_probs(p1, 6)
    assert torch.allclose(p1, p2, atol=1e-5)
    assert m1.selected == m2.selected
    assert torch.allclose(m1.predict_proba(images, batch_size=2), p1, atol=1e-5)
    # the attribute level scores images: per group a distribution over its values, masks optional
    post = m1.attribute_posteriors(images)
    vocab = m1.model.text.vocab
    assert post.shape == (6, len(vocab.values)) and torch.isfinite(post).all()
    groups = torch.tensor(vocab.value_group)
    for g in range(len(vocab.groups)):
        assert torch.allclose(post[:, groups == g].sum(1), torch.ones(6), atol=1e-5)
    with_masks = m1.attribute_posteriors(data.support, masks=data.support_masks)
    assert with_masks.shape == (3, len(vocab.values))


def test_class_attributes_preset_is_the_first_rounds_local_level(episode) -> None:
    enc, data = episode
    m = _fit("hica_class_attributes", enc, data)
    assert m.selected["attribute_source"] == "class-level phrases"
    assert all("local/contrast" in t and "local/attribute" not in t for t in m.loss_log["train"])
    no_attrs = _fit("hica", enc, dataclasses.replace(data, support_attributes=None))
    assert no_attrs.selected["attribute_source"] == "class-level phrases"


def test_hica_without_masks_proposes_rois(episode) -> None:
    enc, data = episode
    m = _fit("hica", enc, dataclasses.replace(data, support_masks=None, support_has_mask=None))
    assert m.selected["roi_source"].startswith("proposed")
    _check_probs(m.predict_proba(data.val), 3)
    assert m.alpha in ALPHAS


def test_hica_roi_proposed_ignores_masks(episode) -> None:
    enc, data = episode
    m = _fit("hica", enc, data, roi="proposed", use_cross=False)
    assert m.selected["roi_source"].startswith("proposed")


def test_hica_all_empty_masks_falls_back_to_proposed(episode) -> None:
    enc, data = episode
    none = torch.zeros(3, dtype=torch.bool)  # the masks tensor is there, but no sample had a mask file
    m = _fit("hica_no_cross", enc, dataclasses.replace(data, support_has_mask=none))
    assert m.selected["roi_source"].startswith("proposed")


@pytest.mark.parametrize(
    ("name", "roi"),
    [
        ("hica_global_only", "none (L_local off)"),
        ("hica_no_local", "none (L_local off)"),
        ("hica_no_cross", "lesion masks (support set)"),
    ],
)
def test_variants(episode, name: str, roi: str) -> None:
    enc, data = episode
    m = _fit(name, enc, data)
    assert m.name == name and m.selected["roi_source"] == roi
    levels = ("global", "local", "cross")
    on = {term for term in levels if m.hparams[f"use_{term}"]}
    for terms in m.loss_log["head"] + m.loss_log["train"]:  # an ablated term is not logged
        assert {term for term in levels if term in terms} == on
    assert m.alpha in ALPHAS
    _check_probs(m.predict_proba(data.val), 3)


def test_train_size_changes_phase_two_crops_only(episode, monkeypatch) -> None:
    """``train_size`` sets the side of phase 2's augmented crops; prediction stays at the encoder's input."""
    from hica.model.hica_model import HiCAModel

    enc, data = episode
    seen: list[tuple[int, int]] = []
    forward = HiCAModel.forward

    def spy(self, images, *args, **kwargs):
        seen.append(tuple(images.shape[-2:]))
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(HiCAModel, "forward", spy)
    plain = _fit("hica", enc, data)
    assert seen and set(seen) == {(64, 64)}  # the encoder's input size
    seen.clear()
    small = _fit("hica", enc, data, train_size=96)
    assert seen and set(seen) == {(96, 96)}
    assert str(small.loss_log["train"]) != str(plain.loss_log["train"])
    _check_probs(small.predict_proba(data.val), 3)
    with pytest.raises(HicaError, match="train_size"):
        HiCA(train_size=32)
    # an encoder that cannot take another side (a ViT's fixed position embeddings): a clear error up front
    fixed = copy.deepcopy(enc)
    encode = fixed.encode_image

    def only_64(images):
        if images.shape[-1] != 64:
            raise RuntimeError("position embedding size mismatch")
        return encode(images)

    fixed.encode_image = only_64
    with pytest.raises(HicaError, match=r"train_size 96 does not fit this encoder \(RuntimeError: position"):
        _fit("hica", fixed, data, train_size=96)


def test_tta_views_are_the_image_and_five_crops() -> None:
    from hica.model.tta import CROP_SIDE, check_tta, tta_views

    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    assert len(tta_views(x, "none")) == 1 and tta_views(x, "none")[0] is x
    views = tta_views(x, "crops")
    assert len(views) == 6 and all(v.shape == x.shape for v in views) and torch.equal(views[0], x)
    c = round(16 * CROP_SIDE)  # 14: centre crop rows/cols 1..14, corners at 0 and 2

    def resize(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)

    assert torch.allclose(views[1], resize(x[..., 1 : 1 + c, 1 : 1 + c]))
    assert torch.allclose(views[5], resize(x[..., 2:, 2:]))
    assert all(not torch.equal(a, b) for i, a in enumerate(views) for b in views[i + 1 :])  # six views
    with pytest.raises(HicaError, match="one of none, crops"):
        check_tta("flip")


def test_tta_reaches_prediction_and_the_exported_predictor(episode) -> None:
    """``tta: crops``: support prototypes, α search and prediction use the mean of the six view embeddings,
    and the predictor of the fitted method (what `hica finetune` exports) predicts the same."""
    from hica.model.tta import embed_with_tta, tta_views
    from hica.predict import Predictor
    from hica.runtime import embed_images

    enc, data = episode
    m = _fit("hica", enc, data, tta="crops")
    plain = _fit("hica", enc, data)
    images = torch.cat([data.val, data.support])
    by_hand = torch.nn.functional.normalize(
        sum(embed_images(m.model.encoder, v, CPU, "fp32") for v in tta_views(images, "crops")), dim=-1
    )
    assert torch.allclose(m.embed(images), by_hand, atol=1e-5)
    assert torch.allclose(
        embed_with_tta(m.model.encoder, images, CPU, "fp32", "crops", 2), by_hand, atol=1e-5
    )
    assert torch.allclose(m.image_protos, m._protos(by_hand[3:], data.support_labels, 3), atol=1e-5)
    p = m.predict_proba(images)
    _check_probs(p, 6)
    assert torch.allclose(
        plain.model.text.proj.weight, m.model.text.proj.weight
    )  # TTA does not touch training
    assert not torch.allclose(p, plain.predict_proba(images), atol=1e-4)
    pred = Predictor.from_fitted(m, data.classes, CPU, "fp32")
    assert pred.tta == "crops" and torch.allclose(pred.probs_of(images), p, atol=1e-5)

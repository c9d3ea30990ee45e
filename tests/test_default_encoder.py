"""The embedded default encoder: weights mapped correctly, shapes, determinism, speed-relevant layout."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from hica.encoders import create_encoder
from hica.encoders.default import load_lite0_trunk, map_lukemelas_to_timm, packaged_image_weights
from hica.errors import HicaError

# ImageNet-1k indices: 281-285 domestic cats; 967 espresso, 968 cup; 657 missile, 812 space shuttle.
CATS = {281, 282, 283, 284, 285}


@pytest.fixture(scope="module")
def trunk() -> torch.nn.Module:
    return load_lite0_trunk().eval()


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("default")


def _top5(trunk: torch.nn.Module, encoder, img) -> list[int]:
    x = encoder.preprocess(Image.fromarray(img))[None]
    with torch.no_grad():
        return trunk(x).topk(5).indices[0].tolist()


def test_state_dict_maps_completely() -> None:
    raw = torch.load(packaged_image_weights(), map_location="cpu", weights_only=True)
    mapped = map_lukemelas_to_timm(raw)
    assert len(mapped) == len(raw)
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    assert set(mapped) == set(model.state_dict())


@pytest.mark.parametrize("backbone", ["lite1", "lite2"])
def test_larger_lite_backbones_load_and_see_imagenet(backbone: str) -> None:
    """Lite1 / Lite2 (issue 13 §3): their packaged weights map completely onto timm's model and classify."""
    import timm

    from hica.encoders.default import BACKBONES

    raw = torch.load(packaged_image_weights(backbone), map_location="cpu", weights_only=True)
    model = timm.create_model(BACKBONES[backbone][0], pretrained=False)
    mapped = map_lukemelas_to_timm(raw, [len(s) for s in model.blocks])
    assert len(mapped) == len(raw) and set(mapped) == set(model.state_dict())
    with pytest.raises(KeyError, match="blocks"):
        map_lukemelas_to_timm(raw)  # Lite0's 16 blocks: Lite1/2 have 21
    trunk = load_lite0_trunk(backbone=backbone).eval()
    size = {"lite1": 240, "lite2": 260}[backbone]  # their native resolutions
    enc = create_encoder("default", image_backbone=backbone, image_size=size)
    assert enc.config["image_backbone"] == backbone and enc.config["image_size"] == size
    assert _top5(trunk, enc, skdata.chelsea())[0] in CATS
    with pytest.raises(HicaError, match="image_backbone"):
        load_lite0_trunk(backbone="lite9")
    with pytest.raises(HicaError, match="image_backbone"):
        packaged_image_weights("lite9")


def test_lite0_config_keys_are_unchanged(encoder) -> None:
    """Lite0 (the default) keeps the config keys it always had, so feature caches and hashes stay valid."""
    assert "image_backbone" not in encoder.config


@pytest.mark.parametrize(
    ("name", "expected"),
    [("chelsea", CATS), ("coffee", {967, 968}), ("rocket", {657, 812})],
)
def test_imagenet_top5_is_sensible(trunk, encoder, name: str, expected: set[int]) -> None:
    top5 = _top5(trunk, encoder, getattr(skdata, name)())
    assert expected & set(top5), f"{name}: top-5 {top5} has none of {sorted(expected)}"


def test_top1_cat(trunk, encoder) -> None:
    assert _top5(trunk, encoder, skdata.chelsea())[0] in CATS


def test_shapes_and_local_tokens(encoder) -> None:
    gray = Image.fromarray(skdata.camera())  # grayscale input is converted to RGB
    x = encoder.preprocess(gray)
    assert x.shape == (3, 224, 224)
    with torch.no_grad():
        f = encoder.encode_image(torch.stack([x, x]))
        t = encoder.encode_text(["lobar consolidation with air bronchograms", "normal chest radiograph"])
    assert f.global_.shape == (2, 512) and f.local.shape == (2, 49, 512) and f.grid == (7, 7)
    assert torch.allclose(f.local.mean(1), f.global_, atol=1e-4)
    assert t.shape == (2, 512)


def test_text_tower_is_minilm(encoder) -> None:
    """Projected text keeps MiniLM's geometry (orthogonal head): related phrases stay closer."""
    with torch.no_grad():
        t = torch.nn.functional.normalize(
            encoder.encode_text(["pneumonia in the lung", "lung infection", "a red sports car"]), dim=-1
        )
    assert t[0] @ t[1] > t[0] @ t[2] + 0.2


def test_deterministic_heads() -> None:
    a, b = create_encoder("default"), create_encoder("default")
    assert torch.equal(a.image_proj.weight, b.image_proj.weight)
    assert a.fingerprint() == b.fingerprint()
    c = create_encoder("default", head_seed=5)
    assert not torch.equal(a.image_proj.weight, c.image_proj.weight)
    assert a.fingerprint() != c.fingerprint()


def test_bad_weights_and_unknown_encoder(tmp_path) -> None:
    with pytest.raises(HicaError, match="not found"):
        create_encoder("default", image_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(HicaError, match="available encoders: .*default"):
        create_encoder("no-such-backbone")

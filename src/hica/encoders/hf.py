"""Hugging Face ``transformers`` dual encoders: ``CLIPModel`` / ``SiglipModel`` from a hub id or a local dir.

Local tokens:

* CLIP: the vision tower's last hidden state without the class token, through ``post_layernorm`` and
  ``visual_projection`` — the same map that takes the class token to the image embedding.
* SigLIP: the (already ``post_layernorm``-ed) patch tokens through the attention-pooling head's value path
  (value → output projection of its ``MultiheadAttention``, then the head's LayerNorm + MLP residual), i.e.
  the head's output were the probe to attend to that one token. SigLIP has no projection after the head.

Text follows the checkpoint's conventions: CLIP pads to the longest text (EOS pooling ignores padding);
SigLIP pads to ``max_length`` (64) and passes no attention mask, as in its original (big_vision) training,
and takes the last token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2 as T

from hica.encoders._common import CLIPTemperature, RGBConvert
from hica.encoders._hub import resolve_hf_dir
from hica.encoders._tokens import mha_value_path
from hica.encoders.base import DualEncoder, ImageFeatures
from hica.encoders.registry import register
from hica.errors import HicaError

SUPPORTED = ("clip", "siglip")
_PATTERNS = ("*.json", "*.txt", "*.model", "model.safetensors", "model-*.safetensors")
_WEIGHTS = ("model.safetensors", "model-*.safetensors", "pytorch_model*.bin")
# PIL resampling codes (as stored in preprocessor_config.json) -> torchvision interpolation.
_RESAMPLE = {
    0: ("nearest", T.InterpolationMode.NEAREST),
    1: ("lanczos", T.InterpolationMode.LANCZOS),
    2: ("bilinear", T.InterpolationMode.BILINEAR),
    3: ("bicubic", T.InterpolationMode.BICUBIC),
}


class Rescale:
    """Multiply a tensor by a constant (HF's ``rescale_factor``); picklable, unlike a lambda."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor

    def __repr__(self) -> str:
        return f"Rescale({self.factor})"


def _size(d: dict[str, Any] | int | None, what: str) -> int | tuple[int, int]:
    if isinstance(d, int):
        return d
    d = d or {}
    if d.get("shortest_edge"):
        return int(d["shortest_edge"])
    if d.get("height") and d.get("width"):
        return int(d["height"]), int(d["width"])
    raise HicaError(f"unsupported image processor {what} {d!r}: expected shortest_edge or height/width")


def processor_transform(proc: dict[str, Any]) -> tuple[T.Compose, dict[str, Any]]:
    """A torchvision transform replaying an HF image processor's eval settings, and its JSON description.

    RGB conversion (always), resize, centre crop, rescale, normalise; resizing runs on uint8 tensors with
    antialiasing, as the processors' torchvision backend does.
    """
    steps: list[Any] = [RGBConvert(), T.ToImage()]
    desc: dict[str, Any] = {"processor": proc.get("image_processor_type")}
    if proc.get("do_resize", True):
        resample = int(proc.get("resample", 3))
        interp_name, interp = _RESAMPLE.get(resample, _RESAMPLE[3])
        size = _size(proc.get("size"), "size")
        steps.append(T.Resize(size, interpolation=interp, antialias=True))
        desc.update(size=size, interpolation=interp_name)
    if proc.get("do_center_crop"):
        crop = _size(proc.get("crop_size"), "crop_size")
        crop = (crop, crop) if isinstance(crop, int) else crop
        steps.append(T.CenterCrop(crop))
        desc["crop"] = crop
    steps.append(T.ToDtype(torch.float32, scale=False))
    if proc.get("do_rescale", True):
        factor = float(proc.get("rescale_factor", 1 / 255))
        steps.append(Rescale(factor))
        desc["rescale"] = factor
    if proc.get("do_normalize", True):
        mean, std = list(proc["image_mean"]), list(proc["image_std"])
        steps.append(T.Normalize(mean=mean, std=std))
        desc.update(mean=mean, std=std)
    return T.Compose(steps), desc


class HFEncoder(CLIPTemperature, DualEncoder):
    """A transformers CLIP or SigLIP model with its tokenizer and image-processor settings."""

    name = "hf"

    def __init__(self, model: str, max_text_length: int | None = None) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        path, identity = resolve_hf_dir(
            model,
            arg="model",
            allow_patterns=_PATTERNS,
            required=[["config.json"], list(_WEIGHTS)],
            fallback_patterns=["pytorch_model*.bin"],
        )
        hf_cfg = AutoConfig.from_pretrained(str(path), local_files_only=True)
        self.model_type = hf_cfg.model_type
        if self.model_type not in SUPPORTED:
            raise HicaError(
                f"model={model!r} is a {self.model_type!r} model; the hf encoder supports "
                f"{', '.join(SUPPORTED)} (use the open_clip or timm_hf encoder for others)"
            )
        try:
            self.model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, ImportError) as e:
            raise HicaError(
                f"cannot load the {self.model_type} model, tokenizer or image processor from {path}: {e}"
            ) from e
        self.model.eval()
        self._preprocess, self._pp_desc = processor_transform(processor.to_dict())
        text_cfg = hf_cfg.text_config
        self.max_text_length = int(max_text_length or text_cfg.max_position_embeddings)
        self.pad_to_max = self.model_type == "siglip"
        if self.model_type == "clip":
            self.embed_dim = int(hf_cfg.projection_dim)
        else:
            self.embed_dim = int(getattr(text_cfg, "projection_size", None) or text_cfg.hidden_size)
        self.patch_size = int(hf_cfg.vision_config.patch_size)
        self.config = {**identity, "model_type": self.model_type, "max_text_length": self.max_text_length}

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return dict(self._pp_desc)

    def image_parameters(self) -> list[nn.Parameter]:
        params = list(self.model.vision_model.parameters())
        if self.model_type == "clip":
            params += list(self.model.visual_projection.parameters())
        return params

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        vision = self.model.vision_model
        out = vision(pixel_values=images)
        hidden = out.last_hidden_state
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        if self.model_type == "clip":
            pooled = self.model.visual_projection(out.pooler_output)
            tokens = self.model.visual_projection(vision.post_layernorm(hidden[:, 1:]))
        else:
            head = getattr(vision, "head", None)
            if head is None:  # vision_use_head=False checkpoints pool by averaging
                pooled, tokens = hidden.mean(1), hidden
            else:
                pooled = out.pooler_output
                tokens = mha_value_path(head.attention, hidden)
                tokens = tokens + head.mlp(head.layernorm(tokens))
        if tokens.shape[1] != grid[0] * grid[1]:
            raise RuntimeError(f"{tokens.shape[1]} patch tokens do not fill a {grid} grid")
        return ImageFeatures(global_=pooled, local=tokens, grid=grid)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max else True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        keys = ("input_ids",) if self.pad_to_max else ("input_ids", "attention_mask")
        inputs = {k: tok[k].to(self.device) for k in keys if k in tok}
        out = self.model.text_model(**inputs)
        if self.model_type == "clip":
            return self.model.text_projection(out.pooler_output)
        return out.pooler_output


@register("hf", params=HFEncoder.__init__)
def create_hf(**kwargs: Any) -> HFEncoder:
    """transformers CLIP/SigLIP: model=HUB_ID or model=DIR (save_pretrained layout), max_text_length."""
    return HFEncoder(**kwargs)

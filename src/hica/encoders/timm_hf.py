"""Any timm image tower + any Hugging Face text tower, joined by seeded projection heads.

Image: ``timm.create_model(name, num_classes=0)`` with weights from a local file (``image_weights``),
timm's own pretrained weights via the HF Hub (``image_pretrained=true``), or a timm model directory /
``hf-hub:`` repo (config.json + model.safetensors). Weights files are read with safetensors or
``torch.load(weights_only=True)``; every trunk parameter must be present in them.
Text: ``transformers.AutoModel`` + ``AutoTokenizer`` (hub id or local dir; default: the packaged
all-MiniLM-L6-v2), mean pooling over non-padding tokens.
Both go through bias-free, seeded orthogonal projections to ``embed_dim``: the same arguments give the
same features, but image and text are unaligned until the heads are trained (zero-shot is at chance).

Local tokens: :func:`hica.encoders._tokens.timm_trunk_tokens` (CNN feature-map cells through the
post-pooling head, or ViT patch tokens without prefix tokens), then the image projection.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from hica.encoders._common import RGBConvert, encode_sentences, file_fingerprint, seeded_projection
from hica.encoders._hub import (
    HF_HUB_PREFIX,
    hub_file,
    hub_snapshot,
    local_dir,
    resolve_hf_dir,
    strip_prefix,
)
from hica.encoders._tokens import timm_trunk_tokens
from hica.encoders.base import DualEncoder, ImageFeatures
from hica.encoders.registry import register
from hica.errors import HicaError

_TEXT_PATTERNS = ("*.json", "*.txt", "*.model", "model.safetensors", "model-*.safetensors")
_TEXT_WEIGHTS = ("model.safetensors", "model-*.safetensors", "pytorch_model*.bin")
_TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def load_timm_state(path: Path, trunk: nn.Module, arg: str) -> None:
    """Load a state dict file into a timm trunk (classifier keys ignored, every other key required)."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as e:
        raise HicaError(f"{arg}: cannot read weights from {path}: {e}") from e
    # The model's own checkpoint filter converts foreign layouts and resizes position embeddings.
    filter_fn = getattr(sys.modules.get(type(trunk).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        with contextlib.suppress(Exception):  # filters assume their own layout; else keep the raw keys
            state = filter_fn(state, trunk)
    classifier = trunk.pretrained_cfg.get("classifier") or ()
    for name in (classifier,) if isinstance(classifier, str) else classifier:
        state.pop(f"{name}.weight", None)
        state.pop(f"{name}.bias", None)
    result = trunk.load_state_dict(state, strict=False)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:5])
        raise HicaError(
            f"{arg}: {path} does not fit timm model {trunk.pretrained_cfg.get('architecture')}: "
            f"{len(result.missing_keys)} missing keys ({shown}...)"
        )


def _timm_dir_weights(path: Path) -> Path:
    for name in _TIMM_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise HicaError(f"image_model: directory {path} has no model.safetensors or pytorch_model.bin")


def create_timm_trunk(
    image_model: str,
    image_pretrained: bool = False,
    image_weights: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A timm trunk without classifier, with weights, and a JSON-able identity of those weights."""
    kwargs = dict(model_kwargs or {})
    hub = strip_prefix(image_model, HF_HUB_PREFIX)
    path = local_dir(image_model) if hub is None else None
    weights: Path
    if hub is not None or path is not None:
        if image_weights or image_pretrained:
            raise HicaError(
                "image_weights / image_pretrained cannot be combined with a model directory or hf-hub: id"
            )
        if hub is not None:
            path = hub_snapshot(
                hub,
                arg="image_model",
                allow_patterns=["config.json", "model.safetensors"],
                required=[["config.json"], list(_TIMM_WEIGHTS)],
                fallback_patterns=["pytorch_model.bin"],
            )
        assert path is not None
        if not (path / "config.json").is_file():
            raise HicaError(f"image_model: directory {path} has no config.json (timm model directory layout)")
        weights = _timm_dir_weights(path)
        trunk = _create(f"local-dir:{path}", kwargs)
        identity: dict[str, Any] = {"hub_id": hub, "revision": path.name} if hub else {"path": str(path)}
    else:
        trunk = _create(image_model, kwargs)
        if image_weights:
            weights = Path(image_weights).expanduser()
            if not weights.is_file():
                raise HicaError(f"image_weights: file not found: {weights}")
            identity = {"model": image_model}
        elif image_pretrained:
            cfg = trunk.pretrained_cfg
            if not cfg.get("hf_hub_id"):
                raise HicaError(
                    f"image_model={image_model!r}: timm has no Hugging Face Hub weights for it; "
                    "pass image_weights=/path/to/weights.safetensors"
                )
            filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_TIMM_WEIGHTS)
            weights = hub_file(
                cfg["hf_hub_id"],
                filenames,
                arg="image_model",
                what=f"image_model={image_model!r} image_pretrained=true",
                usage="image_model=/path/to/{dir} (without image_pretrained)",
            )
            identity = {"model": image_model, "hub_id": cfg["hf_hub_id"]}
        else:
            raise HicaError(
                f"image_model={image_model!r} has no weights: pass image_pretrained=true (timm's weights "
                "from the Hugging Face Hub) or image_weights=/path/to/weights.safetensors"
            )
    load_timm_state(weights, trunk, "image_weights" if image_weights else "image_model")
    identity.update(weights=file_fingerprint(weights), model_kwargs=kwargs)
    return trunk, identity


def _create(name: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except (RuntimeError, ValueError, TypeError, FileNotFoundError) as e:
        raise HicaError(f"image_model={name!r}: timm cannot build it ({e})") from e


def timm_eval_transform(trunk: nn.Module, image_size: int | None = None):
    """timm's eval transform for ``trunk`` (its test-time size; ``image_size`` overrides), RGB first."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.transforms import Compose

    cfg = resolve_data_config(model=trunk, use_test_size=True)
    img_size = getattr(getattr(trunk, "patch_embed", None), "img_size", None)
    if image_size:
        cfg["input_size"] = (3, image_size, image_size)
    elif img_size is not None and tuple(cfg["input_size"][1:]) != tuple(img_size):
        cfg["input_size"] = (3, *img_size)  # a ViT built for another size than its pretrained config
    transform = Compose([RGBConvert(), create_transform(**cfg, is_training=False)])
    return transform, {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


class TimmHFEncoder(DualEncoder):
    """timm image tower + HF text tower + seeded projection heads to ``embed_dim``."""

    name = "timm_hf"

    def __init__(
        self,
        image_model: str,
        text_model: str | None = None,
        image_pretrained: bool = False,
        image_weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        image_size: int | None = None,
        embed_dim: int = 512,
        head_seed: int = 0,
        max_text_length: int = 128,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.trunk, image_identity = create_timm_trunk(
            image_model, image_pretrained, image_weights, model_kwargs
        )
        if text_model is None:
            from hica.encoders.default import packaged_text_model

            text_model = str(packaged_text_model())
        text_dir, text_identity = resolve_hf_dir(
            text_model,
            arg="text_model",
            allow_patterns=_TEXT_PATTERNS,
            required=[["config.json"], list(_TEXT_WEIGHTS)],
            fallback_patterns=["pytorch_model*.bin"],
        )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)
            self.text_model = AutoModel.from_pretrained(
                str(text_dir), local_files_only=True, dtype=torch.float32
            )
        except (OSError, ValueError, ImportError) as e:
            raise HicaError(
                f"text_model: cannot load a transformers model and tokenizer from {text_dir}: {e}"
            ) from e
        hidden = getattr(self.text_model.config, "hidden_size", None)
        if hidden is None:
            raise HicaError(f"text_model: {text_dir} is not a text encoder with hidden_size")
        self.embed_dim = embed_dim
        self.max_text_length = max_text_length
        self.image_proj = seeded_projection(self.trunk.num_features, embed_dim, seed=head_seed)
        self.text_proj = seeded_projection(hidden, embed_dim, seed=head_seed + 1)
        self.logit_scale_param = nn.Parameter(torch.tensor(1 / 0.07).log())
        self._preprocess, self._pp_desc = timm_eval_transform(self.trunk, image_size)
        self.config = {
            "image": image_identity,
            "text": text_identity,
            "embed_dim": embed_dim,
            "head_seed": head_seed,
            "max_text_length": max_text_length,
        }
        self.eval()

    @property
    def logit_scale(self) -> float:
        return float(self.logit_scale_param.detach().exp())

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return dict(self._pp_desc)

    def image_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters()) + list(self.image_proj.parameters())

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        feats = self.trunk.forward_features(images)
        pooled = self.image_proj(self.trunk.forward_head(feats, pre_logits=True))
        tokens, grid = timm_trunk_tokens(self.trunk, feats, tuple(images.shape[-2:]))
        return ImageFeatures(global_=pooled, local=self.image_proj(tokens), grid=grid)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        pooled = encode_sentences(self.tokenizer, self.text_model, list(texts), self.max_text_length)
        return self.text_proj(pooled)


@register("timm_hf", params=TimmHFEncoder.__init__)
def create_timm_hf(**kwargs: Any) -> TimmHFEncoder:
    """timm image tower + HF text tower: image_model, image_pretrained|image_weights, text_model."""
    return TimmHFEncoder(**kwargs)

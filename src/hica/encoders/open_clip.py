"""OpenCLIP models (``open_clip_torch``): built-in architectures with a pretrained tag or checkpoint file,
``hf-hub:`` repositories (e.g. BiomedCLIP) and local directories in the same layout.

Local tokens, per visual tower:

* ViT (``VisionTransformer``): the patch tokens (class token dropped) of the last block through ``ln_post``
  and ``proj``, exactly as the class token is mapped into the shared space. With an attentional pooler
  (CoCa), the tokens take the pooler's value path before ``ln_post``.
* ModifiedResNet (OpenAI RN50 etc.): the last feature-map cells plus the attention pool's positional
  embedding, through its value and output projections (``c_proj(v_proj(x))``, MaskCLIP).
* timm trunks (``TimmModel``): see :func:`hica.encoders._tokens.timm_trunk_tokens`, followed by the
  OpenCLIP head (attention-pool value path, linear or MLP projection) applied per token.

Other towers give the global embedding as a single 1×1 "local" token.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import Compose

from hica.encoders._common import CLIPTemperature, RGBConvert, file_fingerprint
from hica.encoders._hub import (
    HF_HUB_PREFIX,
    dir_fingerprint,
    hub_file,
    hub_snapshot,
    local_dir,
    looks_like_path,
    strip_prefix,
)
from hica.encoders._tokens import attention_pool2d_value_path, mha_value_path, timm_trunk_tokens
from hica.encoders.base import DualEncoder, ImageFeatures
from hica.encoders.registry import register
from hica.errors import HicaError

_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
_HUB_PATTERNS = ("*.json", "*.txt", "*.model", "open_clip_model.safetensors")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")


def _safe_alternatives(filename: str) -> list[str]:
    """``filename`` preceded by its safetensors twin, as OpenCLIP's hub download prefers."""
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _dir_checkpoint(path: Path) -> Path | None:
    """The weights file OpenCLIP picks in a model directory (its preferred names first)."""
    for name in _WEIGHTS:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.pth"))
    return found[0] if found else None


def _read_dir_config(path: Path, arg: str) -> dict[str, Any]:
    cfg_file = path / "open_clip_config.json"
    if not cfg_file.is_file():
        raise HicaError(
            f"{arg}: directory {path} has no open_clip_config.json (not an OpenCLIP model directory)"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise HicaError(f"{cfg_file} is not valid JSON: {e}") from e
    if "model_cfg" not in cfg:
        raise HicaError(f"{cfg_file} has no 'model_cfg' entry")
    return cfg


def _is_hf_config(path: Path) -> bool:
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def _resolve_hf_text(name: str, model_dir: Path | None, model: str) -> str:
    """A local source for the config of an HF text tower (its weights come from the CLIP checkpoint).

    Looked up in the model directory (a ``config.json`` with ``model_type``), as a directory, or on the hub.
    """
    if model_dir is not None and _is_hf_config(model_dir):
        return str(model_dir)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    path = hub_snapshot(
        name,
        arg="model",
        allow_patterns=["config.json"],
        required=[["config.json"]],
        what=f"model={model!r} needs the config of its text tower {name!r}",
        usage="model=DIR after copying {dir}/config.json into the model directory DIR",
    )
    return str(path)


def _tokenizer_source(text_cfg: dict[str, Any], model_dir: Path | None, model: str) -> str:
    if model_dir is not None and any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        return str(model_dir)
    name = text_cfg["hf_tokenizer_name"]
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    path = hub_snapshot(
        name,
        arg="model",
        allow_patterns=["*.json", "*.txt", "*.model"],
        required=[list(_TOKENIZER_FILES)],
        what=f"model={model!r} needs its tokenizer {name!r}",
        usage="model=DIR after copying the tokenizer files of {dir} into the model directory DIR",
    )
    return str(path)


def _build_tokenizer(model_cfg: dict[str, Any], model_dir: Path | None, model: str):
    """OpenCLIP's tokenizer for ``model_cfg`` (as ``open_clip.get_tokenizer``), from local files only."""
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer

    text_cfg = model_cfg.get("text_cfg", {})
    ctx = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("hf_tokenizer_name"):
        source = _tokenizer_source(text_cfg, model_dir, model)
        try:
            return HFTokenizer(
                source, context_length=ctx, tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs
            )
        except (ImportError, OSError, ValueError) as e:
            raise HicaError(f"cannot load the tokenizer from {source}: {e}") from e
    return SimpleTokenizer(context_length=ctx, **kwargs)


class OpenClipEncoder(CLIPTemperature, DualEncoder):
    """An OpenCLIP model; ``logit_scale`` (and ``logit_bias`` for SigLIP) come from the checkpoint."""

    name = "open_clip"

    def __init__(
        self, model: str, pretrained: str | None = None, force_quick_gelu: bool | None = None
    ) -> None:
        super().__init__()
        import open_clip

        create_kw: dict[str, Any] = {}
        model_dir: Path | None = None
        hub = strip_prefix(model, HF_HUB_PREFIX)
        if hub is not None:
            model_dir = hub_snapshot(
                hub,
                arg="model",
                allow_patterns=_HUB_PATTERNS,
                required=[["open_clip_config.json"], ["*.safetensors", "*.bin", "*.pth"]],
                fallback_patterns=["open_clip_pytorch_model.bin"],
            )
            identity: dict[str, Any] = {"hub_id": hub, "revision": model_dir.name}
        else:
            model_dir = local_dir(model)
            identity = {"path": str(model_dir)} if model_dir is not None else {}
        if model_dir is not None:
            if pretrained:
                raise HicaError(
                    f"pretrained={pretrained!r} cannot be combined with model={model!r}: a model directory "
                    "or hf-hub: repository brings its own weights"
                )
            dir_cfg = _read_dir_config(model_dir, "model")
            model_cfg = dir_cfg["model_cfg"]
            if _dir_checkpoint(model_dir) is None:
                raise HicaError(
                    f"model: directory {model_dir} has no weights file (*.safetensors, *.bin, *.pth)"
                )
            identity["files"] = dir_fingerprint(model_dir)
            create_name = f"local-dir:{model_dir}"
            checkpoint = None
            tag_quick_gelu = False
        else:
            create_name, model_cfg, checkpoint, tag_cfg = self._resolve_builtin(model, pretrained)
            tag_quick_gelu = bool(tag_cfg.get("quick_gelu", False))
            if tag_cfg:
                create_kw["force_preprocess_cfg"] = {
                    k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
                }
                identity = {"model": create_name, "tag": pretrained, "weights": file_fingerprint(checkpoint)}
            else:
                identity = {"model": create_name, "weights": file_fingerprint(checkpoint)}
        quick_gelu = tag_quick_gelu if force_quick_gelu is None else bool(force_quick_gelu)
        text_cfg = dict(model_cfg.get("text_cfg", {}))
        if text_cfg.get("hf_model_name"):
            text_cfg["hf_model_name"] = _resolve_hf_text(text_cfg["hf_model_name"], model_dir, model)
            text_cfg["hf_model_pretrained"] = False  # the CLIP checkpoint holds the text weights
            create_kw["text_cfg"] = text_cfg
        if model_cfg.get("vision_cfg", {}).get("timm_model_name"):
            create_kw["pretrained_image"] = False
        try:
            self.model = open_clip.create_model(
                create_name, pretrained=checkpoint, force_quick_gelu=quick_gelu, **create_kw
            )
        except (RuntimeError, ValueError, KeyError, FileNotFoundError) as e:
            raise HicaError(
                f"cannot build OpenCLIP model {model!r} with weights {pretrained or model}: {e}"
            ) from e
        self.model.eval()
        self.tokenizer = _build_tokenizer(model_cfg, model_dir, model)
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self._pp_cfg = PreprocessCfg(**self.model.visual.preprocess_cfg)
        self._preprocess = Compose([RGBConvert(), image_transform_v2(self._pp_cfg, is_train=False)])
        self.embed_dim = int(model_cfg["embed_dim"])
        self.config = {**identity, "quick_gelu": quick_gelu or bool(model_cfg.get("quick_gelu", False))}

    @staticmethod
    def _resolve_builtin(model: str, pretrained: str | None):
        import open_clip

        if looks_like_path(model):
            raise HicaError(f"model: directory {model!r} not found")
        name = model.replace("/", "-")
        model_cfg = open_clip.get_model_config(name)
        if model_cfg is None:
            raise HicaError(
                f"model={model!r} is not an OpenCLIP architecture (see open_clip.list_models()), an "
                "'hf-hub:org/repo' id or a directory with open_clip_config.json"
            )
        if not pretrained:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise HicaError(
                f"model={model!r} needs pretrained=TAG or pretrained=/path/to/checkpoint"
                + (f" (tags: {', '.join(tags)})" if tags else "")
            )
        path = Path(pretrained).expanduser()
        if path.is_file():
            return name, model_cfg, str(path), {}
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise HicaError(
                f"pretrained={pretrained!r} is neither a checkpoint file nor a tag of {name} "
                f"(tags: {', '.join(tags) or 'none'})"
            )
        # 'org/repo/' means the default weights file, 'org/repo/file.pt' names one (as OpenCLIP).
        repo_id, _, filename = tag_cfg["hf_hub"].rpartition("/")
        filenames = _safe_alternatives(filename or "open_clip_pytorch_model.bin")
        checkpoint = hub_file(
            repo_id,
            filenames,
            arg="pretrained",
            what=f"model={model!r} pretrained={pretrained!r}",
            usage="model=/path/to/{dir} (without pretrained; the repository has open_clip_config.json)",
        )
        return name, model_cfg, str(checkpoint), tag_cfg

    @property
    def preprocess_config(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self._pp_cfg)))

    def image_parameters(self) -> list[nn.Parameter]:
        return list(self.model.visual.parameters())

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        visual = self.model.visual
        if isinstance(visual, VisionTransformer) and getattr(visual, "attn_pool_contrastive", None) is None:
            return _vit_features(visual, images)
        if isinstance(visual, ModifiedResNet):
            return _resnet_features(visual, images)
        if isinstance(visual, TimmModel):
            return _timm_features(visual, images)
        pooled = self.model.encode_image(images)
        return ImageFeatures(global_=pooled, local=pooled[:, None], grid=(1, 1))

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens)


def _vit_features(visual: nn.Module, images: torch.Tensor) -> ImageFeatures:
    x = visual.transformer(visual._embeds(images))
    pooled, _ = visual._pool(x)
    patches = x[:, 1:]
    if visual.attn_pool is not None:  # CoCa: the attentional pooler's value path, then ln_post
        tokens = visual.ln_post(mha_value_path(visual.attn_pool.attn, visual.attn_pool.ln_k(patches)))
    else:
        tokens = visual.ln_post(patches)
    if visual.proj is not None:
        pooled, tokens = pooled @ visual.proj, tokens @ visual.proj
    grid = (images.shape[-2] // visual.patch_size[0], images.shape[-1] // visual.patch_size[1])
    if tokens.shape[1] != grid[0] * grid[1]:
        raise RuntimeError(f"{tokens.shape[1]} patch tokens for a {grid} grid (patch dropout active?)")
    return ImageFeatures(global_=pooled, local=tokens, grid=grid)


def _resnet_features(visual: nn.Module, images: torch.Tensor) -> ImageFeatures:
    x = visual.stem(images.to(visual.conv1.weight.dtype))
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    pooled = pool(x)
    b, c, h, w = x.shape
    pos = pool.positional_embedding[1:]
    side = int(round(pos.shape[0] ** 0.5))
    if (side, side) != (h, w):
        pos = F.interpolate(
            pos.reshape(1, side, side, c).permute(0, 3, 1, 2),
            size=(h, w),
            mode="bicubic",
            align_corners=False,
        )
        pos = pos.permute(0, 2, 3, 1).reshape(h * w, c)
    cells = x.flatten(2).transpose(1, 2) + pos.to(x.dtype)
    tokens = pool.c_proj(pool.v_proj(cells))
    return ImageFeatures(global_=pooled, local=tokens, grid=(h, w))


def _timm_features(visual: nn.Module, images: torch.Tensor) -> ImageFeatures:
    trunk = visual.trunk
    feats = trunk.forward_features(images)
    pooled = visual.head(trunk.forward_head(feats))
    tokens, grid = timm_trunk_tokens(trunk, feats, tuple(images.shape[-2:]))
    for name, layer in visual.head.named_children():
        if name == "pool":
            tokens = attention_pool2d_value_path(layer, tokens, grid)
        elif name != "drop":
            tokens = layer(tokens)
    return ImageFeatures(global_=pooled, local=tokens, grid=grid)


@register("open_clip", params=OpenClipEncoder.__init__)
def create_open_clip(**kwargs: Any) -> OpenClipEncoder:
    """OpenCLIP: model=NAME with pretrained=TAG|FILE, model=hf-hub:ORG/REPO, or model=DIR."""
    return OpenClipEncoder(**kwargs)

"""Pieces shared by encoder backends: deterministic projection heads, image transforms, mean pooling."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def seeded_projection(in_dim: int, out_dim: int, seed: int) -> nn.Linear:
    """A bias-free linear head initialised (semi-)orthogonally from ``seed``: same seed, same head."""
    head = nn.Linear(in_dim, out_dim, bias=False)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(max(in_dim, out_dim), min(in_dim, out_dim), generator=gen)
    q, r = torch.linalg.qr(w)
    q = q * torch.sign(torch.diagonal(r))  # unique QR
    head.weight.data.copy_(q if out_dim >= in_dim else q.T)
    return head


class CLIPTemperature:
    """``logit_scale`` / ``logit_bias`` read from a wrapped CLIP-style ``self.model`` (open_clip, HF)."""

    model: nn.Module

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float | None:
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else float(bias.detach())


class RGBConvert:
    """PIL image (any mode) -> RGB PIL image."""

    def __call__(self, img: Any) -> Any:
        return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img

    def __repr__(self) -> str:
        return "RGBConvert()"


def image_transform(
    size: int, mean: tuple[float, ...], std: tuple[float, ...], interpolation: str = "bicubic"
):
    """Resize to ``size``×``size`` (no crop: lesions near the border stay in view), to tensor, normalise."""
    interp = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[interpolation]
    return T.Compose(
        [
            RGBConvert(),
            T.ToImage(),
            T.Resize((size, size), interpolation=interp, antialias=True),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens (sentence-transformers pooling)."""
    m = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def encode_sentences(tokenizer: Any, model: nn.Module, texts: list[str], max_length: int) -> torch.Tensor:
    """Tokenise ``texts`` and mean-pool an HF encoder's last hidden states (sentence-transformers style)."""
    device = next(model.parameters()).device
    tok = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(
        device
    )
    return mean_pool(model(**tok).last_hidden_state, tok["attention_mask"])


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identify a weights file by name, size and the hash of its first and last MiB."""
    p = Path(path)
    st = p.stat()
    h = hashlib.sha256()
    with p.open("rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (2 << 20):
            f.seek(-(1 << 20), 2)
            h.update(f.read(1 << 20))
    return {"file": p.name, "size": st.st_size, "sha256_head_tail": h.hexdigest()[:16]}

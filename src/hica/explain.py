"""Region–text similarity maps of a HiCA checkpoint: where each class's description matches the image.

For an image, the aligned encoder gives local tokens z_n on its grid (7×7 for EfficientNet-Lite0 at 224
px). A class's map is cos(z_n, t_c) with its class-text prototype t_c; the ROI of a class is the top 20% of
its map, and the attribute phrases whose embeddings are nearest the ROI-pooled embedding are listed as that
class's evidence. Maps are min–max scaled per image across classes (so class maps are comparable) and
upsampled bilinearly to the image. :func:`class_maps` gives the raw maps of a batch (used by
``hica.analysis.localization``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hica.errors import HicaError


@dataclass
class Explanation:
    """``maps`` (C, H, W) in [0, 1] at the model input size; ``probs`` (C,); ``phrases`` top phrases per
    class with their cosine; ``image`` (H, W, 3) uint8 as the model saw it (square resize)."""

    classes: list[str]
    probs: np.ndarray
    maps: np.ndarray
    phrases: list[list[tuple[str, float]]]
    image: np.ndarray

    @property
    def predicted(self) -> str:
        return self.classes[int(self.probs.argmax())]


def similarity_maps(local: torch.Tensor, grid: tuple[int, int], text_protos: torch.Tensor) -> torch.Tensor:
    """Raw region–text cosine maps (B, C, h, w) from local tokens (B, N, D) and class prototypes (C, D)."""
    tok = F.normalize(local.float(), dim=-1)
    t = F.normalize(text_protos.float(), dim=-1)
    h, w = grid
    return (tok @ t.T).transpose(1, 2).reshape(len(tok), len(t), h, w)


@torch.no_grad()
def class_maps(encoder, text_protos: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Raw region–text cosine maps (B, C, h, w) of preprocessed images ``x`` on the encoder's token grid."""
    feats = encoder.encode_image(x)
    return similarity_maps(feats.local, feats.grid, text_protos.to(feats.local.device))


def upsample_maps(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (B, h, w) or (B, C, h, w) grid maps to ``size`` (half-pixel centres)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x = maps.float()
    if x.dim() == 3:
        return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def explain_image(
    predictor, image_path: str | Path, descriptors: str | None = None, top: int = 3
) -> Explanation:
    """Explain one image with a loaded :class:`hica.predict.Predictor`."""
    from hica.data.descriptors import load_descriptors
    from hica.data.sample import Sample, load_image
    from hica.runtime import autocast

    path = Path(image_path)
    if not path.is_file():
        raise HicaError(f"image {path} not found")
    name = descriptors or predictor.meta.get("descriptors")
    if not name:
        raise HicaError("the checkpoint does not name its descriptor file; pass --descriptors")
    desc = load_descriptors(name)
    pil = load_image(Sample(id=str(path), label=-1, path=path))
    x = predictor.encoder.preprocess(pil)[None].to(predictor.device)
    with autocast(predictor.device, predictor.precision):
        feats = predictor.encoder.encode_image(x)
    tok = F.normalize(feats.local.float()[0], dim=-1)  # (N, D)
    t = predictor.text_protos.float()
    probs = predictor.probs_of(x)[0].numpy()  # as `hica predict` (with the checkpoint's TTA)
    h, w = feats.grid
    maps = similarity_maps(feats.local[:1], feats.grid, t)[0]  # (C, h, w)
    lo, hi = maps.min(), maps.max()
    maps = (maps - lo) / (hi - lo).clamp_min(1e-8)
    up = upsample_maps(maps[None], tuple(x.shape[-2:]))[0].clamp(0, 1)
    phrases = []
    for c, cls in enumerate(predictor.classes):
        raw = (
            list(dict.fromkeys(p for ps in desc.attributes(cls).values() for p in ps))
            if cls in desc.classes
            else []
        )
        texts = [desc.render(p) for p in raw]
        if not texts:
            phrases.append([])
            continue
        k = max(1, int(0.2 * h * w))
        idx = maps[c].flatten().topk(k).indices
        roi = F.normalize(tok[idx].mean(0), dim=-1)
        emb = F.normalize(predictor.encoder.encode_text(texts).float(), dim=-1)
        s = emb @ roi
        order = s.argsort(descending=True)[:top].tolist()
        phrases.append([(raw[i], float(s[i])) for i in order])
    mean = torch.tensor(predictor.encoder.preprocess_config.get("mean", (0.5,) * 3)).view(3, 1, 1)
    std = torch.tensor(predictor.encoder.preprocess_config.get("std", (0.5,) * 3)).view(3, 1, 1)
    img = ((x[0].cpu().float() * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
    return Explanation(list(predictor.classes), probs, up.cpu().numpy(), phrases, img)


def plot_explanation(ex: Explanation, out: str | Path, title: str = "") -> Path:
    """Write a PNG: the image with the prediction, then one heatmap overlay per class with its phrases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hica.io import atomic_write

    n = len(ex.classes)
    fig, axes = plt.subplots(1, n + 1, figsize=(3.4 * (n + 1), 4.6), dpi=150)
    axes[0].imshow(ex.image)
    axes[0].set_title(
        f"predicted: {ex.predicted}\n"
        + ", ".join(f"{c} {p:.2f}" for c, p in zip(ex.classes, ex.probs, strict=True)),
        fontsize=8,
    )
    for c, ax in enumerate(axes[1:]):
        ax.imshow(ex.image)
        im = ax.imshow(ex.maps[c], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{ex.classes[c]} (p = {ex.probs[c]:.2f})", fontsize=9)
        text = "\n".join(f"{s:+.2f} {p[:44]}" for p, s in ex.phrases[c])
        ax.text(0.0, -0.04, text, transform=ax.transAxes, fontsize=5.5, va="top", family="monospace")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    cbar = fig.colorbar(im, ax=axes[1:].tolist(), fraction=0.02, pad=0.03)
    cbar.set_label("region–class-text similarity (scaled per image)", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    out = Path(out)
    atomic_write(out, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))
    plt.close(fig)
    return out

"""Test-time augmentation (TTA): a few deterministic views of each image, their embeddings averaged.

No flips, for the reasons of :mod:`hica.model.augment` (a mirrored chest X-ray shows dextrocardia; breast
ultrasound carries the probe orientation). ``crops``: the whole image and five square crops keeping
``CROP_SIDE`` of each side (centre and the four corners), each resized back to the input side; the image's
embedding is the mean of the six L2-normalised view embeddings, normalised again. Everything downstream
(class prototypes, α search, prediction, exported checkpoints) then sees one embedding per image.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from hica.errors import HicaError
from hica.runtime import embed_images

TTA = Literal["none", "crops"]
TTA_KINDS: tuple[str, ...] = get_args(TTA)
CROP_SIDE = 0.875


def check_tta(kind: Any, where: str = "test-time augmentation") -> str:
    """``kind`` if it names a TTA kind, else a :class:`HicaError` naming ``where`` it came from."""
    if kind not in TTA_KINDS:
        raise HicaError(f"{where} must be one of {', '.join(TTA_KINDS)}, got {kind!r}")
    return kind


def tta_views(images: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """(N, C, H, W) preprocessed images → the views of TTA ``kind``, each (N, C, H, W)."""
    if check_tta(kind) == "none":
        return [images]
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * CROP_SIDE)), max(1, round(w * CROP_SIDE))
    corners = [((h - ch) // 2, (w - cw) // 2), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]
    out = [images]
    for t, lft in corners:  # centre, then the four corners
        crop = images[..., t : t + ch, lft : lft + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=False))
    return out


def embed_with_tta(
    encoder: Any,
    images: torch.Tensor,
    device: torch.device,
    precision: str,
    kind: str = "none",
    batch_size: int = 64,
) -> torch.Tensor:
    """(N, 3, H, W) preprocessed images → (N, D) L2-normalised embeddings, averaged over TTA ``kind``'s
    views (``none``: the plain embedding, :func:`hica.runtime.embed_images`)."""
    if check_tta(kind) == "none":
        return embed_images(encoder, images, device, precision, batch_size)
    out = []
    for i in range(0, len(images), batch_size):  # views per batch: memory stays one batch × views
        views = tta_views(images[i : i + batch_size].to(device), kind)  # crops on the device
        out.append(
            F.normalize(sum(embed_images(encoder, v, device, precision, batch_size) for v in views), dim=-1)
        )
    return torch.cat(out)

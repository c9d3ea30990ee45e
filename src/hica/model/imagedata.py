"""Images (and lesion masks) held in memory for HiCA training, plus the encoder's input geometry.

Training augments the image before normalisation, so it needs the encoder's input ``size`` / ``mean`` /
``std`` (:func:`input_spec`) rather than its PIL ``preprocess``. Images are stored once as uint8 (N, 3, S, S)
after the same square resize the default preprocessing does (no crop); masks are resized with nearest
neighbour into the same geometry, so a mask cell lines up with its image pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from hica.data.sample import Sample, load_image, load_mask
from hica.errors import HicaError


@dataclass(frozen=True)
class InputSpec:
    """The encoder's input: square ``size`` and normalisation ``mean`` / ``std`` (per RGB channel)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] float (…, 3, H, W) → normalised."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std


def input_spec(encoder: object) -> InputSpec:
    """Read size / mean / std from ``encoder.preprocess_config``; HicaError if the backend does not say."""
    cfg = getattr(encoder, "preprocess_config", {}) or {}
    size = cfg.get("crop_size") or cfg.get("size")
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise HicaError(f"HiCA training needs a square encoder input, got size {size}")
        size = size[0]
    mean, std = cfg.get("mean"), cfg.get("std")
    if not size or mean is None or std is None:
        raise HicaError(
            f"encoder {getattr(encoder, 'name', '?')!r} does not describe its input (size, mean, std in "
            "preprocess_config); HiCA training needs them to augment images before normalisation"
        )
    return InputSpec(int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]


@dataclass
class ImageStore:
    """``images`` uint8 (N, 3, S, S); ``masks`` bool (N, S, S) or None; ``has_mask`` (N,) bool (the sample
    had at least one mask file); ``ids`` and ``labels`` (labels are carried, never read by stage 1)."""

    ids: list[str]
    labels: torch.Tensor
    images: torch.Tensor
    masks: torch.Tensor | None
    has_mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def float_images(self, idx: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """[0, 1] float images for ``idx``."""
        return self.images[torch.as_tensor(idx, dtype=torch.long)].float().div_(255)


def load_store(
    samples: Sequence[Sample],
    size: int,
    with_masks: bool = False,
    skip_bad: bool = False,
    progress: bool = False,
    desc: str = "images",
) -> ImageStore:
    """Decode ``samples`` into an :class:`ImageStore` at ``size``×``size`` (bicubic; masks nearest)."""
    resize = T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    imgs, masks, has, ids, labels = [], [], [], [], []
    for s in tqdm(samples, desc=desc, disable=not progress, unit="img"):
        try:
            pil = load_image(s)
            mask = load_mask(s, pil.size) if with_masks else None
        except HicaError:
            if skip_bad:
                continue
            raise
        x = T.functional.pil_to_tensor(pil.convert("RGB"))
        imgs.append(resize(x))
        if with_masks:
            m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
            masks.append(F.interpolate(m, size=(size, size), mode="nearest")[0, 0] > 0.5)
            has.append(bool(s.masks))
        else:
            has.append(False)
        ids.append(s.id)
        labels.append(s.label)
    if not imgs:
        raise HicaError("no readable images to train on")
    return ImageStore(
        ids=ids,
        labels=torch.tensor(labels),
        images=torch.stack(imgs),
        masks=torch.stack(masks) if with_masks else None,
        has_mask=torch.tensor(has),
    )

"""Modality-aware training augmentations, applied to an image and (optionally) its lesion mask together.

No flips for either modality: a mirrored chest X-ray puts the heart on the wrong side (dextrocardia), and
breast ultrasound images carry the probe orientation. Geometry is mild (a crop keeping ≥ ``min_scale`` of
the area, near-square; rotation ≤ 10°) so lesions stay in view. Photometric changes follow the modality:
exposure/contrast and gamma for radiographs; gain (brightness), contrast and multiplicative speckle for
ultrasound. Geometric ops act on the mask with nearest-neighbour sampling, photometric ops never touch it.
The RNG is torch's global generator, so a seeded (and checkpoint-restored) run draws the same augmentations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from hica.errors import HicaError
from hica.model.imagedata import InputSpec

Modality = Literal["xray", "ultrasound", "generic"]
MODALITIES = ("xray", "ultrasound", "generic")


def _like(out: torch.Tensor, inpt: torch.Tensor) -> torch.Tensor:
    return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class Speckle(T.Transform):
    """Multiplicative speckle noise on a [0, 1] float image: x·(1 + σ·n), n ~ N(0, 1), σ ~ U(0, ``sigma``).

    Ultrasound speckle is multiplicative (fully developed speckle has Rayleigh amplitude; a Gaussian
    multiplicative term is the usual augmentation stand-in). Masks pass through unchanged."""

    def __init__(self, sigma: float = 0.15, p: float = 0.5) -> None:
        super().__init__()
        self.sigma, self.p = sigma, p

    def make_params(self, flat_inputs: list) -> dict:  # noqa: D102
        on = bool(torch.rand(()) < self.p)
        return {"sigma": float(torch.rand(())) * self.sigma if on else 0.0}

    def transform(self, inpt, params):  # noqa: D102
        if params["sigma"] == 0.0 or isinstance(inpt, tv_tensors.Mask) or not isinstance(inpt, torch.Tensor):
            return inpt
        noise = 1 + params["sigma"] * torch.randn_like(inpt[..., :1, :, :])  # one field for all channels
        return _like((inpt * noise).clamp(0, 1), inpt)


class RandomGamma(T.Transform):
    """Gamma in [1/``max_gamma``, ``max_gamma``] (log-uniform) on a [0, 1] float image (exposure curves)."""

    def __init__(self, max_gamma: float = 1.4, p: float = 0.5) -> None:
        super().__init__()
        self.max_gamma, self.p = max_gamma, p

    def make_params(self, flat_inputs: list) -> dict:  # noqa: D102
        on = bool(torch.rand(()) < self.p)
        g = float(torch.empty(()).uniform_(-1, 1)) * torch.log(torch.tensor(self.max_gamma)).item()
        return {"gamma": float(torch.tensor(g).exp()) if on else 1.0}

    def transform(self, inpt, params):  # noqa: D102
        if params["gamma"] == 1.0 or isinstance(inpt, tv_tensors.Mask) or not isinstance(inpt, torch.Tensor):
            return inpt
        return _like(inpt.clamp(0, 1) ** params["gamma"], inpt)


class LesionCrop(T.Transform):
    """With probability ``p``, a square crop centred on the lesion of the image's mask (its bounding box's
    longer side × U(``context``), at least ``min_side`` of the image's shorter side, centre jittered by ±10%
    of the crop), resized to ``size``; otherwise, and for an image without a mask or with an empty one, the
    usual random resized crop. Image and mask are cropped alike (the mask with nearest-neighbour sampling)."""

    def __init__(
        self,
        size: int,
        p: float,
        min_scale: float = 0.6,
        context: tuple[float, float] = (1.5, 2.5),
        min_side: float = 0.4,
    ) -> None:
        super().__init__()
        self.size, self.p, self.context, self.min_side = size, p, context, min_side
        self.fallback = T.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(0.85, 1.18), antialias=True)

    def make_params(self, flat_inputs: list) -> dict:  # noqa: D102
        params = self.fallback.make_params(flat_inputs)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if mask is None or not bool((mask > 0.5).any()):
            return params  # no draw: an image without a lesion is augmented as with lesion_crop 0
        if not bool(torch.rand(()) < self.p):
            return params
        h, w = mask.shape[-2:]
        ys, xs = torch.nonzero(mask.reshape(h, w) > 0.5, as_tuple=True)
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        grow = float(torch.empty(()).uniform_(*self.context))
        side = min(min(h, w), max(round(max(y1 - y0, x1 - x0) * grow), round(self.min_side * min(h, w))))
        jitter = (0.1 * side * (2 * torch.rand(2) - 1)).tolist()
        top = min(max(round((y0 + y1) / 2 + jitter[0] - side / 2), 0), h - side)
        left = min(max(round((x0 + x1) / 2 + jitter[1] - side / 2), 0), w - side)
        return {"top": top, "left": left, "height": side, "width": side}

    def transform(self, inpt, params):  # noqa: D102
        return self._call_kernel(TF.resized_crop, inpt, **params, size=[self.size, self.size], antialias=True)


def training_augment(
    modality: Modality, size: int, min_scale: float = 0.6, strength: float = 1.0, lesion_crop: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]:
    """``aug(image, mask)``: ``image`` (C, H, W) float in [0, 1] (before normalisation), ``mask`` (H, W)
    bool/float or None → (image (C, size, size), mask (size, size) float or None). ``lesion_crop``: the
    probability of a lesion-centred crop (:class:`LesionCrop`) for an image with a lesion mask."""
    if modality not in MODALITIES:
        raise HicaError(f"augmentation modality must be one of {MODALITIES}, got {modality!r}")
    if not (0 < min_scale <= 1):
        raise HicaError(f"min_scale must be in (0, 1], got {min_scale!r}")
    if not (0 <= lesion_crop <= 1):
        raise HicaError(f"lesion_crop must be a probability in [0, 1], got {lesion_crop!r}")
    s = float(strength)
    crop = T.RandomResizedCrop(size, scale=(min_scale, 1.0), ratio=(0.85, 1.18), antialias=True)
    if lesion_crop > 0:
        crop = LesionCrop(size, lesion_crop, min_scale)
    geo = [crop, T.RandomApply([T.RandomRotation(10)], p=0.5)]
    if modality == "xray":
        photo = [
            T.ColorJitter(brightness=0.3 * s, contrast=0.3 * s),
            RandomGamma(1 + 0.4 * s),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.2))], p=0.3),
        ]
    elif modality == "ultrasound":
        photo = [
            T.ColorJitter(brightness=0.3 * s, contrast=0.4 * s),
            Speckle(0.2 * s),
            T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.0))], p=0.3),
        ]
    else:
        photo = [T.ColorJitter(brightness=0.3 * s, contrast=0.3 * s)]
    pipeline = T.Compose(geo + photo)

    def aug(
        image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        img = tv_tensors.Image(image)
        if mask is None:
            return pipeline(img).as_subclass(torch.Tensor), None
        if mask.shape[-2:] != image.shape[-2:]:
            raise HicaError(
                f"mask of shape {tuple(mask.shape[-2:])} does not match its image {tuple(image.shape[-2:])}"
            )
        out, m = pipeline(img, tv_tensors.Mask(mask.to(torch.float32)))
        return out.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor)

    return aug


def augmented_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor | None,
    aug: Callable[..., tuple[torch.Tensor, torch.Tensor | None]],
    spec: InputSpec,
    batch_size: int,
    seed: int,
    attr_targets: torch.Tensor | None = None,
) -> Callable[[int, int, int], Iterator[dict[str, torch.Tensor]]]:
    """The engine's data factory: each epoch, a seeded permutation of the [0, 1] ``images`` in batches of
    augmented, normalised images (``images``, ``labels``, and ``masks`` augmented alongside when given;
    ``attr_targets`` (N, G) rows of the batch's images when given)."""
    n = len(images)

    def factory(epoch: int, rank: int, world: int) -> Iterator[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 7919 + epoch)
        order = torch.randperm(n, generator=g)[rank::world]
        for b in range(max(1, len(order) // batch_size)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            xs, ms = [], []
            for i in idx.tolist():
                x, m = aug(images[i], masks[i] if masks is not None else None)
                xs.append(spec.normalize(x))
                ms.append(m)
            batch = {"images": torch.stack(xs), "labels": labels[idx]}
            if masks is not None:
                batch["masks"] = torch.stack(ms)
            if attr_targets is not None:
                batch["attr_targets"] = attr_targets[idx]
            yield batch

    return factory


def modality_of(text: str) -> str:
    """Augmentation family from a descriptor file's free-text ``modality``."""
    t = text.lower()
    if "ultrasound" in t or "sonograph" in t:
        return "ultrasound"
    if "x-ray" in t or "xray" in t or "radiograph" in t:
        return "xray"
    return "generic"

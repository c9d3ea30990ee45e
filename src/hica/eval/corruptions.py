"""Seeded image corruptions at severities 1-5, for robustness evaluation.

Each corruption takes a PIL image of any mode and returns one of the same size and mode (grayscale stays
grayscale, an alpha channel passes through untouched). The severity parameters follow ImageNet-C
(Hendrycks & Dietterich, ICLR 2019) as packaged in ``imagecorruptions``; see :data:`SEVERITY_PARAMS`.
ImageNet-C applies them to 224x224 images, and the pixel-based ones (noise, blur, JPEG) act per pixel, so
corrupt images at the encoder's input size for severities comparable to the paper's.

Pixel values are handled as floats in [0, 1]: 8-bit modes are divided by 255, ``I;16*`` and ``I`` by
65535 (``I`` only when its values lie in 0..65535), ``F`` by 1 or 255 when its values lie in that range;
any other range is mapped from the image's own minimum and maximum. Other modes (``1``, ``P``, ``CMYK``…)
are corrupted as ``L``/``RGB``/``RGBA`` and converted back (``P`` is quantised to its own palette).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from hica.errors import HicaError

__all__ = ["CORRUPTIONS", "SEVERITIES", "SEVERITY_PARAMS", "corrupt", "corruption_names"]

Corruption = Callable[[Image.Image, int, np.random.Generator], Image.Image]
ArrayOp = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

SEVERITIES = (1, 2, 3, 4, 5)

# Severity 1..5 -> parameter. Source: Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to
# Common Corruptions and Perturbations", ICLR 2019 (ImageNet-C), values as in the `imagecorruptions`
# package (github.com/bethgelab/imagecorruptions, imagecorruptions/corruptions.py).
#   gaussian_noise: std of additive N(0, s^2) noise on [0, 1] pixels
#   speckle_noise:  std of multiplicative noise, x + x * N(0, s^2)
#   gaussian_blur:  Gaussian sigma in pixels
#   contrast:       factor c in (x - mean) * c + mean
#   brightness:     amount added to the HSV value channel (to the pixel for grayscale)
#   jpeg:           JPEG quality (ImageNet-C's jpeg_compression)
#   resolution:     NOT from ImageNet-C: downsample factor for "resolution loss" (area-average down,
#                   bilinear up). ImageNet-C's nearest-neighbour `pixelate` keeps 0.6, 0.5, 0.4, 0.3, 0.25
#                   of the side (factors 1.7-4); these reach 8 to cover low-resolution scanners.
SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
    "speckle_noise": (0.15, 0.20, 0.35, 0.45, 0.60),
    "gaussian_blur": (1, 2, 3, 4, 6),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg": (25, 18, 15, 10, 7),
    "resolution": (2, 3, 4, 6, 8),
}


def _param(name: str, severity: int) -> float:
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise HicaError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")
    return SEVERITY_PARAMS[name][int(severity) - 1]


# --- array <-> image -------------------------------------------------------------------------------------


def _numeric_range(a: np.ndarray, mode: str) -> tuple[float, float]:
    """The value range mapped to [0, 1] for a single-channel image of mode ``I;16*``, ``I`` or ``F``."""
    if mode.startswith("I;16"):
        return 0.0, 65535.0
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 1.0)
    candidates = [(0.0, 65535.0)] if mode == "I" else [(0.0, 1.0), (0.0, 255.0)]
    for r in candidates:
        if r[0] <= lo and hi <= r[1]:
            return r
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _apply_array(image: Image.Image, op: ArrayOp, severity: int, rng: np.random.Generator) -> Image.Image:
    """Run ``op`` on ``image`` as an (H, W, C) float array in [0, 1]; return an image of the same mode."""
    mode = image.mode
    if mode in ("L", "RGB"):
        x = np.asarray(image, dtype=np.float64) / 255.0
        y = op(x.reshape(*x.shape[:2], -1), severity, rng)
        out = np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(out[..., 0] if mode == "L" else out, mode=mode)
    if mode in ("LA", "RGBA"):
        base = _apply_array(image.convert(mode[:-1]), op, severity, rng)
        return Image.merge(mode, [*base.split(), image.getchannel("A")])
    if mode in ("I", "F") or mode.startswith("I;16"):
        a = np.asarray(image)
        lo, hi = _numeric_range(a, mode)
        x = (a.astype(np.float64) - lo) / (hi - lo)
        y = np.clip(op(x[..., None], severity, rng)[..., 0], 0.0, 1.0) * (hi - lo) + lo
        if a.dtype.kind in "iu":
            y = np.rint(y)
        out = Image.fromarray(y.astype(a.dtype))
        return out if out.mode == mode else out.convert(mode)
    # Other modes: corrupt a standard conversion, then convert back.
    work = "L" if mode == "1" else "RGBA" if mode in ("PA", "La", "RGBa") else "RGB"
    done = _apply_array(image.convert(work), op, severity, rng)
    try:
        if mode == "P":
            return done.quantize(palette=image, dither=Image.Dither.NONE)
        return done.convert(mode)
    except (ValueError, OSError) as e:
        raise HicaError(f"cannot corrupt an image of mode {mode!r}: {e}; convert it to RGB or L first") from e


def _image_op(name: str, op: ArrayOp) -> Corruption:
    def corruption(image: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
        _param(name, severity)  # validate before touching the image
        return _apply_array(image, op, severity, rng)

    corruption.__name__ = name
    corruption.__doc__ = f"{name} at ``severity`` 1-5 (parameters: ``SEVERITY_PARAMS[{name!r}]``)."
    return corruption


# --- the corruptions, on (H, W, C) float arrays in [0, 1] -------------------------------------------------


def _gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return x + rng.standard_normal(x.shape) * _param("gaussian_noise", severity)


def _speckle_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.standard_normal(x.shape) * _param("speckle_noise", severity)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(4.0 * sigma + 0.5))  # truncated at 4 sigma, as scikit-image does
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _convolve_axis(x: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """1-D convolution along ``axis`` with edge-replicated borders (output has the input's shape)."""
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="edge")
    n = x.shape[axis]
    out = np.zeros_like(x)
    index: list[slice] = [slice(None)] * x.ndim
    for i, w in enumerate(kernel):
        index[axis] = slice(i, i + n)
        out += w * xp[tuple(index)]
    return out


def _gaussian_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    k = _gaussian_kernel(_param("gaussian_blur", severity))
    return _convolve_axis(_convolve_axis(x, k, 0), k, 1)


def _contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * _param("contrast", severity) + mean


def _brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Raise the HSV value V = max over channels by c, keeping hue and saturation (plain + c for one channel).

    With hue and saturation fixed every channel is proportional to V, so scaling by V'/V is the HSV round
    trip; black pixels (V = 0, saturation 0) become gray V'.
    """
    v = x.max(axis=2, keepdims=True)
    v_new = np.clip(v + _param("brightness", severity), 0.0, 1.0)
    scale = np.divide(v_new, v, out=np.zeros_like(v), where=v > 0)
    return np.where(v > 0, x * scale, v_new)


def _to_uint8_image(x: np.ndarray) -> Image.Image:
    a = np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(a[..., 0], mode="L") if a.shape[2] == 1 else Image.fromarray(a, mode="RGB")


def _from_image(image: Image.Image, channels: int) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64) / 255.0
    return a.reshape(*a.shape[:2], channels)


def _jpeg(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    _to_uint8_image(x).save(buf, format="JPEG", quality=int(_param("jpeg", severity)))
    buf.seek(0)
    with Image.open(buf) as im:
        return _from_image(im.convert("L" if x.shape[2] == 1 else "RGB"), x.shape[2])


def _resolution(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    factor = _param("resolution", severity)
    h, w = x.shape[:2]
    small = (max(1, math.floor(w / factor + 0.5)), max(1, math.floor(h / factor + 0.5)))
    out = np.empty_like(x)
    for c in range(x.shape[2]):
        band = Image.fromarray(x[..., c].astype(np.float32), mode="F")
        band = band.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BILINEAR)
        out[..., c] = np.asarray(band, dtype=np.float64)
    return out


_OPS: dict[str, ArrayOp] = {
    "gaussian_noise": _gaussian_noise,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
    "resolution": _resolution,
}

CORRUPTIONS: dict[str, Corruption] = {name: _image_op(name, op) for name, op in _OPS.items()}


def corruption_names() -> list[str]:
    """Names of the available corruptions, in table order."""
    return list(CORRUPTIONS)


def corrupt(image: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    """``image`` corrupted by ``name`` at ``severity`` 1-5; the same ``seed`` gives the same result."""
    if name not in CORRUPTIONS:
        raise HicaError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")
    _param(name, severity)
    return CORRUPTIONS[name](image, severity, np.random.default_rng(seed))

"""Map-vs-mask localization metrics: pointing game, top-k IoU, energy in mask, and their chance levels.

Every metric scores one 2-D heatmap against one non-empty boolean lesion mask of the same size (NumPy arrays
or torch tensors). The chance levels are those of a map that carries no information: a uniformly random
point (pointing game), randomly chosen pixels (top-k IoU), a uniform map (energy in mask). The names of the
maps the localization analysis scores (:data:`MAPS`) and which model each explains (:data:`MODEL_OF`) live
here too, so the analysis and its report share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: Map name → what it is. ``hica_*`` explain the HiCA model, ``finetune_gradcam`` the fine-tuned baseline.
MAPS: dict[str, str] = {
    "hica_map": "HiCA region–text map",
    "hica_gradcam": "Grad-CAM of HiCA",
    "finetune_gradcam": "Grad-CAM of fine-tuned baseline",
    "center_prior": "Center prior (Gaussian)",
}
#: Map name → the model it explains (None: the center prior explains no model).
MODEL_OF: dict[str, str | None] = {
    "hica_map": "hica",
    "hica_gradcam": "hica",
    "finetune_gradcam": "finetune",
    "center_prior": None,
}


def _np_map(heatmap: Any) -> np.ndarray:
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    return np.asarray(heatmap, dtype=np.float64)


def _pair(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    h = _np_map(heatmap)
    m = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool)
    if h.ndim != 2 or h.shape != m.shape:
        raise ValueError(f"heatmap {h.shape} and mask {m.shape} must be 2-D arrays of the same size")
    if not m.any():
        raise ValueError("empty lesion mask: localization is undefined (exclude the image and count it)")
    return h, m


def is_degenerate(heatmap: Any) -> bool:
    """True for a constant (e.g. all-zero Grad-CAM) or non-finite map: it points nowhere."""
    h = _np_map(heatmap)
    if not np.isfinite(h).all():
        return True
    hi, lo = float(h.max()), float(h.min())
    return hi - lo <= 1e-12 * max(1.0, abs(hi))


def max_point(heatmap: Any) -> tuple[int, int] | None:
    """(row, col) of the map's maximum; pixels tied at the maximum (a bilinear plateau) give their rounded
    centroid; None for a degenerate map."""
    h = _np_map(heatmap)
    if is_degenerate(h):
        return None
    hi, lo = h.max(), h.min()
    rows, cols = np.nonzero(h >= hi - 1e-6 * (hi - lo))
    return int(np.rint(rows.mean())), int(np.rint(cols.mean()))


def pointing_game(heatmap: Any, mask: Any, tolerance: float = 15.0) -> bool:
    """Pointing game (Zhang et al. 2016): a hit if the map's maximum lies within ``tolerance`` pixels
    (Euclidean, to the nearest mask pixel) of the mask. The paper's 15 px tolerance makes the game fair to
    coarse maps (a 7×7 grid at 224 px has 32 px cells); ``tolerance=0`` asks for the maximum inside the mask.
    A degenerate (constant) map is a miss."""
    h, m = _pair(heatmap, mask)
    p = max_point(h)
    if p is None:
        return False
    rows, cols = np.nonzero(m)
    d2 = (rows - p[0]) ** 2 + (cols - p[1]) ** 2
    return bool(d2.min() <= tolerance**2)


def topk_iou(heatmap: Any, mask: Any, fraction: float) -> float:
    """IoU with the mask of the top ``fraction`` of pixels by map value (``round(fraction·H·W)``, ≥ 1;
    ties broken in row-major order)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    h, m = _pair(heatmap, mask)
    k = max(1, int(round(fraction * h.size)))
    top = np.zeros(h.size, dtype=bool)
    top[np.argsort(-h.ravel(), kind="stable")[:k]] = True
    flat = m.ravel()
    return float((top & flat).sum() / (top | flat).sum())


def energy_in_mask(heatmap: Any, mask: Any) -> float:
    """Share of the min–max-normalised map's mass inside the mask; a uniform (constant) map scores the
    mask's area fraction, the chance level."""
    h, m = _pair(heatmap, mask)
    if is_degenerate(h):
        return float(m.mean())
    n = (h - h.min()) / (h.max() - h.min())
    return float(n[m].sum() / n.sum())


def pointing_chance(mask: Any, tolerance: float = 15.0) -> float:
    """Hit probability of a uniformly random point: the area fraction within ``tolerance`` px of the mask."""
    from scipy.ndimage import distance_transform_edt

    m = np.asarray(mask).astype(bool)
    if not m.any():
        raise ValueError("empty lesion mask")
    return float((distance_transform_edt(~m) <= tolerance).mean())


def topk_iou_chance(area_fraction: float, fraction: float) -> float:
    """Expected top-k IoU of randomly chosen pixels (fraction ``f``) with a mask of area fraction ``a``:
    ``f·a / (f + a − f·a)`` (ratio of expectations)."""
    f, a = fraction, area_fraction
    return f * a / (f + a - f * a)


def center_prior(size: int, sigma: float = 0.25) -> np.ndarray:
    """A centred isotropic Gaussian (``size``×``size``), σ = ``sigma`` × ``size`` pixels."""
    c = (size - 1) / 2
    r = np.arange(size, dtype=np.float64) - c
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    return np.exp(-d2 / (2 * (sigma * size) ** 2))


def iou_name(fraction: float) -> str:
    """Metric key of top-``fraction`` IoU, e.g. 0.05 → ``iou_top5``."""
    return f"iou_top{100 * fraction:g}"


def metric_names(top_fractions: Sequence[float]) -> list[str]:
    """Metric keys in table order: pointing game, energy in mask, then one top-k IoU per fraction."""
    return ["pointing_game", "energy_in_mask", *[iou_name(f) for f in top_fractions]]


def image_metrics(
    heatmap: Any, mask: Any, tolerance: float = 15.0, fractions: Sequence[float] = (0.1,)
) -> dict[str, float]:
    """All metrics of one map on one (non-empty) mask."""
    out = {
        "pointing_game": float(pointing_game(heatmap, mask, tolerance)),
        "energy_in_mask": energy_in_mask(heatmap, mask),
    }
    for f in fractions:
        out[iou_name(f)] = topk_iou(heatmap, mask, f)
    return out

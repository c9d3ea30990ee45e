"""Measurements of one lesion from its mask and the image's pixels (no thresholds, no labels).

The raw numbers behind :mod:`hica.data.attributes`; every formula is in ``docs/attributes.md``. Morphology
uses exact Euclidean discs through distance transforms, so results do not depend on a structuring-element
approximation and are deterministic. Rows grow downwards: row 0 is the skin line (the probe) in BUSI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure, morphology

GAP = 2  # px between a lesion and the tissue it is compared with (the drawn outline is never exact)
SMOOTH = 2.0  # Gaussian sigma (px) against speckle, for gradients
COMPONENT_SCALE = 0.05  # Gaussian sigma / lesion diameter for cystic vs solid components (speckle averaged)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 8-connected component of ``mask`` with its holes filled, and the number of components."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool), 0
    areas = np.bincount(labels.ravel())[1:]
    largest = labels == int(np.argmax(areas)) + 1  # argmax: the first of equal areas, deterministic
    return ndimage.binary_fill_holes(largest), int(n)


def _dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within ``radius`` (Euclidean) of ``mask``."""
    if not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= radius


def _erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels farther than ``radius`` from everything outside ``mask`` (the array's edge is outside)."""
    padded = np.pad(mask, 1)
    return (ndimage.distance_transform_edt(padded) > radius)[1:-1, 1:-1]


def _crop(mask: np.ndarray, pad: int) -> np.ndarray:
    """``mask`` cut to its bounding box with ``pad`` empty pixels around it."""
    rows, cols = np.nonzero(mask)
    return np.pad(mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1], pad)


def longest_diameter(lesion: np.ndarray) -> float:
    """The largest Feret diameter (px) of a lesion mask."""
    return float(measure.regionprops(_crop(lesion, 1).astype(np.uint8))[0].feret_diameter_max)


def geometry(lesion: np.ndarray, spicule_scale: float) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Shape measurements of a filled lesion mask.

    Returns ``(scalars, concavities, projection_lengths)``: concavities (components of the hull deficiency)
    as rows ``(depth, width)`` in units of the equivalent diameter D (depth: deepest point to the hull's
    edge; width: longest Feret diameter, ~ the hull chord), and lengths of the projections that an opening
    with a disc of radius ``rho = spicule_scale * D`` cuts off, in units of ``rho``.
    """
    area = float(lesion.sum())
    d = math.sqrt(4.0 * area / math.pi)
    rho = max(2.0, spicule_scale * d)
    m = _crop(lesion, int(math.ceil(2 * rho)) + 2)
    rows, cols = np.nonzero(m)
    height = float(rows.max() - rows.min() + 1)
    width = float(cols.max() - cols.min() + 1)
    hull = morphology.convex_hull_image(m)
    perim = float(measure.perimeter(m))
    hull_perim = float(measure.perimeter(hull))
    # second-moment ellipse: {p : (p - mu)^T S^-1 (p - mu) <= 4} has the lesion's area, centre and moments
    pts = np.stack([rows, cols], axis=1).astype(np.float64)
    mu = pts.mean(axis=0)
    cov = np.cov(pts, rowvar=False, bias=True) + np.eye(2) / 12.0  # + pixel extent, as in regionprops
    evals = np.linalg.eigvalsh(cov)
    yy, xx = np.indices(m.shape, dtype=np.float64)
    q = np.stack([yy - mu[0], xx - mu[1]], axis=-1)
    maha = np.einsum("...i,ij,...j->...", q, np.linalg.inv(cov), q)
    ellipse = maha <= 4.0
    deficiency = hull & ~m
    depth_to_edge = ndimage.distance_transform_edt(np.pad(hull, 1))[1:-1, 1:-1]
    labels, n = ndimage.label(deficiency)
    depths = ndimage.maximum(depth_to_edge, labels, np.arange(1, n + 1)) if n else []
    widths = [r.feret_diameter_max for r in measure.regionprops(labels)]  # ordered by label
    body = _dilate(_erode(m, rho), rho)  # opening with a disc of radius rho
    residue_labels, nr = ndimage.label(m & ~body, structure=np.ones((3, 3), dtype=bool))
    if body.any() and nr:
        dist_to_body = ndimage.distance_transform_edt(~body)
        lengths = np.asarray(ndimage.maximum(dist_to_body, residue_labels, np.arange(1, nr + 1)))
    else:
        lengths = np.zeros(0)
    scalars = {
        "area_px": area,
        "equivalent_diameter_px": d,
        "width_px": width,
        "height_px": height,
        "height_width_ratio": height / width,
        "longest_diameter_px": longest_diameter(m),
        "axis_ratio": float(math.sqrt(evals[0] / evals[1])) if evals[1] > 0 else 1.0,
        "ellipse_residual": float((m ^ ellipse).sum() / area),
        "solidity": area / float(hull.sum()),
        "convexity": hull_perim / perim if perim > 0 else 1.0,
        "opening_radius_px": rho,
        "opening_body_fraction": float(body.sum() / area),
    }
    concavities = np.asarray([depths, widths], dtype=np.float64).reshape(2, -1).T / d
    return scalars, concavities, lengths / rho


def _safe_ratio(a: float, b: float) -> float:
    """``a / b`` with 0/0 = 1 (both black: no difference) and x/0 = inf."""
    if b > 0:
        return a / b
    return 1.0 if a <= 0 else math.inf


@dataclass(frozen=True)
class Pixels:
    """A grey image (float) with the gradient magnitude of its smoothed copy, computed once per image."""

    image: np.ndarray
    grad: np.ndarray

    @classmethod
    def of(cls, image: np.ndarray) -> Pixels:
        smooth = ndimage.gaussian_filter(image, SMOOTH)
        return cls(image, np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1)))


INTENSITY_KEYS = (
    "lesion_mean",
    "tissue_mean",
    "echo_ratio",
    "cystic_fraction",
    "solid_fraction",
    "edge_ratio",
    "posterior_ratio",
    "ring_px",
    "posterior_px",
    "posterior_side_px",
)


def intensity(
    px: Pixels, lesion: np.ndarray, others: np.ndarray, cystic_level: float, solid_level: float
) -> dict[str, float]:
    """Pixel measurements of ``lesion`` (bool, H x W) in ``px``; ``others`` = every mask pixel.

    ``cystic_fraction`` / ``solid_fraction``: the share of the interior, smoothed at 5 % of the lesion's
    diameter, at or below ``cystic_level`` / at or above ``solid_level`` times the tissue mean.

    Interior: the lesion eroded by 10 % of its equivalent radius (at least 1 px). Ring: the tissue
    ``GAP`` .. ``GAP + max(5, r_eq / 2)`` px around the lesion, outside every mask, not below the lesion's
    lowest row (that is the posterior region). Posterior: the rows ``GAP`` .. ``GAP + max(5, h / 2)`` below
    the lesion in the central half of its columns, vs the same rows beside the lesion on both sides. NaN
    where a region has under 10 pixels. Computed in a window around the lesion.
    """
    out = dict.fromkeys(INTENSITY_KEYS, math.nan)
    r_eq = math.sqrt(float(lesion.sum()) / math.pi)
    reach = GAP + max(5.0, 0.5 * r_eq)
    rows, cols = np.nonzero(lesion)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    depth = max(5, (bottom - top + 1) // 2)
    width = right - left + 1
    side_w = width - 2 * (width // 4)
    pad_v = int(math.ceil(reach)) + GAP + 2
    pad_h = max(int(math.ceil(reach)), GAP + side_w) + GAP + 2
    y0, x0 = max(0, top - pad_v), max(0, left - pad_h)
    y1 = min(lesion.shape[0], bottom + max(pad_v, GAP + depth + 3) + 1)
    x1 = min(lesion.shape[1], right + pad_h + 1)
    win = (slice(y0, y1), slice(x0, x1))
    image, grad = px.image[win], px.grad[win]
    les, oth = lesion[win], others[win] | lesion[win]
    top, bottom, left, right = top - y0, bottom - y0, left - x0, right - x0
    interior = _erode(les, max(1.0, 0.1 * r_eq))
    if interior.sum() < 10:
        interior = les
    free = ~_dilate(oth, GAP)
    ring = _dilate(les, reach) & free
    ring[bottom + 1 :, :] = False
    out["ring_px"] = float(ring.sum())
    if ring.sum() >= 10:
        inside, tissue = image[interior], image[ring]
        mean_in, mean_t = float(inside.mean()), float(tissue.mean())
        band = _dilate(les, 1.0) & ~_erode(les, 1.0)
        coarse = ndimage.gaussian_filter(image, max(SMOOTH, COMPONENT_SCALE * 2.0 * r_eq))
        out.update(
            lesion_mean=mean_in,
            tissue_mean=mean_t,
            echo_ratio=_safe_ratio(mean_in, mean_t),
            cystic_fraction=float((coarse[interior] <= cystic_level * mean_t).mean()),
            solid_fraction=float((coarse[interior] >= solid_level * mean_t).mean()),
            edge_ratio=_safe_ratio(float(np.median(grad[band])), float(np.median(grad[ring]))),
        )
    c0, c1 = left + width // 4, right - width // 4
    r0 = bottom + 1 + GAP
    r1 = min(image.shape[0], r0 + depth)
    if r0 < r1:
        ok = free[r0:r1]
        below = image[r0:r1, c0 : c1 + 1][ok[:, c0 : c1 + 1]]
        lo, hi = max(0, left - GAP - side_w), min(image.shape[1], right + GAP + 1 + side_w)
        sides = np.concatenate(
            [
                image[r0:r1, lo : max(lo, left - GAP)][ok[:, lo : max(lo, left - GAP)]],
                image[r0:r1, right + GAP + 1 : hi][ok[:, right + GAP + 1 : hi]],
            ]
        )
        if below.size >= 10 and sides.size >= 10:
            out["posterior_ratio"] = _safe_ratio(float(below.mean()), float(sides.mean()))
        out.update(posterior_px=float(below.size), posterior_side_px=float(sides.size))
    return out


def tissue_discs(image: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Pseudo-lesions in plain tissue for calibration: discs of radius ``min(H, W) / 12`` on a grid of step
    three radii, kept where the disc, its ring and its posterior region lie inside the image, clear of every
    mask (by the ring width), and the surrounding tissue is not black (outside the scanned field)."""
    h, w = image.shape
    r = max(4, min(h, w) // 12)
    reach = GAP + max(5.0, 0.5 * r)
    blocked = _dilate(mask, reach + r) if mask.any() else np.zeros_like(mask, dtype=bool)
    yy, xx = np.indices((2 * r + 1, 2 * r + 1))
    disc = (yy - r) ** 2 + (xx - r) ** 2 <= r * r
    m = int(math.ceil(reach))
    out = []
    for cy in range(r + m, h - (2 * r + GAP + 1), 3 * r):
        for cx in range(r + m, w - r - m, 3 * r):
            if (
                blocked[cy, cx]
                or np.median(image[cy - r - m : cy + r + m + 1, cx - r - m : cx + r + m + 1]) <= 0
            ):
                continue
            d = np.zeros((h, w), dtype=bool)
            d[cy - r : cy + r + 1, cx - r : cx + r + 1] = disc
            out.append(d)
    return out

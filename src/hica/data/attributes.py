"""Per-image BI-RADS ultrasound attributes measured from a lesion mask and the image's pixels.

``measure_lesion(image, mask, thresholds)`` gives a :class:`LesionAttributes` (group → value, plus the raw
measurements of :mod:`hica.data.lesion_measures`); ``fit_thresholds`` calibrates the pixel thresholds on a
split's plain tissue without reading labels; ``measure_split`` runs both over samples. Descriptors follow the
ACR BI-RADS Atlas 5th ed. ultrasound lexicon; every formula, threshold and source is in docs/attributes.md.
A few-shot run must only measure its support images: nothing here reads another split.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from skimage.filters import threshold_otsu

from hica.data import lesion_measures as lm
from hica.data.sample import Sample, load_image, load_mask
from hica.errors import HicaError

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
NO_MASS = "no mass"
GROUPS: dict[str, tuple[str, ...]] = {
    "shape": ("oval", "round", "irregular"),
    "orientation": ("parallel", "not parallel"),
    "margin": ("circumscribed", "not circumscribed"),
    "margin_detail": ("circumscribed", "spiculated", "angular", "microlobulated", "indistinct"),
    "echo_pattern": ("anechoic", "hypoechoic", "isoechoic", "hyperechoic", "complex cystic and solid"),
    "posterior": ("none", "enhancement", "shadowing"),
    "size": ("small", "medium", "large"),
}
GEOMETRY_GROUPS = ("shape", "orientation", "margin", "margin_detail", "size")
#: The hierarchy's root group: is there a lesion at all (``mass`` / ``no mass``); see :func:`image_values`.
PRESENCE = "presence"


@dataclass(frozen=True)
class AttributeThresholds:
    """Every cut-off. Geometry: fixed from the lexicon's definitions (docs/attributes.md says which are our
    choices). Pixel contrasts and size bands: percentiles of a train split (``fit_thresholds``); the defaults
    are those fitted on BUSI train (splits_biomedcoop.csv, results/attributes/busi_train/metrics.json)."""

    min_area_px: int = 50
    round_axis_ratio: float = 0.85
    max_oval_undulations: int = 3
    undulation_depth: float = 0.05
    min_concavity_px: float = 1.5
    max_ellipse_residual: float = 0.35
    min_solidity: float = 0.8
    not_parallel_height_width: float = 1.0
    spicule_scale: float = 0.1
    spicule_length: float = 2.0
    min_spicules: int = 2
    acute_length: float = 1.0 / math.sin(math.radians(37.5)) - 1.0
    min_corner_px: float = 2.0
    microlobule_depth: float = 0.015
    microlobule_width: float = 0.25
    min_microlobules: int = 4
    complex_fraction: float = 0.2
    anechoic_ratio: float = 0.2273
    iso_low: float = 0.5301
    iso_high: float = 1.2336
    edge_min: float = 1.338
    shadow_below: float = 0.4617
    enhance_above: float = 1.589
    size_medium_from: float = 0.2602
    size_large_from: float = 0.4411
    source: str = "busi[splits_biomedcoop.csv] train"


@dataclass(frozen=True)
class LesionAttributes:
    """One image's attributes: ``values`` (group → value of :data:`GROUPS`, ``unknown`` or ``no mass``),
    the raw ``measurements`` (NaN where not measured), the number of lesions and what went wrong."""

    values: dict[str, str]
    measurements: dict[str, float] = field(default_factory=dict)
    n_lesions: int = 0
    warnings: tuple[str, ...] = ()


def _gray(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=2)
    if a.ndim != 2:
        raise HicaError(f"image must be (H, W) or (H, W, C), got shape {np.shape(image)}")
    return a


def _check(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gray = _gray(image)
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise HicaError(f"mask must be (H, W), got shape {m.shape}")
    if m.shape != gray.shape:
        raise HicaError(f"mask is {m.shape[1]}x{m.shape[0]} but its image is {gray.shape[1]}x{gray.shape[0]}")
    return gray, m


def _all(value: str) -> dict[str, str]:
    return dict.fromkeys(GROUPS, value)


def _shape(g: dict[str, float], t: AttributeThresholds) -> str:
    if (
        g["undulations"] > t.max_oval_undulations
        or g["ellipse_residual"] > t.max_ellipse_residual
        or g["solidity"] < t.min_solidity
    ):
        return "irregular"
    return "round" if g["axis_ratio"] >= t.round_axis_ratio else "oval"


def _margin_detail(g: dict[str, float], p: dict[str, float], t: AttributeThresholds) -> str:
    if g["spicules"] >= t.min_spicules:
        return "spiculated"
    if g["acute_corners"] >= 1:
        return "angular"
    if g["microlobules"] >= t.min_microlobules:
        return "microlobulated"
    if p["edge_ratio"] <= t.edge_min:  # NaN (no tissue ring) compares False: not called indistinct
        return "indistinct"
    return "circumscribed"


def _echo(p: dict[str, float], t: AttributeThresholds) -> str:
    ratio = p["echo_ratio"]
    if math.isnan(ratio):
        return UNKNOWN
    if p["cystic_fraction"] >= t.complex_fraction and p["solid_fraction"] >= t.complex_fraction:
        return "complex cystic and solid"
    if ratio <= t.anechoic_ratio:
        return "anechoic"
    if ratio < t.iso_low:
        return "hypoechoic"
    return "hyperechoic" if ratio > t.iso_high else "isoechoic"


def _posterior(p: dict[str, float], t: AttributeThresholds) -> str:
    ratio = p["posterior_ratio"]
    if math.isnan(ratio):
        return UNKNOWN
    if ratio < t.shadow_below:
        return "shadowing"
    return "enhancement" if ratio > t.enhance_above else "none"


def _size(g: dict[str, float], t: AttributeThresholds) -> str:
    rel = g["relative_diameter"]
    return "large" if rel >= t.size_large_from else "medium" if rel >= t.size_medium_from else "small"


def measure_lesion(
    image: np.ndarray,
    mask: np.ndarray,
    thresholds: AttributeThresholds | None = None,
    lesion_expected: bool | None = None,
) -> LesionAttributes:
    """The attributes of the largest lesion in ``mask`` (H, W; nonzero = lesion) on ``image`` (H, W[, C]).

    ``lesion_expected``: True for an image of a lesion class (an empty mask is then ``unknown`` with the
    warning ``empty_mask_in_lesion_class``), False for a class without lesions (``no mass``; a non-empty
    mask is warned about), None to trust the mask (empty → ``no mass``). A mask of another size than the
    image raises HicaError; a lesion under ``min_area_px`` makes every group ``unknown``; one touching the
    image's edge makes the geometry groups ``unknown``, one with no body left after the opening (a line)
    the margin groups; several components: the largest is measured.
    """
    t = thresholds or AttributeThresholds()
    gray, m = _check(image, mask)
    if lesion_expected is False:
        return LesionAttributes(_all(NO_MASS), warnings=("mask_in_no_lesion_class",) if m.any() else ())
    lesion, n = lm.components(m)
    if n == 0:
        if lesion_expected:
            return LesionAttributes(_all(UNKNOWN), warnings=("empty_mask_in_lesion_class",))
        return LesionAttributes(_all(NO_MASS))
    warnings = ["multiple_lesions"] if n > 1 else []
    if lesion.sum() < t.min_area_px:
        meas = {"area_px": float(lesion.sum())}
        return LesionAttributes(_all(UNKNOWN), meas, n, (*warnings, "lesion_too_small"))
    scalars, concavities, lengths = lm.geometry(lesion, t.spicule_scale)
    rho, d = scalars["opening_radius_px"], scalars["equivalent_diameter_px"]
    depths, widths = concavities[:, 0], concavities[:, 1]
    floor = t.min_concavity_px / d
    corner = max(t.acute_length, t.min_corner_px / rho)
    g = {
        **scalars,
        "relative_diameter": scalars["longest_diameter_px"] / gray.shape[1],
        "undulations": float((depths >= max(t.undulation_depth, floor)).sum()),
        "microlobules": float(
            ((depths >= max(t.microlobule_depth, floor)) & (widths <= t.microlobule_width)).sum()
        ),
        "spicules": float((lengths >= t.spicule_length).sum()),
        "acute_corners": float((lengths >= corner).sum()),
    }
    p = lm.intensity(lm.Pixels.of(gray), lesion, m, t.anechoic_ratio, t.iso_low)
    values = {
        "shape": _shape(g, t),
        "orientation": "not parallel"
        if g["height_width_ratio"] > t.not_parallel_height_width
        else "parallel",
        "margin_detail": _margin_detail(g, p, t),
        "echo_pattern": _echo(p, t),
        "posterior": _posterior(p, t),
        "size": _size(g, t),
    }
    values["margin"] = "circumscribed" if values["margin_detail"] == "circumscribed" else "not circumscribed"
    if g["opening_body_fraction"] == 0:  # thinner than the opening disc everywhere: no body, no margin
        values.update(margin=UNKNOWN, margin_detail=UNKNOWN)
        warnings.append("too_thin")
    if lesion[0].any() or lesion[-1].any() or lesion[:, 0].any() or lesion[:, -1].any():
        values.update(dict.fromkeys(GEOMETRY_GROUPS, UNKNOWN))
        warnings.append("touches_border")
    if values["echo_pattern"] == UNKNOWN:
        warnings.append("no_reference_tissue")
    if values["posterior"] == UNKNOWN:
        warnings.append("no_posterior_region")
    return LesionAttributes({k: values[k] for k in GROUPS}, {**g, **p}, n, tuple(warnings))


def image_values(res: LesionAttributes) -> dict[str, str]:
    """An image's attribute values for alignment: :data:`GROUPS` plus :data:`PRESENCE` (``mass`` when a
    lesion was measured, ``no mass`` when none is expected and none is there, else ``unknown``)."""
    vals = dict(res.values)
    if all(v == NO_MASS for v in vals.values()):
        presence = NO_MASS
    elif res.n_lesions > 0:
        presence = "mass"
    else:
        presence = UNKNOWN
    return {PRESENCE: presence, **vals}


def no_lesion_classes(descriptors: object, classes: Sequence[str]) -> tuple[str, ...]:
    """Classes whose descriptor profile says ``presence: [no mass]`` (else the conventional ``normal``)."""
    profile = getattr(descriptors, "profile", None)
    if profile is None:
        return tuple(c for c in classes if c == "normal")
    return tuple(c for c in classes if profile(c).get(PRESENCE) == [NO_MASS])


def _pixels(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    im = load_image(sample)
    return np.asarray(im.convert("L"), dtype=np.float64), load_mask(sample, im.size)


def fit_thresholds(
    samples: Sequence[Sample], base: AttributeThresholds | None = None, source: str = ""
) -> tuple[AttributeThresholds, dict[str, int]]:
    """Pixel and size thresholds from ``samples`` (a train split), never from their labels.

    Null distributions from plain tissue (:func:`~hica.data.lesion_measures.tissue_discs`): the isoechoic
    band and the posterior 'none' band are their 2.5th..97.5th percentiles; a boundary is indistinct at or
    below the 95th percentile of the tissue edge ratio. From the lesions (whatever their class): anechoic
    at or below Otsu's threshold of their log echo ratios; size bands at the tertiles of their longest
    diameter / image width. Unreadable images or masks are skipped and counted. Returns the thresholds and
    counts (images used, tissue discs, lesions, skipped).
    """
    base = base or AttributeThresholds()
    echo, post, edge, sizes, lesion_echo = [], [], [], [], []
    counts = Counter(images=0, tissue_discs=0, lesions=0, skipped=0)
    for s in samples:
        try:
            gray, m = _pixels(s)
        except HicaError:
            counts["skipped"] += 1
            continue
        counts["images"] += 1
        px = lm.Pixels.of(gray)
        for disc in lm.tissue_discs(gray, m):
            p = lm.intensity(px, disc, m, 0.0, 1.0)
            echo.append(p["echo_ratio"])
            post.append(p["posterior_ratio"])
            edge.append(p["edge_ratio"])
            counts["tissue_discs"] += 1
        lesion, n = lm.components(m)
        if n and lesion.sum() >= base.min_area_px:
            rows, cols = np.nonzero(lesion)
            if (
                rows.min() > 0
                and cols.min() > 0
                and rows.max() < m.shape[0] - 1
                and cols.max() < m.shape[1] - 1
            ):
                sizes.append(lm.longest_diameter(lesion) / m.shape[1])
                lesion_echo.append(lm.intensity(px, lesion, m, 0.0, 1.0)["echo_ratio"])
                counts["lesions"] += 1
    if counts["tissue_discs"] < 20 or counts["lesions"] < 3:
        raise HicaError(
            f"too little to calibrate attribute thresholds: {counts['tissue_discs']} tissue discs "
            f"(need 20) and {counts['lesions']} measurable lesions (need 3) in {len(samples)} images"
        )

    def pct(values: list[float], q: float) -> float:
        v = np.asarray(values, dtype=np.float64)
        return round(float(np.percentile(v[np.isfinite(v)], q)), 4)

    logs = np.log(np.asarray(lesion_echo))
    logs = logs[np.isfinite(logs)]
    fitted = replace(
        base,
        anechoic_ratio=round(float(np.exp(threshold_otsu(logs))), 4),
        iso_low=pct(echo, 2.5),
        iso_high=pct(echo, 97.5),
        shadow_below=pct(post, 2.5),
        enhance_above=pct(post, 97.5),
        edge_min=pct(edge, 95.0),
        size_medium_from=pct(sizes, 100 / 3),
        size_large_from=pct(sizes, 200 / 3),
        source=source or base.source,
    )
    return fitted, dict(counts)


@dataclass
class SplitAttributes:
    """``measure_split``'s result: one row per sample, warning counts, and unusable files' messages."""

    ids: list[str]
    labels: list[int]
    results: list[LesionAttributes]
    warnings: Counter[str]
    problems: list[str]
    thresholds: AttributeThresholds

    def thresholds_dict(self) -> dict[str, object]:
        return asdict(self.thresholds)


def measure_split(
    samples: Sequence[Sample],
    classes: Sequence[str],
    thresholds: AttributeThresholds,
    no_lesion_classes: Sequence[str] = ("normal",),
) -> SplitAttributes:
    """Measure every sample: classes in ``no_lesion_classes`` get ``no mass``, the others are expected to
    have a lesion. A sample whose image or mask cannot be used (HicaError: unreadable, wrong size) gets
    ``unknown`` everywhere, the warning ``unusable_mask``, and its message in ``problems``."""
    out = SplitAttributes([], [], [], Counter(), [], thresholds)
    for s in samples:
        expected = classes[s.label] not in no_lesion_classes
        try:
            gray, m = _pixels(s)
            res = measure_lesion(gray, m, thresholds, lesion_expected=expected)
        except HicaError as e:
            res = LesionAttributes(_all(UNKNOWN), warnings=("unusable_mask",))
            out.problems.append(f"{s.id}: {e}")
        out.ids.append(s.id)
        out.labels.append(s.label)
        out.results.append(res)
        out.warnings.update(res.warnings)
    if out.warnings:
        log.warning(
            "attributes of %d images: %s",
            len(samples),
            ", ".join(f"{k} {v}" for k, v in out.warnings.items()),
        )
    return out

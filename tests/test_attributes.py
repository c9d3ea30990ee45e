"""BI-RADS attributes (hica.data.attributes) on synthetic lesions whose answer is known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run_main
from PIL import Image
from scipy import ndimage
from skimage.draw import polygon

from hica.data.attributes import (
    GROUPS,
    NO_MASS,
    UNKNOWN,
    AttributeThresholds,
    fit_thresholds,
    measure_lesion,
    measure_split,
)
from hica.data.sample import Sample
from hica.errors import HicaError

H, W = 240, 320
CY, CX = 100, 160
T = AttributeThresholds(
    anechoic_ratio=0.25,
    iso_low=0.8,
    iso_high=1.25,
    edge_min=1.5,
    shadow_below=0.7,
    enhance_above=1.4,
    size_medium_from=0.2,
    size_large_from=0.4,
    source="test",
)


def tissue(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """Speckle-like tissue: mean 120, smoothed Gaussian noise."""
    rng = np.random.default_rng(seed)
    return np.clip(120 + ndimage.gaussian_filter(rng.normal(0, 30, (h, w)), 1.0), 0, 255)


def ellipse(a: float, b: float, cy: float = CY, cx: float = CX, h: int = H, w: int = W) -> np.ndarray:
    """Semi-axes ``a`` horizontal, ``b`` vertical."""
    yy, xx = np.indices((h, w))
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1


def star(points: int, outer: float, inner: float) -> np.ndarray:
    ang = np.arange(2 * points) * math.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    m = np.zeros((H, W), dtype=bool)
    rr, cc = polygon(CY + r * np.sin(ang), CX + r * np.cos(ang), (H, W))
    m[rr, cc] = True
    return m


def lesion_image(mask: np.ndarray, value: float | None = 60.0, below: float = 1.0) -> np.ndarray:
    """Tissue, the lesion at ``value`` (None: unchanged tissue), the tissue below it times ``below``."""
    img = tissue()
    rows, cols = np.nonzero(mask)
    band = np.zeros_like(mask)
    band[rows.max() + 1 :, cols.min() : cols.max() + 1] = True
    img[band] = np.clip(img[band] * below, 0, 255)
    if value is not None:
        img[mask] = value
    return img


def test_wide_ellipse_is_oval_parallel_circumscribed() -> None:
    m = ellipse(50, 28)
    a = measure_lesion(lesion_image(m), m, T)
    assert a.values["shape"] == "oval"
    assert a.values["orientation"] == "parallel"
    assert a.values["margin"] == a.values["margin_detail"] == "circumscribed"
    assert a.values["echo_pattern"] == "hypoechoic"  # 60 / 120
    assert a.values["posterior"] == "none"
    assert a.values["size"] == "medium"  # 101 / 320
    assert a.n_lesions == 1 and a.warnings == ()
    assert a.measurements["height_width_ratio"] < 1


def test_tall_ellipse_is_not_parallel() -> None:
    m = ellipse(25, 45)
    a = measure_lesion(lesion_image(m), m, T)
    assert a.values["orientation"] == "not parallel"
    assert a.values["shape"] == "oval"


def test_circle_is_round() -> None:
    m = ellipse(35, 35)
    a = measure_lesion(lesion_image(m), m, T)
    assert a.values["shape"] == "round"
    assert a.values["margin"] == "circumscribed"


def test_star_is_irregular_and_spiculated() -> None:
    m = star(8, 80, 36)
    a = measure_lesion(lesion_image(m), m, T)
    assert a.values["shape"] == "irregular"
    assert a.values["margin"] == "not circumscribed"
    assert a.values["margin_detail"] == "spiculated"


def test_triangle_is_angular() -> None:
    m = star(3, 70, 35)  # inner radius 1/2 of outer: an equilateral triangle, 60-degree corners
    a = measure_lesion(lesion_image(m), m, T)
    assert a.values["margin_detail"] == "angular"
    assert a.values["shape"] == "irregular"


def test_scalloped_circle_is_microlobulated() -> None:
    yy, xx = np.indices((H, W))
    theta = np.arctan2(yy - CY, xx - CX)
    m = np.hypot(yy - CY, xx - CX) <= 50 * (1 + 0.05 * np.abs(np.cos(8 * theta)))
    a = measure_lesion(lesion_image(m), m, T)
    assert a.values["margin_detail"] == "microlobulated"
    assert a.values["shape"] in ("round", "oval")


def test_dark_disc_with_dark_band_below_is_anechoic_with_shadowing() -> None:
    m = ellipse(30, 30)
    a = measure_lesion(lesion_image(m, value=10.0, below=0.3), m, T)
    assert a.values["echo_pattern"] == "anechoic"  # 10 / 120 < 0.25
    assert a.values["posterior"] == "shadowing"


def test_dark_disc_with_bright_band_below_has_enhancement() -> None:
    m = ellipse(30, 30)
    a = measure_lesion(lesion_image(m, value=10.0, below=1.8), m, T)
    assert a.values["posterior"] == "enhancement"


def test_bright_lesion_is_hyperechoic() -> None:
    m = ellipse(40, 25)
    assert measure_lesion(lesion_image(m, value=200.0), m, T).values["echo_pattern"] == "hyperechoic"


def test_half_dark_half_tissue_lesion_is_complex() -> None:
    m = ellipse(40, 30)
    img = tissue()
    img[m & (np.indices((H, W))[0] < CY)] = 5.0  # upper half cystic, lower half tissue-bright
    assert measure_lesion(img, m, T).values["echo_pattern"] == "complex cystic and solid"


def test_invisible_lesion_is_isoechoic_and_indistinct() -> None:
    m = ellipse(40, 25)
    a = measure_lesion(lesion_image(m, value=None), m, T)
    assert a.values["echo_pattern"] == "isoechoic"
    assert a.values["margin_detail"] == "indistinct"
    assert a.values["margin"] == "not circumscribed"


def test_one_pixel_mask_is_unknown() -> None:
    m = np.zeros((H, W), dtype=bool)
    m[CY, CX] = True
    a = measure_lesion(tissue(), m, T)
    assert set(a.values.values()) == {UNKNOWN}
    assert "lesion_too_small" in a.warnings


def test_lesion_touching_the_border_has_unknown_geometry() -> None:
    m = ellipse(40, 25, cx=20)
    a = measure_lesion(lesion_image(m), m, T)
    assert "touches_border" in a.warnings
    for group in ("shape", "orientation", "margin", "margin_detail", "size"):
        assert a.values[group] == UNKNOWN
    assert a.values["echo_pattern"] == "hypoechoic"


def test_line_lesion_has_unknown_margin() -> None:
    m = np.zeros((H, W), dtype=bool)
    m[CY : CY + 3, 60:260] = True
    a = measure_lesion(lesion_image(m), m, T)
    assert "too_thin" in a.warnings
    assert a.values["margin"] == a.values["margin_detail"] == UNKNOWN
    assert a.values["orientation"] == "parallel"


def test_two_lesions_measure_the_largest() -> None:
    big, small = ellipse(50, 28), ellipse(10, 20, cx=280, cy=180)
    a = measure_lesion(lesion_image(big | small), big | small, T)
    alone = measure_lesion(lesion_image(big | small), big, T)
    assert a.n_lesions == 2 and "multiple_lesions" in a.warnings
    assert a.values["orientation"] == "parallel"  # the big wide one, not the small tall one
    assert a.measurements["area_px"] == alone.measurements["area_px"]


def test_size_mismatch_raises() -> None:
    with pytest.raises(HicaError, match="mask is 10x8 but its image is 320x240"):
        measure_lesion(tissue(), np.zeros((8, 10), dtype=bool), T)


def test_empty_mask() -> None:
    empty = np.zeros((H, W), dtype=bool)
    lesion_class = measure_lesion(tissue(), empty, T, lesion_expected=True)
    assert set(lesion_class.values.values()) == {UNKNOWN}
    assert lesion_class.warnings == ("empty_mask_in_lesion_class",)
    assert set(measure_lesion(tissue(), empty, T).values.values()) == {NO_MASS}


def test_rgb_image_same_as_grey_and_deterministic() -> None:
    m = star(8, 80, 36)
    img = lesion_image(m, value=40.0, below=0.5)
    a, b = measure_lesion(img, m, T), measure_lesion(img.copy(), m.copy(), T)
    rgb = measure_lesion(np.repeat(img[..., None], 3, axis=2), m, T)
    assert a.values == b.values == rgb.values and a.warnings == b.warnings == rgb.warnings
    np.testing.assert_equal(a.measurements, b.measurements)
    for k, v in a.measurements.items():
        np.testing.assert_allclose(rgb.measurements[k], v, rtol=1e-12, err_msg=k)
    assert list(a.values) == list(GROUPS)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def _lesion_files(tmp: Path, n: int, h: int = 160, w: int = 200) -> list[tuple[Path, Path | None]]:
    """``n`` images with a dark ellipse each (alternating width) and their masks, plus two without lesions."""
    out: list[tuple[Path, Path | None]] = []
    for i in range(n):
        m = ellipse(30 + 5 * (i % 3), 18, cy=60, cx=100, h=h, w=w)
        img = tissue(i, h, w)
        img[m] = 50
        out.append((_png(tmp / f"l{i}.png", img), _png(tmp / f"l{i}_mask.png", m * 255)))
    out += [(_png(tmp / f"n{i}.png", tissue(10 + i, h, w)), None) for i in range(2)]
    return out


def test_fit_thresholds_ignores_labels_and_is_deterministic(tmp_path: Path) -> None:
    files = _lesion_files(tmp_path, 4)

    def samples(labels: list[int]) -> list[Sample]:
        return [
            Sample(id=p.name, label=lab, path=p, masks=(mp,) if mp else ())
            for (p, mp), lab in zip(files, labels, strict=True)
        ]

    a, counts = fit_thresholds(samples([0, 1, 0, 1, 2, 2]))
    b, _ = fit_thresholds(samples([1, 1, 0, 0, 2, 2]))
    assert a == b
    assert counts["lesions"] == 4 and counts["tissue_discs"] >= 20
    assert a.iso_low < 1 < a.iso_high and a.shadow_below < 1 < a.enhance_above
    assert a.size_medium_from <= a.size_large_from


def test_measure_split_counts_bad_masks(tmp_path: Path) -> None:
    img = _png(tmp_path / "a.png", tissue(0, 64, 64))
    bad = _png(tmp_path / "a_mask.png", np.zeros((10, 10)))
    samples = [
        Sample(id="wrong-size", label=0, path=img, masks=(bad,)),
        Sample(id="empty", label=1, path=img),
        Sample(id="normal", label=2, path=img),
    ]
    res = measure_split(samples, ["benign", "malignant", "normal"], T)
    assert [r.values["shape"] for r in res.results] == [UNKNOWN, UNKNOWN, NO_MASS]
    assert res.warnings == {"unusable_mask": 1, "empty_mask_in_lesion_class": 1}
    assert len(res.problems) == 1 and "a_mask.png" in res.problems[0]


def test_cli_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = _lesion_files(tmp_path, 6)
    splits = ["train"] * 4 + ["val", "test", "train", "train"]
    labels = ["benign", "malignant"] * 3 + ["normal", "normal"]
    rows = ["path,label,split,mask"]
    rows += [
        f"{p.name},{lab},{sp},{mp.name if mp else ''}"
        for (p, mp), lab, sp in zip(files, labels, splits, strict=True)
    ]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    code, stdout, err = run_main(
        ["attributes", "--dataset", f"manifest:{tmp_path / 'm.csv'}", "--split", "train", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "## shape" in stdout
    assert {p.name for p in out.iterdir()} >= {"per_image.csv", "distribution.md", "metrics.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "train" and metrics["threshold_fit"]["split"] == "train"
    assert metrics["distribution"]["shape"]["normal"]["no mass"] == 2
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["id", "class", "n_lesions"] and "echo_ratio" in header

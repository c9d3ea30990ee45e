"""Image corruptions (hica.eval.corruptions): shape and mode kept, seeded, monotone in severity, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hica.errors import HicaError
from hica.eval.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    SEVERITY_PARAMS,
    corrupt,
    corruption_names,
)

NAMES = corruption_names()
NOISY = ("gaussian_noise", "speckle_noise")  # the corruptions that use the seed
REAL_IMAGE = ("busi", "Dataset_BUSI_with_GT", "benign", "benign (1).png")


def synthetic(size: tuple[int, int] = (128, 96)) -> Image.Image:
    """A grayscale gradient with fine stripes (so that blur and resolution loss change it)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    a = 40 + 150 * xx / (w - 1) + 30 * np.sin(xx / 2.0) * np.cos(yy / 3.0)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L")


@pytest.fixture(scope="module")
def clean() -> Image.Image:
    """The first benign BUSI image (grayscale) when the shared data is there, else a synthetic image."""
    from conftest import find_data_root

    path = find_data_root().joinpath(*REAL_IMAGE)
    if not path.is_file():
        return synthetic()
    with Image.open(path) as im:
        im.load()
        return im.copy()


@pytest.fixture(scope="module")
def outputs(clean: Image.Image) -> dict[tuple[str, int], Image.Image]:
    return {(n, s): corrupt(clean, n, s, seed=0) for n in NAMES for s in SEVERITIES}


def arr(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.float64)


def mad(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(arr(a) - arr(b)).mean())


def test_names_and_table() -> None:
    assert NAMES == list(CORRUPTIONS) == list(SEVERITY_PARAMS)
    assert set(NAMES) == {
        "gaussian_noise",
        "speckle_noise",
        "gaussian_blur",
        "contrast",
        "brightness",
        "jpeg",
        "resolution",
    }
    assert all(len(v) == 5 for v in SEVERITY_PARAMS.values())
    # ImageNet-C values (Hendrycks & Dietterich 2019; imagecorruptions package)
    assert SEVERITY_PARAMS["gaussian_noise"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert SEVERITY_PARAMS["jpeg"] == (25, 18, 15, 10, 7)


@pytest.mark.parametrize("name", NAMES)
def test_size_mode_kept_and_image_changed(
    name: str, clean: Image.Image, outputs: dict[tuple[str, int], Image.Image]
) -> None:
    for s in SEVERITIES:
        out = outputs[name, s]
        assert isinstance(out, Image.Image)
        assert (out.size, out.mode) == (clean.size, clean.mode), (name, s)
        assert mad(out, clean) > 0, f"{name} at severity {s} left the image unchanged"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(
    name: str, clean: Image.Image, outputs: dict[tuple[str, int], Image.Image]
) -> None:
    for s in SEVERITIES:
        again = CORRUPTIONS[name](clean, s, np.random.default_rng(0))
        assert np.array_equal(arr(again), arr(outputs[name, s])), (name, s)


@pytest.mark.parametrize("name", NOISY)
def test_seed_changes_noise(
    name: str, clean: Image.Image, outputs: dict[tuple[str, int], Image.Image]
) -> None:
    assert not np.array_equal(arr(corrupt(clean, name, 3, seed=1)), arr(outputs[name, 3]))


@pytest.mark.parametrize("name", NAMES)
def test_difference_grows_with_severity(
    name: str, clean: Image.Image, outputs: dict[tuple[str, int], Image.Image]
) -> None:
    d = [mad(outputs[name, s], clean) for s in SEVERITIES]
    assert all(a <= b for a, b in zip(d, d[1:], strict=False)), f"{name}: {d}"
    assert d[-1] > d[0], f"{name}: {d}"


def test_corruptions_do_what_they_say(
    clean: Image.Image, outputs: dict[tuple[str, int], Image.Image]
) -> None:
    x = arr(clean)

    def roughness(a: np.ndarray) -> float:  # mean absolute horizontal gradient
        return float(np.abs(np.diff(a, axis=1)).mean())

    assert all(arr(outputs["contrast", s]).std() < x.std() for s in SEVERITIES)
    assert all(arr(outputs["brightness", s]).mean() > x.mean() for s in SEVERITIES)
    for s in SEVERITIES:
        assert roughness(arr(outputs["gaussian_blur", s])) < roughness(x)
        assert roughness(arr(outputs["resolution", s])) < roughness(x)
        assert roughness(arr(outputs["gaussian_noise", s])) > roughness(x)
    # speckle is multiplicative: black pixels stay black
    black = x == 0
    if black.any():
        assert np.all(arr(outputs["speckle_noise", 5])[black] == 0)


def test_input_untouched(clean: Image.Image) -> None:
    before = arr(clean).copy()
    for n in NAMES:
        corrupt(clean, n, 5, seed=0)
    assert np.array_equal(arr(clean), before)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_grayscale_and_rgb(mode: str) -> None:
    im = synthetic((40, 30))
    if mode == "RGB":  # a colour image: tint the gradient
        g = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.stack([g, 0.7 * g, 0.4 * g + 30], axis=2).astype(np.uint8), mode="RGB")
    for n in NAMES:
        for s in (1, 5):
            out = corrupt(im, n, s, seed=0)
            assert (out.mode, out.size) == (mode, im.size), (n, s)
            assert np.asarray(out).shape == np.asarray(im).shape


def test_brightness_keeps_hue_on_rgb() -> None:
    im = Image.fromarray(np.array([[[200, 100, 50], [0, 0, 0]]], dtype=np.uint8), mode="RGB")
    out = np.asarray(corrupt(im, "brightness", 1), dtype=np.float64)
    v = min(1.0, 200 / 255 + 0.1) * 255
    assert np.allclose(out[0, 0], np.array([200, 100, 50]) * v / 200, atol=0.5)
    assert np.allclose(out[0, 1], 0.1 * 255, atol=0.5)  # black turns to gray, not colour


@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16", "I", "F", "P", "1", "CMYK"])
def test_other_modes(mode: str) -> None:
    base = synthetic((40, 30))
    if mode == "I;16":
        im = Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
    else:
        im = base.convert("RGB").convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1)), mode="L")
        im.putalpha(alpha)
    for n in NAMES:
        out = corrupt(im, n, 4, seed=0)
        assert (out.mode, out.size) == (im.mode, im.size), (mode, n)
        if mode in ("RGBA", "LA"):
            assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(im.getchannel("A")))
    if mode == "I;16":  # 16-bit data keeps its depth: values beyond 8 bits survive
        out = np.asarray(corrupt(im, "gaussian_noise", 1, seed=0))
        assert out.dtype == np.uint16 and out.max() > 255


def test_unknown_name(clean: Image.Image) -> None:
    with pytest.raises(HicaError, match="unknown corruption 'fog'") as e:
        corrupt(clean, "fog", 1)
    for n in NAMES:
        assert n in str(e.value)


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, 2.5, True, "3", None])
def test_bad_severity(severity: object, clean: Image.Image) -> None:
    with pytest.raises(HicaError, match="severity"):
        corrupt(clean, "contrast", severity)  # type: ignore[arg-type]
    with pytest.raises(HicaError, match="severity"):
        CORRUPTIONS["contrast"](clean, severity, np.random.default_rng(0))  # type: ignore[arg-type]


def test_numpy_integer_severity(clean: Image.Image) -> None:
    assert np.array_equal(arr(corrupt(clean, "jpeg", np.int64(2))), arr(corrupt(clean, "jpeg", 2)))

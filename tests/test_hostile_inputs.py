"""Hostile inputs: odd images (16-bit, CMYK, RGBA, 1×1, EXIF-rotated, decompression bombs) and damaged
checkpoints. Each is handled correctly or refused with a one-line HicaError naming the file, and a failed
``hica predict`` leaves the CSV an earlier run wrote untouched. Every test image is made from a real one.
See docs/hostile-inputs.md.
"""

from __future__ import annotations

import json
import resource
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_helpers import busi_image, tiny_model
from typer.testing import CliRunner

from hica.cli import app
from hica.data.sample import Sample, load_image, load_mask
from hica.errors import HicaError

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = ["--device", "cpu", "--precision", "fp32"]
# EXIF orientation → the transpose that stores an upright image so that exif_transpose restores it.
STORE_ROTATED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def _load(path: Path, masks: tuple[Path, ...] = ()) -> Image.Image:
    return load_image(Sample(id=path.name, label=-1, path=path, masks=masks))


def _busi(data_root: Path, cls: str = "benign", i: int = 1) -> Image.Image:
    with Image.open(busi_image(data_root, cls, i)) as im:
        return im.convert("L")


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _predict(images: list[Path], model: Path, out: Path, *extra: str):
    args = ["predict", *map(str, images), "--checkpoint", str(model), "--out", str(out), *CPU, *extra]
    return CliRunner().invoke(app, args)


def _refused(res, *named: Path | str) -> str:
    """The CLI result is a HicaError (exit != 0) whose message names each of ``named``; its message."""
    assert res.exit_code != 0 and isinstance(res.exception, HicaError), (res.output, res.exception)
    msg = str(res.exception)
    assert "\n" not in msg, msg
    for n in named:
        assert str(n) in msg, (n, msg)
    return msg


# --- images ------------------------------------------------------------------------------------------------


def test_ordinary_images_load_exactly_as_before(data_root: Path, tmp_path: Path) -> None:
    """8-bit L / RGB PNG and JPEG without EXIF orientation: the very pixels ``Image.open`` decodes."""
    paths = [busi_image(data_root, c, i) for c in ("benign", "malignant", "normal") for i in (1, 2)]
    for cls in ("NORMAL", "PNEUMONIA"):
        paths += sorted((data_root / "chest_xray" / "test" / cls).glob("*.jpeg"))[:2]
    rgb = tmp_path / "rgb.png"
    _busi(data_root).convert("RGB").save(rgb)
    grey_jpeg = tmp_path / "grey.jpg"
    _busi(data_root).save(grey_jpeg, quality=90)
    for p in [*paths, rgb, grey_jpeg]:
        with Image.open(p) as im:
            want = np.asarray(im.convert(im.mode))
            mode = im.mode
        got = _load(p)
        assert got.mode == mode and mode in ("L", "RGB")
        assert np.array_equal(np.asarray(got), want), p
    # BUSI masks: as before (no EXIF anywhere).
    img, mask = busi_image(data_root, "malignant", 1), busi_image(data_root, "malignant", 1, mask=True)
    with Image.open(mask) as m:
        want = np.asarray(m.convert("L")) > 127
    assert np.array_equal(load_mask(Sample(id="m", label=1, path=img, masks=(mask,))), want)


def _stretched(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.rint((a.astype(np.float64) - lo) * 255 / (hi - lo))


@pytest.mark.parametrize("kind", ["png16", "tiff_int32", "tiff_float"])
def test_high_bit_depth_scaled_not_clipped(kind: str, data_root: Path, tmp_path: Path) -> None:
    """16-bit PNG / 32-bit int / float TIFF → L scaled from the image's min..max, not clipped to white."""
    a8 = np.asarray(_busi(data_root)).astype(np.float64)
    lo, hi = a8.min(), a8.max()
    unit = (a8 - lo) / (hi - lo)
    if kind == "png16":
        arr, path = np.rint(unit * 65535).astype(np.uint16), tmp_path / "x16.png"
    elif kind == "tiff_int32":
        arr, path = np.rint(unit * 3_000_000 - 1_000_000).astype(np.int32), tmp_path / "x32.tif"
    else:
        arr, path = (unit * 2.5 - 0.5).astype(np.float32), tmp_path / "xf.tif"
    Image.fromarray(arr).save(path)
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I", "F"), raw.mode
        assert np.array_equal(np.asarray(raw), arr)  # really high bit depth on disk
        clipped = np.asarray(raw.convert("L"))
    got = _load(path)
    assert got.mode == "L"
    diff = np.abs(np.asarray(got).astype(int) - _stretched(a8))
    assert diff.max() <= 1, diff.max()
    assert np.asarray(got).std() > 20  # the original contrast, where convert("L") would clip
    if kind == "png16":
        assert (clipped == 255).mean() > 0.5  # what plain PIL conversion would have given


def test_cmyk_jpeg_to_rgb(data_root: Path, tmp_path: Path) -> None:
    rgb = _busi(data_root, "malignant", 3).convert("RGB")
    path = tmp_path / "cmyk.jpg"
    rgb.convert("CMYK").save(path, quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    got = _load(path)
    assert got.mode == "RGB" and got.size == rgb.size
    assert np.abs(np.asarray(got).astype(int) - np.asarray(rgb)).mean() < 3  # JPEG tolerance


def test_alpha_composited_on_black(data_root: Path, tmp_path: Path) -> None:
    """RGBA / LA / P with transparency: opaque pixels exact, transparent black, partial premultiplied."""
    rgb = _busi(data_root, "normal", 2).convert("RGB")
    w, h = rgb.size
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, : w // 4] = 0
    alpha[:, w // 4 : w // 2] = 128
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha))
    a = np.asarray(rgb).astype(int)
    want = (a * alpha[..., None].astype(int) + 127) // 255
    for mode, path in (("RGBA", tmp_path / "rgba.png"), ("LA", tmp_path / "la.png")):
        rgba.convert(mode).save(path)
        got = _load(path)
        assert got.mode == mode[:-1]
        exp = want if mode == "RGBA" else (np.asarray(rgb.convert("L")).astype(int) * alpha + 127) // 255
        assert np.array_equal(np.asarray(got), exp.astype(np.uint8)), mode
        assert np.array_equal(np.asarray(got)[:, w // 2 :], np.asarray(rgb.convert(mode[:-1]))[:, w // 2 :])
    pal = rgb.convert("P")  # a palette image without transparency → its RGB colours
    pal.save(tmp_path / "p.png")
    assert np.array_equal(np.asarray(_load(tmp_path / "p.png")), np.asarray(pal.convert("RGB")))


def test_one_pixel_image(data_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    _busi(data_root).resize((1, 1), Image.BOX).save(path)
    got = _load(path)
    assert got.size == (1, 1) and got.mode == "L"


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_jpeg_is_put_upright(orientation: int, data_root: Path, tmp_path: Path) -> None:
    """Pixels stored rotated with an EXIF orientation tag load upright (= the original, within JPEG error);
    a mask drawn on the stored pixels (no EXIF of its own) is turned the same way and stays aligned."""
    upright = _busi(data_root, "benign", 4).convert("RGB")
    mask_path = busi_image(data_root, "benign", 4, mask=True)
    with Image.open(mask_path) as m:
        mask = m.convert("L")
    assert upright.size[0] != upright.size[1]  # so a missed rotation cannot go unnoticed
    stored = upright.transpose(STORE_ROTATED[orientation])
    path = tmp_path / f"rot{orientation}.jpg"
    stored.save(path, quality=95, exif=_exif(orientation))
    plain = tmp_path / "upright.jpg"
    upright.save(plain, quality=95)
    got = _load(path)
    assert got.size == upright.size
    err = np.abs(np.asarray(got).astype(int) - np.asarray(upright)).mean()
    ref = np.abs(np.asarray(_load(plain)).astype(int) - np.asarray(upright)).mean()
    assert err < ref + 1.5, (err, ref)  # as close as an unrotated JPEG of the same image
    # The mask, stored like the image's pixels, without EXIF: aligned with the upright image.
    stored_mask = tmp_path / "rot_mask.png"
    mask.transpose(STORE_ROTATED[orientation]).save(stored_mask)
    want = np.asarray(mask) > 127
    s = Sample(id="r", label=0, path=path, masks=(stored_mask,))
    assert np.array_equal(load_mask(s), want)
    assert np.array_equal(load_mask(s, got.size), want)
    # A mask with an EXIF orientation of its own follows its own tag.
    own = tmp_path / "own_mask.png"
    mask.transpose(STORE_ROTATED[8]).save(own, exif=_exif(8))
    assert np.array_equal(load_mask(Sample(id="r", label=0, path=path, masks=(own,))), want)


def _bomb(src: Path, dst: Path, w: int, h: int) -> Path:
    """A copy of a real PNG whose IHDR header declares ``w``×``h`` (CRC fixed, pixel data unchanged)."""
    data = bytearray(src.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [30000, 10000])
def test_decompression_bomb_refused_before_decoding(side: int, data_root: Path, tmp_path: Path) -> None:
    """30000² (over twice PIL's limit) and 10000² (over it; PIL alone only warns and decodes) are refused
    from the header, without allocating the image."""
    path = _bomb(busi_image(data_root), tmp_path / "bomb.png", side, side)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(HicaError) as e:
        _load(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb  # a decoded 10000² grey image alone is ~100 MB
    msg = str(e.value)
    assert str(path) in msg and str(side * side) in msg.replace(",", "") and "\n" not in msg
    assert msg.count("cannot read image") == 1


# --- `hica predict` on hostile images ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(data_root: Path) -> Path:
    return tiny_model(data_root)


def test_predict_handles_odd_images_and_refuses_a_bomb(model: Path, data_root: Path, tmp_path: Path) -> None:
    upright = _busi(data_root, "malignant", 2)
    good = tmp_path / "good.png"
    upright.save(good)
    out = tmp_path / "p.csv"
    assert _predict([good], model, out).exit_code == 0
    first = out.read_bytes()

    odd = tmp_path / "odd"
    odd.mkdir()
    a = np.asarray(upright).astype(np.float64)
    Image.fromarray(np.rint((a - a.min()) / (a.max() - a.min()) * 65535).astype(np.uint16)).save(
        odd / "a16.png"
    )
    upright.convert("RGB").convert("CMYK").save(odd / "b_cmyk.jpg", quality=95)
    upright.convert("RGBA").save(odd / "c_rgba.png")
    upright.resize((1, 1), Image.BOX).save(odd / "d_one.png")
    # Lossless PNG with an EXIF orientation (eXIf chunk): must score exactly like the upright original.
    upright.transpose(STORE_ROTATED[6]).save(odd / "e_rot6.png", exif=_exif(6))
    shutil.copy(good, odd / "f_upright.png")
    out2 = tmp_path / "odd.csv"
    res = _predict([odd], model, out2)
    assert res.exit_code == 0, (res.output, res.exception)
    rows = {Path(line.split(",")[0]).name: line.split(",")[1:] for line in out2.read_text().splitlines()[1:]}
    assert sorted(rows) == ["a16.png", "b_cmyk.jpg", "c_rgba.png", "d_one.png", "e_rot6.png", "f_upright.png"]
    assert rows["e_rot6.png"] == rows["f_upright.png"]
    assert rows["c_rgba.png"] == rows["f_upright.png"]  # opaque RGBA of a grey image = the grey image

    bomb = _bomb(busi_image(data_root), tmp_path / "bomb.png", 30000, 30000)
    _refused(_predict([good, bomb], model, out), bomb, "--skip-bad")
    assert out.read_bytes() == first  # nothing already written is lost or half-written
    res = _predict([good, bomb], model, out, "--skip-bad")
    assert res.exit_code == 0 and out.read_bytes() == first


# --- damaged checkpoints -----------------------------------------------------------------------------------


def _copy_model(model: Path, dst: Path, card: bool = False) -> Path:
    shutil.copytree(model, dst)
    if not card:
        for f in ("model_card.json", "MODEL_CARD.md"):
            (dst / f).unlink(missing_ok=True)
    return dst


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("weights", ["classifier.safetensors", "encoder.safetensors"])
@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_weights_without_card(
    weights: str, keep: float, model: Path, data_root: Path, tmp_path: Path
) -> None:
    m = _copy_model(model, tmp_path / "model")
    img = busi_image(data_root, "normal", 1)
    out = tmp_path / "p.csv"
    assert _predict([img], m, out).exit_code == 0
    first = out.read_bytes()
    _truncate(m / weights, keep)
    _refused(_predict([img], m, out), m / weights)
    assert out.read_bytes() == first


def test_truncated_weights_with_card_refused_by_hash(model: Path, data_root: Path, tmp_path: Path) -> None:
    m = _copy_model(model, tmp_path / "model", card=True)
    _truncate(m / "classifier.safetensors")
    msg = _refused(_predict([busi_image(data_root)], m, tmp_path / "p.csv"), m, "classifier.safetensors")
    assert "model card" in msg


def _edit_config(cfg: Path, how: str) -> None:
    if how == "not json":
        cfg.write_text('{"format": "hica-encoder/1", "base": ')
        return
    if how == "binary":
        cfg.write_bytes(b"\xff\xfe\x00garbage")
        return
    c = json.loads(cfg.read_text())
    if how == "a list":
        c = [c]
    elif how == "no base":
        del c["base"]
    elif how == "no classes":
        del c["meta"]["classifier"]["classes"]
    elif how == "no alpha":
        del c["meta"]["classifier"]["alpha"]
    elif how == "classes not a list":
        c["meta"]["classifier"]["classes"] = "benign,malignant"
    elif how == "meta not a dict":
        c["meta"] = "oops"
    cfg.write_text(json.dumps(c))


@pytest.mark.parametrize(
    "how",
    [
        "not json",
        "binary",
        "a list",
        "no base",
        "no classes",
        "no alpha",
        "classes not a list",
        "meta not a dict",
    ],
)
def test_bad_config_json(how: str, model: Path, data_root: Path, tmp_path: Path) -> None:
    m = _copy_model(model, tmp_path / "model")
    _edit_config(m / "config.json", how)
    out = tmp_path / "p.csv"
    out.write_text("earlier\n")
    _refused(_predict([busi_image(data_root)], m, out), m)
    assert out.read_text() == "earlier\n"


def test_other_class_set_and_not_a_checkpoint(model: Path, data_root: Path, tmp_path: Path) -> None:
    img, out = busi_image(data_root), tmp_path / "p.csv"
    out.write_text("earlier\n")
    msg = _refused(_predict([img], model, out, "--descriptors", "chest_xray"), model)
    assert "trained for classes" in msg
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    shutil.copy(img, folder / "x.png")
    _refused(_predict([img], folder, out), folder, "config.json")
    assert out.read_text() == "earlier\n"


@pytest.mark.parametrize("tensors", ["no image_protos", "wrong class count"])
def test_classifier_with_wrong_tensors(tensors: str, model: Path, data_root: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    m = _copy_model(model, tmp_path / "model")
    f = m / "classifier.safetensors"
    protos = load_file(str(f))
    if tensors == "no image_protos":
        del protos["image_protos"]
    else:
        protos = {k: v[:-1].contiguous() for k, v in protos.items()}
    save_file(protos, str(f))
    _refused(_predict([busi_image(data_root)], m, tmp_path / "p.csv"), f)

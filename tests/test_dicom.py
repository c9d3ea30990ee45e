"""DICOM reading (``hica.data.dicom``) on files written from real BUSI images: grey pipeline, colour,
compressed transfer syntaxes, refusals, and the same prediction from a PNG and its DICOM copy."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    MPEG4HP41,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from hica.data.dicom import read_dicom
from hica.data.sample import IMAGE_EXTENSIONS, Sample, load_image
from hica.errors import HicaError

pytestmark = pytest.mark.usefixtures("one_thread")


def write_dicom(
    path: Path,
    arr: np.ndarray,
    pi: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frames: int = 1,
    **elements: object,
) -> Dataset:
    """A single- (or multi-) frame Secondary Capture file holding ``arr`` uncompressed; its dataset."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    ds.PhotometricInterpretation = pi
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    if frames > 1:
        ds.NumberOfFrames = frames
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.PixelData = np.concatenate([arr.ravel()] * frames).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


@pytest.fixture(scope="module")
def rgb(data_root: Path) -> np.ndarray:
    """A real BUSI image (benign (1)) as RGB uint8."""
    f = data_root / "busi" / "Dataset_BUSI_with_GT" / "benign" / "benign (1).png"
    if not f.is_file():
        pytest.skip(f"{f} not found")
    with Image.open(f) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _read(path: Path) -> np.ndarray:
    return np.asarray(load_image(Sample(id=path.name, label=0, path=path)))


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 LINEAR window onto 0..255, written out independently of pydicom."""
    y = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(y, 0, 255)


def test_monochrome2_8bit_is_exact_and_needs_no_extension(grey: np.ndarray, tmp_path: Path) -> None:
    assert ".dcm" in IMAGE_EXTENSIONS
    write_dicom(tmp_path / "a.dcm", grey)
    im = read_dicom(tmp_path / "a.dcm")
    assert im.mode == "L" and np.array_equal(np.asarray(im), grey)
    shutil.copy(tmp_path / "a.dcm", tmp_path / "IM0001")  # found by the DICM marker
    assert np.array_equal(_read(tmp_path / "IM0001"), grey)
    # A legacy (ACR-NEMA style) file: no preamble, no file meta, implicit VR; read when named .dcm.
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.file_meta
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    (tmp_path / "legacy.dcm").write_bytes(fp.getvalue())
    assert np.array_equal(_read(tmp_path / "legacy.dcm"), grey)


def test_monochrome1_is_inverted(grey: np.ndarray, tmp_path: Path) -> None:
    write_dicom(tmp_path / "m1.dcm", grey.astype(np.uint16) * 16, "MONOCHROME1", bits_stored=12)
    write_dicom(tmp_path / "m2.dcm", grey.astype(np.uint16) * 16, "MONOCHROME2", bits_stored=12)
    m1, m2 = _read(tmp_path / "m1.dcm"), _read(tmp_path / "m2.dcm")
    assert np.array_equal(m1, 255 - m2) and m2.std() > 20


def test_12bit_rescale_and_window(grey: np.ndarray, tmp_path: Path) -> None:
    stored = grey.astype(np.uint16) * 16  # 0..4080 in 12 of 16 bits
    elems = {"RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 3000, "WindowWidth": 4000}
    write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, **elems)
    out = _read(tmp_path / "w.dcm").astype(int)
    expected = _window(stored * 2.0 - 1000, 3000, 4000)
    assert np.abs(out - expected).max() <= 1
    assert (out == 0).any() and (out == 255).any()  # the window clips at both ends on this image
    write_dicom(tmp_path / "sig.dcm", stored, bits_stored=12, VOILUTFunction="SIGMOID", **elems)
    sigmoid = 255 / (1 + np.exp(-4 * (stored * 2.0 - 1000 - 3000) / 4000))
    assert np.abs(_read(tmp_path / "sig.dcm") - sigmoid).max() <= 0.5 + 1e-6


def test_16bit_signed_without_window_is_min_max(grey: np.ndarray, tmp_path: Path) -> None:
    stored = (grey.astype(np.int16) - 128) * 200  # -25600..25400
    write_dicom(tmp_path / "s.dcm", stored)
    lo, hi = int(stored.min()), int(stored.max())
    expected = np.rint((stored.astype(np.float64) - lo) * 255.0 / (hi - lo))
    assert np.abs(_read(tmp_path / "s.dcm") - expected).max() == 0


def test_voi_lut_sequence(grey: np.ndarray, tmp_path: Path) -> None:
    stored = grey.astype(np.uint16) * 16
    table = np.rint(65535 * (np.arange(4096) / 4095) ** 0.5).astype("<u2")  # a gamma curve
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "OW", table.tobytes())  # LUT Data
    write_dicom(tmp_path / "lut.dcm", stored, bits_stored=12, VOILUTSequence=[item])
    expected = table[stored] * 255.0 / 65535
    assert np.abs(_read(tmp_path / "lut.dcm") - expected).max() <= 0.5 + 1e-6


def test_rgb_ybr_and_palette(rgb: np.ndarray, grey: np.ndarray, tmp_path: Path) -> None:
    from pydicom.pixels import convert_color_space

    write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    im = read_dicom(tmp_path / "rgb.dcm")
    assert im.mode == "RGB" and np.array_equal(np.asarray(im), rgb)
    write_dicom(tmp_path / "ybr.dcm", convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")
    assert np.abs(_read(tmp_path / "ybr.dcm").astype(int) - rgb).max() <= 2
    ramp = np.arange(256, dtype=np.uint16) * 257
    tables = {"Red": ramp, "Green": ramp[::-1], "Blue": ramp // 2}
    elems: dict[str, object] = {}
    for c, t in tables.items():
        elems[f"{c}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        elems[f"{c}PaletteColorLookupTableData"] = t.astype("<u2").tobytes()
    write_dicom(tmp_path / "pal.dcm", grey, "PALETTE COLOR", **elems)
    pal = _read(tmp_path / "pal.dcm").astype(int)
    g = grey.astype(np.int64)
    expected = np.stack([g, 255 - g, np.rint(g * 257 // 2 * 255 / 65535)], axis=-1)
    assert pal.shape == rgb.shape and np.abs(pal - expected).max() <= 1


def test_compressed_transfer_syntaxes_decode(rgb: np.ndarray, grey: np.ndarray, tmp_path: Path) -> None:
    stored = grey.astype(np.uint16) * 16
    for name, ts, arr, pi in (
        ("rle", RLELossless, stored, "MONOCHROME2"),
        ("rle_rgb", RLELossless, rgb, "RGB"),
        ("j2k", JPEG2000Lossless, stored, "MONOCHROME2"),
    ):
        plain = tmp_path / f"{name}_plain.dcm"
        ds = write_dicom(plain, arr, pi, bits_stored=12 if arr.dtype == np.uint16 else None)
        ds.compress(ts)
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        assert pydicom.dcmread(tmp_path / f"{name}.dcm").file_meta.TransferSyntaxUID == ts
        assert np.array_equal(_read(tmp_path / f"{name}.dcm"), _read(plain)), name
    # JPEG baseline as scanners write it: a JFIF stream (YCbCr inside) encapsulated as YBR_FULL_422.
    for name, img, pi in (
        ("jpeg_rgb", Image.fromarray(rgb), "YBR_FULL_422"),
        ("jpeg_grey", Image.fromarray(grey), "MONOCHROME2"),
    ):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        ds = write_dicom(tmp_path / f"{name}.dcm", np.asarray(img), pi)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        with Image.open(buf) as im:  # Pillow's decode of the same JPEG bytes
            assert np.abs(_read(tmp_path / f"{name}.dcm").astype(int) - np.asarray(im)).max() <= 1, name


def gdcm_compress(src: Path, dst: Path, syntax: str) -> None:
    """Re-encode ``src`` with GDCM into ``syntax`` (a ``gdcm.TransferSyntax`` name), e.g. JPEG lossless."""
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


def test_jpeg_lossless_and_jpeg_ls(grey: np.ndarray, rgb: np.ndarray, tmp_path: Path) -> None:
    write_dicom(tmp_path / "g12.dcm", grey.astype(np.uint16) * 16, bits_stored=12)
    write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    for syntax, uid in (("JPEGLosslessProcess14_1", JPEGLosslessSV1), ("JPEGLSLossless", JPEGLSLossless)):
        for src in ("g12", "rgb"):
            dst = tmp_path / f"{src}_{syntax}.dcm"
            gdcm_compress(tmp_path / f"{src}.dcm", dst, syntax)
            assert pydicom.dcmread(dst).file_meta.TransferSyntaxUID == uid
            assert np.array_equal(_read(dst), _read(tmp_path / f"{src}.dcm")), dst.name


def test_refusals_name_the_file_and_reason(grey: np.ndarray, tmp_path: Path, monkeypatch) -> None:
    def refused(path: Path, *needles: str) -> None:
        with pytest.raises(HicaError) as e:
            _read(path)
        assert str(path) in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)

    write_dicom(tmp_path / "multi.dcm", grey, frames=3)
    refused(tmp_path / "multi.dcm", "multi-frame", "3 frames", "export one frame")

    ds = write_dicom(tmp_path / "mpeg.dcm", grey)
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3 not really video" * 8])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    refused(tmp_path / "mpeg.dcm", "MPEG-4 AVC/H.264 High Profile", str(MPEG4HP41), "gdcmconv --raw")

    # A compressed syntax whose plugins are all missing (as in an install without GDCM).
    write_dicom(tmp_path / "plain.dcm", grey)
    gdcm_compress(tmp_path / "plain.dcm", tmp_path / "jls.dcm", "JPEGLSLossless")
    monkeypatch.setattr(get_decoder(JPEGLSLossless), "_available", {})
    refused(tmp_path / "jls.dcm", f"JPEG-LS Lossless Image Compression ({JPEGLSLossless})", "not installed")
    monkeypatch.undo()
    assert np.array_equal(_read(tmp_path / "jls.dcm"), grey)

    data = (tmp_path / "plain.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])  # pixel data cut short
    refused(tmp_path / "cut.dcm", "less than expected")
    (tmp_path / "head.dcm").write_bytes(data[:300])  # ends inside the header
    refused(tmp_path / "head.dcm", "no pixel data", "truncated")
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all\n" * 40)
    refused(tmp_path / "junk.dcm", "not a DICOM file")
    (tmp_path / "empty.dcm").write_bytes(b"")
    refused(tmp_path / "empty.dcm", "empty")
    with pytest.raises(HicaError, match="image file not found"):
        _read(tmp_path / "missing.dcm")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    refused(tmp_path / "jls.dcm", "over the limit of 1,000 pixels")


def test_imagefolder_reads_dicom(grey: np.ndarray, rgb: np.ndarray, tmp_path: Path) -> None:
    from hica.data.formats.imagefolder import scan_imagefolder

    for cls, arr, pi in (("a", grey, "MONOCHROME2"), ("b", rgb, "RGB")):
        (tmp_path / "f" / cls).mkdir(parents=True)
        write_dicom(tmp_path / "f" / cls / "one.dcm", arr, pi)
        write_dicom(tmp_path / "f" / cls / "IM0002", arr, pi)  # no extension: found by its marker
    classes, samples = scan_imagefolder(tmp_path / "f")
    assert classes == ["a", "b"] and len(samples) == 4
    assert [np.asarray(load_image(s)).shape for s in samples] == [grey.shape] * 2 + [rgb.shape] * 2


@pytest.fixture(scope="module")
def pair(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real malignant BUSI image as grey PNG and as 8-bit MONOCHROME2 DICOM, in one folder."""
    src = data_root / "busi" / "Dataset_BUSI_with_GT" / "malignant" / "malignant (3).png"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    folder = tmp_path_factory.mktemp("pair")
    with Image.open(src) as im:
        g = im.convert("L")
    g.save(folder / "case.png")
    write_dicom(folder / "case.dcm", np.asarray(g))
    return folder / "case.png", folder / "case.dcm"


def test_predict_png_and_dicom_agree(pair: tuple[Path, Path], data_root: Path, tmp_path: Path) -> None:
    from serve_helpers import tiny_model
    from typer.testing import CliRunner

    from hica.cli import app

    out = tmp_path / "pred.csv"
    args = ["predict", str(pair[0].parent), "--checkpoint", str(tiny_model(data_root)), "--out", str(out)]
    res = CliRunner().invoke(app, [*args, "--device", "cpu", "--precision", "fp32"])
    assert res.exit_code == 0, (res.output, res.exception)
    rows = {Path(r["file"]).suffix: r for r in csv.DictReader(out.open())}
    assert sorted(rows) == [".dcm", ".png"]
    cols = [c for c in rows[".png"] if c.startswith("p_")]
    assert len(cols) == 3
    for c in cols:
        assert abs(float(rows[".png"][c]) - float(rows[".dcm"][c])) < 1e-3
    assert rows[".png"]["predicted"] == rows[".dcm"]["predicted"]


def test_app_predicts_an_uploaded_dicom(pair: tuple[Path, Path], data_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from serve_helpers import make_settings

    from hica.serve import create_app

    settings = make_settings(tmp_path, data_root, ("tiny",))
    png, dcm = pair
    with TestClient(create_app(settings)) as client:
        got = {}
        for f, kind in ((png, "image/png"), (dcm, "application/dicom")):
            files = [("files", (f.name, f.read_bytes(), kind))]
            r = client.post("/api/predict", data={"model": "tiny", "explain": "false"}, files=files)
            assert r.status_code == 200, r.text
            res = r.json()["results"][0]
            assert res["file"] == f.name
            got[f.suffix] = res["probs"]
    assert got[".dcm"] == pytest.approx(got[".png"], abs=1e-3)

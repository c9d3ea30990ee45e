"""DICOM files → 8-bit PIL images with pydicom: modality LUT, VOI LUT / window, MONOCHROME1, colour.

Grey images go through the DICOM grey-scale pipeline (Modality LUT or rescale slope / intercept, then the
first VOI LUT or window centre / width) and the VOI output range is mapped linearly onto 0..255; without a
VOI transform 8-bit unsigned values are kept as they are and anything else is min-max scaled. MONOCHROME1
is inverted so that bright always means dense. RGB, YBR_FULL(_422) and PALETTE COLOR become RGB.
Multi-frame objects and compressed pixel data that no installed pydicom plugin decodes are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hica.errors import HicaError

log = logging.getLogger(__name__)

DICOM_EXTENSION = ".dcm"
DICOM_MAGIC = b"DICM"  # at byte 128, after the 128-byte preamble (DICOM Part 10 files)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CONVERT = "gdcmconv --raw in.dcm out.dcm (GDCM) or dcmdjpeg / dcmdjpls / dcmdrle (DCMTK)"


def has_dicom_magic(path: str | Path) -> bool:
    """True when the file has the DICOM Part 10 marker ``DICM`` at byte 128 (False if unreadable)."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == DICOM_MAGIC


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm`` file, or any file with the DICOM marker (DICOM files often have no extension)."""
    return Path(path).suffix.lower() == DICOM_EXTENSION or has_dicom_magic(path)


def _refuse(path: Path, why: str) -> HicaError:
    return HicaError(f"cannot read image {path}: {why}")


def _read_dataset(path: Path) -> Any:
    """Parse the file, leaving large values (the pixel data) unread until they are needed."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        if path.stat().st_size == 0:
            raise _refuse(path, "the file is empty")
        # force=True reads legacy files without the 128-byte preamble; garbage is caught below.
        return pydicom.dcmread(path, defer_size="256 KB", force=not has_dicom_magic(path))
    except FileNotFoundError as e:
        raise HicaError(f"image file not found: {path}") from e
    except HicaError:
        raise
    except OSError as e:
        raise _refuse(path, f"cannot open the file ({e})") from e
    except InvalidDicomError as e:
        raise _refuse(path, f"not a valid DICOM file ({e})") from e
    except Exception as e:  # pydicom raises many types on damaged files; all mean "unreadable"
        raise _refuse(path, f"damaged or truncated DICOM file ({type(e).__name__}: {e})") from e


def _check_shape(path: Path, ds: Any, max_pixels: int | None) -> None:
    """Refuse objects without one decodable 2-D image before any pixel data is read."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        if "Rows" not in ds and not has_dicom_magic(path):
            raise _refuse(path, "not a DICOM file (no DICM marker at byte 128 and no image elements)")
        sop = ds.get("SOPClassUID")
        what = f" (SOP class {sop.name})" if hasattr(sop, "name") else ""
        raise _refuse(path, f"the DICOM file has no pixel data{what}: it is truncated or holds no image")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise _refuse(path, f"the DICOM file lacks a valid image size ({e})") from e
    if frames > 1:
        raise _refuse(
            path,
            f"multi-frame DICOM with {frames} frames; hica classifies single images: export one frame "
            "(e.g. the key image) as its own DICOM or PNG file",
        )
    if rows <= 0 or cols <= 0:
        raise _refuse(path, f"the DICOM image is {cols}x{rows} pixels")
    if max_pixels is not None and rows * cols > max_pixels:
        raise _refuse(
            path, f"{cols}x{rows} = {rows * cols:,} pixels is over the limit of {max_pixels:,} pixels"
        )


def _transfer_syntax(ds: Any) -> Any:
    """The dataset's transfer syntax; for legacy files without one, the encoding it was read with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = ds.original_encoding[0] if ds.original_encoding[0] is not None else True
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return meta.TransferSyntaxUID


def _decode(path: Path, ds: Any) -> tuple[np.ndarray, str]:
    """Pixel values (YBR converted to RGB) and the photometric interpretation they are in."""
    from pydicom.pixels import get_decoder

    ts = _transfer_syntax(ds)
    name = f"{ts.name} ({ts})" if ts.name != str(ts) else str(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as e:
        raise _refuse(
            path,
            f"its transfer syntax {name} cannot be decoded; convert it to uncompressed DICOM or PNG, "
            f"e.g. {_CONVERT}",
        ) from e
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
        raise _refuse(
            path,
            f"its transfer syntax {name} needs a decoder plugin that is not installed ({missing}); install "
            f"one, or convert the file to uncompressed DICOM, e.g. {_CONVERT}",
        )
    try:
        arr, props = decoder.as_array(ds, as_rgb=True)
    except Exception as e:  # decoder plugins raise arbitrary types on damaged data
        raise _refuse(path, f"cannot decode its pixel data ({name}): {type(e).__name__}: {e}") from e
    pi = str(props.get("photometric_interpretation") or ds.get("PhotometricInterpretation", "")).strip()
    return arr, pi


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of ``lo``→0 and ``hi``→255, clipped and rounded (all 0 when ``lo == hi``)."""
    if hi == lo:
        return np.zeros(values.shape, dtype=np.uint8)
    out = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _has_modality_transform(ds: Any) -> bool:
    if ds.get("ModalityLUTSequence"):
        return True
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    return slope is not None and intercept is not None and (float(slope), float(intercept)) != (1.0, 0.0)


def _voi(path: Path, values: np.ndarray, ds: Any) -> tuple[np.ndarray, float, float] | None:
    """Apply the first VOI LUT (preferred) or window; (output, value for black, value for white) or None."""
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    has_lut = bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None
    try:
        if has_lut:
            n, first = int(seq[0].LUTDescriptor[0]) or 65536, int(seq[0].LUTDescriptor[1])
            # Integer inputs inside the table's domain (pydicom indexes the table with them).
            inputs = np.clip(np.rint(values), first, first + n - 1).astype(np.int64)
            table = apply_voi_lut(np.arange(first, first + n, dtype=np.int64), ds)
            black, white = (table.min(), table.max()) if table[-1] >= table[0] else (table.max(), table.min())
            return apply_voi_lut(inputs, ds), float(black), float(white)
        with np.errstate(over="ignore"):  # the probes saturate a SIGMOID window on purpose
            ends = apply_voi_lut(np.array([-1e30, 1e30]), ds)
        return apply_voi_lut(values, ds), float(ends[0]), float(ends[1])
    except (ValueError, NotImplementedError, IndexError, TypeError, AttributeError) as e:
        log.warning("%s: ignoring its VOI LUT / window (%s); scaling min-max instead", path, e)
        return None


def _grey(path: Path, arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored grey values → 8-bit display values (MONOCHROME2 sense: 0 black)."""
    from pydicom.pixels import apply_modality_lut

    modality = _has_modality_transform(ds)
    values = apply_modality_lut(arr, ds) if modality else arr
    voi = _voi(path, values, ds)
    if voi is not None:
        out, black, white = voi
        return _scale(out, black, white)
    if arr.dtype == np.uint8 and int(ds.get("BitsStored") or 0) == 8 and not modality:
        return arr  # already 8-bit display values
    if values.dtype.kind == "f" and not np.isfinite(values).all():  # float pixel data with NaN / inf
        finite = np.isfinite(values)
        fill = float(values[finite].min()) if finite.any() else 0.0
        values = np.where(finite, values, fill)
    return _scale(values, float(values.min()), float(values.max()))


def _colour(path: Path, arr: np.ndarray, ds: Any, pi: str) -> np.ndarray:
    """RGB (from RGB, YBR or a palette) as 8-bit."""
    if pi == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as e:  # missing or malformed palette tables
            raise _refuse(path, f"cannot apply its PALETTE COLOR lookup tables ({e})") from e
        bits = 16 if arr.dtype == np.uint16 else 8
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    if arr.dtype == np.uint8 and bits == 8:
        return arr
    return _scale(arr, 0.0, float(2**bits - 1))


def read_dicom(path: str | Path, max_pixels: int | None = None) -> Image.Image:
    """Read a single-frame DICOM file as an 8-bit PIL image: ``L`` for grey, ``RGB`` for colour.

    ``max_pixels`` (default PIL's ``Image.MAX_IMAGE_PIXELS``) bounds memory: larger images are refused
    before decoding. Every failure is a HicaError naming the file and saying why.
    """
    path = Path(path)
    if max_pixels is None:
        max_pixels = Image.MAX_IMAGE_PIXELS
    ds = _read_dataset(path)
    try:
        _check_shape(path, ds, max_pixels)
        arr, pi = _decode(path, ds)
        if arr.ndim == 3 and pi in ("YBR_FULL", "YBR_FULL_422"):  # pydicom converts these; in case not
            from pydicom.pixels import convert_color_space

            arr, pi = convert_color_space(arr, pi, "RGB"), "RGB"
        if arr.ndim == 2 and pi in ("MONOCHROME1", "MONOCHROME2"):
            out = _grey(path, arr, ds)
            return Image.fromarray(255 - out if pi == "MONOCHROME1" else out)
        if (arr.ndim == 3 and arr.shape[-1] == 3 and pi == "RGB") or (
            arr.ndim == 2 and pi == "PALETTE COLOR"
        ):
            return Image.fromarray(np.ascontiguousarray(_colour(path, arr, ds, pi)))
    except HicaError:
        raise
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:  # malformed image elements
        raise _refuse(path, f"invalid DICOM image attributes ({type(e).__name__}: {e})") from e
    raise _refuse(
        path,
        f"unsupported DICOM photometric interpretation {pi!r} with {ds.get('SamplesPerPixel', '?')} "
        "sample(s) per pixel; hica reads MONOCHROME1/2, RGB, YBR_FULL(_422) and PALETTE COLOR",
    )

"""Samples and datasets: the one shape every data format produces."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hica.data.dicom import has_dicom_magic, is_dicom, read_dicom
from hica.errors import HicaError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


@dataclass(frozen=True)
class Sample:
    """One labelled image: a file ``path`` or an in-memory ``array`` (H, W[, C] uint8), optional masks."""

    id: str
    label: int
    path: Path | None = None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)
    masks: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if (self.path is None) == (self.array is None):
            raise ValueError(f"sample {self.id}: give exactly one of path / array")


@dataclass
class Dataset:
    """A labelled dataset with named splits (``train``, ``val``, ``test``).

    ``name`` identifies the data (and its split definition) in the feature cache;
    ``descriptors`` names the class-text YAML; ``source`` says where it was read from.
    """

    name: str
    classes: list[str]
    splits: dict[str, list[Sample]]
    descriptors: str | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        if name not in self.splits:
            raise HicaError(f"dataset {self.name} has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per class in each split."""
        out: dict[str, dict[str, int]] = {}
        for sname, samples in self.splits.items():
            labels = np.bincount([s.label for s in samples], minlength=len(self.classes))
            out[sname] = {c: int(n) for c, n in zip(self.classes, labels, strict=True)}
        return out

    def fingerprint(self) -> str:
        """Hash of the class list and every split's sample ids and labels."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        for sname in sorted(self.splits):
            h.update(sname.encode())
            for s in self.splits[sname]:
                h.update(f"{s.id}\t{s.label}\n".encode())
        return h.hexdigest()[:16]


def is_image_file(path: Path) -> bool:
    """An image extension, or a DICOM file without one (by its ``DICM`` marker; DICOMDIR indexes excluded)."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    return path.name.upper() != "DICOMDIR" and has_dicom_magic(path)


# EXIF orientation (tag 0x0112) → the transpose that shows the image upright, as ImageOps.exif_transpose does.
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_HIGH_DEPTH_MODES = ("I", "F")  # and every "I;16*" mode
# What can go wrong decoding or normalising a file: all become HicaError naming it.
_READ_ERRORS = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    struct.error,
    Image.DecompressionBombError,
)


def _orientation(im: Image.Image) -> int | None:
    """The EXIF orientation tag, 1..8 (1 = upright); None when there is none or it is not 1..8."""
    value = im.getexif().get(_EXIF_ORIENTATION)
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _upright(im: Image.Image, orientation: int | None) -> Image.Image:
    """``im`` transposed per an EXIF orientation (unchanged for None / 1)."""
    method = _ORIENTATION.get(orientation or 1)
    return im if method is None else im.transpose(method)


def _alpha_on_black(im: Image.Image) -> Image.Image:
    """LA / RGBA (any alpha mode) → L / RGB composited on black: opaque pixels keep their exact values."""
    im = im.convert("LA" if im.mode in ("LA", "La") else "RGBA")
    a = np.asarray(im).astype(np.uint16)
    out = (a[..., :-1] * a[..., -1:] + 127) // 255
    out = out.astype(np.uint8)
    return Image.fromarray(out[..., 0] if im.mode == "LA" else out, "L" if im.mode == "LA" else "RGB")


def _high_depth_to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer / float grey → L, scaled linearly from the image's min..max to 0..255.

    Non-finite floats take the nearest end (NaN → min); a constant image becomes all 0."""
    a = np.asarray(im).astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return Image.new("L", im.size, 0)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo)
    if hi <= lo:
        return Image.new("L", im.size, 0)
    return Image.fromarray(np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8), "L")


def to_8bit(im: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit ``L`` or ``RGB``; ``L`` and ``RGB`` images are returned unchanged.

    16-bit (``I;16*``), 32-bit integer (``I``) and float (``F``) grey images are scaled linearly from their
    own min..max to 0..255 (``convert("L")`` would clip them to white); ``1`` → L; alpha (``LA``, ``RGBA``,
    ``PA``, ``P`` with transparency) is composited on black, i.e. premultiplied: opaque pixels keep their
    values, transparent ones become black, the background of ultrasound and X-ray; ``CMYK``, ``YCbCr``,
    ``LAB``, ``HSV``, ``RGBX`` and palette images → RGB.
    """
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode in _HIGH_DEPTH_MODES or mode.startswith("I;16"):
        return _high_depth_to_8bit(im)
    if mode == "1":
        return im.convert("L")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        return _alpha_on_black(im) if has_alpha else im
    if mode in ("LA", "La", "RGBA", "RGBa"):
        return _alpha_on_black(im)
    return im.convert("RGB")


def load_image(sample: Sample, max_pixels: int | None = None) -> Image.Image:
    """Open a sample's image fully decoded, upright and 8-bit (``L`` or ``RGB``); every reader (training,
    predict, explain, the web app) goes through here, so they all see the same pixels.

    The EXIF orientation is applied (``ImageOps.exif_transpose``) and the mode normalised by :func:`to_8bit`
    (16-bit / float scaled min..max, alpha composited on black, CMYK etc. → RGB); ordinary 8-bit L / RGB
    files without an EXIF orientation come back exactly as ``Image.open(path)`` decodes them.
    Corrupt, truncated or non-image files raise HicaError naming the file, and so do images over
    ``max_pixels`` (default: PIL's decompression-bomb limit ``Image.MAX_IMAGE_PIXELS``), checked from the
    header before anything is decoded.

    DICOM (``.dcm`` or the ``DICM`` marker) is read by :func:`hica.data.dicom.read_dicom`.
    """
    if sample.array is not None:
        return to_8bit(Image.fromarray(sample.array))
    path = sample.path
    if is_dicom(path):
        return read_dicom(path, max_pixels)
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as im:
            if limit is not None and im.size[0] * im.size[1] > limit:
                w, h = im.size
                raise HicaError(
                    f"cannot read image {path}: {w}x{h} = {w * h:,} pixels is over the limit of "
                    f"{limit:,} pixels per image (refused before decoding)"
                )
            im.load()
            return to_8bit(ImageOps.exif_transpose(im))  # a copy, detached from the file
    except HicaError:
        raise
    except FileNotFoundError as e:
        raise HicaError(f"image file not found: {path}") from e
    except _READ_ERRORS as e:
        why = str(e).rstrip(".")
        raise HicaError(
            f"cannot read image {path}: {why}. Replace or remove the file, or pass --skip-bad to skip "
            "unreadable images with a warning"
        ) from e


def _image_orientation(sample: Sample) -> int | None:
    """The EXIF orientation of a sample's image file, from its header (None for arrays, DICOM, no tag)."""
    if sample.path is None or is_dicom(sample.path):
        return None
    try:
        with Image.open(sample.path) as im:
            return _orientation(im)
    except _READ_ERRORS as e:
        raise HicaError(f"cannot read image {sample.path}: {e}") from e


def load_mask(sample: Sample, size: tuple[int, int] | None = None) -> np.ndarray:
    """Union of a sample's lesion masks as a bool array (H, W); all False when it has none.

    ``size`` is the (upright) image's (width, height); a mask of another size raises HicaError. A mask is
    put upright like its image: by its own EXIF orientation if it has one, else by its image's (a mask
    without one is taken as drawn on the image file's stored pixels), so the two stay aligned.
    """
    if size is None:
        size = load_image(sample).size
    union = np.zeros((size[1], size[0]), dtype=bool)
    image_orientation = _image_orientation(sample) if sample.masks else None
    for mpath in sample.masks:
        try:
            with Image.open(mpath) as m:
                m.load()
                own = _orientation(m)
                m = _upright(m, own if own is not None else image_orientation)
                if m.size != size:
                    raise HicaError(
                        f"mask {mpath} is {m.size[0]}x{m.size[1]} but its image is "
                        f"{size[0]}x{size[1]}; masks must match their image's size"
                    )
                union |= np.asarray(m.convert("L")) > 127
        except HicaError:
            raise
        except _READ_ERRORS as e:
            raise HicaError(f"cannot read mask {mpath}: {e}") from e
    return union

"""Samples and datasets: the one shape every data format produces."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def load_image(sample: Sample, max_pixels: int | None = None) -> Image.Image:
    """Open a sample's image fully decoded; corrupt, truncated or non-image files raise HicaError, and so
    do images over ``max_pixels`` (default: PIL's decompression-bomb limit), checked before decoding.

    DICOM (``.dcm`` or the ``DICM`` marker) is read by :func:`hica.data.dicom.read_dicom`.
    """
    if sample.array is not None:
        return Image.fromarray(sample.array)
    path = sample.path
    if is_dicom(path):
        return read_dicom(path, max_pixels)
    try:
        with Image.open(path) as im:
            if max_pixels is not None and im.size[0] * im.size[1] > max_pixels:
                w, h = im.size
                raise HicaError(
                    f"cannot read image {path}: {w}x{h} = {w * h:,} pixels is over the limit of "
                    f"{max_pixels:,} pixels per image"
                )
            im.load()
            return im.copy()
    except FileNotFoundError as e:
        raise HicaError(f"image file not found: {path}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise HicaError(
            f"cannot read image {path}: {e}. Replace or remove the file, or pass --skip-bad to skip "
            "unreadable images with a warning"
        ) from e


def load_mask(sample: Sample, size: tuple[int, int] | None = None) -> np.ndarray:
    """Union of a sample's lesion masks as a bool array (H, W); all False when it has none.

    ``size`` is the image's (width, height); a mask of another size raises HicaError.
    """
    if size is None:
        size = load_image(sample).size
    union = np.zeros((size[1], size[0]), dtype=bool)
    for mpath in sample.masks:
        try:
            with Image.open(mpath) as m:
                m.load()
                if m.size != size:
                    raise HicaError(
                        f"mask {mpath} is {m.size[0]}x{m.size[1]} but its image is {size[0]}x{size[1]}; "
                        "masks must match their image's size"
                    )
                union |= np.asarray(m.convert("L")) > 127
        except (UnidentifiedImageError, OSError) as e:
            raise HicaError(f"cannot read mask {mpath}: {e}") from e
    return union

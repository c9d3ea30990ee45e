"""Input safety for the app: names that cannot escape their folder, file types by content, upload limits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hica.errors import HicaError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
JOB_ID_RE = re.compile(r"^[0-9a-f]{12}$")

# Magic numbers of the accepted image formats; DICOM carries "DICM" after a 128-byte preamble.
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


class UploadError(HicaError):
    """A refused upload or request; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: str, what: str = "model name") -> str:
    """A model name that is one safe path component: letters, digits, ``_ . -``, no ``..``, ≤ 64 chars."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise UploadError(
            f"{what} {name!r} is not allowed: use 1-64 letters, digits, '_', '-' or '.', starting with a "
            "letter or digit (no '/' or '..')",
            400,
        )
    return name


def upload_message(message: str, path: Path, name: str) -> str:
    """A library error about the server-side file ``path`` as a user reads it: the uploaded file's name
    instead of the path, without the command-line advice (``--skip-bad``) that does not apply here."""
    return message.replace(str(path), name).split(". Replace or remove the file")[0]


def check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id or ""):
        raise UploadError(f"job id {job_id!r} is not a job id (12 hex digits)", 400)
    return job_id


def inside(root: Path, *parts: str) -> Path:
    """``root/parts…`` resolved, refused unless it stays under ``root`` (symlinks included)."""
    root = root.resolve()
    p = root.joinpath(*parts).resolve()
    if p != root and not p.is_relative_to(root):
        raise UploadError(f"path {'/'.join(parts)!r} leaves its folder", 400)
    return p


def display_name(filename: str | None, index: int) -> str:
    """An uploaded file's name reduced to a safe base name for display and CSV rows (never used as a path
    on its own)."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[^A-Za-z0-9 ()_.,+-]", "_", base).strip(" .") or f"upload-{index}"
    return base[:120]


def sniff_type(head: bytes) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from the first bytes of a file; None for anything else."""
    if head.startswith(_PNG):
        return "png"
    if head.startswith(_JPEG):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


EXTENSION = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


@dataclass
class Upload:
    """A checked upload written into a request or job folder."""

    name: str  # display name (sanitized)
    path: Path  # where it was written (a generated name inside the folder)
    kind: str  # png | jpeg | dicom
    width: int
    height: int


def check_image(data: bytes, name: str, max_pixels: int) -> tuple[str, int, int]:
    """Type by content and size in pixels (read from the header, before decoding); raises UploadError."""
    kind = sniff_type(data[:132])
    if kind is None:
        raise UploadError(
            f"{name}: not a PNG, JPEG or DICOM image (checked by content, not by the file extension)", 415
        )
    if kind == "dicom":
        return kind, 0, 0  # sized by the library's reader when the image is decoded
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:  # the header declares more pixels than PIL will open
        raise UploadError(f"{name}: {e}; the limit is {max_pixels:,} pixels per image", 413) from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UploadError(
            f"{name}: cannot read the image ({e}); upload an intact PNG, JPEG or DICOM", 422
        ) from e
    if w * h > max_pixels:
        raise UploadError(
            f"{name}: {w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,} pixels per image", 413
        )
    return kind, w, h


def check_size(data: bytes, name: str, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise UploadError(
            f"{name}: {len(data):,} bytes is over the limit of {max_bytes:,} bytes per file", 413
        )
    if not data:
        raise UploadError(f"{name}: the file is empty", 422)

"""Read uploaded files under the limits, check them by content and write them atomically into one folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from hica.errors import HicaError
from hica.io import atomic_write
from hica.serve.safety import (
    EXTENSION,
    Upload,
    UploadError,
    check_image,
    check_size,
    display_name,
    upload_message,
)
from hica.serve.settings import Limits


def check_count(n: int, limits: Limits, what: str = "files") -> None:
    if n == 0:
        raise UploadError(f"no {what} uploaded: choose at least one image", 400)
    if n > limits.max_files:
        raise UploadError(
            f"{n} {what} in one request is over the limit of {limits.max_files} files per request", 413
        )


async def read_capped(file: Any, max_bytes: int) -> bytes:
    """At most ``max_bytes + 1`` bytes of an UploadFile (enough to tell that it is too large)."""
    return await file.read(max_bytes + 1)


def decode_check(path: Path, name: str, max_pixels: int) -> tuple[int, int]:
    """Decode the written file with the library's loader (DICOM included), which refuses images over
    ``max_pixels`` before decoding; UploadError 422 when unreadable or too large."""
    from hica.data.sample import Sample, load_image

    try:
        im = load_image(Sample(id=name, label=-1, path=path), max_pixels=max_pixels)
    except HicaError as e:
        why = upload_message(str(e).replace(f"cannot read image {path}: ", ""), path, name)
        raise UploadError(f"{name}: cannot read the image ({why})", 422) from e
    return im.size


async def save_upload(
    file: Any, index: int, folder: Path, limits: Limits, prefix: str = "", decode: bool = False
) -> Upload:
    """Check one upload (bytes, type by content, pixels) and write it as ``folder/<prefix><index><ext>``."""
    name = display_name(getattr(file, "filename", None), index)
    data = await read_capped(file, limits.max_file_bytes)
    check_size(data, name, limits.max_file_bytes)
    kind, w, h = check_image(data, name, limits.max_pixels)
    path = folder / f"{prefix}{index:04d}{EXTENSION[kind]}"
    atomic_write(path, lambda p: p.write_bytes(data))
    if decode or kind == "dicom":
        try:  # decoding is CPU work: off the event loop, so other requests are answered meanwhile
            w, h = await run_in_threadpool(decode_check, path, name, limits.max_pixels)
        except UploadError:
            path.unlink(missing_ok=True)
            raise
    return Upload(name=name, path=path, kind=kind, width=w, height=h)

"""Atomic file writes (a reader never sees a half-written output) and output folders checked and locked."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import io
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hica.errors import HicaError

# The process umask, read once at import (reading it means setting it, which is not thread-safe later).
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


GZ = ".gz"


def open_text(path: str | Path) -> io.TextIOBase:
    """Open the text file ``path`` for reading (CSV-ready: ``newline=""``), or its gzip copy ``path.gz`` when
    only that exists (large committed tables, e.g. ``predictions.csv.gz``, are stored compressed)."""
    path = Path(path)
    if path.is_file():
        return open(path, encoding="utf-8", newline="")
    gz = path.with_name(path.name + GZ)
    if gz.is_file():
        return gzip.open(gz, "rt", encoding="utf-8", newline="")
    raise HicaError(f"{path} not found (nor {gz.name}): re-run the command that makes it")


def write_text_replacing_gz(path: str | Path, text: str) -> Path:
    """:func:`write_text`, and remove a compressed copy ``path.gz`` left from an earlier run (it would be
    stale: :func:`open_text` reads the plain file first, and ``git`` would keep the old one)."""
    out = write_text(path, text)
    Path(str(path) + GZ).unlink(missing_ok=True)
    return out


def gzip_file(path: str | Path) -> Path:
    """Write ``path.gz`` next to ``path``; the same input gives the same bytes (no time stamp, no name)."""
    path = Path(path)
    data = path.read_bytes()

    def writer(tmp: Path) -> None:
        with tmp.open("wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as f:
            f.write(data)

    return atomic_write(path.with_name(path.name + GZ), writer)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of torch tensors as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


# -- output folders --------------------------------------------------------------------------------------
def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


def _file_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a folder, if any."""
    for p in (*reversed(path.parents), path):
        if p.exists() and not p.is_dir():
            return p
    return None


def _make_writable_dir(path: Path) -> str | None:
    """Create the folder ``path`` if needed; None if a file can be written into it, else why not."""
    blocker = _file_ancestor(path)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{path} is not writable ({_os_reason(e)})"
    return None


def ensure_out_dir(path: str | Path, what: str = "--out") -> Path:
    """Create the output folder ``path`` if needed and check that files can be written into it.

    Raises a HicaError naming the path when it (or a parent) is a file, cannot be created, or is read-only,
    so a command fails before it computes anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HicaError(f"{what} {path} is a file, not a folder: choose a folder for the outputs")
    why = _make_writable_dir(path)
    if why is not None:
        raise HicaError(f"cannot write {what} {path}: {why}; choose another folder")
    return path


def ensure_out_file(path: str | Path, what: str = "--out") -> Path:
    """Check that the file ``path`` can be written (its folder is created if needed); HicaError if not."""
    path = Path(path)
    if path.is_dir():
        raise HicaError(f"{what} {path} is a folder: give a file name")
    why = _make_writable_dir(path.parent)
    if why is not None:
        raise HicaError(f"cannot write {what} {path}: {why}; choose another path")
    return path


# Locks this process holds: resolved folder -> (owning thread id, depth). A thread that already holds a
# folder's lock may take it again (the CLI locks before calling a runner that locks too); flock alone would
# refuse that, since every open() is a separate lock.
_HELD: dict[Path, tuple[int, int]] = {}
_HELD_GUARD = threading.Lock()
LOCK_NAME = ".lock"


def _busy(path: Path, pid: str) -> HicaError:
    return HicaError(
        f"another hica run is writing {path} (pid {pid or '?'}); wait for it or choose another --out"
    )


@contextlib.contextmanager
def out_lock(path: str | Path, what: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on the output folder ``path`` (``path/.lock``, created if needed) while the body
    runs; a second run writing the same folder gets a HicaError naming the folder and the holder's pid.

    The lock is an ``flock``: the kernel drops it when the holder exits, however it exits (a SIGKILL
    included), so a stale ``.lock`` file never blocks a later run."""
    path = ensure_out_dir(path, what)
    key = path.resolve()
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            if held[0] != me:
                raise _busy(path, str(os.getpid()))
            _HELD[key] = (me, held[1] + 1)
    if held is not None:  # re-entered by the thread that holds it
        try:
            yield path
        finally:
            with _HELD_GUARD:
                _HELD[key] = (me, _HELD[key][1] - 1)
        return
    lock_file = path / LOCK_NAME
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise HicaError(f"cannot create the lock file {lock_file} ({_os_reason(e)})") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise HicaError(f"cannot lock {lock_file} ({_os_reason(e)})") from e
            raise _busy(path, os.pread(fd, 32, 0).decode(errors="replace").strip()) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        with _HELD_GUARD:
            _HELD[key] = (me, 1)
        try:
            yield path
        finally:
            with _HELD_GUARD:
                _HELD.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # the file stays (removing a flock file races with a new holder)
    finally:
        os.close(fd)  # closing the last descriptor releases the flock

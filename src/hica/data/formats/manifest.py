"""CSV manifest: ``path,label[,split][,mask]``; paths relative to the CSV's folder; masks ``;``-separated.

The file is UTF-8 (a byte-order mark is ignored; LF or CRLF line ends). Every image and mask path must
resolve (symlinks followed) inside the manifest's folder: ``..`` or absolute paths that leave it, and
symlinks pointing out of it, are refused unless ``allow_outside``. Each image may appear once.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path

from hica.data.sample import Sample
from hica.errors import HicaError

log = logging.getLogger(__name__)

COLUMNS = ("path", "label", "split", "mask")
HEADER = "path,label[,split][,mask]"
_STANDARD_SPLITS = ("train", "val", "test")


@dataclass
class _Row:
    line: int
    rel: str
    label: str
    split: str
    image: Path
    masks: tuple[tuple[str, Path], ...]


def _decode(path: Path) -> str:
    """The manifest's text (UTF-8, BOM dropped); NUL or non-UTF-8 bytes are an error naming the line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise HicaError(f"manifest {path} cannot be read: {e.strerror or e}") from None
    if b"\0" in raw:
        line = raw[: raw.index(b"\0")].count(b"\n") + 1
        raise HicaError(f"{path}:{line}: manifest contains a NUL byte (a binary file?); save it as UTF-8 CSV")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise HicaError(
            f"{path}:{line}: manifest is not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8 CSV"
        ) from None


def _check_header(path: Path, fields: list[str] | None, text: str) -> None:
    if not text.strip():
        raise HicaError(f"manifest {path} is empty; it needs a header line {HEADER} and one row per image")
    if not fields:
        raise HicaError(f"{path}:1: the first line must be the header {HEADER}, got an empty line")
    unknown = [f for f in fields if f not in COLUMNS]
    if unknown:
        raise HicaError(
            f"{path}:1: unknown column(s) {unknown} in the header; allowed columns are {HEADER} "
            "(lower case, no spaces)"
        )
    dup = sorted({f for f in fields if fields.count(f) > 1})
    if dup:
        raise HicaError(f"{path}:1: column(s) {dup} appear twice in the header; keep one of each")
    if not {"path", "label"} <= set(fields):
        raise HicaError(f"manifest {path} needs a header with columns {HEADER}, got {','.join(fields)}")


def _inside(path: Path, line: int, root: Path, what: str, rel: str, allow_outside: bool) -> Path:
    """``root / rel`` resolved; refused unless it stays under ``root`` (or ``allow_outside``)."""
    p = (root / rel).resolve()
    if not allow_outside and not p.is_relative_to(root):
        raise HicaError(
            f"{path}:{line}: {what} {rel!r} resolves to {p}, outside the manifest's folder {root}; paths "
            "(and symlinks) must stay inside it: move the manifest up or the files in"
        )
    return p


def _parse(path: Path, root: Path, allow_outside: bool) -> list[_Row]:
    """The manifest's rows, with header, field counts, empty values, escapes and duplicates checked."""
    text = _decode(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="\0extra")
    rows: list[_Row] = []
    seen: dict[Path, tuple[int, str]] = {}
    try:
        _check_header(path, reader.fieldnames, text)
        for row in reader:
            i = reader.line_num
            if "\0extra" in row:
                n = len(reader.fieldnames or []) + len(row["\0extra"])
                raise HicaError(
                    f"{path}:{i}: row has {n} fields but the header has {len(reader.fieldnames or [])}; "
                    "quote values that contain commas"
                )
            rel, label = row["path"] or "", row["label"] or ""
            if not rel.strip() or not label.strip():
                raise HicaError(
                    f"{path}:{i}: every row needs a path and a label, got path {rel!r}, label {label!r}"
                )
            if label != label.strip():
                raise HicaError(f"{path}:{i}: label {label!r} has leading or trailing spaces; remove them")
            split = row.get("split") or "train"
            if split != split.strip() or (
                split not in _STANDARD_SPLITS and split.lower() in _STANDARD_SPLITS
            ):
                raise HicaError(
                    f"{path}:{i}: split {split!r} is not one of {list(_STANDARD_SPLITS)} as written; "
                    "write split names in lower case without spaces"
                )
            image = _inside(path, i, root, "image", rel, allow_outside)
            if image in seen:
                first, first_rel = seen[image]
                same = rel if rel == first_rel else f"{rel} (line {first}: {first_rel})"
                raise HicaError(
                    f"{path}:{i}: image {same} is listed on lines {first} and {i}; each image must appear "
                    "once, in one split (a duplicate would leak between support and test)"
                )
            seen[image] = (i, rel)
            masks = tuple(
                (m, _inside(path, i, root, "mask", m, allow_outside))
                for m in (row.get("mask") or "").split(";")
                if m
            )
            rows.append(_Row(i, rel, label, split, image, masks))
    except csv.Error as e:
        raise HicaError(f"{path}:{reader.line_num}: not a valid CSV row ({e}); fix or remove it") from None
    if not rows:
        raise HicaError(f"manifest {path} has no rows; add one line per image below the header {HEADER}")
    return rows


def _missing(path: Path, r: _Row) -> str | None:
    """Why a row's image or one of its masks cannot be used, or None."""
    for what, rel, p in (("image", r.rel, r.image), *(("mask", m, p) for m, p in r.masks)):
        try:
            state = None if p.is_file() else "is not a file" if p.exists() else "not found"
        except OSError as e:  # a name too long, a folder we may not enter
            state = f"cannot be checked ({e.strerror or e})"
        if state:
            return f"{path}:{r.line}: {what} {rel} {state} (looked at {p})"
    return None


def read_manifest(
    path: str | Path,
    classes: list[str] | None = None,
    skip_bad: bool = False,
    allow_outside: bool = False,
) -> tuple[list[str], dict[str, list[Sample]]]:
    """Read a manifest into (classes, {split: samples}); rows without a split go to ``train``.

    A bad header, an empty path or label, a duplicate image, a path outside the manifest's folder (unless
    ``allow_outside``), a class not in ``classes`` (when given), or a missing image or mask is an error
    naming the CSV line. With ``skip_bad``, rows whose image or mask is missing are skipped with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise HicaError(f"manifest {path} not found")
    rows = _parse(path, path.parent.resolve(), allow_outside)
    found = sorted({r.label for r in rows})
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            line = next(r.line for r in rows if r.label in unknown)
            raise HicaError(f"{path}:{line}: unknown class {unknown[0]!r}; classes are {classes}")
    kept: list[_Row] = []
    for r in rows:
        why = _missing(path, r)
        if why is None:
            kept.append(r)
        elif not skip_bad:
            raise HicaError(f"{why}; fix or remove the row")
        else:
            log.warning("%s; skipped", why)
    if len(kept) < len(rows):
        log.warning(
            "skipped %d of %d row(s) of %s with a missing image or mask",
            len(rows) - len(kept),
            len(rows),
            path,
        )
        emptied = sorted({r.label for r in rows} - {r.label for r in kept})
        if emptied:
            raise HicaError(
                f"{path}: every row of class(es) {emptied} was skipped (missing files); fix those rows"
            )
    splits: dict[str, list[Sample]] = {}
    for r in kept:
        splits.setdefault(r.split, []).append(
            Sample(id=r.rel, label=classes.index(r.label), path=r.image, masks=tuple(p for _, p in r.masks))
        )
    return classes, splits

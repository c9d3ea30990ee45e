"""Integrity of a model folder: the SHA-256 of its weights files, checked against the hashes its model card
(``model_card.json``) lists.

This is the part of model cards that loading needs (``hica.encoders.checkpoint`` checks a folder before it
loads a tensor), so it imports no encoder code; building and rendering cards is ``hica.modelcard``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from hica.errors import HicaError

CARD_JSON = "model_card.json"
WEIGHTS_SUFFIX = ".safetensors"


def sha256_file(path: Path) -> str:
    """Full SHA-256 (hex) of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_hashes(model_dir: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of every weights file (``*.safetensors``) directly in ``model_dir``."""
    d = Path(model_dir)
    return {p.name: sha256_file(p) for p in sorted(d.glob(f"*{WEIGHTS_SUFFIX}")) if p.is_file()}


def read_model_card(model_dir: str | Path) -> dict[str, Any] | None:
    """The folder's ``model_card.json``, or None when it has none; a damaged card raises HicaError."""
    p = Path(model_dir) / CARD_JSON
    if not p.is_file():
        return None
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HicaError(f"model card {p}: not valid JSON ({e}); restore it or retrain the model") from e
    if not isinstance(card, dict) or not isinstance(card.get("weights"), dict) or not card["weights"]:
        raise HicaError(f"model card {p}: no 'weights' hashes; the file is damaged, restore it or retrain")
    return card


_VERIFIED: dict[str, tuple[tuple, dict[str, Any]]] = {}
_VERIFIED_LOCK = threading.Lock()


def _folder_state(d: Path) -> tuple:
    """What changes when any file of the folder is written or replaced: (name, inode, size, mtime, ctime) of
    each. ctime is set by the kernel on every write or utime call, so a file edited and given back its old
    mtime still counts as changed."""
    out = []
    for p in sorted(d.iterdir()):
        if p.is_file():
            st = p.stat()
            out.append((p.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def verify_model_card(model_dir: str | Path) -> dict[str, Any]:
    """The folder's card, checked against its weights files; ``{}`` when the folder has no card (made before
    cards existed: it still loads). A card whose hashes do not match the weights raises HicaError.

    Hashing reads every weights file, so a successful check is remembered until a file of the folder
    changes (a model loaded by ``Predictor`` and its checkpoint encoder, or listed by the app, is hashed
    once).
    """
    d = Path(model_dir)
    state = _folder_state(d) if d.is_dir() else None
    key = str(d.resolve())
    with _VERIFIED_LOCK:
        hit = _VERIFIED.get(key)
    if hit is not None and hit[0] == state:
        return copy.deepcopy(hit[1])
    card = _verify(d)
    if state is not None:
        with _VERIFIED_LOCK:
            _VERIFIED[key] = (state, copy.deepcopy(card))
    return card


def _verify(d: Path) -> dict[str, Any]:
    card = read_model_card(d)
    if card is None:
        return {}
    fix = "restore the original files or retrain the model (`hica finetune` / `hica pretrain`)"
    listed = card["weights"]
    for fname, want in listed.items():
        if not isinstance(fname, str) or "/" in fname or "\\" in fname or not fname.endswith(WEIGHTS_SUFFIX):
            raise HicaError(
                f"model card {d / CARD_JSON}: {fname!r} is not a weights file of this folder; {fix}"
            )
        f = d / fname
        if not f.is_file():
            raise HicaError(f"model {d}: {fname} is listed in its {CARD_JSON} but missing; {fix}")
        got = sha256_file(f)
        if got != want:
            raise HicaError(
                f"model {d}: {fname} does not match its model card (sha256 {got[:12]}…, card says "
                f"{str(want)[:12]}…): the weights were changed after training or the card belongs to "
                f"another model; {fix}"
            )
    extra = sorted(p.name for p in d.glob(f"*{WEIGHTS_SUFFIX}") if p.name not in listed)
    if extra:
        raise HicaError(f"model {d}: weights file {extra[0]} is not in its model card {CARD_JSON}; {fix}")
    return card


__all__ = [
    "CARD_JSON",
    "WEIGHTS_SUFFIX",
    "read_model_card",
    "sha256_file",
    "verify_model_card",
    "weight_hashes",
]

"""Pickle-free, atomic training checkpoints.

A checkpoint is a folder ``<root>/step-00000010`` holding

* ``model.safetensors``: the model state dict (tied tensors stored once, aliases in ``state.json``);
* ``optimizer.safetensors``: every tensor of the optimizer and scheduler state, keyed by its path
  (``optimizer/state/0/exp_avg``);
* ``state.json``: everything else: the non-tensor optimizer/scheduler state (tensors replaced by
  ``{"__tensor__": key}``), the step, the RNG states of python/numpy/torch (lists and base64) and the
  caller's ``extra`` dict (``model_config``, ``classes``, ...).

The folder is written under a temporary name and renamed into place in one ``os.replace``; the
``<root>/latest`` pointer is written after that, and older checkpoints are pruned last, so a crash at
any point leaves the previous checkpoint complete and loadable.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hica.errors import HicaError
from hica.io import write_text

FORMAT = "hica-checkpoint/1"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"
_PREFIX = "step-"


# ---------------------------------------------------------------- RNG states


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    """The python, numpy, torch (and initialised CUDA) RNG states of this process, JSON-encodable."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


# ------------------------------------------------------- state-dict flattening


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested state dict by ``{"__tensor__": key}`` and collect them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, str | int | float | bool) and k is not None:
                raise TypeError(f"cannot store a {type(k).__name__} dict key at {path} in {STATE_FILE}")
            items.append([k, _encode(v, f"{path}/{k}", tensors)])
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} at {path} in {STATE_FILE} (no pickle)")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__items__"}:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj


def _model_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model state dict with tied tensors stored once; returns (tensors, alias -> stored name)."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: dict[int, int] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        ptr = t.untyped_storage().data_ptr()
        ident = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        out[name] = t
        storages[ident[0]] = storages.get(ident[0], 0) + 1
    # Distinct views of one storage cannot be saved by safetensors: copy them.
    for name, t in out.items():
        shared = storages[t.untyped_storage().data_ptr()] > 1
        out[name] = (t.clone() if shared else t).cpu().contiguous()
    return out, aliases


# ------------------------------------------------------------------ save/load


def _step_dirs(root: Path) -> list[Path]:
    dirs = [p for p in root.glob(f"{_PREFIX}*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(dirs, key=lambda p: int(p.name[len(_PREFIX) :]))


def save_checkpoint(
    dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    step: int,
    extra: dict[str, Any] | None = None,
    *,
    rng: list[dict[str, Any]] | None = None,
    keep: int = 2,
) -> Path:
    """Write the checkpoint for ``step`` under the checkpoint root ``dir``; return its folder.

    ``rng`` is one :func:`capture_rng` state per rank (default: this process's). ``keep`` newest
    checkpoints are kept (``keep <= 0`` keeps all).
    """
    from safetensors.torch import save_file

    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{_PREFIX}{step:08d}"
    final = root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        model_t, aliases = _model_tensors(model)
        save_file(model_t, str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
        opt_t: dict[str, torch.Tensor] = {}
        state = {
            "format": FORMAT,
            "step": int(step),
            "model_aliases": aliases,
            "optimizer": _encode(optimizer.state_dict(), "optimizer", opt_t) if optimizer else None,
            "scheduler": _encode(scheduler.state_dict(), "scheduler", opt_t) if scheduler else None,
            "rng": rng if rng is not None else [capture_rng()],
            "extra": _encode(extra or {}, "extra", {}),
        }
        save_file(opt_t, str(tmp / OPTIM_FILE), metadata={"format": "pt", "step": str(step)})
        (tmp / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving a step: move the old one aside first (rename cannot overwrite)
            os.replace(final, root / f".{name}.old")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(root / f".{name}.old", ignore_errors=True)
    write_text(root / LATEST, name + "\n")
    if keep > 0:
        for old in _step_dirs(root)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``run_dir`` (or ``run_dir/checkpoints``), else None."""
    root = Path(run_dir)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        return None
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text(encoding="utf-8").strip()
        if (cand / STATE_FILE).is_file() and (cand / MODEL_FILE).is_file():
            return cand
    dirs = _step_dirs(root)
    return dirs[-1] if dirs else None


def load_checkpoint(
    dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    expect: dict[str, Any] | None = None,
    restore_rng_state: bool = True,
    rank: int = 0,
) -> dict[str, Any]:
    """Restore a checkpoint folder (or the latest one under a root) into model/optimizer/scheduler/RNG.

    ``expect`` maps ``extra`` keys (``model_config``, ``classes``) to the values the caller needs; a
    mismatch raises :class:`HicaError`. Returns ``{"step", "extra", "path"}``.
    """
    from safetensors.torch import load_file

    path = Path(dir)
    if not (path / STATE_FILE).is_file():
        latest = find_latest(path)
        if latest is None:
            raise HicaError(f"{path}: no checkpoint found (expected {STATE_FILE} or step-* folders)")
        path = latest
    state_file = path / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise HicaError(f"{state_file}: unreadable checkpoint state ({e})") from e
    if state.get("format") != FORMAT:
        raise HicaError(f"{state_file}: not a {FORMAT} checkpoint (format={state.get('format')!r})")
    extra = _decode(state.get("extra") or {}, {})
    for key, want in (expect or {}).items():
        have = extra.get(key)
        if _decode(_encode(want, "expect", {}), {}) != have:
            raise HicaError(
                f"{state_file}: checkpoint {key} {have!r} does not match the expected {want!r}; "
                f"use a checkpoint from the same model/classes or a new run directory"
            )
    tensors = load_file(str(path / MODEL_FILE), device="cpu")
    for alias, name in state.get("model_aliases", {}).items():
        tensors[alias] = tensors[name]
    result = model.load_state_dict(tensors, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise HicaError(
            f"{path / MODEL_FILE}: does not fit the model (missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]})"
        )
    if optimizer is not None or scheduler is not None:
        opt_t = load_file(str(path / OPTIM_FILE), device="cpu")
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(_decode(state["optimizer"], opt_t))
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(_decode(state["scheduler"], opt_t))
    rngs = state.get("rng") or []
    if restore_rng_state and rngs:
        restore_rng(rngs[rank] if rank < len(rngs) else rngs[0])
    return {"step": int(state["step"]), "extra": extra, "path": path}

"""Encoders adapted by hica (HiCA stage 1 or 2), stored as safetensors + JSON and loaded like any backend.

A checkpoint folder holds ``config.json`` (format, the base encoder's registry name / arguments /
fingerprint, what was trained, by which command) and ``encoder.safetensors`` with the tensors that
training changed (the rest comes from the base encoder, so a checkpoint of the 27 M-parameter default
encoder whose image tower and top text layers were adapted is ~35 MB, not ~110 MB). Loading rebuilds the
base, checks it is the same encoder the checkpoint was made from (fingerprint), and loads the tensors by
name with shape checks. Only safetensors is read: nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hica.encoders.base import DualEncoder
from hica.encoders.registry import create_encoder, register
from hica.errors import HicaError
from hica.io import save_tensors, write_json

FORMAT = "hica-encoder/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "encoder.safetensors"


def _canon(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def save_encoder(
    encoder: DualEncoder,
    out_dir: str | Path,
    base: dict[str, Any],
    prefixes: Iterable[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the state-dict entries of ``encoder`` under ``prefixes`` (e.g. ``trunk.``) to ``out_dir``.

    ``base`` is ``{"name": ..., "args": {...}}``: how to rebuild the encoder before loading. ``meta`` is
    stored as is (training command, data, losses…). Both files are written atomically, weights first.
    """
    out = Path(out_dir)
    prefixes = tuple(prefixes)
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items() if k.startswith(prefixes)}
    if not state:
        raise HicaError(f"save_encoder: no parameters under {prefixes} in encoder {encoder.name!r}")
    base_fp = base.get("fingerprint") or _canon(encoder.fingerprint())
    save_tensors(out / WEIGHTS_FILE, state, metadata={"format": FORMAT})
    n_params = sum(v.numel() for v in state.values())
    write_json(
        out / CONFIG_FILE,
        {
            "format": FORMAT,
            "base": {"name": base["name"], "args": base.get("args", {}), "fingerprint": base_fp},
            "prefixes": list(prefixes),
            "tensors": len(state),
            "parameters": n_params,
            "meta": _canon(meta or {}),
        },
    )
    return out


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint folder, checked; errors name the folder and what is wrong."""
    p = Path(path)
    cfg_path = p / CONFIG_FILE
    if not p.is_dir() or not cfg_path.is_file():
        raise HicaError(
            f"checkpoint {p}: no {CONFIG_FILE} found; pass the folder written by `hica pretrain` or "
            "`hica finetune`"
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HicaError(f"checkpoint {cfg_path}: not valid JSON: {e}") from e
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise HicaError(
            f"checkpoint {cfg_path}: format {cfg.get('format') if isinstance(cfg, dict) else None!r} is not "
            f"{FORMAT!r}; it was not written by this version of hica"
        )
    base = cfg.get("base")
    if not (
        isinstance(base, dict)
        and isinstance(base.get("name"), str)
        and isinstance(base.get("args", {}), dict)
    ):
        raise HicaError(
            f"checkpoint {cfg_path}: 'base' must say which encoder it was made from ({{name, args}}); "
            "the file is damaged or hand-edited"
        )
    if not (p / WEIGHTS_FILE).is_file():
        raise HicaError(f"checkpoint {p}: {WEIGHTS_FILE} is missing")
    return cfg


def load_encoder_weights(encoder: DualEncoder, path: str | Path, expect_fingerprint: Any = None) -> None:
    """Load a checkpoint's tensors into ``encoder`` (built from the checkpoint's base), with checks."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if expect_fingerprint is not None and _canon(encoder.fingerprint()) != _canon(expect_fingerprint):
        raise HicaError(
            f"checkpoint {p} was made from a different encoder than {encoder.name!r} with these arguments/"
            "weights (fingerprint mismatch); load it with the base encoder recorded in its config.json"
        )
    from hica.integrity import verify_model_card

    verify_model_card(p)  # a card that no longer matches its weights is refused before anything loads
    try:
        tensors = load_file(str(p / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise HicaError(f"checkpoint {p / WEIGHTS_FILE}: not a readable safetensors file: {e}") from e
    own = encoder.state_dict()
    unknown = [k for k in tensors if k not in own]
    if unknown:
        raise HicaError(
            f"checkpoint {p} has tensors this encoder ({encoder.name!r}) does not have, e.g. {unknown[:3]}: "
            "it comes from a different encoder"
        )
    bad = [k for k, v in tensors.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise HicaError(
            f"checkpoint {p}: tensor {k} has shape {tuple(tensors[k].shape)}, the encoder expects "
            f"{tuple(own[k].shape)}: it comes from a different encoder configuration"
        )
    encoder.load_state_dict(tensors, strict=False)


def _sha256(path: Path) -> str:
    from hica.integrity import sha256_file

    return sha256_file(path)[:20]


@register("checkpoint")
def create_checkpoint_encoder(path: str, **overrides: Any) -> DualEncoder:
    """An encoder saved by `hica pretrain` / `hica finetune` (folder with config.json + safetensors)."""
    cfg = read_checkpoint_config(path)
    base = cfg["base"]
    enc = create_encoder(base["name"], **{**base.get("args", {}), **overrides})
    load_encoder_weights(enc, path, expect_fingerprint=None if overrides else base.get("fingerprint"))
    enc.config = {
        **enc.config,
        "checkpoint": {"sha256": _sha256(Path(path) / WEIGHTS_FILE), "meta": cfg.get("meta", {})},
    }
    enc.checkpoint_meta = cfg.get("meta", {})  # type: ignore[attr-defined]
    return enc.eval()

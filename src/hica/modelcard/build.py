"""Building a model card: training data (with the episode's files), the encoder lineage, metrics, limits
and the weights' hashes; writing it as ``model_card.json`` + ``MODEL_CARD.md``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.integrity import CARD_JSON, WEIGHTS_SUFFIX, sha256_file, verify_model_card, weight_hashes
from hica.io import write_json, write_text
from hica.modelcard.limits import intended_use, known_limits
from hica.modelcard.provenance import fingerprint_hash, hica_version
from hica.modelcard.render import render_markdown

SCHEMA_VERSION = "hica-model-card/1"
CARD_MD = "MODEL_CARD.md"


def _label(classes: Sequence[str], label: int) -> str | None:
    return classes[label] if 0 <= label < len(classes) else None


def _sample_row(s: Any, role: str, classes: Sequence[str]) -> dict[str, Any]:
    return {
        "set": role,
        "id": s.id,
        "path": str(s.path) if s.path is not None else None,
        "label": _label(classes, s.label),
    }


def training_data(
    ds: Any,
    splits_used: Sequence[str],
    episode: Any = None,
    images: Sequence[Any] | None = None,
    test_split: str | None = None,
) -> dict[str, Any]:
    """The card's ``training_data``: a K-shot ``episode`` (ids of ``ds``) with labels, or, for label-free
    training (stage 1), the unlabelled ``images`` used. ``test_split``: the split scored for the test
    metrics, counted per class."""
    out: dict[str, Any] = {
        "dataset": ds.name,
        "dataset_source": ds.source or None,
        "dataset_fingerprint": ds.fingerprint(),
        "splits_used": list(splits_used),
    }
    if episode is not None:
        by_id = {s.id: s for sp in ds.splits.values() for s in sp}
        rows = [_sample_row(by_id[i], "support", ds.classes) for i in episode.support]
        rows += [_sample_row(by_id[i], "validation", ds.classes) for i in episode.val]
        out["episode"] = rows
        counts: dict[str, dict[str, int]] = {c: {"support": 0, "validation": 0} for c in ds.classes}
        for r in rows:
            counts[r["label"]][r["set"]] += 1
        if test_split:
            for s in ds.split(test_split):
                counts[ds.classes[s.label]]["test"] = counts[ds.classes[s.label]].get("test", 0) + 1
        out["n_images"] = counts
    else:
        out["episode"] = None
        out["images"] = [s.id for s in images or []]
        out["n_images"] = {"total (labels not read)": len(images or [])}
    return out


def encoder_lineage(name: str, args: dict[str, Any], fingerprint: Any = None) -> list[dict[str, Any]]:
    """Where an encoder came from, base encoder first: ``[{stage: base, ...}, {stage: stage1, ...}, ...]``.

    A ``checkpoint`` encoder contributes its own card's lineage (its weights checked against it), or, for a
    checkpoint without a card, what its ``config.json`` says."""
    if name != "checkpoint":
        return [
            {"stage": "base", "name": name, "args": dict(args), "fingerprint": fingerprint_hash(fingerprint)}
        ]
    from hica.encoders.checkpoint import WEIGHTS_FILE, read_checkpoint_config

    path = Path(str(args.get("path", "")))
    card = verify_model_card(path)
    lineage = card.get("encoder", {}).get("lineage") if card else None
    if lineage:
        prior = [dict(e) for e in lineage]
        prior[-1]["path"] = str(path)  # where it is now (the card says where it was written)
    else:
        cfg = read_checkpoint_config(path)
        base, meta = cfg["base"], cfg.get("meta", {})
        prior = encoder_lineage(base["name"], base.get("args", {}), base.get("fingerprint"))
        prior.append(
            {
                "stage": f"stage{meta.get('stage', '?')}",
                "name": path.parent.name if path.name in ("encoder", "model") else path.name,
                "path": str(path),
                "dataset": meta.get("dataset") or meta.get("config", {}).get("dataset"),
                "weights_sha256": sha256_file(path / WEIGHTS_FILE),
                "card": False,
            }
        )
    prior[-1]["fingerprint"] = fingerprint_hash(fingerprint)  # as loaded: follows the checkpoint's weights
    return prior


def build_model_card(
    model_dir: str | Path,
    *,
    kind: str,
    name: str,
    dataset: Any,
    splits_used: Sequence[str],
    encoder_name: str,
    encoder_args: dict[str, Any],
    encoder_fingerprint: Any,
    seed: int,
    method: str,
    hyperparameters: dict[str, Any],
    selected: dict[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    k: int | None = None,
    episode: Any = None,
    images: Sequence[Any] | None = None,
    metrics: dict[str, Any] | None = None,
    roi_source: str | None = None,
    test_split: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The card of the trained model in ``model_dir`` (call after its weights are written: they are hashed).

    ``kind``: ``classifier`` (``hica finetune``) or ``encoder`` (``hica pretrain``). ``dataset``: the
    ``hica.data.sample.Dataset`` trained on; ``episode``: its K-shot ``Episode`` (classifier) or ``images``:
    the unlabelled samples used (encoder). ``encoder_*``: the encoder training started from.
    ``metrics``: ``{"validation": {...}|None, "test": {...}|None}``."""
    if kind not in ("classifier", "encoder"):
        raise HicaError(f"model card kind must be 'classifier' or 'encoder', got {kind!r}")
    d = Path(model_dir)
    weights = weight_hashes(d)
    if not weights:
        raise HicaError(f"model folder {d} holds no {WEIGHTS_SUFFIX} file: write the weights before the card")
    from hica.environment import git_state  # lazily: it imports torch, reading a card needs none

    commit, clean = git_state()
    metrics = dict(metrics or {})
    notes = list(metrics.pop("notes", []))
    val, test = metrics.get("validation"), metrics.get("test")
    if kind == "encoder":
        notes.append("an encoder has no classifier: no validation or test accuracy (see `training` below)")
    else:
        if val is not None:
            notes.append("validation: the episode's validation shots, which also chose α (optimistic)")
        if test is None:
            notes.append("test: not measured (the run had evaluate_test: false)")
    lineage = encoder_lineage(encoder_name, encoder_args, encoder_fingerprint)
    stage = "stage2" if kind == "classifier" else "stage1"
    lineage.append(
        {
            "stage": stage,
            "name": name,
            "path": str(d),
            "dataset": dataset.name,
            "weights_sha256": weights.get("encoder.safetensors"),
            "card": True,
        }
    )
    image_size = (encoder_args or {}).get("image_size")
    if image_size is None and isinstance(encoder_fingerprint, dict):
        image_size = (encoder_fingerprint.get("config") or {}).get("image_size")
    classes = list(classes or [])
    card: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "hica_version": hica_version(),
        "git_commit": commit,
        "git_clean": clean,
        "classes": classes,
        "training_data": training_data(dataset, splits_used, episode, images, test_split),
        "k": k,
        "seed": seed,
        "encoder": {
            "name": encoder_name,
            "args": dict(encoder_args or {}),
            "fingerprint": fingerprint_hash(encoder_fingerprint),
            "lineage": lineage,
        },
        "metrics": {"validation": val, "test": test, "notes": notes, **metrics},
        "roi_source": roi_source,
        "method": method,
        "hyperparameters": dict(hyperparameters or {}),
        "selected": dict(selected or {}),
        "intended_use": intended_use(kind, classes, dataset.name),
        "limits": known_limits(dataset.name, kind, k, image_size),
        "weights": weights,
    }
    if extra:
        card.update(extra)
    return json.loads(json.dumps(card, default=str))


def write_model_card(model_dir: str | Path, card: dict[str, Any]) -> None:
    """Write ``MODEL_CARD.md`` and ``model_card.json`` (the JSON last: a folder has a card once both
    exist)."""
    d = Path(model_dir)
    write_text(d / CARD_MD, render_markdown(card))
    write_json(d / CARD_JSON, card)

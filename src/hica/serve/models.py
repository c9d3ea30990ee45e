"""The models folder: which models it holds, their cards, and loaded predictors shared between requests.

A model is ``MODELS/<name>/`` holding a ``hica finetune`` model (``config.json`` with a classifier,
``encoder.safetensors``, ``classifier.safetensors``, ``model_card.json``), or a ``hica finetune`` run folder
``MODELS/<name>/model``. A model whose card does not match its weights is listed but never loaded.
Names are checked (:func:`hica.serve.safety.check_name`) and resolved inside the folder only.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.serve.safety import UploadError, check_name, inside
from hica.serve.settings import ServeSettings

DESCRIPTORS_FILE = "descriptors.yaml"  # the class text a browser-trained model was trained with
MAX_LOADED = 4  # models kept loaded at once (each holds an encoder in memory)


def _model_dir(folder: Path) -> Path | None:
    for d in (folder, folder / "model"):
        cfg = d / "config.json"
        if cfg.is_file():
            try:
                meta = json.loads(cfg.read_text(encoding="utf-8")).get("meta", {})
            except (OSError, ValueError, AttributeError):
                return None
            return d if isinstance(meta, dict) and meta.get("classifier") else None
    return None


def _card(model_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """The folder's model card checked against its weights (``hica.modelcard``, which remembers a check
    until a file of the folder changes), and what that check said."""
    from hica import modelcard

    try:
        card = modelcard.verify_model_card(model_dir)
    except HicaError as e:
        return None, f"refused: {str(e).replace(str(model_dir), 'the model folder')}"
    if not card:
        return None, "missing: made before model cards; its data, K and lineage cannot be checked"
    return card, "verified: the weights match the card's SHA-256 hashes"


def _data_text(card: dict[str, Any]) -> str:
    """One line for a card's ``training_data``: the app's description, else dataset and episode sizes."""
    td = card.get("training_data") or {}
    if card.get("app", {}).get("training_data"):
        return card["app"]["training_data"]
    sets: dict[str, int] = {}
    for row in td.get("episode") or []:
        sets[row.get("set", "?")] = sets.get(row.get("set", "?"), 0) + 1
    sizes = ", ".join(f"{n} {k}" for k, n in sets.items())
    return f"{td.get('dataset')} ({sizes})" if sizes else str(td.get("dataset"))


def _limit_texts(limits: Any) -> list[str]:
    out = []
    for lim in limits or []:
        text = lim.get("text") if isinstance(lim, dict) else str(lim)
        src = lim.get("source") if isinstance(lim, dict) else None
        out.append(f"{text} (source: {src})" if src else str(text))
    return out


def _desc_label(desc: str | None) -> str | None:
    """A bundled id as is; a file as its name in the model folder (server paths are not shown)."""
    return f"{DESCRIPTORS_FILE} (in the model folder)" if desc and Path(desc).is_file() else desc


class ModelRegistry:
    """Lists and loads the models under ``settings.models_dir``; one predictor per model, one lock each."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any, threading.Lock]] = {}

    # -- listing -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        root = self.settings.models_dir
        out = []
        for p in sorted(root.iterdir()) if root.is_dir() else []:
            if p.name.startswith(".") or not p.is_dir():
                continue
            try:
                check_name(p.name)
                inside(root, p.name)
            except UploadError:
                continue
            if _model_dir(p) is not None:
                out.append(p.name)
        return out

    def exists(self, name: str) -> bool:
        return (self.settings.models_dir / check_name(name)).exists()

    def path(self, name: str) -> Path:
        """The model folder of ``name``; 400 for a bad name, 404 for an unknown one."""
        folder = inside(self.settings.models_dir, check_name(name))
        d = _model_dir(folder) if folder.is_dir() else None
        if d is None:
            known = ", ".join(self.names()) or "none yet"
            raise UploadError(f"unknown model {name!r}; models: {known}", 404)
        return d

    def info(self, name: str) -> dict[str, Any]:
        """What the Models page shows (from the model card): classes, training data, K, encoder lineage,
        metrics, ROI source, intended use, limits, and whether the card matches the weights."""
        from hica import modelcard

        d = self.path(name)
        meta = json.loads((d / "config.json").read_text(encoding="utf-8")).get("meta", {})
        clf = meta.get("classifier", {})
        card, card_status = _card(d)
        c = card or {}
        enc = c.get("encoder") or {}
        lineage = enc.get("lineage") or []
        metrics = c.get("metrics") or {}
        return {
            "name": name,
            "classes": c.get("classes") or clf.get("classes", []),
            "training_data": _data_text(c) if card else meta.get("dataset"),
            "k": c.get("k", (meta.get("episode") or {}).get("k")),
            "seed": c.get("seed", (meta.get("episode") or {}).get("seed")),
            "encoder": {
                "name": enc.get("name"),
                "args": enc.get("args", {}),
                "lineage": modelcard.lineage_text(lineage) if lineage else None,
            },
            "metrics": {k: metrics.get(k) for k in ("validation", "test")},
            "metric_notes": list(metrics.get("notes") or [])
            + list(c.get("app", {}).get("metric_notes") or []),
            "roi_source": c.get("roi_source") or clf.get("roi_source"),
            "alpha": clf.get("alpha"),
            "tta": clf.get("tta", "none"),
            "descriptors": _desc_label(self.descriptors_of(name)),
            "intended_use": c.get("intended_use") or modelcard.RESEARCH_ONLY,
            "limits": _limit_texts(c.get("limits")) or [modelcard.RESEARCH_ONLY],
            "created": c.get("created"),
            "card": card_status,
            "summary": modelcard.card_summary(card) if card else None,
            "zero_shot": True,
            "explain": self.descriptors_of(name) is not None,
        }

    def descriptors_of(self, name: str) -> str | None:
        """The model's class text: a bundled id, or ``descriptors.yaml`` in its folder; else None.

        A descriptor path elsewhere on disk is not read (only the models and work folders are)."""
        from hica.data.descriptors import list_bundled

        d = self.path(name)
        meta = json.loads((d / "config.json").read_text(encoding="utf-8")).get("meta", {})
        desc = meta.get("descriptors")
        folder = self.settings.models_dir / name  # the model's own folder (d is it, or its model/)
        for f in (d / DESCRIPTORS_FILE, folder / DESCRIPTORS_FILE):
            if f.is_file() and f.resolve().is_relative_to(self.settings.models_dir):
                return str(f)
        if isinstance(desc, str) and desc in list_bundled():
            return desc
        return None

    # -- loading -------------------------------------------------------------------------------------------
    def predictor(self, name: str) -> tuple[Any, threading.Lock]:
        """The loaded predictor of ``name`` (reloaded when its files change) and the lock to use it under."""
        from hica.predict import Predictor
        from hica.runtime import resolve_device, resolve_precision

        d = self.path(name)
        stamp = max(f.stat().st_mtime for f in d.iterdir() if f.is_file())
        with self._lock:
            hit = self._cache.pop(name, None)
            if hit is not None and hit[0] == stamp:
                self._cache[name] = hit  # most recently used last
                return hit[1], hit[2]
            card, said = _card(d)
            if said.startswith("refused"):  # weights changed after training: refused, never loaded
                raise UploadError(f"model {name!r}: {said.removeprefix('refused: ')}", 409)
            dev = resolve_device(self.settings.device)
            pred = Predictor(d, dev, resolve_precision(self.settings.precision, dev))
            entry = (stamp, pred, threading.Lock())
            self._cache[name] = entry
            while len(self._cache) > MAX_LOADED:  # least recently used out (a request using it keeps it)
                self._cache.pop(next(iter(self._cache)))
            return entry[1], entry[2]

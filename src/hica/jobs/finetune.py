"""``hica finetune``: HiCA stage 2 on one K-shot episode, saved as a classifier checkpoint.

The output folder is an encoder checkpoint (``config.json`` + ``encoder.safetensors``: the aligned image
tower and text projection, loadable with ``encoder: {name: checkpoint, args: {path: ...}}``) plus
``classifier.safetensors`` (class-text and support-image prototypes) and the classifier's settings (classes,
α, temperature, ROI source) in ``config.json``'s ``meta.classifier``. ``hica predict`` reads it. Every
step's named loss terms of both phases (``loss_log``) go to ``train/loss_log.json``, next to the engine's
``train/log.csv``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.io import save_tensors, write_json, write_text
from hica.modelcard import write_model_card
from hica.runtime import reproducible

CLASSIFIER_FILE = "classifier.safetensors"
LOSS_LOG_FILE = "loss_log.json"


def write_loss_log(method: Any, path: Path) -> Path | None:
    """``method.loss_log`` (``{"head": [...], "train": [...]}``, one dict of named terms per step) as JSON.

    A run resumed from a checkpoint trains (and logs) only the steps after it: the earlier steps are taken
    from the log already at ``path`` when it has them (a log lost before the resume leaves them out)."""
    log = getattr(method, "loss_log", None)
    if not log:
        return None
    log = {k: list(v) for k, v in log.items()}
    steps = int(method.hparams.get("steps", 0))
    missing = steps - len(log.get("train", []))
    if missing > 0 and path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("train", [])
        except (OSError, ValueError, AttributeError):
            old = []
        if len(old) >= missing:
            log["train"] = old[:missing] + log["train"]
    return write_json(path, log)


def export_classifier(method: Any, encoder_cfg: dict[str, Any], base_fp: Any, out: Path, meta: dict) -> Path:
    """Save a fitted HiCA method (``methods.hica.HiCA``) to ``out`` (see the module docstring)."""
    from hica.encoders.checkpoint import save_encoder

    enc = method.aligned_encoder(clone=False)
    save_encoder(
        enc,
        out,
        base={**encoder_cfg, "fingerprint": base_fp},
        prefixes=["trunk.", "image_proj.", "text_proj."] if hasattr(enc, "trunk") else [""],
        meta={
            **meta,
            "classifier": {
                "classes": meta["classes"],
                "alpha": method.alpha,
                "temperature": method.hparams["temperature"],
                "tta": method.config.tta,
                "roi_source": method.roi_source,
                "method": method.name,
                "hparams": method.hparams,
            },
        },
    )
    save_tensors(
        out / CLASSIFIER_FILE,
        {"text_protos": method.text_protos.cpu(), "image_protos": method.image_protos.cpu()},
    )
    return out


@reproducible
def run_stage2(cfg: Any, out_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """Fit HiCA stage 2 on the episode (``cfg.dataset``, ``cfg.k``, ``cfg.seed``); save it to ``out_dir``."""
    import numpy as np

    from hica.config import dump_config
    from hica.data.catalog import load_dataset
    from hica.data.descriptors import load_descriptors
    from hica.data.episodes import sample_episode
    from hica.encoders import create_encoder
    from hica.environment import machine_info
    from hica.eval.efficiency import peak_rss_mb
    from hica.eval.episode_data import image_episode, images_of
    from hica.eval.metrics import classification_metrics
    from hica.methods.base import method_registry
    from hica.runtime import resolve_device, resolve_precision

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    registry = method_registry()
    if cfg.method not in registry:
        raise HicaError(f"unknown method {cfg.method!r}")
    cls = registry[cfg.method]
    method = cls(**cfg.method_args)  # bad hyperparameters fail here, before any loading
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    enc = create_encoder(cfg.encoder.name, **cfg.encoder.args).to(device).eval()
    base_fp = json.loads(json.dumps(enc.fingerprint(), default=str))
    ds = load_dataset(cfg.dataset, cfg.data_root, skip_bad=cfg.skip_bad)
    if not ds.descriptors:
        raise HicaError(f"dataset {ds.name} has no descriptors YAML; HiCA needs class text")
    desc = load_descriptors(ds.descriptors)
    desc.check_classes(ds.classes, ds.name)
    ep = sample_episode(ds, cfg.k, cfg.seed)
    write_json(out / "episode.json", ep.to_json())
    by_id = {s.id: s for sp in ds.splits.values() for s in sp}
    data = image_episode(enc, ds, ep, by_id, cfg.seed, cls, desc)
    method.run_dir, method.resume = out / "train", resume
    # a checkpoint of another episode or encoder in the same --out is never resumed as this run
    method.run_identity = {"run": {"episode": ep.to_json(), "encoder": enc.fingerprint()}}
    t0 = time.perf_counter()
    method.fit(enc, data, device, precision)
    fit_s = time.perf_counter() - t0
    write_loss_log(method, method.run_dir / LOSS_LOG_FILE)
    summary: dict[str, Any] = {
        "dataset": ds.name,
        "classes": ds.classes,
        "k": cfg.k,
        "seed": cfg.seed,
        "method": cfg.method,
        "selected": method.selected,
        "fit_seconds": round(fit_s, 1),
        "machine": machine_info(device, precision),
    }
    if cfg.evaluate_test:
        test = ds.split("test")
        t1 = time.perf_counter()
        probs = method.predict_proba(images_of(enc, test)).numpy()
        labels = np.array([s.label for s in test])
        summary["test"] = classification_metrics(labels, probs)
        summary["test_seconds"] = round(time.perf_counter() - t1, 1)
    val_probs = method.predict_proba(data.val).numpy()
    summary["validation"] = classification_metrics(data.val_labels.numpy(), val_probs)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    export_classifier(
        method,
        {"name": cfg.encoder.name, "args": cfg.encoder.args},
        base_fp,
        out / "model",
        {
            "stage": 2,
            "classes": ds.classes,
            "dataset": ds.name,
            "descriptors": ds.descriptors,
            "episode": ep.to_json(),
        },
    )
    write_model_card(out / "model", stage2_card(cfg, out / "model", ds, ep, method, base_fp, summary))
    write_json(out / "summary.json", summary)
    return summary


def stage2_card(
    cfg: Any, model_dir: Path, ds: Any, ep: Any, method: Any, base_fp: Any, summary: dict[str, Any]
) -> dict[str, Any]:
    """The model card of a ``run_stage2`` model folder (its weights already written)."""
    from hica.modelcard import build_model_card

    def scored(key: str, n: int) -> dict[str, Any] | None:
        return {**summary[key], "n": n} if key in summary else None

    return build_model_card(
        model_dir,
        kind="classifier",
        name=cfg.name,
        dataset=ds,
        splits_used=["train", "val", *(["test"] if cfg.evaluate_test else [])],
        encoder_name=cfg.encoder.name,
        encoder_args=cfg.encoder.args,
        encoder_fingerprint=base_fp,
        seed=cfg.seed,
        k=cfg.k,
        classes=ds.classes,
        episode=ep,
        method=cfg.method,
        hyperparameters=method.hparams,
        selected=method.selected,
        roi_source=method.roi_source,
        metrics={
            "validation": scored("validation", len(ep.val)),
            "test": scored("test", len(ds.split("test")) if cfg.evaluate_test else 0),
        },
        test_split="test" if cfg.evaluate_test else None,
        extra={"descriptors": ds.descriptors, "fit_seconds": summary.get("fit_seconds")},
    )

"""The stage-1 job: image and text adaptation from a ``Stage1Config``, written as an encoder folder with its
summary and model card."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hica.errors import HicaError
from hica.io import write_json
from hica.jobs.stage1.image import train_image_tower
from hica.jobs.stage1.text import adapt_text_tower, build_corpus
from hica.model.imagedata import input_spec, load_store
from hica.modelcard import write_model_card


def run_stage1(cfg: Any, out_dir: str | Path, resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run stage 1 from a validated ``Stage1Config`` into ``out_dir``; the adapted encoder is written to
    ``out_dir/encoder`` (load it with ``encoder: {name: checkpoint, args: {path: ...}}``). It runs at the
    config's fixed thread count with deterministic algorithms (``runtime.deterministic``)."""
    from hica.runtime import deterministic

    with deterministic(cfg.threads):
        return _run_stage1(cfg, out_dir, resume, progress)


def _run_stage1(cfg: Any, out_dir: str | Path, resume: bool, progress: bool) -> dict[str, Any]:
    from hica.config import dump_config
    from hica.data.catalog import load_dataset
    from hica.encoders import create_encoder
    from hica.encoders.checkpoint import save_encoder
    from hica.environment import machine_info
    from hica.eval.efficiency import peak_rss_mb
    from hica.io import write_text
    from hica.runtime import resolve_device, resolve_precision

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.resolved.yaml", dump_config(cfg))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    encoder = create_encoder(cfg.encoder.name, **cfg.encoder.args).to(device)
    base_fp = json.loads(json.dumps(encoder.fingerprint(), default=str))
    for p in encoder.parameters():
        p.requires_grad_(False)
    summary: dict[str, Any] = {"machine": machine_info(device, precision)}
    prefixes: list[str] = []
    ds, samples = None, []
    if cfg.image.enabled:
        ds = load_dataset(cfg.dataset, cfg.data_root, skip_bad=cfg.skip_bad)
        samples = [s for sp in cfg.splits for s in ds.split(sp)]
        if cfg.max_images and cfg.max_images < len(samples):  # seeded subset (splits are sorted by class)
            pick = np.random.default_rng(cfg.seed).choice(len(samples), cfg.max_images, replace=False)
            samples = [samples[i] for i in sorted(pick)]
        t0 = time.perf_counter()
        spec = input_spec(encoder)
        store = load_store(
            samples,
            max(spec.size, cfg.image.resolution),
            skip_bad=cfg.skip_bad,
            progress=progress,
            desc="stage-1 images",
        )
        t_load = time.perf_counter() - t0
        for p in encoder.image_parameters():
            p.requires_grad_(True)
        img = train_image_tower(
            encoder,
            store,
            cfg.image,
            cfg.modality,
            out / "image",
            device,
            precision,
            cfg.seed,
            resume=resume,
            progress=progress,
        )
        img.update(dataset=ds.name, splits=list(cfg.splits), load_seconds=round(t_load, 1), labels_read=False)
        summary["image"] = img
        for p in encoder.parameters():
            p.requires_grad_(False)
        prefixes += ["trunk.", "image_proj."] if hasattr(encoder, "trunk") else ["model.visual."]
        del store
    if cfg.text.enabled:
        corpus = build_corpus(cfg.text.corpus_files, cfg.text.descriptors)
        txt = adapt_text_tower(encoder, corpus, cfg.text, device, cfg.seed, out / "text")
        summary["text"] = txt
        prefixes += txt.pop("prefixes")
    if not prefixes:
        raise HicaError("stage 1 config turns off both image and text adaptation: nothing to do")
    summary["total_seconds"] = round(time.perf_counter() - t_start, 1)
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    save_encoder(
        encoder,
        out / "encoder",
        base={"name": cfg.encoder.name, "args": cfg.encoder.args, "fingerprint": base_fp},
        prefixes=prefixes,
        meta={
            "stage": 1,
            "config": cfg.model_dump(mode="json", exclude={"data_root"}),
            "summary": {k: v for k, v in summary.items() if k != "machine"},
        },
    )
    write_model_card(out / "encoder", stage1_card(cfg, out / "encoder", ds, samples, base_fp, summary))
    write_json(out / "summary.json", summary)
    return summary


def stage1_card(
    cfg: Any, enc_dir: Path, ds: Any, samples: list, base_fp: Any, summary: dict[str, Any]
) -> dict[str, Any]:
    """The model card of a stage-1 encoder folder (its weights already written)."""
    from hica.modelcard import build_model_card

    training = {
        k: {kk: vv for kk, vv in v.items() if kk not in ("clusterings", "frozen")}
        if isinstance(v, dict)
        else v
        for k, v in summary.items()
        if k in ("image", "text", "total_seconds")
    }
    return build_model_card(
        enc_dir,
        kind="encoder",
        name=cfg.name,
        dataset=ds,
        splits_used=list(cfg.splits) if ds is not None else [],
        encoder_name=cfg.encoder.name,
        encoder_args=cfg.encoder.args,
        encoder_fingerprint=base_fp,
        seed=cfg.seed,
        images=samples,
        method="hica stage 1 (image: DeepCluster-v2; text: SimCSE on the descriptor corpus)",
        hyperparameters=cfg.model_dump(mode="json", exclude={"data_root"}),
        metrics={"training": training},
        extra={"modality": cfg.modality, "labels_read": False},
    )

"""Efficiency of HiCA: parameters (total / trainable per stage), training time and peak memory per stage,
inference latency (batch 1) and throughput of exported classifiers, on CPU and on a GPU when one is present.

Inference is measured in a fresh process per (model, device), so its peak resident memory is that of
loading the model and classifying, not of this process's history. Latency is the median over ``repeats``
calls after ``warmup`` calls: the model alone (a preprocessed 1×3×S×S tensor → probabilities) and end to
end (an image file → probabilities, decoding and resizing included). Throughput is the median over
``rounds`` batches of ``batch_size``. Training time and memory come from the committed runs named in the
config (``hica pretrain`` / ``hica finetune`` under ``/usr/bin/time -v``); they are read, not re-measured.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from hica.analysis.registry import Analysis, register_analysis
from hica.config import EncoderConfig, StrictConfig, dump_config
from hica.errors import HicaError
from hica.eval.grid import STAMP
from hica.io import write_json, write_text

PART_FIELDS = {"spec", "weights", "config_hash", STAMP}  # what a part holds besides the measurement


class ModelSpec(StrictConfig):
    """An exported classifier (``hica finetune``'s ``OUT/model``) and a real image to time end to end."""

    name: str
    checkpoint: str
    image: str  # relative paths are under the data root


class TrainingRun(StrictConfig):
    """A committed training measurement: a folder with ``summary.json`` (+ ``time.txt`` from time -v)."""

    stage: str
    name: str
    path: str


class EfficiencyConfig(StrictConfig):
    """``hica analyze efficiency``."""

    name: str = "efficiency"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)  # the base model for parameter counts
    stage1_configs: list[str] = Field(default_factory=list)
    stage2_configs: list[str] = Field(default_factory=list)
    models: list[ModelSpec] = Field(default_factory=list)
    training_runs: list[TrainingRun] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=lambda: ["cpu", "cuda"])
    precision: str = "auto"
    warmup: int = Field(5, ge=0)
    repeats: int = Field(50, ge=3)
    batch_size: int = Field(64, ge=1)
    rounds: int = Field(5, ge=1)
    data_root: str | None = None


def load_efficiency_config(path: str | Path, overrides: dict[str, Any] | None = None) -> EfficiencyConfig:
    """Read an efficiency YAML; errors name the file and the key."""
    from hica.config import load_model_config

    return load_model_config(EfficiencyConfig, path, overrides)


# -- parameters --------------------------------------------------------------------------------------------


def _count(params) -> int:
    return int(sum(p.numel() for p in params))


def parameter_counts(cfg: EfficiencyConfig) -> dict[str, Any]:
    """Total parameters per tower, and what each stage's committed config trains."""
    from hica.config import Stage1Config, Stage2Config, load_model_config
    from hica.encoders import create_encoder
    from hica.jobs.stage1.text import _text_params
    from hica.methods.hica import HiCA
    from hica.model.training import freeze_early

    enc = create_encoder(cfg.encoder.name, **cfg.encoder.args)
    image = list(enc.image_parameters())
    image_ids = {id(p) for p in image}
    text = [p for p in enc.parameters() if id(p) not in image_ids]
    proj = getattr(enc, "text_proj", None)
    out: dict[str, Any] = {
        "encoder": cfg.encoder.name,
        "image_tower": _count(image),
        "text_tower": _count(text),
        "total": _count(enc.parameters()),
        "text_projection": _count(proj.parameters()) if proj is not None else None,
        "stages": [],
    }

    def trainable_image(freeze: int) -> int:
        for p in enc.parameters():
            p.requires_grad_(True)
        freeze_early(enc, freeze)
        return _count(p for p in image if p.requires_grad)

    for path in cfg.stage1_configs:
        s1 = load_model_config(Stage1Config, path)
        img = trainable_image(s1.image.freeze_stages) if s1.image.enabled else 0
        txt = _count(_text_params(enc, s1.text.train_layers)[0]) if s1.text.enabled else 0
        out["stages"].append(
            {"stage": "1 (domain pretraining)", "config": path, "trainable_image": img, "trainable_text": txt}
        )
    for path in cfg.stage2_configs:
        s2 = load_model_config(Stage2Config, path)
        freeze = {**HiCA.defaults, **s2.method_args}["freeze_stages"]
        out["stages"].append(
            {
                "stage": "2 (HiCA alignment)",
                "config": path,
                "trainable_image": trainable_image(int(freeze)),
                "trainable_text": out["text_projection"] or 0,
            }
        )
    for s in out["stages"]:
        s["trainable_total"] = s["trainable_image"] + s["trainable_text"]
        s["trainable_fraction"] = round(s["trainable_total"] / out["total"], 4)
    return out


# -- inference (in a fresh process) ------------------------------------------------------------------------


def _median(v: list[float]) -> float:
    return sorted(v)[len(v) // 2]


def _inference_worker(spec: dict[str, Any], device: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Runs in a spawned process: load the classifier on ``device`` and time it."""
    import resource

    import torch

    from hica.predict import Predictor
    from hica.runtime import resolve_device, resolve_precision

    t0 = time.perf_counter()
    dev = resolve_device(device)
    prec = resolve_precision(cfg["precision"], dev)
    pred = Predictor(spec["checkpoint"], dev, prec)
    load_s = time.perf_counter() - t0
    size = pred.encoder.preprocess_config.get("size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def timed(fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t)
        return out

    x1 = torch.randn(1, 3, size, size)
    path = Path(spec["image"])
    timed(lambda: pred.probs_of(x1), cfg["warmup"])
    model_ms = [t * 1000 for t in timed(lambda: pred.probs_of(x1), cfg["repeats"])]
    timed(lambda: pred.predict([path]), max(1, cfg["warmup"] // 2))
    e2e_ms = [t * 1000 for t in timed(lambda: pred.predict([path]), cfg["repeats"])]
    xb = torch.randn(cfg["batch_size"], 3, size, size)
    timed(lambda: pred.probs_of(xb), 1)
    rates = [cfg["batch_size"] / t for t in timed(lambda: pred.probs_of(xb), cfg["rounds"])]
    res = {
        "model": spec["name"],
        "device": str(dev),
        "precision": prec,
        "threads": torch.get_num_threads(),
        "load_seconds": round(load_s, 2),
        "latency_ms_batch1_model": round(_median(model_ms), 2),
        "latency_ms_batch1_model_p90": round(sorted(model_ms)[int(0.9 * len(model_ms))], 2),
        "latency_ms_batch1_file": round(_median(e2e_ms), 2),
        "throughput_img_per_s": round(_median(rates), 1),
        "throughput_batch_size": cfg["batch_size"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(dev)
        res["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return res


def measure_inference(spec: ModelSpec, device: str, cfg: EfficiencyConfig) -> dict[str, Any]:
    """Time one classifier on one device in a fresh (spawned) process."""
    import multiprocessing as mp

    for what, p in (("checkpoint", spec.checkpoint), ("image", spec.image)):
        if not Path(p).exists():
            raise HicaError(
                f"models[{spec.name}].{what}: {p} not found"
                + (
                    " (build it with `hica finetune`, see the config's comment)"
                    if what == "checkpoint"
                    else ""
                )
            )
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(
            _inference_worker,
            (
                spec.model_dump(),
                device,
                cfg.model_dump(include={"precision", "warmup", "repeats", "batch_size", "rounds"}),
            ),
        )


# -- committed training measurements -----------------------------------------------------------------------


def _time_v(path: Path) -> dict[str, float]:
    """Wall seconds and max RSS (MiB) from a ``/usr/bin/time -v`` report."""
    if not path.is_file():
        return {}
    text = path.read_text()
    out: dict[str, float] = {}
    if m := re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text):
        secs = 0.0
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
        out["command_wall_seconds"] = round(secs, 1)
    if m := re.search(r"Maximum resident set size \(kbytes\): (\d+)", text):
        out["peak_rss_mb"] = round(int(m.group(1)) / 1024, 1)
    return out


def training_record(run: TrainingRun) -> dict[str, Any]:
    """Training seconds and peak memory of a committed run folder (or ``<prefix>.summary.json`` files)."""
    p = Path(run.path)
    summary = p / "summary.json" if p.is_dir() else Path(f"{p}.summary.json")
    timev = p / "time.txt" if p.is_dir() else Path(f"{p}.time.txt")
    if not summary.is_file():
        raise HicaError(f"training_runs[{run.name}]: {summary} not found; point path at a committed run")
    s = json.loads(summary.read_text())
    rec: dict[str, Any] = {"stage": run.stage, "name": run.name, "source": str(p)}
    if "fit_seconds" in s:  # hica finetune
        rec["train_seconds"] = s["fit_seconds"]
    else:  # hica pretrain
        rec["train_seconds"] = s.get("total_seconds")
        rec["image_seconds"] = s.get("image", {}).get("train_seconds")
        rec["text_seconds"] = s.get("text", {}).get("seconds")
    rec.update(_time_v(timev))
    if "peak_rss_mb" not in rec and s.get("peak_rss_mb"):
        rec["peak_rss_mb"] = s["peak_rss_mb"]
    rec["machine"] = s.get("machine", {})
    return rec


# -- the run -----------------------------------------------------------------------------------------------


def weights_of(spec: ModelSpec) -> dict[str, str]:
    """SHA-256 of the model folder's weight files (empty when it does not exist: measuring names it)."""
    from hica.integrity import weight_hashes

    return weight_hashes(spec.checkpoint) if Path(spec.checkpoint).is_dir() else {}


def inference_key(spec: ModelSpec, device: str) -> str:
    """The part name of one (model, device) inference measurement."""
    return f"inference__{device}__{spec.name}"


def run_efficiency(
    cfg: EfficiencyConfig, out_dir: str | Path, resume: bool = True, rerun_other_code: bool = False
) -> dict[str, Any]:
    """Measure and write ``metrics.json`` + ``results.md`` into ``out_dir``.

    Each (device, model) inference measurement is a part of a ``GridRun`` (``parts/``): an interrupted run
    keeps the measurements it finished. Parameter counts and the committed training records are cheap and
    recomputed every time."""
    import torch

    from hica.environment import machine_info
    from hica.eval.grid import GridRun
    from hica.report.efficiency import markdown
    from hica.runtime import resolve_device, resolve_precision

    t0 = time.perf_counter()
    cpu = resolve_device("cpu")
    machine = machine_info(cpu, resolve_precision(cfg.precision, cpu))
    timing = cfg.model_dump(mode="json", include={"precision", "warmup", "repeats", "batch_size", "rounds"})
    res: dict[str, Any] = {"analysis": "efficiency", "name": cfg.name, "machine": machine}
    grid = GridRun(
        out_dir, scope=timing, resume=resume, rerun_other_code=rerun_other_code, config_yaml=dump_config(cfg)
    )
    with grid as run:
        res["parameters"] = parameter_counts(cfg)
        res["training"] = [training_record(r) for r in cfg.training_runs]
        res["inference"], res["skipped"] = [], []
        for device in cfg.devices:
            if device.startswith("cuda") and not torch.cuda.is_available():
                res["skipped"].append(f"{device}: no GPU on this machine")
                continue
            for spec in cfg.models:
                img = Path(spec.image)
                if not img.is_absolute():
                    from hica.data.catalog import data_root

                    img = data_root(cfg.data_root) / img
                spec_abs = spec.model_copy(update={"image": str(img)})
                rec = run.part(
                    inference_key(spec, device),
                    lambda s=spec_abs, d=device: measure_inference(s, d, cfg),
                    # the same model folder rebuilt is a new measurement
                    match={"spec": spec.model_dump(mode="json"), "weights": weights_of(spec)},
                )
                res["inference"].append({k: v for k, v in rec.items() if k not in PART_FIELDS})
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    res["grid"] = run.summary()
    out = Path(out_dir)
    write_json(out / "metrics.json", res)
    write_text(out / "results.md", markdown(res))
    return res


register_analysis(
    Analysis(
        name="efficiency",
        help="Parameters per stage, training time and memory, inference latency and throughput "
        "(CPU; GPU if any).",
        load_config=load_efficiency_config,
        run=run_efficiency,
        table="results.md",
        overrides=("data_root",),
    )
)

"""Run a config into its run directory (default ``runs/<name>``) under the folder's lock: what ``hica
benchmark``, ``zeroshot``, ``fewshot``, ``pretrain`` and ``finetune`` call once their options are parsed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hica.io import out_lock


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(text).name or text)[:40]


def quick_config(
    kind: str,
    dataset: str,
    encoder: str,
    encoder_args: dict[str, Any],
    download: bool = False,
    **settings: Any,
) -> Any:
    """The validated ``BenchmarkConfig`` of a one-dataset command (``kind``: zeroshot / fewshot), named
    ``<kind>-<dataset>-<encoder>``; ``download`` fetches a missing MedMNIST file; ``settings``: the other
    config fields (shots, seeds, methods, device…)."""
    from hica.config import validate_config

    raw = dict(
        name=f"{kind}-{_slug(dataset)}-{encoder}",
        encoder={"name": encoder, "args": encoder_args},
        datasets=[{"name": dataset, "download": True} if download else dataset],
        **settings,
    )
    return validate_config(raw, "command line")


def benchmark_into(
    cfg: Any, out: str | Path | None = None, resume: bool = True, rerun_other_code: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Run a validated ``BenchmarkConfig`` into ``out``; returns (out, its metrics: summary, methods…)."""
    from hica.jobs.benchmark import run_benchmark

    out = Path(out) if out is not None else Path("runs") / cfg.name
    with out_lock(out):  # checked and locked before anything is encoded
        result = run_benchmark(cfg, out, resume=resume, rerun_other_code=rerun_other_code)
    return out, result


def benchmark_from_file(
    config: str | Path,
    out: str | Path | None = None,
    resume: bool = True,
    overrides: dict[str, Any] | None = None,
    rerun_other_code: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Load a benchmark YAML (``overrides``: None values ignored) and run it (:func:`benchmark_into`)."""
    from hica.config import load_config

    return benchmark_into(load_config(config, overrides), out, resume, rerun_other_code)


def pretrain_from_file(
    config: str | Path,
    out: str | Path | None = None,
    resume: bool = True,
    overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """HiCA stage 1 from a YAML into ``out`` (adapted encoder: ``out/encoder``); returns (out, summary)."""
    from hica.config import Stage1Config, load_model_config
    from hica.jobs.stage1 import run_stage1

    cfg = load_model_config(Stage1Config, config, overrides)
    out = Path(out) if out is not None else Path("runs") / cfg.name
    with out_lock(out):
        summary = run_stage1(cfg, out, resume=resume)
    return out, summary


def finetune_from_file(
    config: str | Path,
    out: str | Path | None = None,
    resume: bool = True,
    overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """HiCA stage 2 on one K-shot episode from a YAML into ``out`` (default ``runs/<name>-K<k>-s<seed>``; the
    model is ``out/model``); returns (out, summary)."""
    from hica.config import Stage2Config, load_model_config
    from hica.jobs.finetune import run_stage2

    cfg = load_model_config(Stage2Config, config, overrides)
    out = Path(out) if out is not None else Path("runs") / f"{cfg.name}-K{cfg.k}-s{cfg.seed}"
    with out_lock(out):
        summary = run_stage2(cfg, out, resume=resume)
    return out, summary

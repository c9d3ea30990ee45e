"""Efficiency benchmarks: encoder throughput vs its raw backbone, wall time and peak memory of a table."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hica.encoders.base import DualEncoder
from hica.runtime import autocast


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def encoder_throughput(
    encoder: DualEncoder,
    backbone_forward,
    batch_size: int = 32,
    rounds: int = 5,
    device: torch.device | None = None,
    precision: str = "fp32",
    image_size: int = 224,
) -> dict[str, Any]:
    """Images/s of ``encoder.encode_image`` and of ``backbone_forward`` (the raw trunk), interleaved.

    Both see the same preprocessed batch; rounds alternate the two so machine noise hits both alike. The
    ratio is the median over rounds of (encoder rate / backbone rate).
    """
    device = device or encoder.device
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        with autocast(device, precision):
            fn(x)
        sync()
        return batch_size / (time.perf_counter() - t)

    for fn in (encoder.encode_image, backbone_forward):  # warm-up
        timed(fn)
    enc, raw, ratios = [], [], []
    for _ in range(rounds):
        e, r = timed(encoder.encode_image), timed(backbone_forward)
        enc.append(e)
        raw.append(r)
        ratios.append(e / r)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    return {
        "batch_size": batch_size,
        "rounds": rounds,
        "precision": precision,
        "device": str(device),
        "encoder_img_per_s": round(med(enc), 2),
        "backbone_img_per_s": round(med(raw), 2),
        "ratio_median": round(med(ratios), 4),
        "ratios": [round(r, 4) for r in ratios],
    }


def method_seconds(metrics_json: Path) -> dict[str, float]:
    """Seconds spent per method (fit + predict, summed over runs) in a benchmark's metrics.json."""
    import json

    out: dict[str, float] = {}
    for run in json.loads(Path(metrics_json).read_text())["runs"]:
        out[run["method"]] = round(out.get(run["method"], 0.0) + run["total_seconds"], 1)
    return out


def table_walltime(config: Path, out: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """Run ``hica benchmark`` twice in subprocesses: cold (empty feature cache, new run dir) and warm
    (same cache, new run dir). Returns wall seconds and the peak RSS of each child."""
    extra = extra or []
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hica-cache-") as cache:
        for phase in ("cold", "warm"):
            run_dir = out if phase == "cold" else Path(tempfile.mkdtemp(prefix="hica-warm-"))
            cmd = [
                sys.executable,
                "-m",
                "hica.cli",
                "benchmark",
                "--config",
                str(config),
                "--out",
                str(run_dir),
                "--no-resume",
                "--cache-dir",
                cache,
                *extra,
            ]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
            res[phase] = {
                "wall_seconds": round(time.perf_counter() - t, 1),
                "method_seconds": method_seconds(run_dir / "metrics.json"),
                "peak_rss_mb_children_so_far": round(
                    resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
                ),
            }
    return res

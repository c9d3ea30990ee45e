"""Compare a GPU grid run (``scripts/gpu_grid.py`` output) with committed CPU benchmark results.

Per (dataset, method, K): mean ± std over seeds on each side, the difference of the means, the mean absolute
paired difference (same episode, same seed) and whether the cell agrees: ``|Δ mean| <= max(abs_tol, CPU
seed-std)``. Timing: CPU and GPU wall time and seconds per episode. Standard library only.

    python scripts/gpu_grid_compare.py --gpu results/gpu/grid --cpu results/hica/busi results/hica/chest_xray
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
from pathlib import Path
from typing import Any

METRICS = ("accuracy", "auc")


def _ms(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x == x]  # NaN-free
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def load_gpu(gpu: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with gzip.open(gpu / "records.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    summary_path = gpu / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return records, summary


def load_cpu(dirs: list[Path]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Runs and grid wall time per dataset of committed benchmark folders (``metrics.json``) or of another
    ``gpu_grid.py`` output (e.g. the same bundle run with ``--device cpu``)."""
    runs, walls = [], {}
    for d in dirs:
        if (d / "records.jsonl.gz").is_file():
            recs, summary = load_gpu(d)
            runs += recs
            for r in recs:  # one wall time for the whole run: split it over datasets by episode count
                walls.setdefault(r["dataset"], 0.0)
                walls[r["dataset"]] += float(summary.get("wall_seconds", float("nan"))) / len(recs)
            continue
        m = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
        runs += m["runs"]
        for r in m["runs"]:
            walls.setdefault(r["dataset"], float(m.get("timings", {}).get("total", float("nan"))))
    return runs, walls


def compare(
    gpu: Path, cpu_dirs: list[Path], out: Path | None = None, abs_tol: float = 0.02
) -> dict[str, Any]:
    """Cell table and timing of a GPU run against CPU results; writes comparison.md/.json to ``out``."""
    gpu_recs, summary = load_gpu(gpu)
    cpu_runs, cpu_walls = load_cpu(cpu_dirs)
    key = lambda r: (r["dataset"], r["method"], r["k"])  # noqa: E731
    cpu_by = {(*key(r), r["seed"]): r for r in cpu_runs}
    cells: dict[tuple, dict[str, Any]] = {}
    for r in gpu_recs:
        c = cells.setdefault(key(r), {"gpu": {}, "cpu": {}})
        c["gpu"][r["seed"]] = r
        if (*key(r), r["seed"]) in cpu_by:
            c["cpu"][r["seed"]] = cpu_by[(*key(r), r["seed"])]
    rows = []
    for (ds, method, k), c in sorted(cells.items()):
        row: dict[str, Any] = {"dataset": ds, "method": method, "k": k, "seeds": sorted(c["gpu"])}
        for m in METRICS:
            g = [c["gpu"][s]["metrics"][m] for s in sorted(c["gpu"])]
            p = [c["cpu"][s]["metrics"][m] for s in sorted(c["cpu"])]
            (gm, gs), (cm, cs) = _ms(g), _ms(p)
            paired = [abs(c["gpu"][s]["metrics"][m] - c["cpu"][s]["metrics"][m]) for s in sorted(c["cpu"])]
            delta = gm - cm
            row[m] = {
                "gpu": [gm, gs],
                "cpu": [cm, cs] if p else None,
                "delta": delta if p else None,
                "paired_abs": statistics.fmean(paired) if paired else None,
                "agrees": bool(p) and abs(delta) <= max(abs_tol, cs),
            }
        rows.append(row)
    timing = _timing(gpu_recs, summary, cpu_runs, cpu_walls)
    result = {
        "abs_tol": abs_tol,
        "cells": rows,
        "timing": timing,
        "agree": {
            m: [sum(r[m]["agrees"] for r in rows), sum(r[m]["cpu"] is not None for r in rows)]
            for m in METRICS
        },
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        (out / "comparison.md").write_text(markdown(result), encoding="utf-8")
    return result


def _timing(gpu_recs: list, summary: dict, cpu_runs: list, cpu_walls: dict[str, float]) -> dict[str, Any]:
    datasets = sorted({r["dataset"] for r in gpu_recs})
    cpu = [r for r in cpu_runs if r["dataset"] in datasets]
    cpu_wall = sum(cpu_walls.get(d, float("nan")) for d in datasets)
    return {
        "gpu_device": summary.get("device"),
        "gpu_workers": summary.get("workers"),
        "gpu_wall_seconds": summary.get("wall_seconds"),
        "gpu_episodes": len(gpu_recs),
        "gpu_seconds_per_episode": summary.get("seconds_per_episode"),
        "gpu_mean_episode_seconds": _ms([r["total_seconds"] for r in gpu_recs])[0],
        "cpu_wall_seconds": cpu_wall,
        "cpu_episodes": len(cpu),
        "cpu_seconds_per_episode": cpu_wall / len(cpu) if cpu else None,
        "cpu_mean_episode_seconds": _ms([r["total_seconds"] for r in cpu])[0] if cpu else None,
    }


def _f(v: Any, nd: int = 3) -> str:
    return "—" if v is None or v != v else f"{v:.{nd}f}"


def markdown(res: dict[str, Any]) -> str:
    t = res["timing"]
    lines = [
        "# GPU grid vs committed CPU results",
        "",
        f"GPU: {t['gpu_device']} ({t['gpu_workers']} workers), {t['gpu_episodes']} episodes in "
        f"{_f(t['gpu_wall_seconds'], 1)} s wall, set-up included: "
        f"{_f(t['gpu_seconds_per_episode'], 2)} s per episode (one episode alone: "
        f"{_f(t['gpu_mean_episode_seconds'], 2)} s).",
        f"CPU (reference): {t['cpu_episodes']} episodes in {_f(t['cpu_wall_seconds'], 1)} s wall: "
        f"{_f(t['cpu_seconds_per_episode'], 2)} s per episode "
        f"({_f(t['cpu_mean_episode_seconds'], 2)} s fit + predict).",
        "",
        f"A cell agrees when |Δ mean| ≤ max({res['abs_tol']}, CPU seed-std). Agreeing cells: "
        + ", ".join(f"{m} {a}/{n}" for m, (a, n) in res["agree"].items())
        + ". Paired |Δ|: mean absolute difference over the same episodes.",
        "",
        "| dataset | method | K | CPU acc | GPU acc | Δ acc | paired |Δ| | CPU AUC | GPU AUC | Δ AUC "
        "| agrees |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["cells"]:
        a, u = r["accuracy"], r["auc"]
        ms = lambda v: "—" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}"  # noqa: E731
        ok = "yes" if a["agrees"] and u["agrees"] else ("—" if a["cpu"] is None else "no")
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r['k']} | {ms(a['cpu'])} | {ms(a['gpu'])} | "
            f"{_f(a['delta'])} | {_f(a['paired_abs'])} | {ms(u['cpu'])} | {ms(u['gpu'])} | "
            f"{_f(u['delta'])} | {ok} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", type=Path, required=True, help="output folder of scripts/gpu_grid.py")
    ap.add_argument("--cpu", type=Path, nargs="+", required=True, help="committed benchmark result folders")
    ap.add_argument("--out", type=Path, default=None, help="where comparison.md/.json go (default: --gpu)")
    ap.add_argument("--abs-tol", type=float, default=0.02)
    a = ap.parse_args()
    res = compare(a.gpu, a.cpu, a.out or a.gpu, a.abs_tol)
    print(markdown(res))


if __name__ == "__main__":
    main()

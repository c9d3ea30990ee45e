"""Issue 13 §1: what stage 1 buys each method on chest X-ray — every baseline on the default encoder and on
the stage-1 encoder, paired per episode, beside HiCA with and without stage 1.

    python scripts/stage1_compare.py --out results/baselines_stage1/comparison.md

Reads benchmark runs made by committed commands on committed configs:
  results/baselines_faithful/        default encoder, encoder text head (configs/baselines_faithful.yaml)
  results/baselines_text_head/       default encoder, support-trained text head
                                     (configs/baselines_text_head.yaml)
  results/baselines_stage1/chest_xray/  stage-1 encoder, support-trained text head
                                     (configs/baselines_stage1_chest_xray.yaml)
  results/hica/no_stage1/, results/hica/chest_xray/  HiCA without / with stage 1

The text-using methods are compared with the support-trained head on both encoders (the stage-1 run has only
that head); the others (prototype, kNN, linear probe) do not read text. Each (method, K, seed) is the same
episode on both encoders when both runs used the same validation carving (``split_version``; the script
says when they did not). Δ: stage-1 − default test accuracy, paired over the method's 15 episodes, with a 95%
bootstrap CI over episodes (``hica.eval.stats.paired_difference``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from baselines_compare import runs as dataset_runs  # scripts/ is on sys.path when run as a script

from hica.eval.stats import paired_difference, paired_text
from hica.io import write_json, write_text

DS = "chest_xray"
STAGE1 = Path("results/baselines_stage1/chest_xray")
PLAIN = [Path("results/baselines_faithful"), Path("results/baselines_text_head")]  # later runs win
HICA = ("hica", Path("results/hica/no_stage1"), Path("results/hica/chest_xray"))


def runs(path: Path) -> dict[tuple[str, int, int], dict[str, Any]]:
    """(method, K, seed) → the run's chest X-ray record."""
    return {key[1:]: r for key, r in dataset_runs(path).items() if key[0] == DS}


def carving(rs: dict[tuple[str, int, int], dict[str, Any]]) -> str:
    versions = {r.get("split_version") or "per-image" for r in rs.values()}
    return ", ".join(sorted(versions))


def row(name: str, plain: dict, stage1: dict, shots: list[int]) -> tuple[str, dict[str, Any]]:
    a = {(k, s): stage1[(m, k, s)]["metrics"]["accuracy"] for (m, k, s) in stage1 if m == name}
    b = {(k, s): plain[(m, k, s)]["metrics"]["accuracy"] for (m, k, s) in plain if m == name}
    cells = []
    for k in shots:
        pa = [v for (kk, _), v in b.items() if kk == k]
        sa = [v for (kk, _), v in a.items() if kk == k]
        cells.append(f"{np.mean(pa):.3f} → {np.mean(sa):.3f}" if pa and sa else "—")
    d = paired_difference(a, b)
    return f"| {name} | " + " | ".join(cells) + f" | {paired_text(d)} |", d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    plain: dict[tuple[str, int, int], dict[str, Any]] = {}
    for p in PLAIN:
        plain |= runs(p)
    stage1 = runs(STAGE1)
    shots = sorted({k for _, k, _ in stage1})
    methods = sorted({m for m, _, _ in stage1})
    lines = [
        "# What stage 1 buys each method on chest X-ray (issue 13 §1)",
        "",
        "Made by `python scripts/stage1_compare.py` from " + ", ".join(f"`{p}`" for p in PLAIN) + " (default",
        f"encoder) and `{STAGE1}` (stage-1 encoder, `runs/stage1/chest_xray`); text-using methods with",
        "a text head trained on the support set on both. Test accuracy, mean of seeds 1–3, default →",
        "stage-1; Δ: stage-1 − default paired over the method's episodes (K × seed) [95% bootstrap CI]",
        "(wins/losses); **bold** where the CI excludes 0. CPU (AMD EPYC, 2 cores), bf16.",
        "",
        f"Validation carving: default-encoder baselines `{carving(plain)}`, stage-1 baselines "
        f"`{carving(stage1)}`; HiCA `{carving(runs(HICA[1]))}` / `{carving(runs(HICA[2]))}`.",
        "",
        "| method | " + " | ".join(f"K={k}" for k in shots) + " | Δ accuracy |",
        "|---|" + "---|" * (len(shots) + 1),
    ]
    result: dict[str, Any] = {"rows": []}
    for m in methods:
        line, d = row(m, plain, stage1, shots)
        lines.append(line)
        result["rows"].append({"method": m, "delta_accuracy": d})
    line, d = row(HICA[0], runs(HICA[1]), runs(HICA[2]), shots)
    lines.append(line.replace("| hica |", "| **HiCA** (stage 2; `no_stage1` → `chest_xray`) |", 1))
    result["rows"].append({"method": "hica", "delta_accuracy": d})
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

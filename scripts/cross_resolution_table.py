"""Table of the cross-resolution runs written by scripts/cross_resolution.sh (mean ± std over seeds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from hica.io import write_text


def sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def main(folder: Path) -> None:
    runs = [json.loads(p.read_text()) | {"file": p.name} for p in sorted(folder.glob("train-*.json"))]
    lines = [
        "| trained on (K=16) | scored on | accuracy | AUC | seeds |",
        "|---|---|---|---|---|",
    ]
    pairs = sorted({(r["file"].split("__")[0][6:], r["dataset"]) for r in runs})
    for train, test in pairs:
        sel = [r for r in runs if r["file"].startswith(f"train-{train}__") and r["dataset"] == test]
        acc = [r["metrics"]["accuracy"] for r in sel]
        auc = [r["metrics"]["auc"] for r in sel]
        lines.append(
            f"| {train} | {test} | {np.mean(acc):.3f} ± {sd(acc):.3f} | {np.mean(auc):.3f} ± {sd(auc):.3f} "
            f"| {len(sel)} |"
        )
    write_text(folder / "table.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

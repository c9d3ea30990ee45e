"""results/hica/summary.md: HiCA against the strongest baseline on the same encoder, per dataset, metric, K,
from the 10-seed headline tables (``scripts/headline.py`` → ``headline.json``), with the paired difference.

    python scripts/hica_summary.py --headline results/headline/chest_xray/headline.json \
        --headline results/headline/busi/headline.json --out results/hica/summary.md

Each cell: HiCA mean ± std over seeds vs the baseline with the highest mean at that K and metric (the
strongest, named; picked on test for scale only, as ``headline.md`` says) and HiCA − that baseline paired
per episode, mean [95% bootstrap CI over episodes], in bold where the CI excludes 0. Every HiCA row of a
headline gets a line (on BUSI `hica` has K = 16 only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hica.io import write_json, write_text

LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "auc": "macro AUC",
    "auc/malignant": "malignant-vs-rest AUC",
}


def cell(hica: dict, base: dict, name: str, diff: dict) -> str:
    """``0.842 ± 0.036 vs 0.857 ± 0.034 (clap); Δ −0.015 [−0.030, −0.003]`` (Δ bold if its CI excludes 0)."""
    if not diff["n"]:
        d = "Δ – (no paired episodes)"
    else:
        lo, hi = diff["ci95"]
        d = f"Δ {diff['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        d = f"**{d}**" if diff["sign"] in ("above 0", "below 0") else d
    return f"{hica['mean']:.3f} ± {hica['std']:.3f} vs {base['mean']:.3f} ± {base['std']:.3f} ({name}); {d}"


def rows_of(
    headline: dict[str, Any], dataset: str, shots: list[int]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Markdown rows (one column per K of ``shots``) and their data for one headline.json."""
    cells = {(c["method"], c["k"], c["metric"]): c for c in headline["cells"]}
    paired = {(p["reference"], p["k"], p["baseline"]): p for p in headline["paired"]}
    hicas = list(dict.fromkeys(p["reference"] for p in headline["paired"]))
    baselines = sorted({p["baseline"] for p in headline["paired"]})
    metrics = list(dict.fromkeys(m for _, _, m in cells))
    lines, data = [], []
    for h in hicas:
        for metric in metrics:
            out = []
            for k in shots:
                mine = cells.get((h, k, metric))
                cands = [(cells[(b, k, metric)]["mean"], b) for b in baselines if (b, k, metric) in cells]
                if mine is None or not cands or (h, k, max(cands)[1]) not in paired:
                    out.append("–")
                    continue
                best = max(cands)[1]
                diff = paired[(h, k, best)][metric]
                out.append(cell(mine, cells[(best, k, metric)], best, diff))
                data.append(
                    {
                        "dataset": dataset,
                        "hica": h,
                        "metric": metric,
                        "k": k,
                        "baseline": best,
                        "hica_cell": mine,
                    }
                    | {
                        "baseline_cell": cells[(best, k, metric)],
                        "paired": {x: diff[x] for x in diff if x != "per_episode"},
                    }
                )
            lines.append(f"| {dataset} | `{h}` | {LABELS.get(metric, metric)} | " + " | ".join(out) + " |")
    return lines, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--headline", required=True, type=Path, action="append", help="a headline.json (repeatable)"
    )
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    heads = {path: json.loads(path.read_text()) for path in args.headline}
    shots = sorted({c["k"] for h in heads.values() for c in h["cells"]})
    body, data = [], []
    for path, headline in heads.items():
        lines, more = rows_of(headline, path.parent.name, shots)
        body += lines
        data += more
    head = [
        "| dataset | HiCA | metric | " + " | ".join(f"K={k}" for k in shots) + " |",
        "|---|---|---|" + "---|" * len(shots),
    ]
    write_text(args.out, "\n".join(head + body) + "\n")
    write_json(args.out.with_suffix(".json"), {"headlines": [str(p) for p in args.headline], "cells": data})
    print("\n".join(head + body))


if __name__ == "__main__":
    main()

"""Level ablations with power (issue 10 §5): each HiCA variant against the full objective, paired per episode.

    python scripts/ablation_power.py --run results/hica/ablation_busi/k16 \
        --run results/hica/ablation_busi/k4 \
        --out results/hica/ablation_busi/paired.md

Reads benchmark runs (``metrics.json`` and ``predictions.csv``, made by ``hica benchmark`` on a committed
config). For each K and variant, the difference (full HiCA − variant) of test accuracy, macro AUC and, where
the dataset has one, the malignant-vs-rest AUC (from the predicted probabilities) is paired per episode (same
dataset, K, seed: same support set and test images); mean and 95% bootstrap CI over episodes
(``hica.eval.stats.paired_difference``). A positive difference means the level the variant removes helps.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hica.eval.metrics import one_vs_rest_auc
from hica.eval.stats import paired_difference, paired_text
from hica.io import open_text, write_json, write_text

REFERENCE = "hica"
WHAT = {
    "hica_global_only": "L_local and L_cross (global only)",
    "hica_no_local": "L_local",
    "hica_no_cross": "L_cross",
    "hica_class_attributes": "per-image attributes (vs class-level phrases)",
}


def scores(
    run: Path, dataset: str | None = None, label: str = "", extra: tuple[str, ...] = ()
) -> tuple[dict[tuple[str, int, int], dict[str, float]], list[str]]:
    """(method, K, seed) → {accuracy, auc, auc/<positive class>}; and the metric names. ``dataset``: only
    that dataset's episodes (its name without the ``[split file]`` suffix; a run of several datasets needs
    it); ``label``: appended to every method name as ``method:label`` (two runs of one method); ``extra``:
    more per-episode metrics of ``metrics.json`` (e.g. ``balanced_accuracy``), listed after accuracy."""

    def keep(name: str) -> bool:
        return dataset is None or name.split("[")[0] == dataset

    def key(method: str, k: Any, seed: Any) -> tuple[str, int, int]:
        return (f"{method}:{label}" if label else method, int(k), int(seed))

    m = json.loads((run / "metrics.json").read_text())
    runs = [r for r in m["runs"] if keep(r["dataset"])]
    if len({r["dataset"] for r in runs}) > 1:
        raise SystemExit(f"{run} holds several datasets: name the one to read (headline.py's --dataset)")
    if not runs:
        raise SystemExit(f"{run} has no episodes of dataset {dataset!r}")
    out: dict[tuple[str, int, int], dict[str, float]] = {}
    for r in runs:
        missing = [n for n in extra if n not in r["metrics"]]
        if missing:
            raise SystemExit(f"{run}: episode {r['method']} K={r['k']} seed={r['seed']} has no {missing}")
        out[key(r["method"], r["k"], r["seed"])] = {
            "accuracy": r["metrics"]["accuracy"],
            **{n: r["metrics"][n] for n in extra},
            "auc": r["metrics"]["auc"],
        }
    rows: dict[tuple[str, int, int], list[dict[str, str]]] = defaultdict(list)
    with open_text(run / "predictions.csv") as f:
        for row in csv.DictReader(f):
            if keep(row["dataset"]):
                rows[key(row["method"], row["k"], row["seed"])].append(row)
    names = ["accuracy", *extra, "auc"]
    classes = runs[0].get("classes") or [] if runs else []
    if "malignant" in classes:
        c = classes.index("malignant")
        names.append("auc/malignant")
        for k, rs in rows.items():
            y = np.array([classes.index(r["label"]) for r in rs])
            p = np.array([[float(r[f"p{i}"]) for i in range(len(classes))] for r in rs])
            out[k]["auc/malignant"] = one_vs_rest_auc(y, p, c)
    return out, names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, action="append", help="a benchmark run (repeatable)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    s: dict[tuple[str, int, int], dict[str, float]] = {}
    names: list[str] = []
    for run in args.run:
        more, names = scores(run)
        s.update(more)
    methods = sorted({m for m, _, _ in s} - {REFERENCE})
    shots = sorted({k for _, k, _ in s})
    runs = ", ".join(str(r) for r in args.run)
    result: dict[str, Any] = {"runs": [str(r) for r in args.run], "reference": REFERENCE, "comparisons": []}
    lines = [
        f"# Level ablations, paired per episode: `{REFERENCE}` − variant ({runs})",
        "",
        "Each cell: mean paired difference over episodes [95% bootstrap CI over episodes] (wins/losses of "
        "the full objective); **bold** where the CI excludes 0. Positive: the removed level helps.",
        "",
        "| K | variant (removes) | episodes | " + " | ".join(f"Δ {n}" for n in names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    for k in shots:
        for m in methods:
            cells, row = [], {"k": k, "variant": m, "removes": WHAT.get(m, m)}
            n = 0
            for name in names:
                a = {
                    sd: v[name] for (mm, kk, sd), v in s.items() if mm == REFERENCE and kk == k and name in v
                }
                b = {sd: v[name] for (mm, kk, sd), v in s.items() if mm == m and kk == k and name in v}
                d = paired_difference(a, b)
                if d["n"] == 0:  # this variant was not run at this K
                    break
                row[name] = d
                n = d["n"]
                cells.append(paired_text(d))
            if n == 0 or len(cells) < len(names):
                continue
            result["comparisons"].append(row)
            lines.append(f"| {k} | `{m}` ({WHAT.get(m, m)}) | {n} | " + " | ".join(cells) + " |")
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

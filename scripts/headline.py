"""Issue 13 §2: a headline table with power: every method at every K over ≥ 10 seeds (mean, std, 95% CI),
HiCA against each baseline paired per episode, and the issue's targets at K = 16.

    python scripts/headline.py --run results/headline/busi --run results/hica/fast/busi_k16 \
        --reference hica_fast --dataset busi --out results/headline/busi/headline.md

Reads benchmark runs (``metrics.json`` and ``predictions.csv``, made by ``hica benchmark`` on committed
configs: every method on the same encoder; the same dataset, K and seed is the same episode in every run).
Methods named ``hica*`` are HiCA rows, the others baselines. Per method and K: mean ± std over seeds and
a 95% bootstrap CI of the mean over seeds. Per K and baseline: reference − baseline paired per episode (same
support set and test images), mean and 95% bootstrap CI over episodes (``hica.eval.stats.paired_difference``).
Each HiCA row is paired with every baseline; no "best baseline" is picked on test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from ablation_power import scores  # scripts/ is on sys.path when run as a script

from hica.eval.stats import bootstrap_mean_ci, paired_difference, paired_text, seed_summary
from hica.io import write_json, write_text

#: The issue's bars at K = 16 (mean over ≥ 10 seeds), per dataset name prefix (``--dataset``): metric → min.
TARGETS = {
    "busi": {"accuracy": 0.75, "auc/malignant": 0.90},
    "chest_xray": {"accuracy": 0.90, "auc": 0.96},
}


#: Places kept in headline.json: the tables print 3, so storing 4 would round twice (0.81748 → 0.818).
PLACES = 6


def mean_ci(values: list[float], n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Mean, sample std and a 95% bootstrap CI of the mean over seeds (NaN values left out)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    lo, hi = bootstrap_mean_ci(a, n_boot, seed)
    return {"n": len(a), **seed_summary(a, places=PLACES), "ci95": [round(lo, PLACES), round(hi, PLACES)]}


def paired_rows(s: dict, ref: str, baselines: list[str], k: int, names: list[str]) -> list[dict[str, Any]]:
    """``ref`` − each baseline at K = ``k``, per metric, paired per episode (none: no paired episodes)."""
    rows = []
    for m in baselines:
        row: dict[str, Any] = {"reference": ref, "k": k, "baseline": m}
        for n in names:
            a = {sd: v[n] for (mm, kk, sd), v in s.items() if mm == ref and kk == k and n in v}
            b = {sd: v[n] for (mm, kk, sd), v in s.items() if mm == m and kk == k and n in v}
            row[n] = paired_difference(a, b, places=PLACES)
        if any(row[n]["n"] for n in names):
            rows.append(row)
    return rows


def majority_share(run: Path, dataset: str) -> dict[str, Any]:
    """The test split's largest class and its share: the accuracy of always predicting it (from the
    confusion matrix of one episode in ``metrics.json``: its row sums are the test split's class counts)."""
    m = json.loads((run / "metrics.json").read_text())
    r = next((r for r in m["runs"] if r["dataset"].split("[")[0] == dataset), None)
    if r is None:
        raise SystemExit(f"{run} has no episodes of dataset {dataset!r}")
    counts = [sum(row) for row in r["confusion"]]
    top = int(np.argmax(counts))
    total = sum(counts)
    return {
        "class": r["classes"][top],
        "share": round(counts[top] / total, PLACES),
        "n": total,
        "classes": len(counts),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--run",
        required=True,
        action="append",
        help="a benchmark run (repeatable); PATH:LABEL names its methods METHOD:LABEL (e.g. other text head)",
    )
    ap.add_argument("--reference", default="hica", help="the HiCA method of the headline")
    ap.add_argument("--dataset", required=True, help="dataset name for the targets (busi, chest_xray)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--no-targets", action="store_true", help="leave the issue's K = 16 targets out")
    args = ap.parse_args()
    s: dict = {}
    names: list[str] = []
    for spec in args.run:  # the same (method, K, seed) in two runs is the same episode and computation
        path, _, label = spec.partition(":")
        more, its = scores(Path(path), args.dataset, label, extra=("balanced_accuracy",))
        s.update(more)
        names += [n for n in its if n not in names]
    ref = args.reference
    found = sorted({m for m, _, _ in s})
    runs = ", ".join(map(str, args.run))
    if ref not in found:
        raise SystemExit(f"--reference {ref}: not a method of {runs} (they have {', '.join(found)})")
    dataset = next((d for d in TARGETS if args.dataset.startswith(d)), None)
    if dataset is None:
        raise SystemExit(f"--dataset {args.dataset}: expected a name starting with {' or '.join(TARGETS)}")
    hicas = [ref] + [m for m in found if m.startswith("hica") and m != ref]
    baselines = [m for m in found if not m.startswith("hica")]
    methods = hicas + baselines
    shots = sorted({k for _, k, _ in s})
    per = {}
    for m in methods:
        for k in shots:
            for n in names:
                vals = [v[n] for (mm, kk, _), v in sorted(s.items()) if mm == m and kk == k and n in v]
                if vals:
                    per[(m, k, n)] = mean_ci(vals)
    majority = majority_share(Path(args.run[0].partition(":")[0]), args.dataset)
    result: dict[str, Any] = {"runs": [str(r) for r in args.run], "reference": ref, "majority": majority}
    result.update(cells=[], paired=[], targets=[])
    lines = [
        f"# Headline: every method on one encoder ({runs})",
        "",
        "Mean ± std over seeds [95% bootstrap CI of the mean]; test split. HiCA rows first.",
        "",
        f"Always predicting the largest test class (`{majority['class']}`, {majority['n']} test images) "
        f"scores accuracy {majority['share']:.3f} and balanced accuracy {1 / majority['classes']:.3f}: "
        "accuracy under that line is no better than a constant answer; balanced accuracy (the mean recall "
        "over classes) is not moved by the class prior.",
        "",
    ]
    for n in names:
        lines += [f"## {n}", "", "| method | " + " | ".join(f"K={k}" for k in shots) + " |"]
        lines.append("|---|" + "---|" * len(shots))
        for m in methods:
            cells = []
            for k in shots:
                c = per.get((m, k, n))
                if c is None:
                    cells.append("–")
                    continue
                result["cells"].append({"method": m, "k": k, "metric": n, **c})
                cells.append(f"{c['mean']:.3f} ± {c['std']:.3f} [{c['ci95'][0]:.3f}, {c['ci95'][1]:.3f}]")
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        seeds = sorted({c["n"] for c in result["cells"] if c["metric"] == n})
        lines += ["", f"Seeds per cell: {', '.join(map(str, seeds))}.", ""]
    lines += [
        "## HiCA − baseline, paired per episode",
        "",
        "Mean paired difference [95% bootstrap CI over episodes] (wins/losses); **bold**: the CI excludes 0.",
        "",
        "| HiCA | K | baseline | episodes | " + " | ".join(f"Δ {n}" for n in names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    summary = ["", "Accuracy against the baselines per K (paired CIs; the strongest by mean for scale):", ""]
    for h in hicas:
        for k in shots:
            rows = paired_rows(s, h, baselines, k, names)
            for row in rows:
                result["paired"].append(row)
                n_ep = max(row[n]["n"] for n in names)
                cells = [paired_text(row[n]) if row[n]["n"] else "–" for n in names]
                lines.append(f"| `{h}` | {k} | `{row['baseline']}` | {n_ep} | " + " | ".join(cells) + " |")
            rows = [r for r in rows if r["accuracy"]["n"]]
            if not rows:
                continue
            signs = {r["baseline"]: r["accuracy"]["sign"] for r in rows}
            behind = sorted(m for m, sg in signs.items() if sg == "below 0")
            tied = sorted(m for m, sg in signs.items() if sg == "CI holds 0")
            best = max(rows, key=lambda r: per[(r["baseline"], k, "accuracy")]["mean"])
            mean = per[(best["baseline"], k, "accuracy")]["mean"]
            summary.append(
                f"- `{h}`, K = {k}: ahead of {len(rows) - len(behind) - len(tied)} of {len(rows)}"
                + (f"; behind {', '.join(f'`{m}`' for m in behind)}" if behind else "")
                + (f"; not separable from {', '.join(f'`{m}`' for m in tied)}" if tied else "")
                + f". Strongest: `{best['baseline']}` {mean:.3f}, Δ {paired_text(best['accuracy'])}."
            )
    lines += summary
    if 16 in shots and not args.no_targets:
        lines += ["", "Targets at K = 16 (issue 13: mean over ≥ 10 seeds):", ""]
        for h in hicas:
            for n, bar in TARGETS[dataset].items():
                c = per.get((h, 16, n))
                if c is None:
                    continue
                met = c["mean"] >= bar and c["n"] >= 10
                result["targets"].append(
                    {"method": h, "metric": n, "bar": bar, "mean": c["mean"], "seeds": c["n"], "met": met}
                )
                verdict = "met" if met else "not met" if c["n"] >= 10 else f"not judged ({c['n']} seeds)"
                lines.append(f"- `{h}` {n} ≥ {bar}: {c['mean']:.3f} over {c['n']} seeds — {verdict}")
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

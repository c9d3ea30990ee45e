"""Issue 13 §2: a headline table with power: every method at every K over ≥ 10 seeds (mean, std, 95% CI),
HiCA against each baseline paired per episode, and the issue's targets at K = 16.

    python scripts/headline.py --run results/headline/busi --reference hica_fast \
        --out results/headline/busi/headline.md

Reads one benchmark run (``metrics.json`` and ``predictions.csv``, made by ``hica benchmark`` on a committed
config: every method on the same encoder and the same episodes). Per method and K: mean ± std over seeds and
a 95% bootstrap CI of the mean over seeds. Per K and baseline: reference − baseline paired per episode (same
support set and test images), mean and 95% bootstrap CI over episodes (``hica.eval.stats.paired_difference``).
"Ahead of every baseline" at a K means each paired accuracy CI lies above 0: no baseline is picked on test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_power import scores  # noqa: E402

from hica.eval.stats import paired_difference, paired_text  # noqa: E402
from hica.io import write_json, write_text  # noqa: E402

#: The issue's bars at K = 16 (mean over ≥ 10 seeds), per dataset name prefix (``--dataset``): metric → min.
TARGETS = {
    "busi": {"accuracy": 0.75, "auc/malignant": 0.90},
    "chest_xray": {"accuracy": 0.90, "auc": 0.96},
}


def mean_ci(values: list[float], n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Mean, sample std and a 95% bootstrap CI of the mean over seeds (NaN values left out)."""
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    boots = a[np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {
        "n": len(a),
        "mean": round(float(a.mean()), 4),
        "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="a benchmark run directory")
    ap.add_argument("--reference", default="hica", help="the HiCA method of the run")
    ap.add_argument("--dataset", required=True, help="dataset name for the targets (busi, chest_xray)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    s, names = scores(args.run)
    ref = args.reference
    found = sorted({m for m, _, _ in s})
    if ref not in found:
        raise SystemExit(f"--reference {ref}: not a method of {args.run} (it has {', '.join(found)})")
    dataset = next((d for d in TARGETS if args.dataset.startswith(d)), None)
    if dataset is None:
        raise SystemExit(f"--dataset {args.dataset}: expected a name starting with {' or '.join(TARGETS)}")
    methods = [ref] + [m for m in found if m != ref]
    shots = sorted({k for _, k, _ in s})
    per = {}
    for m in methods:
        for k in shots:
            for n in names:
                vals = [v[n] for (mm, kk, _), v in sorted(s.items()) if mm == m and kk == k and n in v]
                if vals:
                    per[(m, k, n)] = mean_ci(vals)
    result: dict[str, Any] = {"run": str(args.run), "reference": ref}
    result.update(cells=[], paired=[], targets=[])
    lines = [
        f"# Headline: every method on one encoder, {args.run}",
        "",
        "Mean ± std over seeds [95% bootstrap CI of the mean]; test split.",
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
        f"## `{ref}` − baseline, paired per episode",
        "",
        "Mean paired difference [95% bootstrap CI over episodes] (wins/losses); **bold**: the CI excludes 0.",
        "",
        "| K | baseline | episodes | " + " | ".join(f"Δ {n}" for n in names) + " |",
        "|---|---|---|" + "---|" * len(names),
    ]
    ahead = {}
    for k in shots:
        above = []
        for m in methods[1:]:
            cells, row, n_ep = [], {"k": k, "baseline": m}, 0
            for n in names:
                a = {sd: v[n] for (mm, kk, sd), v in s.items() if mm == ref and kk == k and n in v}
                b = {sd: v[n] for (mm, kk, sd), v in s.items() if mm == m and kk == k and n in v}
                d = paired_difference(a, b)
                row[n], n_ep = d, max(n_ep, d["n"])
                cells.append(paired_text(d) if d["n"] else "–")
            if n_ep == 0:
                continue
            above.append(row["accuracy"].get("sign") == "above 0")
            result["paired"].append(row)
            lines.append(f"| {k} | `{m}` | {n_ep} | " + " | ".join(cells) + " |")
        ahead[k] = bool(above) and all(above)
    lines += ["", f"`{ref}` ahead of every baseline in accuracy (each paired CI above 0):", ""]
    lines += [f"- K = {k}: {'yes' if ahead[k] else 'no'}" for k in shots]
    result["ahead_of_every_baseline"] = {str(k): v for k, v in ahead.items()}
    if 16 in shots:
        lines += ["", f"Targets at K = 16 (issue 13: mean over ≥ 10 seeds), `{ref}`:", ""]
        for n, bar in TARGETS[dataset].items():
            c = per.get((ref, 16, n))
            if c is None:
                continue
            met = c["mean"] >= bar and c["n"] >= 10
            result["targets"].append(
                {"metric": n, "bar": bar, "mean": c["mean"], "seeds": c["n"], "met": met}
            )
            verdict = "met" if met else "not met" if c["n"] >= 10 else f"not judged ({c['n']} seeds)"
            lines.append(f"- {n} ≥ {bar}: {c['mean']:.3f} over {c['n']} seeds — {verdict}")
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

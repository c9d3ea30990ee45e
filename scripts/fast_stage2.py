"""Issue 13 §5: fast stage 2, before and after in one benchmark run per dataset.

    python scripts/fast_stage2.py --run results/hica/fast/busi_k16 --run results/hica/fast/chest_xray_k16 \
        --out results/hica/fast/before_after.md

Each run (``hica benchmark`` on a committed config) holds today's HiCA (``--before``, default ``hica``) and
the fast preset (``--after``, default ``hica_fast``) on the same K = 16 episodes, one after the other on the
same machine. Per dataset: accuracy and AUC (mean ± std over seeds), the paired difference after − before
(``hica.eval.stats.paired_difference``), and per-episode wall seconds (each part's ``total_seconds``: fit +
test predictions; ``fit_seconds`` alone). The targets: an episode ≤ 20 s and the fast mean accuracy not
lower than today's by more than one sample std over seeds. The first part of a run also pays for loading the
test images (in these runs that is ``hica`` seed 1: it makes the "before" mean slightly slower).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hica.eval.stats import paired_difference, paired_text, seed_summary
from hica.io import write_json, write_text

TARGET_SECONDS = 20.0


def compare(run: Path, before: str, after: str) -> dict[str, Any]:
    """The before/after numbers of one run."""
    m = json.loads((run / "metrics.json").read_text())
    env = json.loads((run / "environment.json").read_text())
    cells = {(r["dataset"], r["k"]) for r in m["runs"]}
    if len(cells) != 1:
        raise SystemExit(f"--run {run}: expected one dataset and one K, found {sorted(cells)}")
    by: dict[str, dict[int, dict[str, Any]]] = {before: {}, after: {}}
    for r in m["runs"]:
        if r["method"] in by:
            by[r["method"]][r["seed"]] = r
    for flag, name in (("--before", before), ("--after", after)):
        if not by[name]:
            found = sorted({r["method"] for r in m["runs"]})
            raise SystemExit(f"{flag} {name}: not a method of {run} (it has {', '.join(found)})")
    ((dataset, k),) = cells
    out: dict[str, Any] = {"run": str(run), "dataset": dataset, "k": k}
    for name in (before, after):
        rs = [by[name][s] for s in sorted(by[name])]
        out[name] = {
            "seeds": len(rs),
            "accuracy": seed_summary([r["metrics"]["accuracy"] for r in rs]),
            "auc": seed_summary([r["metrics"]["auc"] for r in rs]),
            "total_seconds": seed_summary([r["total_seconds"] for r in rs]),
            "max_total_seconds": round(max(r["total_seconds"] for r in rs), 1),
            "fit_seconds": seed_summary([r["fit_seconds"] for r in rs]),
        }
    for metric in ("accuracy", "auc"):
        out[f"delta_{metric}"] = paired_difference(
            {s: r["metrics"][metric] for s, r in by[after].items()},
            {s: r["metrics"][metric] for s, r in by[before].items()},
        )
    b, a = out[before], out[after]
    out["speedup"] = round(b["total_seconds"]["mean"] / a["total_seconds"]["mean"], 2)
    # "the same accuracy": not lower than today's mean by more than one (sample) std over seeds
    out["within_one_std"] = b["accuracy"]["mean"] - a["accuracy"]["mean"] <= b["accuracy"]["std"]
    out["episode_within_target"] = a["max_total_seconds"] <= TARGET_SECONDS
    out["machine"] = {k: env.get(k) for k in ("cpu", "cpu_cores", "torch_threads", "fit_threads") if k in env}
    out["git_commit"], out["git_clean"] = env.get("git_commit"), env.get("git_clean")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, action="append", help="a benchmark run (repeatable)")
    ap.add_argument("--before", default="hica")
    ap.add_argument("--after", default="hica_fast")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    res = [compare(r, args.before, args.after) for r in args.run]
    b, a = args.before, args.after
    lines = [
        f"# Fast stage 2: `{b}` (before) and `{a}` (after), one benchmark run per dataset",
        "",
        "Mean ± std over seeds, test split. Seconds per episode: fit + test predictions (each part's "
        f"`total_seconds`); target ≤ {TARGET_SECONDS:.0f} s for every episode, and the fast mean accuracy "
        "not lower than today's by more than one std.",
        "",
        "| dataset | K | seeds | accuracy before | accuracy after | Δ accuracy (paired) | Δ AUC (paired) | "
        "s/episode before | s/episode after (max) | speed-up | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        x, y = r[b], r[a]
        ok = (
            f"time {'met' if r['episode_within_target'] else 'not met'}, "
            f"accuracy {'met' if r['within_one_std'] else 'not met'}"
        )
        acc = [f"{z['accuracy']['mean']:.3f} ± {z['accuracy']['std']:.3f}" for z in (x, y)]
        cells = [r["dataset"], str(r["k"]), str(y["seeds"]), *acc]
        cells += [paired_text(r["delta_accuracy"]), paired_text(r["delta_auc"])]
        cells += [
            f"{x['total_seconds']['mean']:.1f}",
            f"{y['total_seconds']['mean']:.1f} ({y['max_total_seconds']:.1f})",
        ]
        cells += [f"{r['speedup']:.2f}×", ok]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [
        f"- {r['run']}: commit {str(r['git_commit'])[:7]}, clean tree {r['git_clean']}, "
        + ", ".join(f"{k} {v}" for k, v in r["machine"].items())
        for r in res
    ]
    write_json(args.out.with_suffix(".json"), {"before": b, "after": a, "datasets": res})
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Choose HiCA stage-2 hyperparameters on validation data only.

Runs the benchmark protocol with ``eval_split: val`` (each episode's own validation shots are left out of
the scoring) for every setting of a grid, on each dataset's encoder (``datasets``: name → encoder; a setting
may bring its own ``encoder``; ``base_args``: per dataset, settings every candidate shares), and writes a
table (mean and sample std over seeds; where the dataset has a ``malignant`` class, its one-vs-rest AUC).

    python scripts/tune_stage2.py --config configs/tuning/stage2.yaml --out results/tuning/stage2

A spec with ``eval_split: test`` reports settings on the test split instead: only for choices already made
on validation (e.g. each lever's test numbers after the validation rule decided), never to choose.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from hica.config import validate_config
from hica.eval.metrics import one_vs_rest_auc
from hica.eval.stats import paired_difference, paired_text
from hica.io import write_json, write_text
from hica.jobs.benchmark import run_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", help="run just this dataset (its parts are reused by a later full run)")
    args = ap.parse_args()
    spec = yaml.safe_load(args.config.read_text())
    if args.only:
        if args.only not in spec["datasets"]:
            known = ", ".join(spec["datasets"])
            raise SystemExit(f"--only {args.only}: not a dataset of {args.config} (it has {known})")
        spec["datasets"] = {args.only: spec["datasets"][args.only]}
    split = spec.get("eval_split", "val")
    if split not in ("val", "test"):
        raise SystemExit(f"{args.config}: eval_split must be val or test, got {split!r}")
    rows = []
    for ds, enc in spec["datasets"].items():
        for setting in spec["grid"]:
            name = setting["name"]
            # ``base_args``: per dataset, settings every candidate shares (e.g. BUSI's freeze_stages 0).
            # A setting may bring its own encoder (a lever of the encoder, e.g. resolution or backbone).
            own = {k: v for k, v in setting.items() if k not in ("name", "encoder")}
            encoder = setting.get("encoder", enc)
            margs = {**spec.get("base_args", {}).get(ds, {}), **own}
            cfg = validate_config(
                {
                    "name": f"tune-{ds}-{name}",
                    "encoder": encoder,
                    "datasets": [ds],
                    "shots": spec["shots"],
                    "seeds": spec["seeds"],
                    "methods": [spec.get("method", "hica")],
                    "method_args": {spec.get("method", "hica"): margs},
                    "bootstrap": 10,
                    "eval_split": split,
                },
                str(args.config),
            )
            run_benchmark(cfg, args.out / ds / name, progress=False)
            parts = sorted((args.out / ds / name / "parts").glob("*.json"))
            recs = [json.loads(p.read_text()) for p in parts]
            for k in spec["shots"]:
                sel = [r for r in recs if r["k"] == k]
                if not sel:
                    raise SystemExit(f"{args.out / ds / name}: no finished episode at K = {k}")
                acc = [r["metrics"]["accuracy"] for r in sel]
                row = {"dataset": ds, "setting": name, "args": margs, "encoder": encoder, "k": k}
                row[f"{split}_accuracy"] = round(float(np.mean(acc)), 4)
                row[f"{split}_accuracy_std"] = round(float(np.std(acc, ddof=1)), 4)
                row[f"{split}_auc"] = round(float(np.mean([r["metrics"]["auc"] for r in sel])), 4)
                if "malignant" in sel[0]["classes"]:
                    c = sel[0]["classes"].index("malignant")
                    mal = [one_vs_rest_auc(np.array(r["test_labels"]), np.array(r["probs"]), c) for r in sel]
                    row[f"{split}_auc_malignant"] = round(float(np.nanmean(mal)), 4)  # NaN: no malignant
                row["fit_seconds"] = round(float(np.mean([r["fit_seconds"] for r in sel])), 1)
                row["per_seed_accuracy"] = {r["seed"]: r["metrics"]["accuracy"] for r in sel}
                rows.append(row)
            print(rows[-1], flush=True)
    # Each setting − the grid's first (the reference) on the same episodes: paired per seed, 95% bootstrap CI.
    for r in rows:
        ref = next(x for x in rows if x["dataset"] == r["dataset"] and x["k"] == r["k"])
        if ref is not r:
            r["paired_accuracy_vs_first"] = paired_difference(
                r["per_seed_accuracy"], ref["per_seed_accuracy"]
            )
    write_json(args.out / "summary.json", {"config": spec, "rows": rows})
    what = {"val": "Validation", "test": "Test"}[split]
    mal = any(f"{split}_auc_malignant" in r for r in rows)
    lines = [
        f"{what} split, seeds {spec['seeds']}; mean (std over seeds). Fit seconds: as the machine was.",
        "",
        f"| dataset | setting | K | {split} accuracy | {split} AUC |"
        + (f" {split} malignant AUC |" if mal else "")
        + f" Δ accuracy vs {spec['grid'][0]['name']} (paired) | fit s |",
        "|---|---|---|---|---|" + ("---|" if mal else "") + "---|---|",
    ]
    for r in rows:
        m = r.get(f"{split}_auc_malignant")
        lines.append(
            f"| {r['dataset']} | {r['setting']} | {r['k']} | {r[f'{split}_accuracy']:.3f} "
            f"({r[f'{split}_accuracy_std']:.3f}) | {r[f'{split}_auc']:.3f} |"
            + ((f" {m:.3f} |" if m is not None else " – |") if mal else "")
            + (
                f" {paired_text(r['paired_accuracy_vs_first'])} |"
                if "paired_accuracy_vs_first" in r
                else " – |"
            )
            + f" {r['fit_seconds']} |"
        )
    write_text(args.out / "summary.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Choose HiCA stage-2 hyperparameters on validation data only (never the test split).

Runs the benchmark protocol with ``eval_split: val`` (each episode's own validation shots are left out of
the scoring) for every setting of a grid, on each dataset's encoder (``datasets``: name → encoder; a setting
may bring its own ``encoder``; ``base_args``: per dataset, settings every candidate shares), and writes a
table (mean and sample std over seeds).

    python scripts/tune_stage2.py --config configs/tuning/stage2.yaml --out results/tuning/stage2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from hica.config import validate_config
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
                    "eval_split": "val",
                },
                str(args.config),
            )
            run_benchmark(cfg, args.out / ds / name, progress=False)
            parts = sorted((args.out / ds / name / "parts").glob("*.json"))
            recs = [json.loads(p.read_text()) for p in parts]
            for k in spec["shots"]:
                sel = [r for r in recs if r["k"] == k]
                rows.append(
                    {
                        "dataset": ds,
                        "setting": name,
                        "args": margs,
                        "encoder": encoder,
                        "k": k,
                        "val_accuracy": round(float(np.mean([r["metrics"]["accuracy"] for r in sel])), 4),
                        "val_accuracy_std": round(
                            float(np.std([r["metrics"]["accuracy"] for r in sel], ddof=1)), 4
                        ),
                        "val_auc": round(float(np.mean([r["metrics"]["auc"] for r in sel])), 4),
                        "fit_seconds": round(float(np.mean([r["fit_seconds"] for r in sel])), 1),
                    }
                )
            print(rows[-1], flush=True)
    write_json(args.out / "summary.json", {"config": spec, "rows": rows})
    lines = [
        f"Validation split, seeds {spec['seeds']}; mean (std over seeds). Fit seconds: as the machine was.",
        "",
        "| dataset | setting | K | val accuracy | val AUC | fit s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['dataset']} | {r['setting']} | {r['k']} | {r['val_accuracy']:.3f} "
        f"({r['val_accuracy_std']:.3f}) | {r['val_auc']:.3f} | {r['fit_seconds']} |"
        for r in rows
    ]
    write_text(args.out / "summary.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

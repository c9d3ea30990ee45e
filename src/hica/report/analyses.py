"""Report sections for ``hica analyze`` outputs (robustness, unseen classes, localization, efficiency).

An analysis directory holds ``metrics.json`` with an ``analysis`` key and its own Markdown tables
(``results.md`` or ``table.md``). Its section repeats those tables (headings moved one level down) and adds
the analysis's figures: robustness curves drawn here, and any PNG the analysis wrote itself (e.g. the
localization heatmap gallery), copied next to the report.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hica.report import plots

TITLES = {
    "robustness": "Robustness",
    "unseen": "Unseen categories (zero-shot)",
    "localization": "Interpretability: heatmaps against lesion masks",
    "efficiency": "Efficiency",
}
# Figures an analysis writes itself, with their captions.
OWN_FIGURES = {
    "gallery.png": "Heatmap gallery: test images with the lesion mask outlined (green), then HiCA's "
    "region–text map of the true class and its Grad-CAM, the same two for global-only HiCA (when the "
    "analysis fitted it), Grad-CAM of the fine-tuned baseline and the centre prior (colour: map value, "
    "min–max scaled per image; ×: the map's maximum).",
}


@dataclass
class Analysis:
    """One ``hica analyze`` output directory."""

    dir: Path
    kind: str
    data: dict[str, Any]
    methods: list[str] = field(default_factory=list)


def read_analysis(run_dir: str | Path) -> Analysis | None:
    """The analysis in ``run_dir`` (None if its metrics.json is a benchmark's or missing)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or "analysis" not in data:
        return None
    methods: list[str] = []
    if data["analysis"] == "robustness":
        s = data.get("summary", {})
        methods = list(dict.fromkeys([*s.get("descriptor_noise", {}), *s.get("corruptions", {})]))
    return Analysis(Path(run_dir), str(data["analysis"]), data, methods)


def _shifted_markdown(path: Path) -> list[str]:
    """The file's lines without its first H1, every other heading one level deeper."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return [("#" + ln) if re.match(r"^#{1,5} ", ln) else ln for ln in lines]


def section(
    a: Analysis, out: Path, styles: dict[str, plots.Style], fig_no: int
) -> tuple[list[str], list[Path], int]:
    """Markdown lines, figure paths and the updated figure counter for one analysis."""
    figdir = out / "figures"
    slug = re.sub(r"[^\w-]+", "_", f"{a.kind}_{a.data.get('name', a.dir.name)}").strip("_")
    title = TITLES.get(a.kind, a.kind)
    if a.kind == "unseen" and (a.data.get("config") or {}).get("zero_shot") == "attributes":
        title = "Unseen categories (zero-shot, composed from attribute profiles)"
    what = a.data.get("dataset")
    md = [f"## {title}{f': {what}' if what else ''}\n", f"From `{a.dir}` (`hica analyze {a.kind}`).\n"]
    figs: list[Path] = []
    for name in ("results.md", "table.md"):
        if (a.dir / name).is_file():
            md += _shifted_markdown(a.dir / name)
            md.append("")
            break
    if a.kind == "robustness":
        s = a.data["summary"]
        k, seeds = a.data.get("k"), len(a.data.get("seeds", []))
        if s.get("descriptor_noise"):
            maj = a.data.get("majority_accuracy")
            ref = (maj, f"majority-class accuracy ({maj:.3f})") if maj else None
            p = plots.noise_curves(
                s["descriptor_noise"],
                styles,
                figdir / f"{slug}_noise.png",
                f"{what}: accuracy vs descriptor noise (K={k}, mean ± std over {seeds} seeds)",
                ref,
            )
            figs.append(p)
            fig_no += 1
            md.append(f"![noisy descriptors]({p.relative_to(out).as_posix()})\n")
            md.append(
                f"*Figure {fig_no}: {what} — test accuracy (left) and ROC AUC (right) when a fraction p of "
                "the descriptor phrases is corrupted before fitting; shaded: ± one std over seeds.*\n"
            )
        if s.get("corruptions"):
            maj = a.data.get("corruption_majority_accuracy")
            ref = (maj, f"majority-class accuracy ({maj:.3f})") if maj else None
            p = plots.corruption_curves(
                s["corruptions"],
                styles,
                figdir / f"{slug}_corruptions.png",
                f"{what}: accuracy under image corruptions (K={k}, mean ± std over {seeds} seeds, "
                f"n = {a.data.get('n_corruption_images')} test images)",
                ref,
            )
            figs.append(p)
            fig_no += 1
            md.append(f"![image corruptions]({p.relative_to(out).as_posix()})\n")
            md.append(
                f"*Figure {fig_no}: {what} — test accuracy against corruption severity (clean, then 1–5); "
                "first panel: mean over all corruptions; shaded: ± one std over seeds.*\n"
            )
    for name, caption in OWN_FIGURES.items():
        src = a.dir / name
        if src.is_file():
            dst = figdir / f"{slug}_{name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            figs.append(dst)
            fig_no += 1
            md.append(f"![{name}]({dst.relative_to(out).as_posix()})\n")
            md.append(f"*Figure {fig_no}: {what or ''} — {caption}*\n")
    return md, figs, fig_no

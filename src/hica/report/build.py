"""``hica report``: a Markdown + self-contained HTML report with PNG figures from benchmark run dirs.

The runs are read and ordered by :mod:`~hica.report.runs`, each dataset's section is
:mod:`~hica.report.benchmark`, each analysis's :mod:`~hica.report.analyses`; this module puts the page
together and writes it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.io import write_text
from hica.report import plots
from hica.report.benchmark import dataset_section, machine_line
from hica.report.html import markdown_to_html, png_data_uri
from hica.report.runs import (
    Run,
    apply_drops,
    apply_renames,
    check_unique,
    load_run,
    method_order,
    parse_drops,
    parse_order,
    parse_renames,
)

TITLE = "HiCA benchmark report"

log = logging.getLogger(__name__)


def build_report(
    run_dirs: Iterable[str | Path],
    out_dir: str | Path,
    renames: Mapping[tuple[str | Path, str], str] | None = None,
    order: list[str] | None = None,
    confusion_method: str | None = None,
    drops: Iterable[tuple[str | Path, str]] = (),
) -> dict[str, Any]:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` and ``out_dir/figures/*.png``.

    ``renames`` maps ``(run_dir, method)`` to a new method name (to tell apart the same method from
    two runs); ``drops`` leaves ``(run_dir, method)`` out (e.g. a method two runs hold for the same
    episodes); ``order`` puts those methods first in tables and legends. Returns the written paths,
    the datasets, the method order, the method shown in each confusion matrix and the figures of an
    earlier report in ``out_dir`` that this one no longer shows, which were removed.
    """
    from hica.report.analyses import read_analysis, section
    from hica.report.losses import report_section as loss_section

    run_dirs = list(run_dirs)
    if not run_dirs:
        raise HicaError(
            "no RUN_DIR given: pass one or more output directories of `hica benchmark` or `hica analyze`"
        )
    found = {str(d): read_analysis(d) for d in run_dirs}
    analyses = [a for a in found.values() if a is not None]
    runs = [load_run(d) for d in run_dirs if found[str(d)] is None]
    order = list(order or [])
    apply_drops(runs, drops)
    apply_renames(runs, renames or {})
    check_unique(runs)
    methods = method_order(runs, order)
    extra = [m for a in analyses for m in a.methods if m not in methods]
    styles = plots.style_map(methods + list(dict.fromkeys(extra)))
    summary = [row for r in runs for row in r.summary]
    records = [rec for r in runs for rec in r.records]
    out = Path(out_dir)
    figures: list[Path] = []
    datasets = list(dict.fromkeys(row["dataset"] for row in summary))

    md = _overview(run_dirs, runs, analyses, summary)
    fig_no = 0
    chosen: dict[str, str] = {}
    for ds in datasets:
        lines, figs, fig_no, method = dataset_section(
            ds, summary, records, methods, styles, out, fig_no, order, confusion_method
        )
        md += lines
        figures += figs
        if method:
            chosen[ds] = method

    lines, figs, fig_no = loss_section(runs, out, fig_no)  # only runs that kept HiCA's loss logs
    md += lines
    figures += figs

    for a in analyses:
        lines, figs, fig_no = section(a, out, styles, fig_no)
        md += lines
        figures += figs

    md.append("## How to reproduce\n")
    md.append(
        "Each run directory keeps the exact resolved config it ran with (`config.resolved.yaml`). "
        "Re-running it repeats the benchmark (into the same folder it resumes and reuses finished runs: add "
        "`--no-resume` or pick a new `--out` to recompute everything); `hica report` then rebuilds this "
        "page.\n"
    )
    md.append("```")
    for r in runs:
        src = _find_config(r.name)
        note = f"  # config name: {r.name}" + (f" (from {src})" if src else "")
        md.append(f"hica benchmark --config {r.dir / 'config.resolved.yaml'} --out {r.dir}{note}")
    for a in analyses:
        src = _find_config(str(a.data.get("name", "")))
        cfg = src or (a.dir / "config.resolved.yaml").as_posix()
        md.append(f"hica analyze {a.kind} --config {cfg} --out {a.dir}")
    md.append(_report_command([Path(d) for d in run_dirs], out, runs, order, confusion_method))
    md.append("```\n")

    text = "\n".join(md)
    stale = _remove_stale_figures(out, figures)
    md_path = write_text(out / "report.md", text)
    html_path = write_text(
        out / "report.html", markdown_to_html(text, TITLE, lambda src: png_data_uri(out / src))
    )
    return {
        "markdown": md_path,
        "html": html_path,
        "figures": figures,
        "datasets": datasets,
        "methods": methods,
        "confusion_methods": chosen,
        "removed": stale,
    }


def _remove_stale_figures(out: Path, written: list[Path]) -> list[Path]:
    """Delete the figures that the report already in ``out`` showed (``report.md``'s ``figures/*.png``
    links) and this build did not write, e.g. a confusion matrix of a method since renamed. Any other file
    in ``out/figures`` is left alone."""
    old = out / "report.md"
    if not old.is_file():
        return []
    shown = re.findall(r"\]\((figures/[^)\s/]+\.png)\)", old.read_text(encoding="utf-8", errors="replace"))
    keep = {p.resolve() for p in written}
    stale = sorted({out / s for s in shown if (out / s).is_file() and (out / s).resolve() not in keep})
    for p in stale:
        log.info("removing %s: a figure of the earlier report that this one does not show", p)
        p.unlink()
    return stale


def _overview(
    run_dirs: list[Any], runs: list[Run], analyses: list[Any], summary: list[dict[str, Any]]
) -> list[str]:
    """The report's head: title, how to read it, the runs and analyses, their machines, renamed methods."""
    md = [f"# {TITLE}\n"]
    md.append(
        f"Built by `hica report` from {len(run_dirs)} run director{'y' if len(run_dirs) == 1 else 'ies'}. "
        "All numbers are on each dataset's test split: mean ± std over seeds (zero-shot methods "
        "need no training images and run once, shown as K = 0). The best mean of each column is in bold. "
        "Methods named `hica*` are HiCA and its ablations; the others are baselines.\n"
    )
    if any(row["k"] == 0 for row in summary):
        md.append(
            "Zero-shot honesty: the `K = 0` rows classify from text alone. On an encoder whose image and "
            "text towers were never trained together (the embedded default: EfficientNet-Lite0 + MiniLM with "
            "untrained projection heads) they sit at or below chance; they are shown as a floor, not as a "
            "method result. Zero-shot becomes meaningful after alignment on other classes or data (see an "
            "unseen-categories analysis) or with an already aligned encoder (open_clip / HF CLIP).\n"
        )
    md.append("## Runs\n")
    md.append("| run directory | config name | datasets | methods | K | seeds | wall time |")
    md.append("|---|---|---|---|---|---|---:|")
    for r in runs:
        ks = sorted({row["k"] for row in r.summary})
        seeds = sorted({s for row in r.summary if row["k"] > 0 for s in row.get("seeds", [])})
        wall = r.timings.get("total")
        md.append(
            f"| `{r.dir}` | `{r.name}` | {', '.join(dict.fromkeys(row['dataset'] for row in r.summary))} | "
            f"{', '.join(r.methods)} | {', '.join(map(str, ks))} | {', '.join(map(str, seeds)) or '–'} | "
            f"{f'{wall:.1f} s' if isinstance(wall, int | float) else '–'} |"
        )
    if analyses:
        md.append("\nAnalyses (`hica analyze`), each with its own section below:\n")
        md += [f"- `{a.dir}`: {a.kind} (`{a.data.get('name', '')}`)" for a in analyses]
    md.append("\nMachines:\n")
    md += [f"- `{r.dir}`: {machine_line(r.env)}" for r in runs]
    for a in analyses:
        env = a.data.get("machine")
        if env is None and (a.dir / "environment.json").is_file():
            env = json.loads((a.dir / "environment.json").read_text(encoding="utf-8"))
        md.append(f"- `{a.dir}`: {machine_line(env)}")
    dropped = [(r, m) for r in runs for m in r.dropped]
    if dropped:
        md.append("\nLeft out (`--drop`):\n")
        md += [f"- `{r.dir}`: `{m}`" for r, m in dropped]
    renamed = [(r, old, new) for r in runs for old, new in r.renamed.items()]
    if renamed:
        md.append("\nRenamed methods:\n")
        md += [f"- `{r.dir}`: `{old}` → `{new}`" for r, old, new in renamed]
    md.append("")

    return md


def _report_command(
    dirs: list[Path], out: Path, runs: list[Run], order: list[str], confusion_method: str | None
) -> str:
    parts = ["hica report", *(str(d) for d in dirs), f"--out {out}"]
    parts += [f"--drop '{r.dir}:{m}'" for r in runs for m in r.dropped]
    parts += [f"--rename '{r.dir}:{old}={new}'" for r in runs for old, new in r.renamed.items()]
    if order:
        parts.append(f"--order {','.join(order)}")
    if confusion_method:
        parts.append(f"--confusion-method {confusion_method}")
    return " ".join(parts)


def _find_config(name: str, root: Path = Path("configs")) -> str | None:
    """The YAML under ./configs whose ``name:`` is ``name``, if exactly one is found."""
    import yaml

    if not root.is_dir():
        return None
    hits = []
    for p in sorted(root.rglob("*.yaml")):
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and raw.get("name") == name:
            hits.append(p.as_posix())
    return hits[0] if len(hits) == 1 else None


__all__ = ["TITLE", "build_report", "load_run", "parse_drops", "parse_order", "parse_renames"]

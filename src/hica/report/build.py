"""``hica report``: a Markdown + self-contained HTML report with PNG figures from benchmark run dirs."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hica.errors import HicaError
from hica.io import write_text
from hica.report import plots
from hica.report.html import markdown_to_html, png_data_uri

log = logging.getLogger(__name__)

TITLE = "HiCA benchmark report"
_NAME_OK = re.compile(r"^\w[\w .+()-]*$")


@dataclass
class Run:
    """One ``hica benchmark`` output directory, as read from its metrics.json."""

    dir: Path
    name: str
    methods: list[str]
    summary: list[dict[str, Any]]
    records: list[dict[str, Any]]
    timings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] | None = None
    renamed: dict[str, str] = field(default_factory=dict)


def load_run(run_dir: str | Path) -> Run:
    """Read ``RUN_DIR/metrics.json`` (and environment.json if present)."""
    d = Path(run_dir)
    path = d / "metrics.json"
    if not path.is_file():
        why = "does not exist" if not d.exists() else "has no metrics.json (unfinished or not a run?)"
        raise HicaError(f"run directory {d} {why}: pass an output directory of `hica benchmark`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        summary, records = list(data["summary"]), list(data.get("runs", []))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HicaError(f"{path} is not a `hica benchmark` metrics.json ({e})") from e
    env_path = d / "environment.json"
    env = json.loads(env_path.read_text(encoding="utf-8")) if env_path.is_file() else None
    methods = list(dict.fromkeys(list(data.get("methods") or []) + [r["method"] for r in summary]))
    return Run(d, str(data.get("name", d.name)), methods, summary, records, data.get("timings") or {}, env)


def parse_renames(items: Iterable[str] | None) -> dict[tuple[Path, str], str]:
    """Parse ``DIR:METHOD=NEWNAME`` items into ``{(DIR, METHOD): NEWNAME}``."""
    out: dict[tuple[Path, str], str] = {}
    for item in items or []:
        left, eq, new = item.rpartition("=")
        d, colon, method = left.rpartition(":")
        if not (eq and colon and d and method and new):
            raise HicaError(
                f"--rename {item!r} must look like RUN_DIR:METHOD=NEWNAME, "
                "e.g. results/hica/no_stage1:hica=hica_no_stage1"
            )
        if not _NAME_OK.match(new.strip()):
            raise HicaError(
                f"--rename {item!r}: NEWNAME may hold letters, digits, spaces and _ . + ( ) - only"
            )
        out[(Path(d.strip()), method.strip())] = new.strip()
    return out


def parse_order(text: str | None) -> list[str]:
    """``m1,m2,...`` → ``[m1, m2, ...]``."""
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def _apply_renames(runs: list[Run], renames: Mapping[tuple[str | Path, str], str]) -> None:
    by_dir = {r.dir.resolve(): r for r in runs}
    for (d, method), new in renames.items():
        run = by_dir.get(Path(d).resolve())
        if run is None:
            raise HicaError(
                f"--rename names {d}, which is not one of the RUN_DIRs {[str(r.dir) for r in runs]}"
            )
        if method not in run.methods:
            raise HicaError(f"--rename: run {run.dir} has no method {method!r} (it has {run.methods})")
        run.renamed[method] = new
    for run in runs:
        if not run.renamed:
            continue
        ren = run.renamed
        run.methods = [ren.get(m, m) for m in run.methods]
        for row in [*run.summary, *run.records]:
            row["method"] = ren.get(row["method"], row["method"])


def _check_unique(runs: list[Run]) -> None:
    seen: dict[tuple[str, str, int], Run] = {}
    for run in runs:
        for row in run.summary:
            key = (row["dataset"], row["method"], row["k"])
            other = seen.setdefault(key, run)
            if other is not run:
                raise HicaError(
                    f"method {key[1]!r} on {key[0]} K={key[2]} is in both {other.dir} and {run.dir}; "
                    f"tell them apart with --rename {run.dir}:{key[1]}=NEWNAME"
                )


def _method_order(runs: list[Run], order: list[str]) -> list[str]:
    known = list(dict.fromkeys(m for r in runs for m in r.methods))
    unknown = [m for m in order if m not in known]
    if unknown:
        raise HicaError(f"--order names unknown method(s) {unknown}; the runs have {known}")
    return list(dict.fromkeys(order + known))


def _fmt(mu: float, sd: float, n: int, typical: int) -> str:
    """``mean ± std``; a single run shows the mean alone, fewer seeds than usual add ``(n=N)``."""
    if mu != mu:
        return "–"
    text = f"{mu:.3f}" if n == 1 else f"{mu:.3f} ± {sd:.3f}"
    return text + (f" (n={n})" if 0 < n < typical else "")


def _table(rows: list[dict[str, Any]], methods: list[str], metric: str) -> str:
    """Methods × K table (zero-shot in its own column); the best mean of each column in bold."""
    ks = sorted({r["k"] for r in rows})
    cell = {(r["method"], r["k"]): plots.metric_cell(r, metric) for r in rows}
    seeds = {(r["method"], r["k"]): int(r.get("n_seeds", 1)) for r in rows}
    typical = max((n for (_, k), n in seeds.items() if k > 0), default=1)
    best = {}
    for k in ks:
        vals = [cell[(m, k)][0] for m in methods if (m, k) in cell and cell[(m, k)][0] == cell[(m, k)][0]]
        if len(vals) > 1:
            best[k] = round(max(vals), 3)
    head = ["method"] + [("zero-shot" if k == 0 else f"K={k}") for k in ks]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(ks)]
    for m in methods:
        cells = [m]
        for k in ks:
            mu, sd = cell.get((m, k), (math.nan, 0.0))
            text = _fmt(mu, sd, seeds.get((m, k), 0), typical if k > 0 else 1)
            cells.append(f"**{text}**" if k in best and mu == mu and round(mu, 3) == best[k] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "dataset"


def _machine(env: dict[str, Any] | None) -> str:
    if not env:
        return "no environment.json"
    gpu = f" {env['gpu']}" if env.get("gpu") else ""
    return (
        f"{env.get('cpu')} ({env.get('cpu_cores')} cores, torch threads {env.get('torch_threads')}), "
        f"device {env.get('device')}{gpu}, precision {env.get('precision')}, torch {env.get('torch')}, "
        f"Python {env.get('python')}"
    )


def _confusion(records: list[dict[str, Any]], dataset: str, method: str, k: int) -> tuple[Any, list, int]:
    """Confusion matrix summed over seeds, the class names and the number of runs summed."""
    rs = [
        r
        for r in records
        if (r["dataset"], r["method"], r["k"]) == (dataset, method, k) and r.get("confusion")
    ]
    if not rs:
        return None, [], 0
    return (
        np.sum([np.asarray(r["confusion"], dtype=float) for r in rs], axis=0),
        list(rs[0]["classes"]),
        len(rs),
    )


def _majority(records: list[dict[str, Any]], dataset: str) -> float | None:
    """Accuracy of always predicting the largest test class (from any run's confusion row sums)."""
    for r in records:
        if r["dataset"] == dataset and r.get("confusion"):
            counts = np.asarray(r["confusion"], dtype=float).sum(1)
            return float(counts.max() / counts.sum()) if counts.sum() else None
    return None


def _best(rows: list[dict[str, Any]], methods: list[str], k: int) -> str | None:
    cand = [
        (plots.metric_cell(r, "accuracy")[0], r["method"])
        for r in rows
        if r["k"] == k and r["method"] in methods
    ]
    cand = [c for c in cand if c[0] == c[0]]
    return max(cand)[1] if cand else None


def _pick_confusion_method(
    rows: list[dict[str, Any]], order: list[str], wanted: str | None
) -> tuple[str | None, str]:
    present = list(dict.fromkeys(r["method"] for r in rows))
    kmax = max((r["k"] for r in rows), default=0)
    if wanted:
        if wanted in present:
            return wanted, "chosen with --confusion-method"
        log.warning(
            "--confusion-method %s has no results on %s; using the default", wanted, rows[0]["dataset"]
        )
    for m in order:
        if m in present:
            return m, "first method of --order"
    if "hica" in present:
        return "hica", "the full HiCA model"
    best = _best(rows, present, kmax)
    return best, f"best mean accuracy at K={kmax}"


def build_report(
    run_dirs: Iterable[str | Path],
    out_dir: str | Path,
    renames: Mapping[tuple[str | Path, str], str] | None = None,
    order: list[str] | None = None,
    confusion_method: str | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/report.md``, ``out_dir/report.html`` and ``out_dir/figures/*.png``.

    ``renames`` maps ``(run_dir, method)`` to a new method name (to tell apart the same method from
    two runs); ``order`` puts those methods first in tables and legends. Returns the written paths,
    the datasets, the method order and the method shown in each confusion matrix.
    """
    from hica.report.analyses import read_analysis, section

    run_dirs = list(run_dirs)
    if not run_dirs:
        raise HicaError(
            "no RUN_DIR given: pass one or more output directories of `hica benchmark` or `hica analyze`"
        )
    found = {str(d): read_analysis(d) for d in run_dirs}
    analyses = [a for a in found.values() if a is not None]
    runs = [load_run(d) for d in run_dirs if found[str(d)] is None]
    order = list(order or [])
    _apply_renames(runs, renames or {})
    _check_unique(runs)
    methods = _method_order(runs, order)
    extra = [m for a in analyses for m in a.methods if m not in methods]
    styles = plots.style_map(methods + list(dict.fromkeys(extra)))
    summary = [row for r in runs for row in r.summary]
    records = [rec for r in runs for rec in r.records]
    out = Path(out_dir)
    figdir = out / "figures"
    figures: list[Path] = []
    datasets = list(dict.fromkeys(row["dataset"] for row in summary))

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
    md += [f"- `{r.dir}`: {_machine(r.env)}" for r in runs]
    for a in analyses:
        env = a.data.get("machine")
        if env is None and (a.dir / "environment.json").is_file():
            env = json.loads((a.dir / "environment.json").read_text(encoding="utf-8"))
        md.append(f"- `{a.dir}`: {_machine(env)}")
    renamed = [(r, old, new) for r in runs for old, new in r.renamed.items()]
    if renamed:
        md.append("\nRenamed methods:\n")
        md += [f"- `{r.dir}`: `{old}` → `{new}`" for r, old, new in renamed]
    md.append("")

    fig_no = 0
    chosen: dict[str, str] = {}
    for ds in datasets:
        rows = [row for row in summary if row["dataset"] == ds]
        present = [m for m in methods if any(row["method"] == m for row in rows)]
        shots = [row for row in rows if row["k"] > 0]
        kmax = max((row["k"] for row in shots), default=0)
        slug = _slug(ds)
        md.append(f"## {ds}\n")
        for metric, label in (("accuracy", "Accuracy"), ("auc", "ROC AUC")):
            md.append(f"### {label} (mean ± std over seeds)\n")
            md.append(_table(rows, present, metric) + "\n")
        md.append("### Figures\n")

        if shots:
            ref: dict[str, tuple[float, str]] = {"auc": (0.5, "chance (AUC 0.5)")}
            maj = _majority(records, ds)
            if maj is not None:
                ref["accuracy"] = (maj, f"majority-class accuracy ({maj:.3f})")
            p = plots.fewshot_curves(
                summary, ds, present, styles, figdir / f"fewshot_{slug}.png", reference=ref
            )
            figures.append(p)
            fig_no += 1
            md.append(f"![few-shot curves]({p.relative_to(out).as_posix()})\n")
            md.append(
                f"*Figure {fig_no}: {ds} — test accuracy (left) and ROC AUC (right) against K, the number "
                "of labelled training images per class (log₂ axis). Points are means over seeds; HiCA "
                "methods (thick solid lines) show ± one std as a shaded band, baselines (dashed) as error "
                "bars; dotted horizontal lines are zero-shot methods; the black dash-dot line is the "
                "majority-class accuracy or chance AUC.*\n"
            )

            hica_methods = [m for m in present if plots.is_hica(m) and any(r["method"] == m for r in shots)]
            if hica_methods:
                baselines = [m for m in present if not plots.is_hica(m)]
                kbar = max(r["k"] for r in shots if r["method"] in hica_methods)
                ref_m = _best(shots, baselines, kbar)
                bar_methods, what = hica_methods, "HiCA and its ablations"
                tail = f"; hatched: the best baseline at K={kbar} ({ref_m})" if ref_m else ""
            else:
                ref_m, bar_methods, what, tail = (
                    None,
                    [m for m in present if any(r["method"] == m for r in shots)],
                    "all few-shot methods",
                    "",
                )
                kbar = kmax
            p = plots.ablation_bars(
                summary, ds, bar_methods, styles, figdir / f"ablation_{slug}.png", reference=ref_m, k=kbar
            )
            figures.append(p)
            fig_no += 1
            md.append(f"![method comparison]({p.relative_to(out).as_posix()})\n")
            md.append(
                f"*Figure {fig_no}: {ds} — test accuracy of {what} at the largest K={kbar} (left, value = "
                f"mean, error bar = std over seeds) and at every K (right){tail}.*\n"
            )

        method, why = _pick_confusion_method(rows, order, confusion_method)
        if method:
            k = max(row["k"] for row in rows if row["method"] == method)
            cm, classes, n = _confusion(records, ds, method, k)
            if cm is not None:
                chosen[ds] = method
                kk = "zero-shot" if k == 0 else f"K={k}"
                seeds = f"{n} seed{'s' if n != 1 else ''}"
                p = plots.confusion_matrix_plot(
                    cm,
                    classes,
                    figdir / f"confusion_{slug}_{_slug(method)}.png",
                    title=f"{ds}: {method}, {kk}",
                    subtitle=f"summed over {seeds}",
                )
                figures.append(p)
                fig_no += 1
                md.append(f"![confusion matrix]({p.relative_to(out).as_posix()})\n")
                md.append(
                    f"*Figure {fig_no}: {ds} — confusion matrix of {method} ({why}) at {kk}, summed over "
                    f"{seeds} and normalised per true class (row); cells show the row percentage and the "
                    "count.*\n"
                )

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
    }


def _report_command(
    dirs: list[Path], out: Path, runs: list[Run], order: list[str], confusion_method: str | None
) -> str:
    parts = ["hica report", *(str(d) for d in dirs), f"--out {out}"]
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

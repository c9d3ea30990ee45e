"""The report's section of one dataset of benchmark runs: accuracy and AUC tables (methods × K), few-shot
curves, method comparison bars and a confusion matrix, with their captions."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from hica.report import plots

log = logging.getLogger("hica.report.build")  # the name `hica report` warnings have always carried


def _fmt(mu: float, sd: float, n: int, typical: int) -> str:
    """``mean ± std``; a single run shows the mean alone, fewer seeds than usual add ``(n=N)``."""
    if mu != mu:
        return "–"
    text = f"{mu:.3f}" if n == 1 else f"{mu:.3f} ± {sd:.3f}"
    return text + (f" (n={n})" if 0 < n < typical else "")


def metric_table(rows: list[dict[str, Any]], methods: list[str], metric: str) -> str:
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


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "dataset"


def machine_line(env: dict[str, Any] | None) -> str:
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


def dataset_section(
    ds: str,
    summary: list[dict[str, Any]],
    records: list[dict[str, Any]],
    methods: list[str],
    styles: dict[str, Any],
    out: Path,
    fig_no: int,
    order: list[str],
    confusion_method: str | None,
) -> tuple[list[str], list[Path], int, str | None]:
    """Markdown lines and figures (under ``out/figures``) of dataset ``ds``; returns them, the last figure
    number and the method whose confusion matrix is shown (None when none is)."""
    figdir = out / "figures"
    figures: list[Path] = []
    md: list[str] = []
    shown: str | None = None
    rows = [row for row in summary if row["dataset"] == ds]
    present = [m for m in methods if any(row["method"] == m for row in rows)]
    shots = [row for row in rows if row["k"] > 0]
    kmax = max((row["k"] for row in shots), default=0)
    name = slug(ds)
    md.append(f"## {ds}\n")
    for metric, label in (("accuracy", "Accuracy"), ("auc", "ROC AUC")):
        md.append(f"### {label} (mean ± std over seeds)\n")
        md.append(metric_table(rows, present, metric) + "\n")
    md.append("### Figures\n")

    if shots:
        ref: dict[str, tuple[float, str]] = {"auc": (0.5, "chance (AUC 0.5)")}
        maj = _majority(records, ds)
        if maj is not None:
            ref["accuracy"] = (maj, f"majority-class accuracy ({maj:.3f})")
        p = plots.fewshot_curves(summary, ds, present, styles, figdir / f"fewshot_{name}.png", reference=ref)
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
            summary, ds, bar_methods, styles, figdir / f"ablation_{name}.png", reference=ref_m, k=kbar
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
            shown = method
            kk = "zero-shot" if k == 0 else f"K={k}"
            seeds = f"{n} seed{'s' if n != 1 else ''}"
            p = plots.confusion_matrix_plot(
                cm,
                classes,
                figdir / f"confusion_{name}_{slug(method)}.png",
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
    return md, figures, fig_no, shown

"""Report figures (matplotlib, Agg): few-shot curves, ablation bars and confusion matrices, as PNGs.

Every function takes summary rows / run records as written to ``metrics.json`` (see
:mod:`hica.report.tables`), writes one PNG atomically and returns its path. Methods whose name starts
with ``hica`` are drawn with thick solid lines; baselines with thinner dashed ones. Each method keeps
its colour and marker across all figures (``style_map``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hica.io import atomic_write

DPI = 150
_MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "h")
_METRIC_LABEL = {
    "accuracy": "test accuracy (fraction correct)",
    "auc": "test ROC AUC (one-vs-rest macro if >2 classes)",
    "balanced_accuracy": "test balanced accuracy (mean recall)",
    "macro_f1": "test macro F1",
}
_METRIC_TITLE = {"accuracy": "Accuracy", "auc": "ROC AUC", "balanced_accuracy": "Balanced accuracy"}


@dataclass(frozen=True)
class Style:
    """How one method is drawn."""

    color: Any
    marker: str
    hica: bool

    @property
    def line(self) -> dict[str, Any]:
        """Keyword arguments for ``Axes.plot``."""
        if self.hica:
            return dict(color=self.color, marker=self.marker, lw=2.6, ms=7, ls="-", zorder=4)
        return dict(color=self.color, marker=self.marker, lw=1.4, ms=5, ls="--", zorder=3)


def is_hica(method: str) -> bool:
    """HiCA-family methods (full model and its ablations) are those named ``hica*``."""
    return method.startswith("hica")


def style_map(methods: list[str]) -> dict[str, Style]:
    """A fixed tab10 colour and marker per method: HiCA family first (distinct colours), then baselines."""
    import matplotlib

    ranked = [m for m in methods if is_hica(m)] + [m for m in methods if not is_hica(m)]
    # tab10 while it suffices; beyond 10 methods tab20 (dark/light pairs) so no two methods share a colour
    n = 10 if len(ranked) <= 10 else 20
    cmap = matplotlib.colormaps[f"tab{n}"]
    return {
        m: Style(cmap(i % n), _MARKERS[(i + i // 10) % len(_MARKERS)], is_hica(m))
        for i, m in enumerate(ranked)
    }


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _plt()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def metric_cell(row: dict[str, Any], metric: str) -> tuple[float, float]:
    """(mean, std) of ``metric`` in a summary row; NaN mean if missing, std 0 if undefined."""
    cell = row.get(metric) or {}
    mu, sd = cell.get("mean", math.nan), cell.get("std", math.nan)
    mu = math.nan if mu is None else float(mu)
    sd = 0.0 if sd is None or sd != sd else float(sd)
    return mu, sd


def _seeds_text(rows: list[dict[str, Any]]) -> str:
    n = sorted({r.get("n_seeds", 1) for r in rows if r["k"] > 0})
    if not n:
        return "1 run"
    return f"{n[0]} seeds" if len(n) == 1 else f"{n[0]}–{n[-1]} seeds"


def fewshot_curves(
    summary: list[dict[str, Any]],
    dataset: str,
    methods: list[str],
    styles: dict[str, Style],
    path: Path,
    metrics: tuple[str, ...] = ("accuracy", "auc"),
    reference: dict[str, tuple[float, str]] | None = None,
) -> Path:
    """K (log2 axis) vs each metric, one panel per metric; zero-shot results as dotted horizontal lines.

    HiCA-family methods: thick solid lines with a shaded ±std band; baselines: dashed lines with ±std
    error bars, nudged apart along K. ``reference`` maps a metric to ``(value, label)``, drawn as a thin
    black dash-dot line (e.g. majority-class accuracy, chance AUC).
    """
    plt = _plt()
    rows = [r for r in summary if r["dataset"] == dataset]
    ks = sorted({r["k"] for r in rows if r["k"] > 0})
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.8), layout="constrained")
    axes = np.atleast_1d(axes)
    handles: dict[str, Any] = {}
    dodge = [m for m in methods if not is_hica(m) and any(r["method"] == m and r["k"] > 0 for r in rows)]
    for ax, metric in zip(axes, metrics, strict=True):
        for m in methods:
            mrows = sorted((r for r in rows if r["method"] == m), key=lambda r: r["k"])
            st = styles[m]
            shots = [r for r in mrows if r["k"] > 0]
            x = np.array([r["k"] for r in shots], dtype=float)
            mu, sd = (np.array([metric_cell(r, metric)[i] for r in shots]) for i in (0, 1))
            if shots and not np.all(np.isnan(mu)):
                if st.hica:  # HiCA family: line with a shaded ±std band
                    (h,) = ax.plot(x, mu, label=m, **st.line)
                    ax.fill_between(x, mu - sd, mu + sd, color=st.color, alpha=0.13, lw=0, zorder=2)
                else:  # baselines: dashed line, ±std error bars shifted slightly apart so they do not overlap
                    shift = 2 ** (0.035 * (dodge.index(m) - (len(dodge) - 1) / 2))
                    h = ax.errorbar(
                        x * shift, mu, yerr=sd, label=m, capsize=2.5, elinewidth=0.9, alpha=0.9, **st.line
                    )
                handles.setdefault(m, h)
            for r in (r for r in mrows if r["k"] == 0):
                mu0, _ = metric_cell(r, metric)
                if mu0 == mu0:
                    h = ax.axhline(mu0, color=st.color, ls=":", lw=2.2, label=f"{m} (K=0)")
                    handles.setdefault(f"{m} (K=0)", h)
        if reference and metric in reference:
            value, label = reference[metric]
            h = ax.axhline(value, color="black", ls="-.", lw=1.0, zorder=1, label=label)
            handles.setdefault(label, h)
        ax.set_xscale("log", base=2)
        if ks:
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.set_xlim(ks[0] / 1.25, ks[-1] * 1.25)
        ax.minorticks_off()
        ax.set_xlabel("K: labelled training images per class (log₂ scale)")
        ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
        ax.set_title(_METRIC_TITLE.get(metric, metric))
        ax.grid(True, alpha=0.35)
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 1.0))
    fig.suptitle(f"{dataset}: few-shot performance vs K (mean ± std over {_seeds_text(rows)})")
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=min(len(handles), 5),
        fontsize=9,
        frameon=False,
    )
    return _save(fig, path)


def _bars(
    ax: Any, x: np.ndarray, mu: np.ndarray, sd: np.ndarray, width: float, colors: list, **kw: Any
) -> Any:
    return ax.bar(
        x, mu, width, yerr=sd, color=colors, edgecolor="black", lw=0.6, capsize=4, error_kw={"lw": 1}, **kw
    )


def ablation_bars(
    summary: list[dict[str, Any]],
    dataset: str,
    methods: list[str],
    styles: dict[str, Style],
    path: Path,
    metric: str = "accuracy",
    reference: str | None = None,
    k: int | None = None,
) -> Path:
    """Left: ``methods`` at ``k`` (mean ± std, value labels). Right: the same grouped by every K.

    ``k`` defaults to the largest K any of ``methods`` has results for; ``reference`` names an extra
    method (e.g. the best baseline) drawn hatched for comparison.
    """
    plt = _plt()
    rows = [r for r in summary if r["dataset"] == dataset and r["k"] > 0]
    ks = sorted({r["k"] for r in rows})
    kmax = k if k is not None else max(r["k"] for r in rows if r["method"] in methods)
    cell = {(r["method"], r["k"]): metric_cell(r, metric) for r in rows}
    shown = [m for m in methods if (m, kmax) in cell] + ([reference] if reference else [])
    width_l = max(4.5, 1.0 + 0.75 * len(shown))
    width_r = max(5.5, 1.5 + 0.13 * len(shown) * len(ks))
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(width_l + width_r, 5.0), layout="constrained", width_ratios=[width_l, width_r]
    )
    # left: largest K
    mu = np.array([cell[(m, kmax)][0] for m in shown])
    sd = np.array([cell[(m, kmax)][1] for m in shown])
    colors = [styles[m].color for m in shown]
    bars = _bars(ax1, np.arange(len(shown)), mu, sd, 0.7, colors)
    if reference:
        bars[-1].set_hatch("//")
        bars[-1].set_alpha(0.55)
    for b, v, s in zip(bars, mu, sd, strict=True):
        if v == v:
            ax1.annotate(
                f"{v:.3f}", (b.get_x() + b.get_width() / 2, v + s), xytext=(0, 3), textcoords="offset points",
                ha="center", va="bottom", fontsize=9, fontweight="bold",
            )  # fmt: skip
    labels = [f"{m}\n(best baseline)" if m == reference else m for m in shown]
    crowded = max(len(m) for m in shown) > 8  # long names would overlap: slant them
    ax1.set_xticks(
        np.arange(len(shown)), labels, rotation=25 if crowded else 0, ha="right" if crowded else "center",
        rotation_mode="anchor",
    )  # fmt: skip
    ax1.set_ylabel(_METRIC_LABEL.get(metric, metric))
    ax1.set_title(f"K = {kmax} (mean ± std)")
    top = np.nanmax(mu + sd) if len(mu) and not np.all(np.isnan(mu)) else 1.0
    ax1.set_ylim(0, min(1.0, top + 0.1) if top < 0.9 else 1.05)
    ax1.grid(True, axis="y", alpha=0.35)
    ax1.set_axisbelow(True)
    # right: grouped by K
    n = len(shown)
    w = 0.8 / max(n, 1)
    for i, m in enumerate(shown):
        vals = [cell.get((m, k), (math.nan, 0.0)) for k in ks]
        b = _bars(
            ax2, np.arange(len(ks)) + (i - (n - 1) / 2) * w, np.array([v[0] for v in vals]),
            np.array([v[1] for v in vals]), w, [styles[m].color] * len(ks),
            label=f"{m} (best baseline)" if m == reference else m,
        )  # fmt: skip
        if m == reference:
            for p in b:
                p.set_hatch("//")
                p.set_alpha(0.55)
    ax2.set_xticks(np.arange(len(ks)), [str(k) for k in ks])
    ax2.set_xlabel("K: labelled training images per class")
    ax2.set_ylabel(_METRIC_LABEL.get(metric, metric))
    ax2.set_title("all K")
    ax2.set_ylim(0, 1.0)
    ax2.grid(True, axis="y", alpha=0.35)
    ax2.set_axisbelow(True)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(n, 4), frameon=False)
    fig.suptitle(f"{dataset}: {_METRIC_TITLE.get(metric, metric).lower()} by method ({_seeds_text(rows)})")
    return _save(fig, path)


def confusion_matrix_plot(
    confusion: np.ndarray, classes: list[str], path: Path, title: str, subtitle: str = ""
) -> Path:
    """Row-normalised confusion matrix (colour and %) with the raw counts annotated."""
    plt = _plt()
    cm = np.asarray(confusion, dtype=float)
    totals = cm.sum(1, keepdims=True)
    norm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    n = len(classes)
    size = max(4.8, 1.1 * n + 2.8)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), layout="constrained")
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(
                j, i, f"{norm[i, j]:.0%}\n({int(cm[i, j])})", ha="center", va="center",
                fontsize=12 if n <= 4 else 9,
                color="white" if norm[i, j] > 0.55 else "black",
            )  # fmt: skip
    rows = [f"{c}\n(n={int(t)})" for c, t in zip(classes, totals[:, 0], strict=True)]
    ax.set_xticks(range(n), classes, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), rows)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (n = test images, summed over seeds)")
    ax.set_title(title + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of the true class (row-normalised)")
    return _save(fig, path)


def _ms_arrays(cells: list[dict[str, float] | None]) -> tuple[np.ndarray, np.ndarray]:
    mu = np.array([c["mean"] if c else np.nan for c in cells], dtype=float)
    sd = np.array([c["std"] if c else 0.0 for c in cells], dtype=float)
    return mu, sd


def _draw(ax: Any, x: np.ndarray, mu: np.ndarray, sd: np.ndarray, st: Style, label: str) -> Any:
    (h,) = ax.plot(x, mu, label=label, **st.line)
    ax.fill_between(x, mu - sd, mu + sd, color=st.color, alpha=0.13 if st.hica else 0.08, lw=0, zorder=2)
    return h


def _finish(fig: Any, handles: dict[str, Any], title: str, path: Path) -> Path:
    fig.suptitle(title)
    fig.legend(
        list(handles.values()), list(handles), loc="outside lower center", ncol=min(len(handles), 6),
        fontsize=9, frameon=False,
    )  # fmt: skip
    return _save(fig, path)


def noise_curves(
    noise: dict[str, dict[str, Any]],
    styles: dict[str, Style],
    path: Path,
    title: str,
    reference: tuple[float, str] | None = None,
) -> Path:
    """Accuracy and AUC against the fraction p of corrupted descriptor phrases, one line per method
    (mean over seeds, shaded ± std)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 4.6), layout="constrained")
    handles: dict[str, Any] = {}
    for ax, metric in zip(axes, ("accuracy", "auc"), strict=True):
        for m, by_p in noise.items():
            ps = sorted(by_p, key=float)
            x = np.array([float(p) for p in ps])
            mu, sd = _ms_arrays([by_p[p].get(metric) for p in ps])
            if not np.all(np.isnan(mu)):
                handles.setdefault(m, _draw(ax, x, mu, sd, styles[m], m))
        if metric == "accuracy" and reference:
            h = ax.axhline(reference[0], color="black", ls="-.", lw=1.0, zorder=1, label=reference[1])
            handles.setdefault(reference[1], h)
        if metric == "auc":
            h = ax.axhline(0.5, color="grey", ls=":", lw=1.0, zorder=1, label="chance AUC (0.5)")
            handles.setdefault("chance AUC (0.5)", h)
        ax.set_xlabel("p: fraction of descriptor phrases corrupted")
        ax.set_ylabel(_METRIC_LABEL[metric])
        ax.set_title(_METRIC_TITLE[metric])
        ax.set_xticks(sorted({float(p) for v in noise.values() for p in v}))
        ax.grid(True, alpha=0.35)
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 1.0))
    return _finish(fig, handles, title, path)


def corruption_curves(
    corr: dict[str, dict[str, Any]],
    styles: dict[str, Style],
    path: Path,
    title: str,
    reference: tuple[float, str] | None = None,
) -> Path:
    """Accuracy against corruption severity (0 = clean): the mean over all corruptions, then one panel per
    corruption; one line per method (mean over seeds, shaded ± std)."""
    plt = _plt()
    names = sorted({c for v in corr.values() for c in v["per_corruption"]})
    panels = ["mean over all corruptions", *names]
    ncol = 4
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.6 * ncol, 3.2 * nrow), layout="constrained", sharey=True, squeeze=False
    )
    handles: dict[str, Any] = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        for m, v in corr.items():
            series = v["per_severity"] if panel == panels[0] else v["per_corruption"].get(panel, {})
            sevs = sorted(series, key=int)
            x = np.array([0, *map(int, sevs)], dtype=float)
            mu, sd = _ms_arrays([v["clean_accuracy"], *(series[s] for s in sevs)])
            handles.setdefault(m, _draw(ax, x, mu, sd, styles[m], m))
        if reference:
            h = ax.axhline(reference[0], color="black", ls="-.", lw=1.0, zorder=1, label=reference[1])
            handles.setdefault(reference[1], h)
        ax.set_title(panel.replace("_", " "), fontsize=10, fontweight="bold" if panel == panels[0] else None)
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
        ax.grid(True, alpha=0.35)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    for ax in axes[-1, :]:
        ax.set_xlabel("corruption severity")
    return _finish(fig, handles, title, path)

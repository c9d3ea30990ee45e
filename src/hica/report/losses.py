"""HiCA's per-step loss terms: a plot and a flatness check over runs.

A fitted HiCA (or ablation) keeps ``loss_log = {"head": [...], "train": [...]}``: one dict of named terms
(``total``, ``global``, ``local``, ``local/…``, ``cross``, ``cross/…``) per step of its two phases (text
head, then both towers). The benchmark writes it to ``loss_logs/<part key>.json``
(``<dataset>__<method>__K<k>__s<seed>``); here ``logs`` maps part keys to those dicts. Terms whose last
name part starts with ``n_`` are counts (images per batch), not losses: they are neither drawn nor checked.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from hica.report import plots

PHASES = ("head", "train")
PHASE_TITLE = {"head": "phase 1: text head (image tower frozen)", "train": "phase 2: both towers"}
MAIN_TERMS = ("total", "global", "local", "cross")
FLAT = 0.01  # relative change from first to last step below this: flat
_KEY = re.compile(r"^(?P<dataset>.+)__(?P<method>.+?)__K(?P<k>\d+)__s(?P<seed>\d+)$")


def method_of(key: str) -> str:
    """The method of a part key ``<dataset>__<method>__K<k>__s<seed>`` (the key itself if it is not one)."""
    m = _KEY.match(key)
    return m["method"] if m else key


def is_count(term: str) -> bool:
    """Count diagnostics (``local/n_images``, ...) are not loss terms."""
    return term.rsplit("/", 1)[-1].startswith("n_")


def term_order(terms: set[str] | list[str]) -> list[str]:
    """``total``, ``global``, ``local``, ``cross`` first, then the components by name; counts left out."""
    kept = [t for t in set(terms) if not is_count(t)]
    main = [t for t in MAIN_TERMS if t in kept]
    return main + sorted(t for t in kept if t not in MAIN_TERMS)


def curves(logs: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """``{method: {phase: {term: (runs, steps) array}}}``; shorter runs and missing terms padded with NaN."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for key, log in logs.items():
        by_method.setdefault(method_of(key), []).append(log)
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for method, runs in by_method.items():
        out[method] = {}
        for phase in PHASES:
            steps = [list(r.get(phase) or []) for r in runs]
            n = max((len(s) for s in steps), default=0)
            if n == 0:
                continue
            terms = term_order({t for s in steps for row in s for t in row})
            out[method][phase] = {
                t: np.array(
                    [[_num(s[i].get(t)) if i < len(s) else math.nan for i in range(n)] for s in steps],
                    dtype=float,
                )
                for t in terms
            }
    return out


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _mean(a: np.ndarray) -> np.ndarray:
    """Mean over runs per step, NaN where no run has a finite value (without numpy's empty-slice warning)."""
    finite = np.isfinite(a)
    n = finite.sum(0)
    s = np.where(finite, a, 0.0).sum(0)
    return np.where(n > 0, s / np.maximum(n, 1), math.nan)


def flat_rows(logs: dict[str, dict[str, Any]], rel: float = FLAT) -> list[tuple[str, str, str, str]]:
    """``(method, phase, term, why)`` for each term whose mean over runs is zero throughout, zero at the first
    step, or changes by less than ``rel`` (relative) from its first to its last finite step."""
    rows = []
    for method, phases in curves(logs).items():
        for phase, terms in phases.items():
            for term, a in terms.items():
                v = _mean(a)
                v = v[np.isfinite(v)]
                if len(v) == 0:
                    continue
                first, last = float(v[0]), float(v[-1])
                if np.all(np.abs(v) <= 1e-12):
                    rows.append((method, phase, term, "zero throughout"))
                elif abs(first) <= 1e-12:
                    rows.append((method, phase, term, "zero at the first step"))
                elif len(v) > 1 and abs(last - first) < rel * abs(first):
                    rows.append((method, phase, term, f"flat: {first:.4g} → {last:.4g}"))
    return rows


def flat_terms(logs: dict[str, dict[str, Any]], rel: float = FLAT) -> list[str]:
    """Terms that are flat (relative change < ``rel`` from first to last step) or zero from the start, as
    ``"<method> <phase>: <term> (<why>)"``; see :func:`flat_rows`."""
    return [f"{m} {p}: {t} ({why})" for m, p, t, why in flat_rows(logs, rel)]


# Terms HiCA logs today, in the order of their fixed colours (any other term follows, by name).
KNOWN_TERMS = (
    *MAIN_TERMS,
    "local/contrast",
    "local/background",
    "local/roi_pos_sim",
    "local/bg_pos_sim",
    "cross/img",
    "cross/attr",
    "cross/text",
)


def term_colors(terms: list[str]) -> dict[str, Any]:
    """A colour per term, the same in every panel and figure for the terms HiCA logs (``KNOWN_TERMS``):
    tab10, then tab20's light shades."""
    import matplotlib

    palette = [matplotlib.colormaps["tab10"](i) for i in range(10)]
    palette += [matplotlib.colormaps["tab20"](i) for i in range(1, 20, 2)]
    others = sorted(t for t in terms if t not in KNOWN_TERMS)
    index = {t: i for i, t in enumerate([*KNOWN_TERMS, *others])}
    return {t: palette[index[t] % len(palette)] for t in terms}


def plot_loss_terms(logs: dict[str, dict[str, Any]], out_png: str | Path) -> Path:
    """One row per method (HiCA and its ablations), one panel per phase: the mean over runs of each named
    term per step, a light band from the runs' min to max; log-y where every value is positive and they
    span more than 30×. Writes ``out_png`` atomically and returns its path."""
    plt = plots._plt()
    from matplotlib.ticker import MaxNLocator

    data = curves(logs)
    methods = sorted(data, key=lambda m: (not plots.is_hica(m), m != "hica", m))
    colors = term_colors(term_order({t for ph in data.values() for ts in ph.values() for t in ts}))
    n_runs = {m: sum(method_of(k) == m for k in logs) for m in methods}
    fig, axes = plt.subplots(
        max(1, len(methods)), len(PHASES), figsize=(6.2 * len(PHASES), 3.4 * max(1, len(methods))),
        layout="constrained", squeeze=False,
    )  # fmt: skip
    handles: dict[str, Any] = {}
    for row, method in zip(axes, methods or [""], strict=True):
        for ax, phase in zip(row, PHASES, strict=True):
            terms = data.get(method, {}).get(phase, {})
            n = n_runs.get(method, 0)
            ax.set_title(f"{method} — {PHASE_TITLE[phase]} ({n} run{'' if n == 1 else 's'})", fontsize=10)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("term value")
            ax.grid(True, alpha=0.35)
            if not terms:
                ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
                continue
            values: list[np.ndarray] = []
            for term, a in terms.items():
                x = np.arange(1, a.shape[1] + 1)
                mu = _mean(a)
                if not np.isfinite(mu).any():
                    continue
                main = "/" not in term
                kw = dict(color=colors[term], lw=2.2 if main else 1.1, ls="-" if main else "--", ms=4)
                kw["marker"] = "o" if len(x) < 3 else None  # a line of one step would not show
                (h,) = ax.plot(x, mu, label=term, zorder=4 if main else 3, **kw)
                handles.setdefault(term, h)
                if a.shape[0] > 1:
                    ok = np.isfinite(a).any(0)
                    lo = np.where(ok, np.where(np.isfinite(a), a, np.inf).min(0), math.nan)
                    hi = np.where(ok, np.where(np.isfinite(a), a, -np.inf).max(0), math.nan)
                    ax.fill_between(x, lo, hi, where=ok, color=colors[term], alpha=0.12, lw=0, zorder=2)
                    values.append(a[np.isfinite(a)])
                values.append(mu[np.isfinite(mu)])
            seen = np.concatenate(values) if values else np.array([])
            if len(seen) and seen.min() > 0 and seen.max() / seen.min() > 30:
                ax.set_yscale("log")
    title = "HiCA loss terms per step (line: mean over runs; band: min–max over runs)"
    return plots._finish(fig, handles, title, Path(out_png))


def read_loss_logs(folder: str | Path, keys: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The logs ``folder/<key>.json`` of ``keys`` that exist and parse, and the keys whose file is missing
    or unreadable."""
    logs: dict[str, dict[str, Any]] = {}
    missing: list[str] = []
    for key in keys:
        path = Path(folder) / f"{key}.json"
        try:
            log = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            missing.append(key)
            continue
        if isinstance(log, dict):
            logs[key] = log
        else:
            missing.append(key)
    return logs, missing


def loss_markdown(
    logs: dict[str, dict[str, Any]],
    png: str,
    missing: list[str] | None = None,
    level: int = 3,
    where: str = "`loss_logs/",
) -> list[str]:
    """The "Loss terms" section: where the logs are (``where``: the folder's Markdown, up to its slash), the
    figure ``png``, the HiCA runs without a log (``missing``), and the flat or zero terms."""
    methods = sorted({method_of(k) for k in logs})
    md = [
        f"{'#' * level} Loss terms\n",
        f"Every step's named loss terms of {len(logs)} run(s) of {', '.join(methods)} are kept in "
        f"{where}<dataset>__<method>__K<k>__s<seed>.json` (phase `head`: the text head on frozen image "
        "features; `train`: both towers). The figure shows the mean over runs per step, with a band from "
        "the runs' minimum to maximum.\n",
        f"![loss terms]({png})\n",
    ]
    if missing:
        md.append(
            f"{len(missing)} HiCA run(s) have no loss log (parts reused from before logs were kept): "
            f"{', '.join(f'`{k}`' for k in missing)}.\n"
        )
    rows = flat_rows(logs)
    if rows:
        md.append(
            f"Terms flat (relative change < {FLAT:.0%} from first to last step) or zero from the start:\n"
        )
        md += [f"- {m}, {p}: `{t}` ({why})" for m, p, t, why in rows]
        md.append("")
    else:
        md.append(f"No term is flat (relative change < {FLAT:.0%} from first to last step) or zero.\n")
    return md


def run_loss_logs(
    run_dir: str | Path, records: list[dict[str, Any]], renamed: dict[str, str] | None = None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The loss logs of a benchmark run's HiCA-family records (``hica*``, K > 0), keyed by part key with the
    method name the records show (``renamed``: original → shown name); and the part keys without a log."""
    from hica.eval.grid import safe_key
    from hica.eval.protocol import LOSS_LOGS, part_key

    original = {new: old for old, new in (renamed or {}).items()}
    keys: dict[str, str] = {}  # key on disk → key with the shown method name
    for r in records:
        old = original.get(r["method"], r["method"])
        if plots.is_hica(old) and r.get("k", 0) > 0:
            shown = part_key(r["dataset"], r["method"], r["k"], r["seed"])
            keys[safe_key(part_key(r["dataset"], old, r["k"], r["seed"]))] = shown
    logs, missing = read_loss_logs(Path(run_dir) / LOSS_LOGS, list(keys))
    return {keys[k]: v for k, v in logs.items()}, missing


def report_section(runs: list[Any], out: Path, fig_no: int) -> tuple[list[str], list[Path], int]:
    """``hica report``'s "Loss terms" section over its benchmark runs (``report.runs.Run``) that kept loss
    logs: the figure in ``out/figures``; no lines when no run kept any."""
    logs: dict[str, dict[str, Any]] = {}
    for run in runs:
        original = {new: old for old, new in run.renamed.items()}
        if any(plots.is_hica(original.get(m, m)) for m in run.methods):  # (the others need no look)
            logs.update(run_loss_logs(run.dir, run.records, run.renamed)[0])
    if not logs:
        return [], [], fig_no
    path = plot_loss_terms(logs, out / "figures" / "loss_terms.png")
    md = loss_markdown(
        logs, path.relative_to(out).as_posix(), level=2, where="each run directory's `loss_logs/"
    )
    fig_no += 1
    md.insert(3, f"*Figure {fig_no}: HiCA's loss terms per step, one row per method, one panel per phase.*\n")
    return md, [path], fig_no

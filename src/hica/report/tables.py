"""Aggregate per-run records into metrics.json, predictions.csv and a Markdown results table."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from hica.config import BenchmarkConfig
from hica.eval.grid import STAMP
from hica.eval.metrics import METRICS, mean_std
from hica.io import write_json, write_text, write_text_replacing_gz

# left out of metrics.json's runs: per-image arrays (predictions.csv has them) and how a part was made
_HEAVY = ("probs", "test_ids", "test_labels", STAMP)
EDGE_FLAG = 0.05  # a method picking a grid edge in more than this fraction of its runs is flagged


def edge_counts(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Grid-edge picks of the runs that searched (``selected["edge"]``, from ``selection.edge_picks``):
    ``{"n": runs with an edge pick, "of": searching runs, "by_setting": {name: runs}}``; None if none
    searched."""
    edges = [r["selected"]["edge"] for r in records if "edge" in (r.get("selected") or {})]
    if not edges:
        return None
    by: dict[str, int] = defaultdict(int)
    for e in edges:
        for name in e:
            by[name] += 1
    return {"n": sum(bool(e) for e in edges), "of": len(edges), "by_setting": dict(by)}


def edge_table(records: list[dict[str, Any]], method_order: list[str] | None = None) -> str:
    """results.md's "grid-edge picks per method" table ("" when no run recorded its picks)."""
    methods = list(dict.fromkeys([*(method_order or []), *(r["method"] for r in records)]))
    rows = []
    for m in methods:
        c = edge_counts([r for r in records if r["method"] == m])
        if c is None:
            continue
        share = c["n"] / c["of"]
        by = ", ".join(f"{k} {v}" for k, v in c["by_setting"].items()) or "–"
        flag = f"⚠ > {EDGE_FLAG:.0%}" if share > EDGE_FLAG else ""
        rows.append(f"| {m} | {c['n']} of {c['of']} ({share:.0%}) | {by} | {flag} |")
    if not rows:
        return ""
    head = (
        "### Grid-edge picks per method\n\n"
        "Runs whose validation search picked the first or last value of a searched grid: the best value may "
        f"lie outside the range searched. More than {EDGE_FLAG:.0%} of runs is flagged.\n\n"
        "| method | grid-edge picks: n of N runs (%) | runs per setting | flag |\n|---|---|---|---|"
    )
    return "\n".join([head, *rows, ""])


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every metric, per (dataset, method, K); ``edge_picks`` (see
    :func:`edge_counts`) where the runs recorded their grid-edge picks."""
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["method"], r["k"])].append(r)
    out = []
    for (ds, method, k), rs in sorted(groups.items()):
        row: dict[str, Any] = {
            "dataset": ds,
            "method": method,
            "k": k,
            "n_seeds": len(rs),
            "seeds": sorted(r["seed"] for r in rs),
        }
        for m in METRICS:
            mu, sd = mean_std([r["metrics"][m] for r in rs])
            row[m] = {"mean": mu, "std": sd}
        edges = edge_counts(rs)
        if edges is not None:  # only methods that searched a grid and recorded its edges
            row["edge_picks"] = edges
        out.append(row)
    return out


def _fmt(cell: dict[str, float] | None) -> str:
    if cell is None or cell["mean"] != cell["mean"]:
        return "–"
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def markdown_tables(
    summary: list[dict[str, Any]],
    metrics: tuple[str, ...] = ("accuracy", "auc"),
    method_order: list[str] | None = None,
) -> str:
    """One table per dataset and metric: methods × K (zero-shot methods in the K=0 column)."""
    lines: list[str] = []
    for ds in sorted({r["dataset"] for r in summary}):
        rows = [r for r in summary if r["dataset"] == ds]
        ks = sorted({r["k"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        if method_order:
            methods.sort(key=lambda m: method_order.index(m) if m in method_order else len(method_order))
        for metric in metrics:
            lines.append(f"### {ds} — {metric.replace('_', ' ')} (mean ± std over seeds)\n")
            head = ["method"] + [("zero-shot" if k == 0 else f"K={k}") for k in ks]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            for method in methods:
                cells = {r["k"]: r[metric] for r in rows if r["method"] == method}
                lines.append("| " + " | ".join([method] + [_fmt(cells.get(k)) for k in ks]) + " |")
            lines.append("")
    return "\n".join(lines)


def predictions_csv(records: list[dict[str, Any]]) -> str:
    """Long table: one row per (run, test image) with the class probabilities."""
    buf = io.StringIO()
    w = csv.writer(buf)
    width = max(len(r["classes"]) for r in records) if records else 0
    w.writerow(["dataset", "method", "k", "seed", "id", "label", "pred", *[f"p{i}" for i in range(width)]])
    for r in records:
        for sid, y, p in zip(r["test_ids"], r["test_labels"], r["probs"], strict=True):
            pred = max(range(len(p)), key=p.__getitem__)
            w.writerow(
                [r["dataset"], r["method"], r["k"], r["seed"], sid, r["classes"][y], r["classes"][pred], *p]
            )
    return buf.getvalue()


def _reuse_note(grid: dict[str, Any]) -> str:
    """``; N run(s) reused ...`` when the invocation reused finished parts (empty for a fresh run)."""
    reused = grid.get("parts_resumed", 0)
    if not reused:
        return ""
    other = grid.get("parts_from_other_code", 0)
    made_by = f", {other} of them made by another code commit" if other else ""
    return f"; {reused} finished run(s) reused from an earlier invocation{made_by}"


def write_outputs(
    out: Path, cfg: BenchmarkConfig, records: list[dict[str, Any]], timings: dict[str, Any]
) -> dict[str, Any]:
    """Write metrics.json, predictions.csv and results.md into ``out``; return the metrics dict.

    ``timings`` is the run's (:class:`hica.eval.protocol.BenchmarkRun`): wall time, feature-cache hits and
    misses, and the grid runner's summary under ``grid`` (parts computed and reused)."""
    summary = summarize(records)
    light = [{k: v for k, v in r.items() if k not in _HEAVY} for r in records]
    result = {"name": cfg.name, "methods": cfg.methods, "summary": summary, "runs": light, "timings": timings}
    write_json(out / "metrics.json", result)
    write_text_replacing_gz(out / "predictions.csv", predictions_csv(records))
    md = [
        f"# {cfg.name}\n",
        f"Encoder: `{cfg.encoder.name}` {cfg.encoder.args or ''}; "
        f"text mode: {cfg.text_mode}; seeds: {cfg.seeds}; "
        + (
            "scored on the VALIDATION split (hyperparameter search; each episode's own validation shots "
            "left out); the test split is not used.\n"
            if getattr(cfg, "eval_split", "test") == "val"
            else "test split only for reporting.\n"
        ),
    ]
    if getattr(cfg, "protocol", "standard") == "realistic":
        md.append(
            "Protocol: **realistic** (arXiv 2506.17500): each episode has K × classes support images drawn "
            "to the train split's class prior (at least one per class) and no validation set; every method "
            "runs on its declared fixed settings (`selected.fixed`; docs/baselines.md).\n"
        )
    md.append(markdown_tables(summary, METRICS, method_order=cfg.methods))
    edges = edge_table(records, cfg.methods)
    if edges:
        md.append(edges)
    if any(r["method"] == "zeroshot" for r in records) and cfg.encoder.name == "default":
        md.append(
            "> Zero-shot with the `default` encoder uses untrained projection heads: image and text are not "
            "aligned, so its numbers are at chance level by construction. It is a reference point, not a "
            "method result; aligned encoders (open_clip, hf) or HiCA stage 2 make zero-shot meaningful.\n"
        )
    md.append(
        f"Wall time: {timings.get('total', float('nan')):.1f} s "
        f"(feature cache hits {timings.get('cache_hits')}, misses {timings.get('cache_misses')}"
        f"{_reuse_note(timings.get('grid') or {})}).\n"
    )
    env_path = out / "environment.json"
    if env_path.is_file():
        env = json.loads(env_path.read_text())
        md.append(
            f"Machine: {env.get('cpu')} ({env.get('cpu_cores')} cores), device {env.get('device')}"
            f"{' ' + env['gpu'] if env.get('gpu') else ''}, precision {env.get('precision')}, "
            f"torch {env.get('torch')}.\n"
        )
    write_text(out / "results.md", "\n".join(md))
    return result

"""The benchmark runs a report is built from: reading their metrics.json, renaming methods, checking that
no (dataset, method, K) comes from two runs, and the method order of tables and legends."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hica.errors import HicaError

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
    dropped: list[str] = field(default_factory=list)


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


def parse_drops(items: Iterable[str] | None) -> list[tuple[Path, str]]:
    """Parse ``DIR:METHOD`` items (``--drop``) into ``[(DIR, METHOD)]``."""
    out = []
    for item in items or []:
        d, colon, method = item.rpartition(":")
        if not (colon and d.strip() and method.strip()):
            raise HicaError(
                f"--drop {item!r} must look like RUN_DIR:METHOD, e.g. results/hica/fast/busi_k16:hica_fast"
            )
        out.append((Path(d.strip()), method.strip()))
    return out


def parse_order(text: str | None) -> list[str]:
    """``m1,m2,...`` → ``[m1, m2, ...]``."""
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def _run_of(runs: list[Run], d: str | Path, method: str, option: str) -> Run:
    """The run of directory ``d`` that has ``method``; else a HicaError naming ``option``."""
    run = {r.dir.resolve(): r for r in runs}.get(Path(d).resolve())
    if run is None:
        raise HicaError(f"{option} names {d}, which is not one of the RUN_DIRs {[str(r.dir) for r in runs]}")
    if method not in run.methods:
        raise HicaError(f"{option}: run {run.dir} has no method {method!r} (it has {run.methods})")
    return run


def apply_drops(runs: list[Run], drops: Iterable[tuple[str | Path, str]]) -> None:
    """Leave methods of single runs out, in place (``[(RUN_DIR, METHOD)]``: e.g. a method that another run
    holds too, for the same episodes); unknown dirs/methods raise."""
    for d, method in drops:
        run = _run_of(runs, d, method, "--drop")
        run.dropped.append(method)
        run.methods = [m for m in run.methods if m != method]
        run.summary = [row for row in run.summary if row["method"] != method]
        run.records = [row for row in run.records if row["method"] != method]


def apply_renames(runs: list[Run], renames: Mapping[tuple[str | Path, str], str]) -> None:
    """Rename methods of the runs in place (``{(RUN_DIR, METHOD): NEWNAME}``); unknown dirs/methods raise."""
    for (d, method), new in renames.items():
        _run_of(runs, d, method, "--rename").renamed[method] = new
    for run in runs:
        if not run.renamed:
            continue
        ren = run.renamed
        run.methods = [ren.get(m, m) for m in run.methods]
        for row in [*run.summary, *run.records]:
            row["method"] = ren.get(row["method"], row["method"])


def check_unique(runs: list[Run]) -> None:
    """Refuse a (dataset, method, K) that two runs both hold (tell them apart with --rename)."""
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


def method_order(runs: list[Run], order: list[str]) -> list[str]:
    """``order`` first, then every other method of the runs in order of appearance."""
    known = list(dict.fromkeys(m for r in runs for m in r.methods))
    unknown = [m for m in order if m not in known]
    if unknown:
        raise HicaError(f"--order names unknown method(s) {unknown}; the runs have {known}")
    return list(dict.fromkeys(order + known))

"""The analyses as a registry, like the encoders and methods: a name → how to load its config and run it.

Each analysis module registers itself with ``register_analysis`` at import; ``analysis_registry()`` imports
the built-in ones. The CLI adds one ``hica analyze <name>`` command per entry and calls ``run_analysis``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hica.errors import HicaError
from hica.io import out_lock

BUILTIN = ("robustness", "unseen", "localization", "efficiency")


@dataclass(frozen=True)
class Analysis:
    """One analysis: ``load_config(path, overrides)`` and ``run(cfg, out_dir, **options)``.

    ``overrides`` names the config keys the command may override; a ``resumable`` analysis runs on
    ``eval.grid.GridRun`` and its ``run`` takes ``resume`` and ``rerun_other_code``; ``table`` is the Markdown
    file its run writes."""

    name: str
    help: str
    load_config: Callable[[str | Path, dict[str, Any] | None], Any]
    run: Callable[..., dict[str, Any]]
    table: str = "results.md"
    overrides: tuple[str, ...] = ("data_root", "device", "precision")
    resumable: bool = True


_REGISTRY: dict[str, Analysis] = {}


def register_analysis(analysis: Analysis) -> Analysis:
    """Add ``analysis`` under its name (a second registration of the same name replaces the first)."""
    _REGISTRY[analysis.name] = analysis
    return analysis


def analysis_registry() -> dict[str, Analysis]:
    """Every registered analysis, the built-in ones imported first."""
    for name in BUILTIN:
        importlib.import_module(f"hica.analysis.{name}")
    return dict(_REGISTRY)


def get_analysis(name: str) -> Analysis:
    """The analysis called ``name``; a HicaError listing the known ones otherwise."""
    reg = analysis_registry()
    if name not in reg:
        raise HicaError(f"unknown analysis {name!r}; known: {', '.join(sorted(reg))}")
    return reg[name]


def run_analysis(
    name: str,
    config: str | Path,
    out: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = True,
    rerun_other_code: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Load ``config`` (with ``overrides``; None values are ignored), run the analysis into ``out`` (default
    ``runs/<config name>``) under the folder's lock; returns (out, what its metrics.json holds).

    ``rerun_other_code`` recomputes the parts another code commit made (they are reused by default)."""
    a = get_analysis(name)
    over = {k: v for k, v in (overrides or {}).items() if k in a.overrides and v is not None}
    cfg = a.load_config(config, over)
    out = Path(out) if out is not None else Path("runs") / cfg.name
    with out_lock(out):
        if a.resumable:
            result = a.run(cfg, out, resume=resume, rerun_other_code=rerun_other_code)
        else:
            result = a.run(cfg, out)
    return out, result

"""``hica analyze <name>``: one command per analysis of :mod:`hica.analysis.registry`, with the options the
analysis takes; it prints the analysis's Markdown table and what it wrote."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from typer.core import TyperGroup

from hica.cli.common import (
    DataRoot,
    DeviceOverride,
    Out,
    PrecisionOverride,
    RerunOtherCode,
    Resume,
    console,
)

if TYPE_CHECKING:
    from hica.analysis.registry import Analysis

AnalysisConfig = Annotated[Path, typer.Option("--config", help="Analysis YAML (see configs/analysis/).")]


def _command(analysis: Analysis) -> Callable[..., None]:
    """The command of ``analysis``: config and out, plus the overrides it accepts and ``--resume`` if it
    resumes (the signature typer reads is trimmed to those)."""

    def command(
        config: AnalysisConfig,
        out: Out = None,
        data_root: DataRoot = None,
        device: DeviceOverride = None,
        precision: PrecisionOverride = None,
        resume: Resume = True,
        rerun_other_code: RerunOtherCode = False,
    ) -> None:
        from hica.analysis.registry import run_analysis

        over = {"data_root": data_root, "device": device, "precision": precision}
        out_dir, _ = run_analysis(analysis.name, config, out, over, resume, rerun_other_code)
        typer.echo((out_dir / analysis.table).read_text())
        shown = (p for p in out_dir.iterdir() if not p.name.startswith("."))  # not the lock file
        written = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in shown))
        console.print(f"[green]wrote[/green] {out_dir}/ ({written})")

    grid_options = ["resume", "rerun_other_code"] if analysis.resumable else []
    takes = {"config", "out", *analysis.overrides, *grid_options}
    sig = inspect.signature(command, eval_str=True)
    command.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name in takes])
    command.__doc__ = analysis.help
    return command


class _RegistryGroup(TyperGroup):
    """The ``analyze`` group, filled from the registry on first use: the analyses import torch, which
    ``hica --help`` and the other commands need not load."""

    def _fill(self) -> None:
        if self.commands:
            return
        from hica.analysis.registry import analysis_registry

        sub = typer.Typer()
        for analysis in analysis_registry().values():
            sub.command(analysis.name)(_command(analysis))
        self.commands.update(typer.main.get_group(sub).commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._fill()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Any:
        self._fill()
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    cls=_RegistryGroup,
    help="The analyses the method is judged by (robustness, unseen classes, localization, efficiency).",
    no_args_is_help=True,
)

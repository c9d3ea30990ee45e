"""What the ``hica`` commands share: the consoles, the option types, and parsing of repeated options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from hica.errors import HicaError

console = Console()
err_console = Console(stderr=True)

DataRoot = Annotated[
    str | None, typer.Option("--data-root", help="Data folder (default: $HICA_DATA, else ./data).")
]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:N]")]
Precision = Annotated[str, typer.Option("--precision", help="auto | fp32 | bf16 (auto: bf16 where native)")]
EncoderName = Annotated[str, typer.Option("--encoder", help="Encoder registry name (see `hica encoders`).")]
EncoderArgs = Annotated[
    list[str] | None, typer.Option("--encoder-arg", help="Encoder keyword argument KEY=VALUE (repeatable).")
]
CacheDir = Annotated[str | None, typer.Option("--cache-dir", help="Feature cache (default $HICA_CACHE).")]
Download = Annotated[
    bool, typer.Option("--download", help="Fetch a missing MedMNIST file from Zenodo (MD5-checked).")
]
Out = Annotated[Path | None, typer.Option("--out", help="Run directory (default runs/<name>).")]
DeviceOverride = Annotated[str | None, typer.Option("--device", help="Override the config's device.")]
PrecisionOverride = Annotated[
    str | None, typer.Option("--precision", help="Override the config's precision.")
]
Resume = Annotated[bool, typer.Option(help="Continue from what the run directory already holds.")]
RerunOtherCode = Annotated[
    bool,
    typer.Option(
        "--rerun-other-code",
        help="Recompute the finished parts that another code commit made (by default they are reused, "
        "and counted in metrics.json).",
    ),
]
Checkpoint = Annotated[Path, typer.Option("--checkpoint", help="Model folder from `hica finetune`.")]


def parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    """``KEY=VALUE`` items (VALUE read as YAML) → ``{KEY: VALUE}``; ``what`` names the option in errors."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise HicaError(f"{what} {item!r} must look like KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def parse_ints(text: str, what: str) -> list[int]:
    """``1,4,16`` → ``[1, 4, 16]``; ``what`` names the option in errors."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise HicaError(f"{what} must be comma-separated integers, got {text!r}") from e
    if not out:
        raise HicaError(f"{what} is empty: give comma-separated integers, e.g. 1,4,16")
    return out


def print_card_line(model_dir: Path, card: dict[str, Any]) -> None:
    """One line on stderr saying what model this is (its card), or that it has no card."""
    from hica.modelcard import card_summary, missing_card_warning

    if card:
        err_console.print(f"[dim]model card:[/dim] {escape(card_summary(card))}", soft_wrap=True)
    else:
        err_console.print(f"[yellow]{escape(missing_card_warning(model_dir))}[/yellow]", soft_wrap=True)


def error_line(msg: str) -> None:
    """``error: MSG`` on stderr, one unwrapped line."""
    # escape: messages hold paths and lists whose [brackets] are not rich markup
    err_console.print(f"[bold red]error:[/bold red] {escape(msg)}", soft_wrap=True)

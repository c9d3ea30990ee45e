"""``hica attributes``: per-image BI-RADS attributes of a split, measured from lesion masks and pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hica.cli.common import DataRoot, console

_DEFAULT_OUT = Path("results/attributes")


def attributes(
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset with lesion masks (e.g. busi).")
    ] = "busi",
    split: Annotated[
        str, typer.Option("--split", help="Split to measure (thresholds: always train).")
    ] = "train",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default results/attributes/<dataset>_<split>)."),
    ] = None,
    no_lesion_class: Annotated[
        list[str] | None, typer.Option("--no-lesion-class", help="Class without lesions (repeatable).")
    ] = None,
    data_root: DataRoot = None,
) -> None:
    """Measure shape, orientation, margin, echo pattern, posterior features and size of each image's lesion;
    write per_image.csv, distribution.md and metrics.json (docs/attributes.md)."""
    from hica.jobs.attributes import run_attributes

    out_dir = out or _DEFAULT_OUT / f"{dataset}_{split}"
    classes = tuple(no_lesion_class) if no_lesion_class else ("normal",)
    metrics = run_attributes(dataset, split, out_dir, data_root, classes)
    typer.echo((out_dir / "distribution.md").read_text(encoding="utf-8"))
    console.print(
        f"[green]wrote[/green] {out_dir}/ (per_image.csv, distribution.md, metrics.json); "
        f"{metrics['images']} images"
    )

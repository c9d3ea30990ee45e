"""``hica datasets``, ``encoders``, ``zeroshot``, ``fewshot``, ``benchmark`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hica.cli.common import (
    CacheDir,
    DataRoot,
    Device,
    DeviceOverride,
    Download,
    EncoderArgs,
    EncoderName,
    Out,
    Precision,
    PrecisionOverride,
    RerunOtherCode,
    Resume,
    console,
    parse_ints,
    parse_kv,
)
from hica.errors import HicaError
from hica.io import out_lock

DatasetSpec = Annotated[
    str, typer.Option("--dataset", help="Dataset name, imagefolder:PATH or manifest:PATH.")
]


def _print_run(out: Path, result: dict[str, Any]) -> None:
    """A benchmark's tables and what it wrote."""
    from hica.report.tables import markdown_tables

    typer.echo(markdown_tables(result["summary"], method_order=result["methods"]))
    console.print(f"[green]wrote[/green] {out}/ (results.md, metrics.json, predictions.csv, episodes/)")


def datasets(data_root: DataRoot = None) -> None:
    """List the datasets found under the data root, with images per class and split."""
    from hica.inventory import dataset_inventory

    root, found = dataset_inventory(data_root)
    table = Table(title=f"datasets under {root}")
    for col in ("dataset", "split", "images per class", "total"):
        table.add_column(col)
    for name, counts in found.items():
        if isinstance(counts, HicaError):
            table.add_row(name, "–", f"[yellow]not available: {escape(str(counts))}[/yellow]", "")
            continue
        for split, per_class in counts.items():
            table.add_row(
                name, split, ", ".join(f"{c} {n}" for c, n in per_class.items()), str(sum(per_class.values()))
            )
    console.print(table)


def encoders() -> None:
    """List the registered encoders."""
    from hica.inventory import available_encoders

    for name, doc in available_encoders().items():
        console.print(f"[bold]{name}[/bold]  {doc}")


def zeroshot(
    dataset: DatasetSpec,
    encoder: EncoderName = "default",
    encoder_arg: EncoderArgs = None,
    text_mode: Annotated[str, typer.Option(help="names | descriptions | ensemble")] = "ensemble",
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: Precision = "auto",
    cache_dir: CacheDir = None,
    download: Download = False,
    out: Out = None,
) -> None:
    """Zero-shot classification of a dataset's test split from class text alone."""
    from hica.runs import benchmark_into, quick_config

    cfg = quick_config(
        "zeroshot",
        dataset,
        encoder,
        parse_kv(encoder_arg, "--encoder-arg"),
        download,
        shots=[],
        methods=["zeroshot"],
        text_mode=text_mode,
        data_root=data_root,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
    )
    _print_run(*benchmark_into(cfg, out))


def fewshot(
    dataset: DatasetSpec,
    method: Annotated[list[str], typer.Option("--method", help="Method name (repeatable).")],
    shots: Annotated[str, typer.Option(help="Comma-separated K values.")] = "1,2,4,8,16",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "1,2,3",
    encoder: EncoderName = "default",
    encoder_arg: EncoderArgs = None,
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: Precision = "auto",
    cache_dir: CacheDir = None,
    skip_bad: Annotated[
        bool, typer.Option(help="Skip unreadable images with a warning and a count.")
    ] = False,
    download: Download = False,
    out: Out = None,
) -> None:
    """Few-shot evaluation: K labelled images per class, several seeds, the given methods."""
    from hica.runs import benchmark_into, quick_config

    cfg = quick_config(
        "fewshot",
        dataset,
        encoder,
        parse_kv(encoder_arg, "--encoder-arg"),
        download,
        shots=parse_ints(shots, "--shots"),
        seeds=parse_ints(seeds, "--seeds"),
        methods=method,
        data_root=data_root,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
        skip_bad=skip_bad,
    )
    _print_run(*benchmark_into(cfg, out))


def benchmark(
    config: Annotated[Path, typer.Option("--config", help="Benchmark YAML (see configs/).")],
    out: Out = None,
    resume: Resume = True,
    data_root: DataRoot = None,
    device: DeviceOverride = None,
    precision: PrecisionOverride = None,
    cache_dir: CacheDir = None,
    rerun_other_code: RerunOtherCode = False,
) -> None:
    """Run a benchmark grid (datasets × K × seeds × methods) from a YAML config."""
    from hica.runs import benchmark_from_file

    over = {"data_root": data_root, "device": device, "precision": precision, "cache_dir": cache_dir}
    _print_run(*benchmark_from_file(config, out, resume, over, rerun_other_code))


def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Output directories of `hica benchmark` or `hica analyze` (with metrics.json)."),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for report.md, report.html and figures/.")
    ] = Path("report"),
    rename: Annotated[
        list[str] | None,
        typer.Option(
            "--rename",
            help="RUN_DIR:METHOD=NEWNAME — rename a method of one run directory (repeatable), e.g. to tell "
            "apart `hica` of two runs: --rename results/hica/no_stage1:hica=hica_no_stage1.",
        ),
    ] = None,
    drop: Annotated[
        list[str] | None,
        typer.Option(
            "--drop",
            help="RUN_DIR:METHOD — leave a method of one run directory out (repeatable), e.g. one that "
            "another run holds for the same episodes.",
        ),
    ] = None,
    order: Annotated[
        str | None,
        typer.Option("--order", help="Comma-separated method order for tables and legends; others follow."),
    ] = None,
    confusion_method: Annotated[
        str | None,
        typer.Option(
            "--confusion-method",
            help="Method whose confusion matrix is shown (default: first of --order, else hica, else the "
            "best at the largest K).",
        ),
    ] = None,
) -> None:
    """Markdown + self-contained HTML report with plots (few-shot curves, ablations, confusion matrices;
    robustness curves and heatmap galleries of analyses) from run directories."""
    from hica.report.build import build_report, parse_drops, parse_order, parse_renames

    renames, method_order, drops = parse_renames(rename), parse_order(order), parse_drops(drop)
    with out_lock(out):
        res = build_report(run_dirs, out, renames, method_order, confusion_method, drops)
    console.print(
        f"[green]wrote[/green] {res['markdown']}, {res['html']} and {len(res['figures'])} figure(s) "
        f"in {out}/figures"
    )

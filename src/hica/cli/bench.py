"""``hica bench encoder`` and ``hica bench table``: efficiency benchmarks (:mod:`hica.bench`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hica.cli.common import DataRoot, Device, EncoderArgs, EncoderName, Precision, console, parse_kv
from hica.io import ensure_out_file

app = typer.Typer(
    help="Efficiency benchmarks (not tests): throughput, wall time, peak memory.", no_args_is_help=True
)


@app.command("encoder")
def bench_encoder(
    encoder: EncoderName = "default",
    encoder_arg: EncoderArgs = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    rounds: Annotated[int, typer.Option(help="Interleaved timing rounds.")] = 7,
    device: Device = "auto",
    precision: Precision = "auto",
    out: Annotated[Path | None, typer.Option("--out", help="Write the result JSON here.")] = None,
) -> None:
    """Image-encoding throughput of an encoder vs its raw backbone forward, measured in one run."""
    from hica.bench import bench_encoder as measure
    from hica.io import write_json

    if out:
        ensure_out_file(out)
    res = measure(encoder, parse_kv(encoder_arg, "--encoder-arg"), batch_size, rounds, device, precision)
    if out:
        write_json(out, res)
    console.print_json(data=res)


@app.command("table")
def bench_table(
    config: Annotated[Path, typer.Option("--config", help="Benchmark YAML.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory of the cold run (kept).")],
    data_root: DataRoot = None,
    result: Annotated[Path | None, typer.Option("--result", help="Write timings JSON here.")] = None,
) -> None:
    """Wall time and peak memory of a whole benchmark table: cold cache, then warm cache."""
    from hica.bench import bench_table as measure
    from hica.io import write_json

    if result:
        ensure_out_file(result, "--result")
    res = measure(config, out, data_root)
    if result:
        write_json(result, res)
    console.print_json(data=res)

"""``hica predict``, ``evaluate`` and ``explain`` (a trained model on images) and ``hica serve`` (the app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hica.cli.common import (
    Checkpoint,
    DataRoot,
    Device,
    Precision,
    console,
    err_console,
    print_card_line,
)
from hica.errors import HicaError
from hica.io import ensure_out_dir, ensure_out_file


def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files and/or folders (searched recursively).")],
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option("--out", help="CSV to write.")] = Path("predictions.csv"),
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot", help="Text only: class prototypes from --descriptors.")
    ] = False,
    descriptors: Annotated[
        str | None,
        typer.Option("--descriptors", help="Descriptor file (name or path); required with --zero-shot."),
    ] = None,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip unreadable images with a warning.")
    ] = False,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Classify images with a HiCA checkpoint; writes a CSV of class probabilities."""
    from hica.predict import classify_files, load_predictor

    ensure_out_file(out)
    pred = load_predictor(checkpoint, device, precision)
    print_card_line(checkpoint, pred.card)
    pred.choose_classes(descriptors, zero_shot)
    kept, skipped = classify_files(pred, inputs, out, skip_bad)
    if skipped:
        err_console.print(f"[yellow]skipped {len(skipped)} unreadable image(s)[/yellow], e.g. {skipped[0]}")
    console.print(f"[green]wrote[/green] {out} ({len(kept)} images, classes {pred.classes})")


def evaluate(
    checkpoint: Checkpoint,
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset name or spec (see `hica datasets`).")],
    split: Annotated[str, typer.Option("--split", help="Split to score.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", help="Write the metrics JSON here.")] = None,
    data_root: DataRoot = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images.")] = False,
    merge: Annotated[
        list[str] | None,
        typer.Option(
            "--merge",
            help="NEW=CLASS+CLASS: score the summed probability of the checkpoint's classes as the dataset's "
            "class NEW (repeatable), e.g. benign_or_normal=benign+normal.",
        ),
    ] = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Score a HiCA checkpoint on a dataset split with the same (or merged) classes, e.g. at another size."""
    from hica.eval.merge import parse_merge
    from hica.io import write_json
    from hica.predict import evaluate_dataset, load_predictor

    merged = parse_merge(merge)
    if out:
        ensure_out_file(out)
    pred = load_predictor(checkpoint, device, precision)
    print_card_line(checkpoint, pred.card)
    res = evaluate_dataset(pred, dataset, data_root, split, skip_bad, merged)
    if out:
        write_json(out, res)
    console.print_json(data={k: v for k, v in res.items() if k != "confusion"})


def explain(
    images: Annotated[list[Path], typer.Argument(help="Image file(s) to explain.")],
    checkpoint: Checkpoint,
    out: Annotated[Path, typer.Option("--out", help="Output folder for the PNGs.")] = Path("explain"),
    descriptors: Annotated[
        str | None, typer.Option("--descriptors", help="Descriptor file (default: the checkpoint's).")
    ] = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Region–text similarity heatmaps per class, top attribute phrases and the prediction, as PNGs."""
    from hica.explain import explain_image, plot_explanation
    from hica.predict import load_predictor

    ensure_out_dir(out)
    pred = load_predictor(checkpoint, device, precision)
    print_card_line(checkpoint, pred.card)
    for img in images:
        ex = explain_image(pred, img, descriptors)
        path = plot_explanation(ex, out / f"{Path(img).stem}.png", title=str(Path(img).name))
        console.print(f"{img}: predicted [bold]{ex.predicted}[/bold] → {path}")


def serve(
    models: Annotated[
        Path, typer.Option("--models", help="Models folder (trained models are added here).")
    ] = Path("models"),
    work: Annotated[Path, typer.Option("--work", help="Work folder: job uploads, runs and logs.")] = Path(
        "serve-work"
    ),
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0: other machines too).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    demo: Annotated[
        Path | None,
        typer.Option("--demo", help="Stage-2 YAML of a demo model, trained on first start if missing."),
    ] = None,
    train_config: Annotated[
        Path | None,
        typer.Option("--train-config", help="Stage-2 YAML whose encoder/method browser jobs use."),
    ] = None,
    prepare_only: Annotated[
        bool, typer.Option("--prepare-only", help="Train the --demo model if missing, then exit.")
    ] = False,
    data_root: DataRoot = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Start the browser app (Predict / Train / Models pages and a JSON API) with uvicorn."""
    from hica.serve import serve as run_server

    if prepare_only and demo is None:
        raise HicaError("--prepare-only needs --demo CONFIG (the demo model to train)")
    run_server(
        models,
        work,
        host=host,
        port=port,
        device=device,
        precision=precision,
        train_config=train_config,
        demo_config=demo,
        data_root=data_root,
        prepare_only=prepare_only,
        echo=lambda msg: console.print(escape(msg), soft_wrap=True),
    )

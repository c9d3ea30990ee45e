"""The ``hica`` command line. Subcommands only parse arguments and call the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hica.errors import HicaError
from hica.io import ensure_out_dir, ensure_out_file, out_lock

app = typer.Typer(
    name="hica",
    help="Few-shot and zero-shot medical image classification with vision-language models (HiCA).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
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


def _parse_kv(items: list[str] | None, what: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise HicaError(f"{what} {item!r} must look like KEY=VALUE")
        k, v = item.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise HicaError(f"{what} must be comma-separated integers, got {text!r}") from e
    if not out:
        raise HicaError(f"{what} is empty: give comma-separated integers, e.g. 1,4,16")
    return out


def _run(cfg: Any, out: Path | None, resume: bool) -> None:
    """Run a validated BenchmarkConfig and print its tables."""
    from hica.eval.protocol import Benchmark
    from hica.report.tables import markdown_tables

    out = out or Path("runs") / cfg.name
    with out_lock(out):  # checked and locked before anything is encoded
        result = Benchmark(cfg, out).run(resume=resume)
    typer.echo(markdown_tables(result["summary"], method_order=result["methods"]))
    console.print(f"[green]wrote[/green] {out}/ (results.md, metrics.json, predictions.csv, episodes/)")


def _run_raw(raw: dict[str, Any], out: Path | None) -> None:
    from hica.config import validate_config

    _run(validate_config(raw, "command line"), out, resume=True)


def print_card_line(model_dir: Path, card: dict[str, Any]) -> None:
    """One line on stderr saying what model this is (its card), or that it has no card."""
    from hica.modelcard import card_summary, missing_card_warning

    if card:
        err_console.print(f"[dim]model card:[/dim] {escape(card_summary(card))}", soft_wrap=True)
    else:
        err_console.print(f"[yellow]{escape(missing_card_warning(model_dir))}[/yellow]", soft_wrap=True)


@app.command()
def datasets(data_root: DataRoot = None) -> None:
    """List the datasets found under the data root, with images per class and split."""
    from hica.data.catalog import BUILTIN_NAMES, load_dataset
    from hica.data.catalog import data_root as resolve_root

    root = resolve_root(data_root)
    table = Table(title=f"datasets under {root}")
    for col in ("dataset", "split", "images per class", "total"):
        table.add_column(col)
    for name in BUILTIN_NAMES:
        try:
            ds = load_dataset(name, root)
        except HicaError as e:
            table.add_row(name, "–", f"[yellow]not available: {escape(str(e))}[/yellow]", "")
            continue
        for split, counts in ds.counts().items():
            table.add_row(
                name, split, ", ".join(f"{c} {n}" for c, n in counts.items()), str(sum(counts.values()))
            )
    console.print(table)


@app.command()
def encoders() -> None:
    """List the registered encoders."""
    from hica.encoders import list_encoders

    for name, doc in list_encoders().items():
        console.print(f"[bold]{name}[/bold]  {doc}")


@app.command()
def zeroshot(
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset name, imagefolder:PATH or manifest:PATH.")
    ],
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
    raw = dict(
        name=f"zeroshot-{_slug(dataset)}-{encoder}",
        encoder={"name": encoder, "args": _parse_kv(encoder_arg, "--encoder-arg")},
        datasets=[_dataset_spec(dataset, download)],
        shots=[],
        methods=["zeroshot"],
        text_mode=text_mode,
        data_root=data_root,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
    )
    _run_raw(raw, out)


@app.command()
def fewshot(
    dataset: Annotated[
        str, typer.Option("--dataset", help="Dataset name, imagefolder:PATH or manifest:PATH.")
    ],
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
    raw = dict(
        name=f"fewshot-{_slug(dataset)}-{encoder}",
        encoder={"name": encoder, "args": _parse_kv(encoder_arg, "--encoder-arg")},
        datasets=[_dataset_spec(dataset, download)],
        shots=_ints(shots, "--shots"),
        seeds=_ints(seeds, "--seeds"),
        methods=method,
        data_root=data_root,
        device=device,
        precision=precision,
        cache_dir=cache_dir,
        skip_bad=skip_bad,
    )
    _run_raw(raw, out)


@app.command()
def benchmark(
    config: Annotated[Path, typer.Option("--config", help="Benchmark YAML (see configs/).")],
    out: Out = None,
    resume: Resume = True,
    data_root: DataRoot = None,
    device: DeviceOverride = None,
    precision: PrecisionOverride = None,
    cache_dir: CacheDir = None,
) -> None:
    """Run a benchmark grid (datasets × K × seeds × methods) from a YAML config."""
    from hica.config import load_config

    cfg = load_config(
        config, {"data_root": data_root, "device": device, "precision": precision, "cache_dir": cache_dir}
    )
    _run(cfg, out, resume)


@app.command()
def pretrain(
    config: Annotated[Path, typer.Option("--config", help="Stage-1 YAML (see configs/stage1_*.yaml).")],
    out: Out = None,
    resume: Resume = True,
    data_root: DataRoot = None,
    device: DeviceOverride = None,
    precision: PrecisionOverride = None,
    max_images: Annotated[
        int | None, typer.Option("--max-images", help="Use only the first N images (smoke runs).")
    ] = None,
) -> None:
    """HiCA stage 1: adapt the encoder to the domain (unlabeled images + text corpus); writes OUT/encoder."""
    from hica.alignment.stage1 import run_stage1
    from hica.config import Stage1Config, load_model_config

    cfg = load_model_config(
        Stage1Config,
        config,
        {"data_root": data_root, "device": device, "precision": precision, "max_images": max_images},
    )
    out = out or Path("runs") / cfg.name
    with out_lock(out):
        summary = run_stage1(cfg, out, resume=resume)
    console.print_json(data={k: v for k, v in summary.items() if k != "machine"})
    console.print(
        f"[green]wrote[/green] {out}/encoder — load it as encoder "
        f"{{name: checkpoint, args: {{path: {out}/encoder}}}}"
    )


@app.command()
def finetune(
    config: Annotated[Path, typer.Option("--config", help="Stage-2 YAML (see configs/stage2_*.yaml).")],
    out: Out = None,
    k: Annotated[int | None, typer.Option("--k", help="Override the config's K (shots per class).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the config's episode seed.")] = None,
    resume: Resume = True,
    data_root: DataRoot = None,
    device: DeviceOverride = None,
    precision: PrecisionOverride = None,
) -> None:
    """HiCA stage 2 on one K-shot episode; writes OUT/model (use it with `hica predict`)."""
    from hica.alignment.stage2 import run_stage2
    from hica.config import Stage2Config, load_model_config

    cfg = load_model_config(
        Stage2Config,
        config,
        {"data_root": data_root, "device": device, "precision": precision, "k": k, "seed": seed},
    )
    out = out or Path("runs") / f"{cfg.name}-K{cfg.k}-s{cfg.seed}"
    with out_lock(out):
        summary = run_stage2(cfg, out, resume=resume)
    console.print_json(data={k_: v for k_, v in summary.items() if k_ != "machine"})
    console.print(
        f"[green]wrote[/green] {out}/model — classify with  hica predict IMAGES --checkpoint {out}/model"
    )


@app.command()
def predict(
    inputs: Annotated[list[str], typer.Argument(help="Image files and/or folders (searched recursively).")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model folder from `hica finetune`.")],
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
    from hica.predict import Predictor, collect_images, write_predictions
    from hica.runtime import resolve_device, resolve_precision

    ensure_out_file(out)
    dev = resolve_device(device)
    pred = Predictor(checkpoint, dev, resolve_precision(precision, dev))
    print_card_line(checkpoint, pred.card)
    if zero_shot:
        if not descriptors:
            raise HicaError("--zero-shot needs --descriptors NAME|PATH (the classes to tell apart)")
        pred.use_descriptors(descriptors)
    elif descriptors:
        from hica.data.descriptors import load_descriptors

        want = load_descriptors(descriptors).classes
        if sorted(want) != sorted(pred.classes):
            raise HicaError(
                f"checkpoint {checkpoint} was trained for classes {pred.classes}, but --descriptors "
                f"{descriptors} has {want}; use --zero-shot to classify other classes from text"
            )
    paths = collect_images(inputs)
    kept, probs, skipped = pred.predict(paths, skip_bad=skip_bad)
    write_predictions(out, kept, probs, pred.classes)
    if skipped:
        err_console.print(f"[yellow]skipped {len(skipped)} unreadable image(s)[/yellow], e.g. {skipped[0]}")
    console.print(f"[green]wrote[/green] {out} ({len(kept)} images, classes {pred.classes})")


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model folder from `hica finetune`.")],
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
    from hica.data.catalog import load_dataset
    from hica.io import write_json
    from hica.predict import Predictor, parse_merge
    from hica.predict import evaluate as evaluate_checkpoint
    from hica.runtime import resolve_device, resolve_precision

    merged = parse_merge(merge)
    if out:
        ensure_out_file(out)
    dev = resolve_device(device)
    pred = Predictor(checkpoint, dev, resolve_precision(precision, dev))
    print_card_line(checkpoint, pred.card)
    ds = load_dataset(dataset, data_root, skip_bad=skip_bad)
    res = evaluate_checkpoint(pred, ds, split, skip_bad, merged)
    if out:
        write_json(out, res)
    console.print_json(data={k: v for k, v in res.items() if k != "confusion"})


@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image file(s) to explain.")],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Model folder from `hica finetune`.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for the PNGs.")] = Path("explain"),
    descriptors: Annotated[
        str | None, typer.Option("--descriptors", help="Descriptor file (default: the checkpoint's).")
    ] = None,
    device: Device = "auto",
    precision: Precision = "auto",
) -> None:
    """Region–text similarity heatmaps per class, top attribute phrases and the prediction, as PNGs."""
    from hica.explain import explain_image, plot_explanation
    from hica.predict import Predictor
    from hica.runtime import resolve_device, resolve_precision

    ensure_out_dir(out)
    dev = resolve_device(device)
    pred = Predictor(checkpoint, dev, resolve_precision(precision, dev))
    print_card_line(checkpoint, pred.card)
    for img in images:
        ex = explain_image(pred, img, descriptors)
        path = plot_explanation(ex, out / f"{Path(img).stem}.png", title=str(Path(img).name))
        console.print(f"{img}: predicted [bold]{ex.predicted}[/bold] → {path}")


@app.command()
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


@app.command()
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
    from hica.report.build import build_report, parse_order, parse_renames

    renames, method_order = parse_renames(rename), parse_order(order)
    with out_lock(out):
        res = build_report(run_dirs, out, renames, method_order, confusion_method)
    console.print(
        f"[green]wrote[/green] {res['markdown']}, {res['html']} and {len(res['figures'])} figure(s) "
        f"in {out}/figures"
    )


bench_app = typer.Typer(
    help="Efficiency benchmarks (not tests): throughput, wall time, peak memory.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("encoder")
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
    from hica.encoders import create_encoder
    from hica.eval.efficiency import encoder_throughput, peak_rss_mb
    from hica.eval.protocol import machine_info
    from hica.io import write_json
    from hica.runtime import resolve_device, resolve_precision

    if out:
        ensure_out_file(out)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    enc = create_encoder(encoder, **_parse_kv(encoder_arg, "--encoder-arg")).to(dev).eval()
    trunk = getattr(enc, "trunk", None)
    if trunk is None:
        raise HicaError(f"encoder {encoder!r} exposes no .trunk to compare against")
    import torch

    fwd = lambda x: trunk.forward_features(x.contiguous(memory_format=torch.channels_last))  # noqa: E731
    size = getattr(enc, "image_size", 224)
    res = encoder_throughput(enc, fwd, batch_size, rounds, dev, prec, size)
    res.update(encoder=encoder, machine=machine_info(dev, prec), peak_rss_mb=round(peak_rss_mb(), 1))
    if out:
        write_json(out, res)
    console.print_json(data=res)


@bench_app.command("table")
def bench_table(
    config: Annotated[Path, typer.Option("--config", help="Benchmark YAML.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory of the cold run (kept).")],
    data_root: DataRoot = None,
    result: Annotated[Path | None, typer.Option("--result", help="Write timings JSON here.")] = None,
) -> None:
    """Wall time and peak memory of a whole benchmark table: cold cache, then warm cache."""
    from hica.eval.efficiency import table_walltime
    from hica.io import write_json

    if result:
        ensure_out_file(result, "--result")
    extra = ["--data-root", data_root] if data_root else []
    res = table_walltime(config, out, extra)
    if result:
        write_json(result, res)
    console.print_json(data=res)


analyze_app = typer.Typer(
    help="The analyses the method is judged by (robustness, unseen classes, localization, efficiency).",
    no_args_is_help=True,
)
app.add_typer(analyze_app, name="analyze")
AnalysisConfig = Annotated[Path, typer.Option("--config", help="Analysis YAML (see configs/analysis/).")]


def _analyze(kind: str, config: Path, out: Path | None, overrides: dict, **run_kw: Any) -> None:
    """Load ``hica.analysis.<kind>``'s config, run it, print its Markdown table and what was written."""
    import importlib

    mod = importlib.import_module(f"hica.analysis.{kind}")
    cfg = getattr(mod, f"load_{kind}_config")(config, overrides)
    out = out or Path("runs") / cfg.name
    with out_lock(out):
        getattr(mod, f"run_{kind}")(cfg, out, **run_kw)
    table = next(out / n for n in ("results.md", "table.md") if (out / n).is_file())
    typer.echo(table.read_text())
    shown = (p for p in out.iterdir() if not p.name.startswith("."))  # not the lock file
    written = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in shown))
    console.print(f"[green]wrote[/green] {out}/ ({written})")


def _add_analysis(kind: str, doc: str) -> None:
    """Register ``hica analyze <kind>`` for an analysis that takes device / precision and resumes."""

    def command(
        config: AnalysisConfig,
        out: Out = None,
        data_root: DataRoot = None,
        device: DeviceOverride = None,
        precision: PrecisionOverride = None,
        resume: Resume = True,
    ) -> None:
        over = {"data_root": data_root, "device": device, "precision": precision}
        _analyze(kind, config, out, over, resume=resume)

    command.__doc__ = doc
    analyze_app.command(kind)(command)


_add_analysis(
    "robustness",
    "Accuracy under noisy descriptors (fraction p) and image corruptions (severities 1-5), per method.",
)
_add_analysis(
    "unseen", "Hold classes out of HiCA stage 2, then classify all classes zero-shot from their descriptors."
)
_add_analysis(
    "localization",
    "Score HiCA's region–text maps and the fine-tuned baseline's Grad-CAM against lesion masks.",
)


@analyze_app.command("efficiency")
def analyze_efficiency(config: AnalysisConfig, out: Out = None, data_root: DataRoot = None) -> None:
    """Parameters per stage, training time and memory, inference latency and throughput (CPU; GPU if any)."""
    _analyze("efficiency", config, out, {"data_root": data_root})


def _dataset_spec(dataset: str, download: bool) -> str | dict[str, Any]:
    return {"name": dataset, "download": True} if download else dataset


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in Path(text).name or text)[:40]


def _interrupted(e: BaseException) -> bool:
    """Whether ``e`` is, or was raised while handling, a KeyboardInterrupt (typer makes Ctrl-C exit 130)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _error_line(msg: str) -> None:
    # escape: messages hold paths and lists whose [brackets] are not rich markup; one unwrapped line
    err_console.print(f"[bold red]error:[/bold red] {escape(msg)}", soft_wrap=True)


def main() -> None:
    """Entry point: user errors (and OSErrors naming a file) print one clear line and exit 2; Ctrl-C prints
    how to resume and exits 130. Outputs are written atomically, so an interrupted run leaves no half file."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except HicaError as e:
        _error_line(str(e))
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as e:
        if (isinstance(e, SystemExit) and e.code != 130) or not _interrupted(e):
            raise
        err_console.print("interrupted: run the same command again to resume", soft_wrap=True)
        sys.exit(130)
    except OSError as e:
        if e.filename is None:
            raise
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        _error_line(f"{where}: {e.strerror or e}")
        sys.exit(2)


if __name__ == "__main__":
    main()

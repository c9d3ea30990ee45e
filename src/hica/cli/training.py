"""``hica pretrain`` (HiCA stage 1) and ``hica finetune`` (stage 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hica.cli.common import DataRoot, DeviceOverride, Out, PrecisionOverride, Resume, console


def _print_summary(summary: dict[str, Any]) -> None:
    console.print_json(data={k: v for k, v in summary.items() if k != "machine"})


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
    from hica.runs import pretrain_from_file

    over = {"data_root": data_root, "device": device, "precision": precision, "max_images": max_images}
    out, summary = pretrain_from_file(config, out, resume, over)
    _print_summary(summary)
    console.print(
        f"[green]wrote[/green] {out}/encoder — load it as encoder "
        f"{{name: checkpoint, args: {{path: {out}/encoder}}}}"
    )


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
    from hica.runs import finetune_from_file

    over = {"data_root": data_root, "device": device, "precision": precision, "k": k, "seed": seed}
    out, summary = finetune_from_file(config, out, resume, over)
    _print_summary(summary)
    console.print(
        f"[green]wrote[/green] {out}/model — classify with  hica predict IMAGES --checkpoint {out}/model"
    )

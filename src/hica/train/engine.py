"""One training loop for CPU, one GPU and multi-GPU/multi-node (``torchrun``), on Lightning Fabric.

The data order is a pure function of (seed, epoch, rank, world size), and the position of the next
micro-batch is a pure function of the global step, so a resumed run consumes exactly the batches the
uninterrupted run would have. Together with the RNG states stored in each checkpoint, resuming gives
the same weights as never stopping.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from hica.errors import HicaError
from hica.io import write_text
from hica.train.checkpoint import capture_rng, find_latest, load_checkpoint, save_checkpoint

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
LossFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, Any]]]
#: ``factory(epoch, rank, world_size)`` → the batches of that epoch for that rank.
DataFactory = Callable[[int, int, int], Iterable[Any]]


@dataclass
class TrainConfig:
    """Training hyper-parameters. ``batch_size`` is per device: the global batch is
    ``batch_size × world size × grad_accum``."""

    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = None
    precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"
    num_workers: int = 0
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`HicaError` naming the first invalid field."""
        for name in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise HicaError(f"train config {name} must be >= 1, got {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise HicaError(f"train config precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.accelerator not in ("auto", "cpu", "cuda", "gpu"):
            raise HicaError(f"train config accelerator must be auto, cpu or cuda, got {self.accelerator!r}")


def _resolve_precision(cfg: TrainConfig) -> tuple[str, str]:
    accel = cfg.accelerator
    if accel == "auto":
        accel = "cuda" if torch.cuda.is_available() else "cpu"
    if accel in ("cuda", "gpu") and not torch.cuda.is_available():
        raise HicaError(f"train config accelerator {cfg.accelerator!r}: no CUDA GPU is visible; use cpu")
    if cfg.precision != "auto":
        return accel, cfg.precision
    if accel == "cpu":
        return accel, "32-true"
    return accel, "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def seed_worker(worker_id: int) -> None:
    """DataLoader worker start: seed numpy and ``random`` from the worker's torch seed (itself derived from
    the loader's seeded generator), so augmentation in workers is reproducible too."""
    import random

    import numpy as np

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class _PositionSampler(Sampler[int]):
    """This rank's shard of a seeded permutation (via ``DistributedSampler``), starting at a position.

    It has no ``set_epoch`` on purpose: Fabric would overwrite the epoch on every ``iter()``.
    """

    def __init__(self, dataset: Dataset, rank: int, world_size: int, seed: int, batch_size: int):
        self.dist = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = batch_size
        self.epoch = 0
        self.start_batch = 0

    def batches_per_epoch(self) -> int:
        return len(self.dist) // self.batch_size

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        self.dist.set_epoch(self.epoch)
        return iter(list(self.dist)[self.start_batch * self.batch_size :])

    def __len__(self) -> int:
        return len(self.dist) - self.start_batch * self.batch_size


class _Batches:
    """Endless micro-batch stream that starts at micro-batch ``start`` (counted from step 0)."""

    def __init__(self, fabric: Any, data: Dataset | DataFactory, cfg: TrainConfig, collate_fn: Any):
        self.fabric, self.data, self.cfg = fabric, data, cfg
        self.loader = None
        if isinstance(data, IterableDataset) or not isinstance(data, Dataset):
            if not callable(data):
                raise HicaError("train data must be a map-style Dataset or factory(epoch, rank, world_size)")
            return
        self.sampler = _PositionSampler(data, fabric.global_rank, fabric.world_size, cfg.seed, cfg.batch_size)
        if self.sampler.batches_per_epoch() < 1:
            raise HicaError(
                f"train data has {len(data)} examples, fewer than batch_size {cfg.batch_size} × "
                f"world size {fabric.world_size}"
            )
        gen = torch.Generator().manual_seed(cfg.seed)  # keeps DataLoader off the global RNG
        loader = DataLoader(
            data,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            drop_last=True,
            collate_fn=collate_fn,
            num_workers=cfg.num_workers,
            generator=gen,
            worker_init_fn=seed_worker,
        )
        self.loader = fabric.setup_dataloaders(loader, use_distributed_sampler=False)

    def stream(self, epoch: int, skip: int) -> Iterator[tuple[int, int, Any]]:
        """Yield (epoch, index-in-epoch, batch) from ``epoch``/``skip`` on, forever."""
        while True:
            if self.loader is not None:
                self.sampler.set_position(epoch, skip)
                for n, batch in enumerate(self.loader, start=skip):
                    yield epoch, n, batch
            else:
                rank, world = self.fabric.global_rank, self.fabric.world_size
                got = False
                for n, batch in enumerate(itertools.islice(self.data(epoch, rank, world), skip, None), skip):
                    got = True
                    yield epoch, n, self.fabric.to_device(batch)
                if not got and skip == 0:
                    raise HicaError(f"train data factory returned no batches for epoch {epoch}")
            epoch, skip = epoch + 1, 0

    def position(self, micro: int, stored: dict[str, int] | None) -> tuple[int, int]:
        """(epoch, batch) of global micro-batch ``micro``; factories need the ``stored`` position."""
        if self.loader is not None:
            per = self.sampler.batches_per_epoch()
            return divmod(micro, per)
        if stored:
            return int(stored["epoch"]), int(stored["batch"])
        return 0, micro


class _CsvLog:
    """``log.csv`` on rank 0; on resume, rows after the resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or []) or None
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= resume_step]
            if self.fields:
                write_text(path, _csv_text(self.fields, rows))

    def append(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def _csv_text(fields: list[str], rows: list[dict[str, Any]]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))

    return f


def _scalar(v: Any) -> float:
    return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)


def train(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: Dataset | DataFactory,
    cfg: TrainConfig,
    run_dir: str | Path,
    resume: bool = True,
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    extra: dict[str, Any] | None = None,
    param_groups: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps; return a summary dict.

    ``loss_fn(model, batch)`` returns ``(mean loss, metrics)``. ``data`` is a map-style ``Dataset``
    (batched with ``collate_fn``, sharded per rank) or ``factory(epoch, rank, world_size)``.
    ``extra`` (e.g. ``model_config``, ``classes``) is stored in each checkpoint; on resume its
    ``model_config``/``classes`` must match the checkpoint's. Checkpoints go to
    ``run_dir/checkpoints``, the log to ``run_dir/log.csv``. Returns ``{"step", "loss",
    "losses" (this call's per-step losses), "resumed_from", "checkpoint"}``. ``param_groups``: AdamW
    parameter groups (``{"params": [...], "lr": ...}``) instead of every trainable parameter at ``cfg.lr``.
    """
    from lightning.fabric import Fabric

    cfg.validate()
    accel, precision = _resolve_precision(cfg)
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    extra = dict(extra or {})
    expect = {k: extra[k] for k in ("model_config", "classes") if k in extra}

    fabric = Fabric(
        accelerator=accel,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=precision,  # type: ignore[arg-type]
    )
    fabric.launch()
    fabric.seed_everything(cfg.seed + fabric.global_rank, verbose=False)
    raw_model = model
    params = [p for p in raw_model.parameters() if p.requires_grad]
    if not params:
        raise HicaError("train: the model has no trainable parameters")
    optimizer = torch.optim.AdamW(param_groups or params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, fab_opt = fabric.setup(raw_model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    batches = _Batches(fabric, data, cfg, collate_fn)

    step, stored_pos, resumed_from = 0, None, None
    latest = find_latest(ckpt_root) if resume else None
    if latest is not None:
        rank = fabric.global_rank
        info = load_checkpoint(latest, raw_model, optimizer, scheduler, expect=expect, rank=rank)
        step = resumed_from = info["step"]
        stored_pos = info["extra"].get("data_position")
        scaler = getattr(fabric.strategy.precision, "scaler", None)
        if scaler is not None and info["extra"].get("grad_scaler"):
            scaler.load_state_dict(info["extra"]["grad_scaler"])
    if fabric.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
    log = _CsvLog(run_dir / "log.csv", step) if fabric.is_global_zero else None
    tb = None
    if fabric.is_global_zero and importlib.util.find_spec("tensorboard") is not None:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(run_dir / "tensorboard"))

    epoch, skip = batches.position(step * cfg.grad_accum, stored_pos)
    stream = batches.stream(epoch, skip)
    pos = {"epoch": epoch, "batch": skip}
    losses: list[float] = []
    last_ckpt: Path | None = latest

    def checkpoint() -> Path | None:
        rngs = [capture_rng()]
        if fabric.world_size > 1:
            rngs = [None] * fabric.world_size
            torch.distributed.all_gather_object(rngs, capture_rng())
        path = None
        if fabric.is_global_zero:
            scaler = getattr(fabric.strategy.precision, "scaler", None)
            meta = {**extra, "data_position": pos, "train_config": asdict(cfg)}
            meta["world_size"] = fabric.world_size
            if scaler is not None:
                meta["grad_scaler"] = scaler.state_dict()
            path = save_checkpoint(
                ckpt_root, raw_model, optimizer, scheduler, step, meta, rng=rngs, keep=cfg.keep_checkpoints
            )
        fabric.barrier()
        return path or find_latest(ckpt_root)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (cfg.progress and fabric.is_global_zero))
    model.train()
    try:
        while step < cfg.max_steps:
            micro_losses, metric_sums = [], {}
            for k in range(cfg.grad_accum):
                ep, n, batch = next(stream)
                with fabric.no_backward_sync(model, enabled=k < cfg.grad_accum - 1):
                    loss, metrics = loss_fn(model, batch)
                    fabric.backward(loss / cfg.grad_accum)
                micro_losses.append(loss.detach().float())
                for key, v in metrics.items():
                    metric_sums[key] = metric_sums.get(key, 0.0) + _scalar(v) / cfg.grad_accum
                pos = {"epoch": ep, "batch": n + 1}
            if cfg.grad_clip:
                fabric.clip_gradients(model, fab_opt, max_norm=cfg.grad_clip)
            lr = scheduler.get_last_lr()[0]
            fab_opt.step()
            fab_opt.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            mean_loss = float(fabric.all_reduce(torch.stack(micro_losses).mean(), reduce_op="mean"))
            losses.append(mean_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}")
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                keys = sorted(metric_sums)
                if keys and fabric.world_size > 1:
                    vals = torch.tensor([metric_sums[k] for k in keys], device=fabric.device)
                    reduced = fabric.all_reduce(vals, reduce_op="mean").tolist()
                    metric_sums = dict(zip(keys, reduced, strict=True))
                if log is not None:
                    log.append({"step": step, "loss": mean_loss, "lr": lr, **metric_sums})
                if tb is not None:
                    for key, v in {"loss": mean_loss, "lr": lr, **metric_sums}.items():
                        tb.add_scalar(f"train/{key}", v, step)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                last_ckpt = checkpoint()
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    return {
        "step": step,
        "loss": losses[-1] if losses else None,
        "losses": losses,
        "resumed_from": resumed_from,
        "checkpoint": last_ckpt,
    }

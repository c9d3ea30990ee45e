"""Efficiency benchmarks behind ``hica bench``: an encoder's image throughput against its raw backbone, and
the wall time of a whole benchmark table (measurements: :mod:`hica.eval.efficiency`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hica.errors import HicaError


def bench_encoder(
    encoder: str = "default",
    encoder_args: dict[str, Any] | None = None,
    batch_size: int = 32,
    rounds: int = 7,
    device: str = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """Images/s of encoder ``encoder`` and of its ``.trunk`` forward (channels-last), measured in one run,
    with the machine and the peak resident memory."""
    import torch

    from hica.encoders import create_encoder
    from hica.environment import machine_info
    from hica.eval.efficiency import encoder_throughput, peak_rss_mb
    from hica.runtime import resolve_device, resolve_precision

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    enc = create_encoder(encoder, **(encoder_args or {})).to(dev).eval()
    trunk = getattr(enc, "trunk", None)
    if trunk is None:
        raise HicaError(f"encoder {encoder!r} exposes no .trunk to compare against")

    def forward(x: torch.Tensor) -> Any:
        return trunk.forward_features(x.contiguous(memory_format=torch.channels_last))

    size = getattr(enc, "image_size", 224)
    res = encoder_throughput(enc, forward, batch_size, rounds, dev, prec, size)
    res.update(encoder=encoder, machine=machine_info(dev, prec), peak_rss_mb=round(peak_rss_mb(), 1))
    return res


def bench_table(config: str | Path, out: str | Path, data_root: str | None = None) -> dict[str, Any]:
    """Wall time and peak memory of ``hica benchmark --config CONFIG``: cold cache into ``out``, then warm."""
    from hica.eval.efficiency import table_walltime

    extra = ["--data-root", data_root] if data_root else []
    return table_walltime(Path(config), Path(out), extra)

"""Device and numeric precision choices shared by encoding and training."""

from __future__ import annotations

import contextlib
import functools

import torch

from hica.errors import HicaError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HicaError(f"--device {device}: no CUDA GPU is visible; use --device cpu or auto")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise HicaError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


@functools.cache
def cpu_bf16_supported() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise HicaError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str):
    """Mixed-precision context for ``precision`` (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_images(
    encoder, images: torch.Tensor, device: torch.device, precision: str, batch_size: int = 64
) -> torch.Tensor:
    """(N, 3, H, W) preprocessed images → (N, D) L2-normalised global embeddings (float32, on ``device``)."""
    import torch.nn.functional as F

    out = []
    for i in range(0, len(images), batch_size):
        with autocast(device, precision):
            f = encoder.encode_image(images[i : i + batch_size].to(device)).global_
        out.append(F.normalize(f.float(), dim=-1))
    return torch.cat(out)

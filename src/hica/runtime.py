"""Device and numeric precision choices shared by encoding and training."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import torch

from hica.errors import HicaError

PRECISIONS = ("auto", "fp32", "bf16")
P = ParamSpec("P")
R = TypeVar("R")


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


FIT_THREADS_ENV = "HICA_FIT_THREADS"


def fit_threads() -> int:
    """Torch threads for fitting a model (``$HICA_FIT_THREADS``, default 1).

    A fixed count, independent of the machine's cores: CPU kernels reduce in a thread-count-dependent
    order, so the same seed gives bit-identical weights only at the same count.
    """
    raw = os.environ.get(FIT_THREADS_ENV, "1").strip()
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise HicaError(f"${FIT_THREADS_ENV}={raw!r}: expected a positive integer (torch threads for a run)")
    return n


@contextlib.contextmanager
def deterministic(threads: int | None = None) -> Iterator[int]:
    """Run the block reproducibly: ``threads`` torch intra-op and BLAS threads (default ``fit_threads()``),
    torch's deterministic algorithms, and no cuDNN autotuning; the caller's settings are restored after.

    With this, the same code, data, seed and thread count give bit-identical results on one CPU model.
    """
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    n = fit_threads() if threads is None else threads
    if n < 1:
        raise HicaError(f"threads must be ≥ 1, got {n}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at first use)
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_bench = torch.backends.cudnn.benchmark
    torch.set_num_threads(n)
    # warn_only: an op without a deterministic kernel (none on the CPU paths used here) warns, not fails.
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield n
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.backends.cudnn.benchmark = prev_bench


def reproducible(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run ``fn`` inside ``deterministic()`` (the fixed fitting thread count)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with deterministic():
            return fn(*args, **kwargs)

    return wrapper

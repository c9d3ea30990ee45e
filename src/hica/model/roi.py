"""Regions of interest on the token grid: from lesion masks, or proposed from token-text similarity.

Token weights are row-major over the encoder's ``grid`` (H, W) (``ImageFeatures.grid``), so they line up with
``ImageFeatures.local``. A mask must be in the geometry of the encoder input: apply the same resize / crop
as the image's preprocessing before pooling it, or the cells will not match the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hica.errors import HicaError

MaskLike = np.ndarray | torch.Tensor


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or min(grid) < 1:
        raise HicaError(f"grid must be (h, w) with h, w >= 1, got {grid!r}")
    return int(grid[0]), int(grid[1])


def mask_to_token_weights(mask: MaskLike, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each grid cell covered by a bool (H, W) ``mask``: (h·w,) float32, row-major.

    Adaptive average pooling of the mask to ``grid``: exact area fractions when H, W are multiples of h, w;
    otherwise PyTorch's adaptive bins overlap by up to one pixel (a close approximation)."""
    h, w = _check_grid(grid)
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    if m.ndim != 2:
        raise HicaError(f"mask must be a 2-D (H, W) array, got shape {tuple(m.shape)}")
    if m.shape[0] < h or m.shape[1] < w:
        raise HicaError(f"mask {tuple(m.shape)} is smaller than the token grid {(h, w)}")
    pooled = F.adaptive_avg_pool2d(m.to(torch.float32)[None, None], (h, w))
    return pooled.reshape(h * w)


def masks_to_token_weights(masks: Sequence[MaskLike] | torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Batched ``mask_to_token_weights``: (B, H, W) tensor / array or list of (H_i, W_i) masks → (B, h·w)."""
    if len(masks) == 0:
        h, w = _check_grid(grid)
        return torch.zeros(0, h * w)
    return torch.stack([mask_to_token_weights(m, grid) for m in masks])


def proposal_roi(
    local_tokens: torch.Tensor,
    query: torch.Tensor,
    grid: tuple[int, int],
    top_fraction: float = 0.2,
    smooth: int = 1,
) -> torch.Tensor:
    """A model-proposed soft ROI (B, N) for images without masks, from token-text similarity.

    ``query`` is a text embedding, (D,) shared by the batch (e.g. a class-agnostic "a lesion" prompt) or
    (B, D) per image (e.g. the mean attribute-phrase embedding of each image's predicted or labelled class).
    Per image: s_n = cos(z_n, q); optionally averaged over a ``smooth`` × ``smooth`` window on the grid (odd,
    1 = off) to suppress isolated tokens; min-max normalised to ŝ_n ∈ [0, 1]; the top
    k = max(1, ⌈top_fraction·N⌉) tokens keep ŝ_n, the rest get 0. Computed without gradient: the proposal is
    a target for the local loss, not something the loss may move to lower itself. A flat similarity map
    (max = min) gives an all-zero ROI, which ``LocalAlignmentLoss`` treats as empty.
    """
    h, w = _check_grid(grid)
    if local_tokens.ndim != 3 or local_tokens.shape[1] != h * w:
        raise HicaError(
            f"local_tokens must be (B, {h * w}, D) for grid {(h, w)}, got {tuple(local_tokens.shape)}"
        )
    if not (0 < top_fraction <= 1):
        raise HicaError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    if smooth < 1 or smooth % 2 == 0:
        raise HicaError(f"smooth must be an odd window size >= 1, got {smooth!r}")
    b, n, d = local_tokens.shape
    with torch.no_grad():
        q = query.to(local_tokens.dtype)
        if q.ndim == 1:
            q = q[None].expand(b, d)
        if q.shape != (b, d):
            raise HicaError(f"query must be ({d},) or ({b}, {d}), got {tuple(query.shape)}")
        s = torch.einsum("bnd,bd->bn", F.normalize(local_tokens, dim=-1), F.normalize(q, dim=-1))
        if smooth > 1:
            pad = smooth // 2
            s = F.avg_pool2d(
                s.reshape(b, 1, h, w), smooth, stride=1, padding=pad, count_include_pad=False
            ).reshape(b, n)
        lo = s.min(-1, keepdim=True).values
        hi = s.max(-1, keepdim=True).values
        s = (s - lo) / (hi - lo).clamp_min(1e-12)
        k = max(1, math.ceil(top_fraction * n))
        keep = torch.zeros_like(s, dtype=torch.bool).scatter_(1, s.topk(k, dim=-1).indices, True)
        return torch.where(keep, s, torch.zeros_like(s))


def pool_tokens(tokens: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of L2-normalised ``tokens`` (B, N, D) with ``weights`` (B, N), L2-normalised.

    Returns ``(pooled (B, D), mass (B,))``; rows with mass ≈ 0 are zeros."""
    z = F.normalize(tokens, dim=-1)
    mass = weights.sum(-1)
    pooled = (weights[..., None] * z).sum(1) / mass.clamp_min(1e-6)[:, None]
    return F.normalize(pooled, dim=-1), mass

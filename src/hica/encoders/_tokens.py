"""Local (patch / feature-map cell) tokens in the space of a model's pooled output.

Attention-pooling heads are applied token by token through their *value path* (value projection → output
projection, as if every query attended to that token alone), the MaskCLIP recipe for dense CLIP features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mha_value_path(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``out_proj(v_proj(x))`` of a ``nn.MultiheadAttention``: its output when attending to one token."""
    e = mha.embed_dim
    weight = mha.in_proj_weight[2 * e :] if mha._qkv_same_embed_dim else mha.v_proj_weight
    bias = mha.in_proj_bias[2 * e :] if mha.in_proj_bias is not None else None
    return mha.out_proj(F.linear(x, weight, bias))


def latent_pool_value_path(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-token value path of timm's ``AttentionPoolLatent`` ("map" pooling), MLP residual included."""
    if getattr(pool, "pos_embed", None) is not None and pool.pos_embed.shape[0] == x.shape[1]:
        x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
    c = pool.kv.out_features // 2
    bias = pool.kv.bias[c:] if pool.kv.bias is not None else None
    out = pool.proj(F.linear(x, pool.kv.weight[c:], bias))
    if getattr(pool, "mlp", None) is not None:
        out = out + pool.mlp(pool.norm(out))
    return out


def attention_pool2d_value_path(pool: nn.Module, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Per-cell value path of timm's ``AttentionPool2d`` / ``RotAttentionPool2d`` on (B, N, C) cells."""
    pos = getattr(pool, "pos_embed", None)
    if isinstance(pos, nn.Parameter):  # absolute position embedding with a leading class slot
        from timm.layers import resample_abs_pos_embed

        pos = resample_abs_pos_embed(pos.unsqueeze(0), grid, old_size=pool.feat_size, num_prefix_tokens=1)
        x = x + pos[:, 1:].to(x.dtype)
    if pool.qkv is not None:
        e = pool.qkv.out_features // 3
        bias = pool.qkv.bias[2 * e :] if pool.qkv.bias is not None else None
        v = F.linear(x, pool.qkv.weight[2 * e :], bias)
    else:
        v = pool.v(x)
    return pool.proj(v)


def token_grid(n: int, image_hw: tuple[int, int], patch_embed: nn.Module | None) -> tuple[int, int]:
    """The (H, W) grid of ``n`` patch tokens for an input of ``image_hw`` pixels."""
    if patch_embed is not None:
        if hasattr(patch_embed, "dynamic_feat_size"):
            grid = tuple(patch_embed.dynamic_feat_size(image_hw))
        else:
            grid = tuple(getattr(patch_embed, "grid_size", (0, 0)))
        if grid[0] * grid[1] == n:
            return int(grid[0]), int(grid[1])
    side = math.isqrt(n)
    if side * side == n:
        return side, side
    raise RuntimeError(f"cannot arrange {n} patch tokens on a grid for a {image_hw} input")


def timm_trunk_tokens(trunk: nn.Module, feats: torch.Tensor, image_hw: tuple[int, int]):
    """Local tokens of a timm model from its ``forward_features`` output, in the space of ``forward_head``.

    CNN feature maps (NCHW, or NHWC for e.g. Swin): every cell goes through ``forward_head`` as a 1×1 map, so
    the head's post-pooling layers (norm, pre-logits, classifier) apply per cell; with average pooling and a
    linear head the mean of the cells is exactly the pooled output. Token outputs (ViT-like): the prefix
    (class/register) tokens are dropped; the patch tokens go through the attention-pool value path ("map"
    pooling), ``fc_norm`` and the classifier. Returns ((B, N, D) tokens, (H, W) grid).
    """
    if feats.ndim == 4:
        nhwc = getattr(trunk, "output_fmt", "NCHW") == "NHWC"
        b, h, w = (feats.shape[0], *feats.shape[1:3]) if nhwc else (feats.shape[0], *feats.shape[2:4])
        cells = feats.reshape(b, h * w, -1) if nhwc else feats.flatten(2).transpose(1, 2)
        c = cells.shape[-1]
        as_maps = cells.reshape(b * h * w, 1, 1, c) if nhwc else cells.reshape(b * h * w, c, 1, 1)
        out = trunk.forward_head(as_maps)
        return out.reshape(b, h * w, -1), (h, w)
    if feats.ndim != 3:
        raise RuntimeError(f"unexpected forward_features output of shape {tuple(feats.shape)}")
    tokens = feats[:, getattr(trunk, "num_prefix_tokens", 0) :]
    grid = token_grid(tokens.shape[1], image_hw, getattr(trunk, "patch_embed", None))
    if getattr(trunk, "attn_pool", None) is not None:
        tokens = latent_pool_value_path(trunk.attn_pool, tokens)
    if getattr(trunk, "fc_norm", None) is not None:
        tokens = trunk.fc_norm(tokens)
    head = trunk.get_classifier() if hasattr(trunk, "get_classifier") else None
    if isinstance(head, nn.Module):
        tokens = head(tokens)
    return tokens, grid

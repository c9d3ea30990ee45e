"""Grad-CAM (Selvaraju et al. 2017), hand-written with a forward hook.

Channel weights are the spatial mean of the gradient of the class logit with respect to a convolutional
feature map; the map is the ReLU of the weighted channel sum, on that feature map's grid (callers upsample).
The ``grad-cam`` package would pull in OpenCV for the same dozen lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hica.errors import HicaError


def cam_layer(encoder: nn.Module) -> nn.Module:
    """The module whose output is the encoder's last convolutional feature map (B, C, h, w).

    For the default encoder that is the trunk's final BatchNorm+activation (``trunk.bn2``); its cells,
    linearly projected, are the encoder's ``local`` tokens and their mean the global feature."""
    trunk = getattr(encoder, "trunk", None)
    layer = getattr(trunk, "bn2", None)
    if not isinstance(layer, nn.Module) or not hasattr(trunk, "conv_head"):
        raise HicaError(
            f"Grad-CAM needs a CNN encoder with a timm EfficientNet-style trunk (like 'default'); encoder "
            f"{getattr(encoder, 'name', type(encoder).__name__)!r} has none (config key encoder.name)"
        )
    return layer


@contextlib.contextmanager
def _no_param_grad(module: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def grad_cam(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    layer: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    model: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM maps (B, h, w) on ``layer``'s output grid for class ``target`` (B,) of ``logits_fn(x)``.

    ``layer``'s output (B, C, h, w) is replaced by a detached leaf, so only the head behind it is
    differentiated; ``model``'s parameters are frozen meanwhile (no graph through the trunk). Images of a
    batch must not interact (BatchNorm in eval mode)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        leaf = out.detach().requires_grad_(True)
        store["a"] = leaf
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad(), _no_param_grad(model) if model is not None else contextlib.nullcontext():
            logits = logits_fn(x)
            score = logits.float().gather(1, target.view(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    a = store["a"].detach().float()
    if a.dim() != 4:
        raise ValueError(f"Grad-CAM layer output must be (B, C, h, w), got {tuple(a.shape)}")
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * a).sum(1))

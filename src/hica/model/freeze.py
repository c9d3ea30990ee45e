"""Freezing BatchNorm statistics while the rest of a model trains."""

from __future__ import annotations

from torch import nn


def freeze_bn(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode: running statistics stay fixed (a few images per
    batch cannot estimate them) while its affine weights may still train."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()

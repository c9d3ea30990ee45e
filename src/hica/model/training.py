"""Training helpers shared by stage-1 pretraining and HiCA's fit: Fabric precision, early-stage freezing,
the input-size check."""

from __future__ import annotations

import torch
from torch import nn


def fabric_precision(precision: str, device: torch.device) -> str:
    """hica precision (fp32 / bf16) → Lightning Fabric precision string."""
    return "bf16-mixed" if precision == "bf16" else "32-true"


def freeze_early(encoder: nn.Module, stages: int) -> list[str]:
    """Freeze the stem and the first ``stages`` blocks of a timm trunk (``encoder.trunk``); returns names of
    the frozen parameter groups. BatchNorm statistics keep updating in train mode (domain adaptation)."""
    trunk = getattr(encoder, "trunk", None)
    if trunk is None or stages <= 0:
        return []
    frozen = []
    for name in ("conv_stem", "bn1"):
        if hasattr(trunk, name):
            for p in getattr(trunk, name).parameters():
                p.requires_grad_(False)
            frozen.append(f"trunk.{name}")
    blocks = getattr(trunk, "blocks", [])
    for i in range(min(stages, len(blocks))):
        for p in blocks[i].parameters():
            p.requires_grad_(False)
        frozen.append(f"trunk.blocks.{i}")
    return frozen


def check_input_size(encoder: nn.Module, size: int, device: torch.device, what: str) -> None:
    """Raise a HicaError naming ``what`` unless ``encoder`` encodes a (1, 3, size, size) image (a ViT with
    fixed position embeddings cannot take another side). Eval mode, no gradient: no state changes."""
    from hica.errors import HicaError

    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            encoder.encode_image(torch.zeros(1, 3, size, size, device=device))
    except Exception as e:
        raise HicaError(f"{what} {size} does not fit this encoder ({type(e).__name__}: {e})") from e
    finally:
        encoder.train(was_training)

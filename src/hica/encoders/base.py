"""The dual-encoder interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class ImageFeatures:
    """What ``encode_image`` returns.

    ``global_``: (B, D) image embeddings in the shared image-text space (not normalised).
    ``local``: (B, N, D) local tokens in the same space: ViT patch tokens or the cells of the last
    CNN feature map, row-major over a ``grid`` of (H, W) cells (N = H*W), so masks can be pooled onto them.
    """

    global_: torch.Tensor
    local: torch.Tensor
    grid: tuple[int, int]


class DualEncoder(nn.Module, ABC):
    """An image encoder and a text encoder that map into one embedding space.

    Backends set ``name`` (registry name), ``embed_dim`` and ``config`` (a JSON-able dict that
    identifies the weights, used as part of the feature-cache key).
    """

    name: str = "base"
    embed_dim: int
    config: dict[str, Any]

    @abstractmethod
    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """Encode a preprocessed image batch (B, 3, H, W)."""

    @abstractmethod
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode a list of strings to (T, D) embeddings (not normalised)."""

    _preprocess: Callable[[Any], torch.Tensor]  # set by each backend's __init__

    @property
    def preprocess(self) -> Callable[[Any], torch.Tensor]:
        """PIL image -> (3, H, W) float tensor, the transform this encoder was trained with."""
        return self._preprocess

    @property
    def preprocess_config(self) -> dict[str, Any]:
        """JSON-able description of ``preprocess`` (part of the cache key)."""
        return {"repr": repr(self.preprocess)}

    def image_parameters(self) -> list[nn.Parameter]:
        """Parameters of the image tower (what full fine-tuning trains)."""
        return list(self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the features: backend, weights, preprocessing."""
        return {"encoder": self.name, "config": self.config, "preprocess": self.preprocess_config}

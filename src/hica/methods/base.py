"""The method interface: ``fit`` on a few-shot episode's features, ``predict_proba`` on new features.

Methods never see datasets or encoders: the protocol hands them cached, L2-normalised features and the
class text embeddings. Methods that train the image encoder (``ImageMethod``) get the encoder and images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class ClassText:
    """Text side of an episode, embedded by the episode's encoder and L2-normalised.

    ``class_emb``: (C, D) one embedding per class (normalised mean over its prompts).
    ``prompt_emb``: per class, (P_c, D) the individual prompt / descriptor embeddings.
    ``logit_scale``: the encoder's learned temperature (CLIP: 100); 1/τ for zero-shot logits.
    """

    class_emb: torch.Tensor
    prompt_emb: list[torch.Tensor]
    logit_scale: float = 100.0


@dataclass
class FewShotData:
    """One episode's features. All feature tensors are float32, L2-normalised, on CPU."""

    support: torch.Tensor  # (N, D)
    support_labels: torch.Tensor  # (N,) int64
    val: torch.Tensor  # (M, D) validation shots: hyperparameters are chosen on these only
    val_labels: torch.Tensor  # (M,)
    num_classes: int
    text: ClassText | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """A few-shot / zero-shot classifier on frozen features."""

    name: ClassVar[str] = "method"
    uses_text: ClassVar[bool] = False  # needs ``FewShotData.text``
    zero_shot: ClassVar[bool] = False  # uses no labelled image

    def __init__(self, **hparams: Any) -> None:
        self.hparams = hparams
        self.selected: dict[str, Any] = {}  # hyperparameters chosen on validation, reported per run

    @abstractmethod
    def fit(self, data: FewShotData) -> Method:
        """Fit on the support set; choose hyperparameters on ``data.val`` only."""

    @abstractmethod
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) normalised features -> (N, C) class probabilities."""


_METHODS: dict[str, Callable[..., Method]] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator registering a method under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def method_registry() -> dict[str, Callable[..., Any]]:
    """All registered methods (imports the method modules)."""
    import hica.methods  # noqa: F401  (registers)

    return dict(_METHODS)


@dataclass
class ImageFewShotData:
    """One episode as preprocessed image tensors, for methods that train the image encoder."""

    support: torch.Tensor  # (N, 3, H, W)
    support_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    seed: int = 0
    # For methods that align text and regions (``uses_text`` / ``uses_masks``):
    classes: list[str] | None = None
    descriptors: Any = None  # hica.data.descriptors.Descriptors
    support_masks: torch.Tensor | None = None  # (N, H, W) bool, the support images' lesion masks
    support_has_mask: torch.Tensor | None = None  # (N,) bool: the sample had mask files (maybe empty)


class ImageMethod(ABC):
    """A method that fine-tunes (a copy of) the encoder's image tower on the support images."""

    name: ClassVar[str] = "image_method"
    uses_text: ClassVar[bool] = False
    uses_masks: ClassVar[bool] = False
    zero_shot: ClassVar[bool] = False
    image_level: ClassVar[bool] = True

    def __init__(self, **hparams: Any) -> None:
        self.hparams = hparams
        self.selected: dict[str, Any] = {}

    @abstractmethod
    def fit(self, encoder: Any, data: ImageFewShotData, device: torch.device, precision: str) -> ImageMethod:
        """Train on ``data.support``; select on ``data.val`` only. Must not modify ``encoder``."""

    @abstractmethod
    def predict_proba(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, C) probabilities."""

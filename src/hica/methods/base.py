"""The method interface: ``fit`` on a few-shot episode's features, ``predict_proba`` on new features.

Methods never see datasets or encoders: the protocol hands them cached, L2-normalised features and the
class text embeddings. Methods that train the image encoder (``ImageMethod``) get the encoder and images.
Each method declares its settings as a typed ``Settings`` model (``hica.methods.settings``); the
constructor validates its keyword arguments against it, so ``hparams`` only ever holds checked values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hica.errors import HicaError
from hica.methods.settings import MethodSettings, check_settings
from hica.model.class_text import ClassText  # re-exported: the text side of ``FewShotData``


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
    # (N, V, D): V augmented views of each support image, in the order of ``support``; None unless the
    # method asked for views (``Method.views_needed``)
    support_views: torch.Tensor | None = None


class Configurable:
    """Typed settings for a method class: ``Settings`` (fields = settings, field defaults = ``defaults``)."""

    name: ClassVar[str] = "method"
    Settings: ClassVar[type[MethodSettings]] = MethodSettings
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = cls.Settings().model_dump()

    @classmethod
    def check_settings(cls, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """``hparams`` validated and completed with the defaults; a HicaError naming the method if bad."""
        return check_settings(f"method {cls.name}", cls.Settings, hparams).model_dump()

    def __init__(self, **hparams: Any) -> None:
        self.hparams = self.check_settings(hparams)
        self.selected: dict[str, Any] = {}  # hyperparameters chosen on validation, reported per run

    def fixed_value(self, n_val: int, setting: str, what: str) -> Any:
        """None when there are validation shots (``n_val`` > 0) to choose ``what`` on; without any (the
        realistic protocol) the declared value of the ``fixed_*`` ``setting``, or a HicaError naming the
        setting when it is null: nothing is ever chosen on other data in its place."""
        if n_val > 0:
            return None
        if self.hparams[setting] is None:
            raise HicaError(
                f"method {self.name}: the episode has no validation shots to choose {what} on (realistic "
                f"protocol) and no fixed value is declared; set {setting} in its method_args"
            )
        return self.hparams[setting]


class Method(Configurable, ABC):
    """A few-shot / zero-shot classifier on frozen features."""

    name: ClassVar[str] = "method"
    uses_text: ClassVar[bool] = False  # needs ``FewShotData.text``
    zero_shot: ClassVar[bool] = False  # uses no labelled image

    @classmethod
    def views_needed(cls, hparams: Mapping[str, Any]) -> int:
        """How many augmented views per support image ``fit`` wants in ``FewShotData.support_views`` for the
        validated settings ``hparams`` (``cls.check_settings(args)``); 0 (the default): none."""
        return 0

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


def check_method_args(method: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Validate one method's settings by registry name (what a config's ``method_args`` hold)."""
    registry = method_registry()
    if method not in registry:
        raise HicaError(f"unknown method {method!r}; available: {sorted(registry)}")
    return registry[method].check_settings(args)


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
    #: Per support image, attribute group -> value measured from its mask and pixels
    #: (``hica.data.attributes.image_values``; ``unknown`` where not measurable); None without masks.
    support_attributes: list[dict[str, str]] | None = None


class ImageMethod(Configurable, ABC):
    """A method that fine-tunes (a copy of) the encoder's image tower on the support images."""

    name: ClassVar[str] = "image_method"
    uses_text: ClassVar[bool] = False
    uses_masks: ClassVar[bool] = False
    zero_shot: ClassVar[bool] = False
    image_level: ClassVar[bool] = True

    @abstractmethod
    def fit(self, encoder: Any, data: ImageFewShotData, device: torch.device, precision: str) -> ImageMethod:
        """Train on ``data.support``; select on ``data.val`` only. Must not modify ``encoder``."""

    @abstractmethod
    def predict_proba(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, C) probabilities."""

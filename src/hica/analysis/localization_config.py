"""The settings of ``hica analyze localization`` (:class:`LocalizationConfig`) and what a seed depends on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from hica.config import EncoderConfig, StrictConfig, distinct_seeds
from hica.data.catalog import split_version
from hica.errors import HicaError

# Settings a seed's part does not depend on: they choose where data is read, which seeds run, the gallery
# and the batching (left out of the parts' config hash, so changing them reuses finished seeds).
NOT_IN_SCOPE = frozenset({"name", "data_root", "seeds", "gallery", "gallery_seed", "batch_size"})


class LocalizationConfig(StrictConfig):
    """``hica analyze localization``: HiCA maps vs Grad-CAM against lesion masks, K-shot, over seeds."""

    name: str = "localization"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any] = "busi"
    split: str = "test"
    k: int = Field(16, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    hica_args: dict[str, Any] = Field(default_factory=dict)
    finetune_args: dict[str, Any] = Field(default_factory=dict)
    # Also fit the global-only ablation (method hica_global_only, same hica_args) and map it: is a pointing-
    # game gain the local level's? In the config hash: parts made without its maps are never reused.
    compare_global_only: bool = True
    tolerance_px: float = Field(15.0, ge=0)  # pointing-game tolerance, pixels of the encoder input
    top_fractions: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2])
    center_sigma: float = Field(0.25, gt=0)  # center prior σ as a fraction of the image side
    gallery: int = Field(8, ge=0)  # images in gallery.png, half per lesion class
    gallery_seed: int = Field(0, ge=0)  # which images the gallery shows (fixed, not looked at)
    max_images: int | None = Field(None, ge=1)  # first N lesion images, classes alternating; None = all
    batch_size: int = Field(32, ge=1)
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None

    _seeds = field_validator("seeds")(distinct_seeds)

    @field_validator("top_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < f <= 1 for f in v):
            raise ValueError(f"top_fractions must lie in (0, 1] (at least one), got {v}")
        return sorted(set(v))

    @field_validator("hica_args")
    @classmethod
    def _hica_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        from hica.methods.hica import HiCA

        try:
            HiCA(**v)
        except HicaError as e:
            raise ValueError(str(e)) from e
        return v

    @field_validator("finetune_args")
    @classmethod
    def _finetune_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        from hica.methods.finetune import FineTune

        try:
            FineTune(**v)  # the method's own settings check (hica.methods.settings)
        except HicaError as e:
            raise ValueError(str(e)) from e
        return v


def load_localization_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LocalizationConfig:
    """Read a localization YAML; errors name the file and the key."""
    from hica.config import load_model_config

    return load_model_config(LocalizationConfig, path, overrides)


def config_scope(cfg: LocalizationConfig) -> dict[str, Any]:
    """What changes a seed's results (JSON): every setting but the name, data root, seed list, gallery and
    batch size, plus the dataset's carved-split version where it has one (``data.catalog.split_version``).
    The grid runner hashes it together with the encoder's fingerprint."""
    scope = cfg.model_dump(mode="json", exclude=set(NOT_IN_SCOPE))
    version = split_version(cfg.dataset)
    if version is not None:  # a carved split that changed: parts of the old one are not reused
        scope["split_version"] = version
    return scope

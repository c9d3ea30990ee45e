"""``hica analyze unseen``'s configuration: which classes to hold out, K, seeds, HiCA's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from hica.config import EncoderConfig, StrictConfig, distinct_seeds, load_model_config
from hica.errors import HicaError
from hica.report.unseen import group_key


class UnseenConfig(StrictConfig):
    """``hica analyze unseen``: leave-class-out HiCA alignment, then zero-shot over all classes."""

    name: str = "unseen"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any] = "busi"
    # Each entry is held out in its own runs: a class name, or a list of classes held out together.
    # None: every class in turn.
    holdout: list[list[str]] | None = None
    k: int = Field(16, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    hica_args: dict[str, Any] = Field(default_factory=dict)
    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(1000, ge=100)
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None
    max_images: int | None = Field(None, ge=1)  # None: the whole split (a subset is for tests)
    # How a class is recognised zero-shot: "prototype" (cosine to the aligned text tower's class prompts) or
    # "attributes" (composed from the attribute posteriors by each class's descriptor profile,
    # hica.model.attributes; needs attribute_values and profiles in the descriptor file).
    zero_shot: Literal["prototype", "attributes"] = "prototype"

    @field_validator("holdout", mode="before")
    @classmethod
    def _groups(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, str):
            v = [v]
        return [[x] if isinstance(x, str) else x for x in v]

    @field_validator("holdout")
    @classmethod
    def _nonempty(cls, v: list[list[str]] | None) -> list[list[str]] | None:
        if v is not None:
            if not v or any(not g for g in v):
                raise ValueError("holdout must list classes (omit it to hold out every class in turn)")
            keys = [group_key(g) for g in v]
            dup = sorted({k for k in keys if keys.count(k) > 1})
            if dup:
                raise ValueError(f"holdout lists {dup} more than once")
        return v

    _seeds = field_validator("seeds")(distinct_seeds)


def load_unseen_config(path: str | Path, overrides: dict[str, Any] | None = None) -> UnseenConfig:
    """Read ``path`` into an ``UnseenConfig``; errors name the file and the key."""
    return load_model_config(UnseenConfig, path, overrides)


def holdout_groups(cfg: UnseenConfig, classes: list[str], name: str) -> list[list[int]]:
    """The held-out groups as sorted class indices of dataset ``name``; HicaError for an unknown class or a
    group that leaves fewer than 2 seen classes."""
    groups = cfg.holdout if cfg.holdout is not None else [[c] for c in classes]
    out = []
    for g in groups:
        unknown = [c for c in g if c not in classes]
        if unknown:
            raise HicaError(
                f"holdout: class(es) {unknown} not in dataset {name}; available classes: {classes}"
            )
        idx = sorted({classes.index(c) for c in g})
        seen = [c for i, c in enumerate(classes) if i not in idx]
        if len(seen) < 2:
            raise HicaError(
                f"holdout {g}: leaves {len(seen)} seen class(es) {seen} of {name}; HiCA's contrastive "
                "alignment needs at least 2 seen classes, so hold out fewer classes"
            )
        out.append(idx)
    return out

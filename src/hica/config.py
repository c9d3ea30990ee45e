"""Typed configs: YAML in, validated (unknown keys and impossible values are errors), resolved YAML out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hica.errors import HicaError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncoderConfig(_Strict):
    """Which encoder to build: a registry name and its keyword arguments."""

    name: str = "default"
    args: dict[str, Any] = Field(default_factory=dict)


class BenchmarkConfig(_Strict):
    """A benchmark grid: datasets × K × seeds × methods on one encoder."""

    name: str = "benchmark"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    datasets: list[str | dict[str, Any]]
    shots: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    methods: list[str]
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    text_mode: str = "ensemble"
    bootstrap: int = 1000
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    skip_bad: bool = False
    batch_size: int = 64

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError(f"K (shots) must be >= 1, got {bad}; zero-shot methods run without K")
        return sorted(set(v))

    @field_validator("text_mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in ("names", "descriptions", "ensemble"):
            raise ValueError("text_mode must be names, descriptions or ensemble")
        return v

    @field_validator("bootstrap", "batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @model_validator(mode="after")
    def _methods(self) -> BenchmarkConfig:
        from hica.methods.base import method_registry

        known = method_registry()
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; available: {sorted(known)}")
        extra = [m for m in self.method_args if m not in self.methods]
        if extra:
            raise ValueError(f"method_args given for method(s) not in methods: {extra}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")
        return self


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BenchmarkConfig:
    """Read and validate a benchmark YAML; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise HicaError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HicaError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise HicaError(f"{path}: expected a mapping at the top level")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_config(raw, str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> BenchmarkConfig:
    """Validate a config dict; a pydantic error becomes a HicaError naming ``source`` and the key."""
    try:
        return BenchmarkConfig.model_validate(raw)
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors()
        )
        raise HicaError(f"{source}: invalid config: {msgs}") from e


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

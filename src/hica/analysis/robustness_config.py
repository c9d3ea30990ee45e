"""The settings of ``hica analyze robustness`` (:mod:`hica.analysis.robustness`): the methods refitted under
descriptor noise and at which fractions p; those scored on which image corruptions and severities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from hica.config import BenchmarkConfig, EncoderConfig, StrictConfig, distinct_seeds, load_model_config
from hica.errors import HicaError

DEFAULT_P = [0.0, 0.25, 0.5, 0.75]


class DescriptorNoise(StrictConfig):
    """Which methods are refitted under descriptor noise, at which fractions ``p``, with which kinds."""

    methods: list[str]
    p: list[float] = Field(default_factory=lambda: list(DEFAULT_P))
    kinds: list[str] = Field(default_factory=lambda: ["swap", "random_words", "typos", "truncate"])

    @field_validator("p")
    @classmethod
    def _p(cls, v: list[float]) -> list[float]:
        bad = [p for p in v if not 0 <= p <= 1]
        if bad or not v:
            raise ValueError(f"every p must lie in [0, 1] (and at least one given), got {v}")
        return sorted(set(v))

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        from hica.data.descriptors.noise import KINDS

        bad = [k for k in v if k not in KINDS]
        if bad or not v:
            raise ValueError(f"unknown noise kind(s) {bad}; available: {list(KINDS)}")
        return v


class ImageCorruptions(StrictConfig):
    """Which methods are scored on corrupted test images, with which corruptions and severities."""

    methods: list[str]
    names: list[str] | None = None  # None: every corruption in hica.eval.corruptions
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    max_images: int | None = Field(None, ge=2)  # a fixed class-stratified subset of the test split

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        from hica.eval.corruptions import corruption_names

        if v is not None:
            bad = [n for n in v if n not in corruption_names()]
            if bad or not v:
                raise ValueError(f"unknown corruption(s) {bad}; available: {corruption_names()}")
        return v

    @field_validator("severities")
    @classmethod
    def _sev(cls, v: list[int]) -> list[int]:
        if not v or any(s not in (1, 2, 3, 4, 5) for s in v):
            raise ValueError(f"severities must be integers from 1 to 5, got {v}")
        return sorted(set(v))


class RobustnessConfig(StrictConfig):
    """``hica analyze robustness``: one dataset, one K, several seeds."""

    name: str = "robustness"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any]
    k: int = Field(16, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3])
    _seeds = field_validator("seeds")(distinct_seeds)
    method_args: dict[str, dict[str, Any]] = Field(default_factory=dict)
    text_mode: str = "ensemble"
    descriptor_noise: DescriptorNoise | None = None
    corruptions: ImageCorruptions | None = None
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _check(self) -> RobustnessConfig:
        from hica.methods.base import method_registry

        if self.descriptor_noise is None and self.corruptions is None:
            raise ValueError("give descriptor_noise, corruptions or both")
        reg = method_registry()
        for part, spec in (("descriptor_noise", self.descriptor_noise), ("corruptions", self.corruptions)):
            if spec is None:
                continue
            unknown = [m for m in spec.methods if m not in reg]
            if unknown or not spec.methods:
                raise ValueError(f"{part}.methods: unknown method(s) {unknown}; available: {sorted(reg)}")
        if self.descriptor_noise is not None:
            textless = [m for m in self.descriptor_noise.methods if not reg[m].uses_text]
            if textless:
                raise ValueError(
                    f"descriptor_noise.methods {textless} do not use text, so descriptor noise cannot change "
                    "them; list only text-using methods there"
                )
        extra = [m for m in self.method_args if m not in self.methods]
        if extra:
            raise ValueError(f"method_args given for method(s) not in any part: {extra}")
        from hica.methods.base import check_method_args

        for method, args in self.method_args.items():  # each method's settings, checked before any work
            try:
                check_method_args(method, args)
            except HicaError as e:
                raise ValueError(str(e)) from e
        return self

    @property
    def methods(self) -> list[str]:
        out: list[str] = []
        for spec in (self.descriptor_noise, self.corruptions):
            for m in spec.methods if spec else []:
                if m not in out:
                    out.append(m)
        return out

    def benchmark_config(self) -> BenchmarkConfig:
        """The equivalent one-K benchmark grid (fitting goes through the benchmark's code)."""
        return BenchmarkConfig(
            name=self.name,
            encoder=self.encoder,
            datasets=[self.dataset],
            shots=[self.k],
            seeds=self.seeds,
            methods=self.methods,
            method_args=self.method_args,
            text_mode=self.text_mode,
            device=self.device,
            precision=self.precision,
            data_root=self.data_root,
            cache_dir=self.cache_dir,
            batch_size=self.batch_size,
        )


def load_robustness_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RobustnessConfig:
    """Read a robustness YAML; errors name the file and the key."""
    return load_model_config(RobustnessConfig, path, overrides)

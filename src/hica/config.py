"""Typed configs: YAML in, validated (unknown keys and impossible values are errors), resolved YAML out."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hica.errors import HicaError


class StrictConfig(BaseModel):
    """A config model whose unknown keys are errors (the base of every YAML config)."""

    model_config = ConfigDict(extra="forbid")


def distinct_seeds(v: list[int]) -> list[int]:
    """A reusable validator: seeds are distinct integers >= 0, at least one."""
    if not v or any(s < 0 for s in v) or len(set(v)) != len(v):
        raise ValueError(f"seeds must be distinct integers >= 0 (at least one), got {v}")
    return v


class EncoderConfig(StrictConfig):
    """Which encoder to build: a registry name and its keyword arguments."""

    name: str = "default"
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _args(self) -> EncoderConfig:
        """The backend exists and takes these arguments (types, names); kept as given (same config hash)."""
        from hica.encoders.registry import check_encoder_args

        check_encoder_args(self.name, self.args)
        return self


class TextHeadConfig(StrictConfig):
    """Which text head the text-using feature methods score with (``hica.methods.text_head``).

    ``encoder``: the encoder's own (the default encoder's is untrained). ``support``: a copy trained on each
    episode's support features as HiCA's head phase trains its own (L_global; ``steps``, ``lr`` and
    ``temperature`` default to HiCA's ``head_steps``, ``head_lr`` and ``temperature``)."""

    source: Literal["encoder", "support"] = "encoder"
    steps: int = Field(100, ge=1)
    lr: float = Field(1e-2, gt=0)
    temperature: float = Field(0.07, gt=0)


class BenchmarkConfig(StrictConfig):
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
    # "val" scores the validation split instead of test (minus each episode's validation shots): for
    # choosing hyperparameters without touching test. Reported results use "test".
    eval_split: Literal["test", "val"] = "test"
    # Seeds the augmented views of support images that methods ask for (``Method.views_needed``); part of
    # the views cache's key and, when a method uses views, of the config hash.
    view_seed: int = Field(0, ge=0)
    # "standard": K shots per class and min(K, 4) validation shots per class; "realistic" (arXiv 2506.17500):
    # K × classes support images drawn to the train split's class prior (>= 1 per class) and no validation
    # set: every method runs on its declared fixed settings (docs/baselines.md, "The realistic protocol").
    # Part of the config hash and of each episode when realistic.
    protocol: Literal["standard", "realistic"] = "standard"
    # The text head of the text-using feature methods; part of the config hash unless it is the encoder's.
    text_head: TextHeadConfig = Field(default_factory=TextHeadConfig)

    @field_validator("shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        bad = [k for k in v if k < 1]
        if bad:
            raise ValueError(f"K (shots) must be >= 1, got {bad}; zero-shot methods run without K")
        return sorted(set(v))

    @field_validator("method_args")
    @classmethod
    def _method_args(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each known method's settings are valid (kept as given, so the config hash does not change)."""
        from hica.methods.base import check_method_args, method_registry

        known = method_registry()
        problems = []
        for method, args in v.items():
            if method in known:  # unknown names are reported by ``_methods``
                try:
                    check_method_args(method, args)
                except HicaError as e:
                    problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))
        return v

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
        if self.protocol == "realistic":
            self._check_realistic(known)
        zero = [m for m in self.methods if getattr(known[m], "zero_shot", False)]
        if self.text_head.source == "support" and zero:
            raise ValueError(
                f"text_head source 'support' trains the text head on each episode's support set, but "
                f"{zero} read no labelled image (zero-shot); drop them from methods or use text_head source "
                "'encoder'"
            )
        return self

    def _check_realistic(self, known: dict[str, Any]) -> None:
        """The realistic protocol has no validation set: scoring it is refused, and so is a method whose fixed
        settings for episodes without validation shots (``methods.settings.fixed_settings``) are null."""
        from hica.methods.settings import fixed_settings

        if self.eval_split == "val":
            raise ValueError("protocol realistic has no validation set: eval_split must be test")
        for m in self.methods:
            hp = known[m].check_settings(self.method_args.get(m, {}))
            null = [k for k in fixed_settings(known[m].Settings) if hp[k] is None]
            if null:
                raise ValueError(
                    f"protocol realistic has no validation shots: method {m} needs a fixed value for "
                    f"{', '.join(null)} (null given); declare it in method_args"
                )


class Stage1Image(StrictConfig):
    """Stage-1 image adaptation (DeepCluster-v2 on unlabeled images)."""

    enabled: bool = True
    resolution: int = Field(160, ge=32, le=1024)
    epochs: int = Field(6, ge=1)
    clusters: int = Field(32, ge=2)
    pca_dim: int = Field(64, ge=2)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    temperature: float = Field(0.1, gt=0)
    min_scale: float = Field(0.5, gt=0, le=1)
    freeze_stages: int = Field(3, ge=0)
    bn_recalibration_images: int = Field(1024, ge=0)


class Stage1Text(StrictConfig):
    """Stage-1 text adaptation (SimCSE + descriptor hierarchy on a domain corpus)."""

    enabled: bool = True
    descriptors: list[str] | None = None  # None: every bundled descriptor file
    corpus_files: list[str] = Field(default_factory=list)  # extra one-sentence-per-line files
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(3e-4, gt=0)
    temperature: float = Field(0.05, gt=0)
    train_layers: int = Field(2, ge=1)


class Stage1Config(StrictConfig):
    """``hica pretrain``: domain-specific pretraining of the encoder on one dataset's unlabeled images."""

    name: str = "stage1"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any]
    splits: list[str] = Field(default_factory=lambda: ["train"])
    modality: Literal["xray", "ultrasound", "generic"] = "generic"
    max_images: int | None = Field(None, ge=1)
    image: Stage1Image = Field(default_factory=Stage1Image)
    text: Stage1Text = Field(default_factory=Stage1Text)
    seed: int = Field(0, ge=0)
    # Torch threads while training (None: $HICA_FIT_THREADS, default 1). The weights are bit-identical for
    # the same value on one CPU model; the committed stage-1 configs declare the 2 they were run with.
    threads: int | None = Field(None, ge=1)
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None
    skip_bad: bool = False

    @field_validator("splits")
    @classmethod
    def _no_test(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("splits must name at least one split of unlabeled images")
        if "test" in v:
            raise ValueError("stage 1 must not see the test split; use train (and val)")
        return v


class Stage2Config(StrictConfig):
    """``hica finetune``: HiCA stage 2 on one K-shot episode of a dataset (the benchmark runs many)."""

    name: str = "stage2"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    dataset: str | dict[str, Any]
    k: int = Field(16, ge=1)
    seed: int = Field(1, ge=0)
    method: str = "hica"
    method_args: dict[str, Any] = Field(default_factory=dict)
    evaluate_test: bool = True
    device: str = "auto"
    precision: str = "auto"
    data_root: str | None = None
    skip_bad: bool = False

    @field_validator("method")
    @classmethod
    def _hica(cls, v: str) -> str:
        if not v.startswith("hica"):
            raise ValueError(f"method must be hica or one of its presets (hica_*), got {v!r}")
        return v

    @field_validator("method_args")
    @classmethod
    def _method_args(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The method's settings are valid (kept as given)."""
        from hica.methods.base import check_method_args, method_registry

        method = info.data.get("method")
        if method in method_registry():  # an unknown hica_* name is reported when the run starts
            check_method_args(method, v)
        return v


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HicaError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise HicaError(f"{path}: not valid YAML: {e}") from e
    if raw is None:
        raise HicaError(f"{path}: the config file is empty; see configs/ for examples")
    if not isinstance(raw, dict):
        raise HicaError(f"{path}: expected a mapping at the top level")
    return raw


def load_model_config(model: type[BaseModel], path: str | Path, overrides: dict[str, Any] | None = None):
    """Read a YAML into ``model`` (e.g. ``Stage1Config``); errors name the file and the key."""
    raw = _read_yaml(path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise HicaError(f"{path}: invalid config: {_format(e)}") from e


def _format(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        # A validator's own sentence (it names the method / encoder / key) without pydantic's "Value error, ".
        ctx = err.get("ctx") or {}
        msg = str(ctx["error"]) if err["type"] == "value_error" and "error" in ctx else err["msg"]
        parts.append(f"{loc or '(top)'}: {msg}")
    return "; ".join(parts)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> BenchmarkConfig:
    """Read and validate a benchmark YAML; errors name the file and the key."""
    raw = _read_yaml(path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_config(raw, str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> BenchmarkConfig:
    """Validate a config dict; a pydantic error becomes a HicaError naming ``source`` and the key."""
    try:
        return BenchmarkConfig.model_validate(raw)
    except ValidationError as e:
        raise HicaError(f"{source}: invalid config: {_format(e)}") from e


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

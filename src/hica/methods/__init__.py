"""Few-shot and zero-shot methods; importing this package registers them all."""

from hica.methods import (  # noqa: F401  (registration)
    clap,
    finetune,
    hica,
    hica_presets,
    linear_probe,
    lp_plus_plus,
    prototype,
    tip_adapter,
    zeroshot,
)
from hica.methods.base import (
    ClassText,
    FewShotData,
    ImageFewShotData,
    ImageMethod,
    Method,
    method_registry,
    register_method,
)

__all__ = [
    "ClassText",
    "FewShotData",
    "ImageFewShotData",
    "ImageMethod",
    "Method",
    "method_registry",
    "register_method",
]

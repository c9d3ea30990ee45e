"""HiCA's registered presets: the method itself, its ablations and its fast setting, each a registry name
whose only change is the defaults of :class:`hica.methods.hica.HiCASettings`."""

from __future__ import annotations

from typing import Any

from hica.methods.base import register_method
from hica.methods.hica import HiCA, HiCASettings
from hica.methods.settings import with_defaults

#: HiCA, its ablations and its fast setting: preset name (the registry name) → the defaults it changes.
PRESETS: dict[str, dict[str, Any]] = {
    "hica": {},
    "hica_fast": {"train_size": 160, "steps": 15},  # issue 13 §5, chosen on validation (results/tuning)
    "hica_global_only": {"use_local": False, "use_cross": False},  # L_global only
    "hica_no_local": {"use_local": False},  # without L_local
    "hica_no_cross": {"use_cross": False},  # without L_cross
    "hica_class_attributes": {"attributes": "class"},  # L_local on class-level phrases (the first round's)
}


def preset_method(name: str) -> type[HiCA]:
    """The method class of preset ``name``: ``HiCA`` itself, or a subclass whose only change is the preset's
    defaults (same settings, types and ranges; what ``method_registry()[name]`` returns)."""
    overrides = PRESETS[name]
    if not overrides:
        return HiCA

    class Preset(HiCA):
        Settings = with_defaults(HiCASettings, f"{name}_settings", **overrides)

    Preset.__name__ = Preset.__qualname__ = name
    Preset.__doc__ = f"HiCA preset {name!r}: {', '.join(f'{k}={v}' for k, v in overrides.items())}."
    return Preset


for _name in PRESETS:
    register_method(_name)(preset_method(_name))

"""Encoder registry: ``@register("name")`` on a factory, ``create_encoder(name, **kw)`` to build one."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from hica.encoders.base import DualEncoder
from hica.errors import HicaError

_REGISTRY: dict[str, Callable[..., DualEncoder]] = {}
_DOCS: dict[str, str] = {}

# Backends live in one module each; importing a module registers it.
_BACKEND_MODULES = ("default", "open_clip", "hf", "timm_hf", "checkpoint")


def register(name: str) -> Callable[[Callable[..., DualEncoder]], Callable[..., DualEncoder]]:
    """Decorator that registers an encoder factory under ``name``."""

    def deco(fn: Callable[..., DualEncoder]) -> Callable[..., DualEncoder]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"encoder {name!r} registered twice")
        _REGISTRY[name] = fn
        _DOCS[name] = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return fn

    return deco


def _load_backends() -> None:
    for mod in _BACKEND_MODULES:
        try:
            importlib.import_module(f"hica.encoders.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"hica.encoders.{mod}":
                raise


def list_encoders() -> dict[str, str]:
    """Registered encoder names with a one-line description."""
    _load_backends()
    return dict(sorted(_DOCS.items()))


def create_encoder(name: str, **kwargs: Any) -> DualEncoder:
    """Build the encoder registered as ``name`` with backend-specific keyword arguments."""
    _load_backends()
    if name not in _REGISTRY:
        raise HicaError(f"unknown encoder {name!r}; available encoders: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)

"""Encoder registry: ``@register("name")`` on a factory, ``create_encoder(name, **kw)`` to build one.

Each backend declares its arguments by a signature: the factory's own, or ``params=`` (the class whose
``__init__`` the factory forwards to). :func:`check_encoder_args` validates keyword arguments against it
before anything is built (and when a config is loaded): unknown keys list the valid ones, missing required
ones are named, and each value is converted to its annotated type (``"256"`` → 256 for ``int``; ``"abc"``
for ``int`` is an error naming ``int``). A ``**kwargs`` parameter passes other keys through (the
``checkpoint`` backend hands them to its base encoder, which checks them in turn).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from hica.encoders.base import DualEncoder
from hica.errors import HicaError

_REGISTRY: dict[str, Callable[..., DualEncoder]] = {}
_PARAMS: dict[str, Callable[..., Any]] = {}
_DOCS: dict[str, str] = {}

# Backends live in one module each; importing a module registers it.
_BACKEND_MODULES = ("default", "open_clip", "hf", "timm_hf", "checkpoint")


def register(
    name: str, params: Callable[..., Any] | None = None
) -> Callable[[Callable[..., DualEncoder]], Callable[..., DualEncoder]]:
    """Decorator that registers an encoder factory under ``name``; ``params`` is the callable whose
    signature declares the backend's arguments (default: the factory itself)."""

    def deco(fn: Callable[..., DualEncoder]) -> Callable[..., DualEncoder]:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"encoder {name!r} registered twice")
        _REGISTRY[name] = fn
        _PARAMS[name] = params or fn
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


def declared_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword arguments backend ``name`` declares (annotations resolved; ``**kwargs`` included)."""
    _load_backends()
    if name not in _REGISTRY:
        raise HicaError(f"unknown encoder {name!r}; available encoders: {', '.join(sorted(_REGISTRY))}")
    fn = _PARAMS[name]
    try:
        sig = inspect.signature(fn, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # an annotation only importable for type checkers
        sig = inspect.signature(fn)
    return {
        k: p
        for k, p in sig.parameters.items()
        if k != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL
    }


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _admits(tp: Any, kind: type) -> bool:
    """Whether annotation ``tp`` accepts values of ``kind`` (through unions)."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, str):
        return True
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return any(_admits(a, kind) for a in typing.get_args(tp))
    origin = typing.get_origin(tp) or tp
    if kind is bool:  # bool is an int subclass, but an int parameter does not take True
        return origin is bool
    return isinstance(origin, type) and issubclass(kind, origin)


@functools.cache
def _adapter(tp: Any) -> TypeAdapter:
    # YAML / the CLI turn ``model=2024`` into an int: a name that looks like a number is still a name.
    return TypeAdapter(tp, config=ConfigDict(coerce_numbers_to_str=True))


def _convert(backend: str, key: str, value: Any, tp: Any) -> Any:
    """``value`` as annotation ``tp`` (strings converted: ``"256"`` → 256); a HicaError naming the type."""
    if tp is inspect.Parameter.empty or tp is Any or isinstance(tp, str):
        return value  # undeclared type: passed through
    if isinstance(value, os.PathLike) and _admits(tp, str):
        return value  # a path where a path string is expected
    bad = isinstance(value, bool) and not _admits(tp, bool)  # pydantic would read True as 1
    if not bad:
        try:
            return _adapter(tp).validate_python(value)
        except ValidationError:
            pass
    raise HicaError(
        f"encoder {backend}: argument {key} must be of type {_type_name(tp)}, got {value!r} "
        f"({type(value).__name__})"
    )


def check_encoder_args(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Validate backend ``name``'s keyword arguments; returns them converted to the declared types."""
    params = declared_parameters(name)
    if not isinstance(args, Mapping):
        raise HicaError(f"encoder {name}: arguments must be a mapping of name: value, got {args!r}")
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    unknown = [] if var_kw else sorted(k for k in args if k not in named)
    missing = [k for k, p in named.items() if p.default is inspect.Parameter.empty and k not in args]
    if unknown or missing:
        if unknown:
            close = {m for k in unknown for m in difflib.get_close_matches(str(k), list(named), n=1)}
            hint = f" (did you mean {', '.join(sorted(close))}?)" if close else ""
            problem = f"unknown argument(s) {', '.join(map(str, unknown))}{hint}"
        else:
            problem = f"missing {', '.join(missing)}"
        raise HicaError(
            f"encoder {name}: {problem}; its arguments are {', '.join(named) or 'none'} "
            "(--encoder-arg KEY=VALUE)"
        )
    return {k: _convert(name, k, v, named[k].annotation) if k in named else v for k, v in args.items()}


def create_encoder(name: str, **kwargs: Any) -> DualEncoder:
    """Build the encoder registered as ``name`` with backend-specific keyword arguments (validated and
    converted to the declared types first, see :func:`check_encoder_args`)."""
    kwargs = check_encoder_args(name, kwargs)
    return _REGISTRY[name](**kwargs)

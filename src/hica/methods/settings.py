"""Typed method settings: one pydantic model per method and one validation path for all of them.

Every method class declares ``Settings`` (a :class:`MethodSettings` subclass whose field defaults are the
method's defaults). :func:`check_settings` validates a mapping of settings against it: types (a YAML
``"x"`` where an integer belongs, a boolean where a number belongs), ranges (learning rates > 0,
epochs ≥ 1, temperatures > 0, …), grids (non-empty, strictly ascending) and unknown keys (listing the
known ones). It runs when a config is loaded (``hica.config``) and again in every method's constructor,
so no setting reaches a method unchecked. Failures are one :class:`~hica.errors.HicaError` naming the
method, the key, the bad value and what is expected. :func:`pydantic_problems` phrases pydantic errors the
same way for the encoder arguments (``hica.encoders.registry``).
"""

from __future__ import annotations

import copy
import math
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError, create_model
from pydantic_core import ErrorDetails, PydanticCustomError

from hica.errors import HicaError


def _no_bool(what: str) -> BeforeValidator:
    """Refuse ``True``/``False`` where a number belongs (pydantic would read them as 1/0)."""

    def check(v: Any) -> Any:
        if isinstance(v, bool):
            raise PydanticCustomError("hica_expected", "expected {what}", {"what": what})
        return v

    return BeforeValidator(check)


def _ascending(v: list[Any]) -> list[Any]:
    if any(b <= a for a, b in zip(v, v[1:], strict=False)):
        raise PydanticCustomError("hica_expected", "expected {what}", {"what": "in strictly ascending order"})
    return v


Int = Annotated[int, _no_bool("an integer")]
Float = Annotated[float, _no_bool("a number")]
PositiveInt = Annotated[Int, Ge(1)]
NonNegativeInt = Annotated[Int, Ge(0)]
PositiveFloat = Annotated[Float, Gt(0)]
NonNegativeFloat = Annotated[Float, Ge(0)]
Fraction = Annotated[Float, Gt(0), Le(1)]
#: A hyperparameter grid: a non-empty, strictly ascending list (the method fixes its own search order).
PositiveGrid = Annotated[list[PositiveFloat], MinLen(1), AfterValidator(_ascending)]
NonNegativeGrid = Annotated[list[NonNegativeFloat], MinLen(1), AfterValidator(_ascending)]
PositiveIntGrid = Annotated[list[PositiveInt], MinLen(1), AfterValidator(_ascending)]
PositiveList = Annotated[list[PositiveFloat], AfterValidator(_ascending)]  # ascending, may be empty


FIXED_PREFIX = "fixed_"  # settings named fixed_<x>: the value used when an episode has no validation shots


def fixed_settings(model: type[BaseModel]) -> list[str]:
    """The settings of ``model`` named ``fixed_*``: by convention the values a method uses instead of choosing
    on validation shots when an episode has none (the realistic protocol; ``Configurable.fixed_value``).
    Each accepts None (no fixed value declared: such an episode is an error naming the setting)."""
    return [k for k in model.model_fields if k.startswith(FIXED_PREFIX)]


class MethodSettings(BaseModel):
    """Base of every method's settings: unknown keys are errors, floats are finite, defaults validated."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


def with_defaults(model: type[MethodSettings], name: str, **defaults: Any) -> type[MethodSettings]:
    """A subclass of ``model`` with other defaults and the same types and ranges (e.g. HiCA's ablations)."""
    fields: dict[str, Any] = {}
    for key, value in defaults.items():
        info = copy.copy(model.model_fields[key])
        info.default = value
        fields[key] = (info.annotation, info)
    return create_model(name, __base__=model, **fields)


# ------------------------------------------------------------------------------------------ error phrasing

_OPS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_CTX_KEY = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "too_short": "a non-empty list",
}


def _where(loc: tuple[int | str, ...]) -> str:
    """``('temperatures', 0)`` → ``temperatures[0]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_error(err: ErrorDetails) -> str:
    """One pydantic error as ``key must be <expected>, got <value>``."""
    kind, ctx, where = err["type"], err.get("ctx") or {}, _where(err["loc"])
    if kind == "value_error":  # a model or field validator's own sentence
        return f"{where}: {ctx.get('error')}" if where else str(ctx.get("error"))
    if kind in _OPS:
        expected = f"{_OPS[kind]} {_num(ctx[_CTX_KEY[kind]])}"
    elif kind == "literal_error":
        expected = ctx["expected"]
    elif kind == "hica_expected":
        expected = ctx["what"]
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind]
    else:
        return f"{where}: {err['msg']}, got {err.get('input')!r}"
    return f"{where} must be {expected}, got {err.get('input')!r}"


def pydantic_problems(e: ValidationError) -> tuple[list[str], list[str]]:
    """(unknown keys, phrased problems) of a validation error."""
    unknown = [str(err["loc"][0]) for err in e.errors() if err["type"] == "extra_forbidden"]
    return unknown, [describe_error(err) for err in e.errors() if err["type"] != "extra_forbidden"]


def check_settings(owner: str, model: type[MethodSettings], values: Mapping[str, Any]) -> MethodSettings:
    """Validate ``values`` against ``model``; a HicaError prefixed ``owner`` (e.g. ``method clap``) if bad."""
    if not isinstance(values, Mapping):
        raise HicaError(f"{owner}: settings must be a mapping of name: value, got {values!r}")
    try:
        return model.model_validate(dict(values))
    except ValidationError as e:
        unknown, problems = pydantic_problems(e)
        if unknown:
            problems.insert(0, f"unknown argument(s) {sorted(unknown)}; known: {sorted(model.model_fields)}")
        raise HicaError(f"{owner}: {'; '.join(problems)}") from None


# ------------------------------------------------------------------------------------------ documentation


def _type_text(tp: Any) -> tuple[str, list[str]]:
    """(type name, range phrases) of a settings annotation, for the documentation table."""
    ranges: list[str] = []
    while typing.get_origin(tp) is Annotated:
        tp, *meta = typing.get_args(tp)
        for m in meta:
            if isinstance(m, Gt):
                ranges.append(f"> {_num(m.gt)}")
            elif isinstance(m, Ge):
                ranges.append(f"≥ {_num(m.ge)}")
            elif isinstance(m, Lt):
                ranges.append(f"< {_num(m.lt)}")
            elif isinstance(m, Le):
                ranges.append(f"≤ {_num(m.le)}")
            elif isinstance(m, MinLen) and m.min_length == 1:
                ranges.append("non-empty")
            elif isinstance(m, AfterValidator) and m.func is _ascending:
                ranges.append("ascending")
    origin = typing.get_origin(tp)
    if origin is list:
        inner, inner_ranges = _type_text(typing.get_args(tp)[0])
        return f"list[{inner}]", ([f"each {' and '.join(inner_ranges)}"] if inner_ranges else []) + ranges
    if origin is Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp)), ranges
    if origin is typing.Union:  # an optional grid (Tip-Adapter's betas / alphas): the inner type's ranges
        parts = [("None", []) if a is type(None) else _type_text(a) for a in typing.get_args(tp)]
        return " \\| ".join(p[0] for p in parts), [r for p in parts for r in p[1]] + ranges
    if isinstance(tp, types.UnionType):
        return " \\| ".join(_type_text(a)[0] for a in typing.get_args(tp)), ranges
    return getattr(tp, "__name__", str(tp)), ranges


def _default_text(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_default_text(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else str(v)
    return str(v).lower() if isinstance(v, bool) else str(v) if not isinstance(v, str) else repr(v)


def settings_markdown(methods: Mapping[str, Any]) -> str:
    """A Markdown table per method (name → class with ``Settings``): setting, type, range, default."""
    out: list[str] = []
    listed: dict[type[MethodSettings], str] = {}
    for name, cls in methods.items():
        model: type[MethodSettings] = cls.Settings
        out.append(f"### `{name}`\n")
        if not model.model_fields:
            out.append("No settings.\n")
            continue
        base = next((b for b in model.__mro__[1:] if b in listed), None)
        if base is not None and set(base.model_fields) == set(model.model_fields):  # only defaults differ
            mine, theirs = model().model_dump(), base().model_dump()
            diff = ", ".join(f"`{k}: {_default_text(v)}`" for k, v in mine.items() if theirs[k] != v)
            out.append(f"The settings of `{listed[base]}`, with the defaults {diff}.\n")
            continue
        listed[model] = name
        out.append("| setting | type | range | default |\n|---|---|---|---|")
        defaults = model().model_dump()
        for key, info in model.model_fields.items():
            tp = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            type_name, ranges = _type_text(tp)
            rng = ", ".join(ranges) or "–"
            out.append(f"| `{key}` | {type_name} | {rng} | `{_default_text(defaults[key])}` |")
        out.append("")
    return "\n".join(out)

"""Mapping TOML tables onto frozen dataclasses: strict keys and types, errors naming the key."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class RecipeError(ValueError):
    """A recipe or override that cannot be used; the message names the key."""


class OptionError(ValueError):
    """A command's option or argument that cannot work; the message names it."""


def require(section: str, checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise RecipeError(f"[{section}] {message}")


def differing_key(old: Any, new: Any) -> str | None:
    """The first compared field in which two configs of one section differ (None: equal)."""
    for f in dataclasses.fields(old):
        if f.compare and getattr(old, f.name) != getattr(new, f.name):
            return f.name
    return None


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a TOML table, checking keys and types recursively. A table
    given for a table-valued key (such as `[distill.weights]`) replaces its default whole.

    Raises:
        RecipeError: naming the dotted key of an unknown key or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise RecipeError(f"unknown recipe key '{key}' (known: {', '.join(sorted(names))})")
    values = {
        name: _coerce(hints[name], value, f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    try:
        return cls(**values)
    except TypeError as error:
        raise RecipeError(f"{where or 'recipe'}: {error}") from error


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `hint`; ints are accepted for floats."""
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"'{key}' must be a table, got {value!r}")
        _, value_type = typing.get_args(hint)
        if value_type is not Any:
            return {k: _coerce(value_type, v, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if origin in (list, tuple, types.UnionType):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise RecipeError(f"'{key}' must be {hint.__name__}, got {value!r}")
    return value

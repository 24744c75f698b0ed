"""Reading and writing recipes: TOML files, checkpoint configs written before a key moved,
`--set` overrides, and TOML output."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
import warnings
from pathlib import Path
from typing import Any

from wavflow.config.sections import Recipe
from wavflow.config.tables import RecipeError, from_dict


def to_dict(recipe: Recipe) -> dict[str, Any]:
    """The recipe as nested plain dicts (for checkpoints and `recipe.toml`)."""
    return dataclasses.asdict(recipe)


def load_recipe(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Recipe:
    """Read a TOML recipe (None: all defaults) and apply `section.key=value` overrides.

    An override edits the recipe as it resolves: `distill.weights.kl=2` changes the kl weight of
    the file's `[distill.weights]`, or of the default weights when the file has none.

    Raises:
        RecipeError: for a missing or malformed file, unknown keys, wrong types, bad overrides.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as error:
            raise RecipeError(f"recipe file not found: {path}") from error
        except tomllib.TOMLDecodeError as error:
            raise RecipeError(f"{path}: invalid TOML ({error})") from error
    _fill_default_tables(Recipe, data)
    for override in overrides:
        apply_override(data, override)
    return from_dict(Recipe, _migrate(data))


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Rebuild a `Recipe` from `to_dict` output (e.g. a checkpoint's config, of any version)."""
    return from_dict(Recipe, _migrate(data))


def _fill_default_tables(cls: type, data: dict[str, Any]) -> None:
    """Give `data` (a TOML table of dataclass `cls`) the default of every table-valued key it
    lacks, recursively, so that an override of one entry keeps the others."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            if isinstance(section := data.setdefault(f.name, {}), dict):
                _fill_default_tables(hints[f.name], section)
        elif typing.get_origin(hints[f.name]) is dict:
            data.setdefault(f.name, f.default_factory())


# Keys that moved, (old section, key) -> new section; and removed keys, with the reason.
MOVED_KEYS = {("data", key): "conditioning" for key in ("speakers", "pitch", "n_harmonics")}

REMOVED_KEYS = {("teacher", "n_speakers"): "the speakers come from the data"}


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe table of an older layout (a file, or a checkpoint's config) in today's, with a
    one-line warning per moved or removed key; `data` itself is left as it was.

    Raises:
        RecipeError: a moved key is set in both its old and its new section.
    """
    data = {name: dict(table) if isinstance(table, dict) else table for name, table in data.items()}
    for (old, key), new in MOVED_KEYS.items():
        source, target = data.get(old), data.setdefault(new, {})
        if not (isinstance(source, dict) and isinstance(target, dict) and key in source):
            continue
        if key in target:
            raise RecipeError(f"'{old}.{key}' and '{new}.{key}' are both set: keep '{new}.{key}'")
        warnings.warn(f"recipe key '{old}.{key}' has moved to [{new}]", FutureWarning, stacklevel=3)
        target[key] = source.pop(key)
    for (section, key), reason in REMOVED_KEYS.items():
        if isinstance(table := data.get(section), dict) and table.pop(key, None) is not None:
            message = f"recipe key '{section}.{key}' is ignored: {reason}"
            warnings.warn(message, FutureWarning, stacklevel=3)
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in nested `data`; the value is parsed as TOML, else taken as a string."""
    if "=" not in override:
        raise RecipeError(f"override '{override}' must look like section.key=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise RecipeError(f"override '{override}': the key must be section.key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    table = data
    for key in keys[:-1]:
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise RecipeError(f"override '{override}': '{key}' is not a table")
    table[keys[-1]] = value


def dumps_toml(data: dict[str, Any]) -> str:
    """Serialise nested dicts of str/int/float/bool/lists to TOML (enough for recipes)."""
    lines: list[str] = []
    _write_table(data, [], lines)
    return "\n".join(lines).strip() + "\n"


def _write_table(table: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append(f"\n[{'.'.join(prefix)}]")
    lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
    for key, sub in tables.items():
        _write_table(sub, [*prefix, key], lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise RecipeError(f"cannot write {value!r} to TOML")

"""Recipes: one frozen dataclass per TOML section, strict loading, `--set` overrides, TOML output.

A recipe file has the sections `[features]`, `[data]`, `[conditioning]`, `[teacher]`,
`[student]`, `[train]` and `[distill]`; every key is optional (the dataclass default applies),
unknown keys and wrong types are errors naming `section.key`. Recipes and checkpoints written
before a key moved still load (`loading._migrate`), with a warning naming the key's new place.

`sections` holds the dataclasses, `tables` the strict TOML-table mapping they are built with,
`loading` files, checkpoint configs, overrides and TOML output; everything is imported from
here.
"""

from wavflow.config.loading import (
    MOVED_KEYS,
    REMOVED_KEYS,
    apply_override,
    dumps_toml,
    load_recipe,
    recipe_from_dict,
    to_dict,
)
from wavflow.config.sections import (
    CONVENTION_DEFAULTS,
    KL_ESTIMATORS,
    LOSS_NAMES,
    STUDENT_KINDS,
    ConditioningConfig,
    DataConfig,
    DistillConfig,
    FeatureConfig,
    Recipe,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
    student_recipe,
)
from wavflow.config.tables import OptionError, RecipeError, differing_key, from_dict

__all__ = [
    "CONVENTION_DEFAULTS",
    "KL_ESTIMATORS",
    "LOSS_NAMES",
    "MOVED_KEYS",
    "REMOVED_KEYS",
    "STUDENT_KINDS",
    "ConditioningConfig",
    "DataConfig",
    "DistillConfig",
    "FeatureConfig",
    "OptionError",
    "Recipe",
    "RecipeError",
    "StudentConfig",
    "TeacherConfig",
    "TrainConfig",
    "apply_override",
    "differing_key",
    "dumps_toml",
    "from_dict",
    "load_recipe",
    "recipe_from_dict",
    "student_recipe",
    "to_dict",
]

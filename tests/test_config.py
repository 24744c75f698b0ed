"""Recipes: strict keys and types, overrides, round trip through TOML, shipped recipes load."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from wavflow.config import RecipeError, dumps_toml, load_recipe, recipe_from_dict, to_dict

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    load_recipe(path)


def test_overrides_parse_toml_values_and_nested_tables():
    recipe = load_recipe(
        None,
        [
            "train.lr=3e-4",
            "teacher.output=mol",
            "student.iaf.flow_layers=[4, 4]",
            "distill.weights.kl=2",
        ],
    )
    assert recipe.train.lr == 3e-4
    assert recipe.teacher.output == "mol"
    assert recipe.student.iaf == {"flow_layers": [4, 4]}
    assert recipe.distill.weights["kl"] == 2.0 and "stft" in recipe.distill.weights


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=abc", "train.lr"),
        ("train.steps=1.5", "train.steps"),
        ("teacher.output=softmax", "output"),
        ("lr=1", "section.key"),
        ("train.lr", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, [override])


def test_unknown_section_and_bad_file(tmp_path):
    (tmp_path / "a.toml").write_text("[trian]\nlr = 1\n")
    with pytest.raises(RecipeError, match="trian"):
        load_recipe(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[train\n")
    with pytest.raises(RecipeError, match="b.toml"):
        load_recipe(tmp_path / "b.toml")
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_round_trip_through_toml():
    recipe = load_recipe(None, ["student.waveglow.n_flows=4", 'train.device="cpu"'])
    again = recipe_from_dict(tomllib.loads(dumps_toml(to_dict(recipe))))
    assert again == recipe


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_build_their_models(path):
    from wavflow.checkpoint import build_student, build_teacher

    recipe = load_recipe(path)
    build_teacher(recipe)
    if recipe.student.sizes():
        build_student(recipe)


def test_student_recipe_takes_the_student_budget() -> None:
    from wavflow.config import Recipe, TrainConfig, student_recipe

    recipe = Recipe(train=TrainConfig(steps=3000, student_steps=1200))
    student = student_recipe(recipe, "squeezewave")
    assert (student.train.steps, student.student.kind) == (1200, "squeezewave")
    assert student_recipe(Recipe(train=TrainConfig(steps=50))).train.steps == 50

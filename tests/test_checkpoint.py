"""Checkpoints and the `[conditioning]` section: old configs load, a resumed run keeps its
conditioning."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from wavflow.checkpoint import (
    build_student,
    build_teacher,
    checkpoint_state,
    load_model,
    save_checkpoint,
)
from wavflow.config import RecipeError, load_recipe
from wavflow.objectives import likelihood_objective
from wavflow.training import train

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"
PITCH = ['conditioning.pitch="harmonic"', "conditioning.n_harmonics=2", 'data.f0_method="pyin"']


def test_a_checkpoint_with_conditioning_under_data_loads(tmp_path):
    recipe = load_recipe(TINY, PITCH)
    teacher = build_teacher(recipe)
    state = checkpoint_state("teacher", recipe, teacher, [])
    old = state["config"]
    old["data"] |= old.pop("conditioning")  # the layout checkpoints were written with
    old["teacher"]["n_speakers"] = 0
    save_checkpoint(tmp_path / "old.pt", state)
    with pytest.warns(FutureWarning) as caught:
        model, loaded, _ = load_model(tmp_path / "old.pt")
    assert len(caught) == 4 and "'data.pitch' has moved to [conditioning]" in str(caught[1].message)
    assert loaded == recipe and model.capabilities.takes_pitch


def test_resume_with_other_conditioning_is_refused(prepared_dir, tmp_path):
    recipe = load_recipe(TINY, ["train.steps=1", "train.eval_every=1000", 'train.device="cpu"'])

    def objective(recipe):
        torch.manual_seed(recipe.train.seed)
        model = build_teacher(recipe)
        return dataclasses.replace(
            likelihood_objective("teacher", model, recipe.features), media=None
        )

    train(objective(recipe), recipe, prepared_dir, tmp_path / "run", progress=False)
    other = dataclasses.replace(
        recipe, conditioning=dataclasses.replace(recipe.conditioning, speakers=True)
    )
    with pytest.raises(RecipeError, match=r"conditioning\.speakers is False in the run but True"):
        train(objective(other), other, prepared_dir, tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["student.iaf.flow_layers=[5]", "student.iaf.layers_per_cycle=2"], r"\[student.iaf\].*"),
        (['student.kind="waveglow"', "student.waveglow.early_every=0"], r"\[student.waveglow\]"),
        (['student.kind="flowavenet"', "student.flowavenet.blocks_per_split=0"], "flowavenet"),
        (['student.kind="iaf"', "student.iaf.channels='wide'"], r"\[student.iaf\]"),
    ],
)
def test_student_sizes_that_make_no_model_are_recipe_errors(overrides, message) -> None:
    with pytest.raises(RecipeError, match=message):
        build_student(load_recipe(None, overrides))


def test_teacher_sizes_that_make_no_model_are_recipe_errors() -> None:
    with pytest.raises(RecipeError, match=r"\[teacher\]"):
        build_teacher(load_recipe(None, ["teacher.gate_channels=7"]))

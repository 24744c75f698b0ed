"""Recipe -> objective: the one path the CLI and the demo take to what a run trains."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from factories import STUDENT_SIZES
from torch.utils.data import DataLoader

from wavflow.checkpoint import (
    build_student,
    build_teacher,
    checkpoint_state,
    load_teacher,
    save_checkpoint,
)
from wavflow.config import RecipeError, load_recipe, student_recipe
from wavflow.data import PreparedData, SegmentDataset
from wavflow.distill import DistillLoss
from wavflow.objectives import LikelihoodLoss, build_objective
from wavflow.teacher import WaveNet

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"


def _student_recipe(kind: str, *extra: str):
    overrides = [f'student.kind="{kind}"', *STUDENT_SIZES[kind], *extra]
    return student_recipe(load_recipe(TINY, overrides))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    mine, theirs = a.state_dict(), b.state_dict()
    return mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_the_teacher_objective_is_maximum_likelihood_from_the_seed(prepared_dir):
    recipe = load_recipe(TINY)
    data = PreparedData(prepared_dir, expected=recipe.features)
    first = build_objective(recipe, data, "teacher")
    torch.manual_seed(1234)  # whatever came before, the weights come from train.seed
    second = build_objective(recipe, data, "teacher")
    assert first.kind == "teacher" and isinstance(first.model, WaveNet)
    assert isinstance(first.loss, LikelihoodLoss) and first.best_metric == "val/nll"
    assert _same_weights(first.model, second.model)


def test_a_student_trains_by_likelihood_without_a_teacher_except_the_iaf(prepared_dir):
    recipe = _student_recipe("waveglow")
    data = PreparedData(prepared_dir, expected=recipe.features)
    objective = build_objective(recipe, data, "student")
    assert objective.kind == "student" and isinstance(objective.loss, LikelihoodLoss)
    with pytest.raises(RecipeError, match="distil it with --teacher"):
        build_objective(_student_recipe("iaf"), data, "student")
    with pytest.raises(RecipeError, match="unknown objective kind"):
        build_objective(recipe, data, "students")


def test_a_student_with_a_teacher_checkpoint_is_distilled(prepared_dir, tmp_path):
    recipe = _student_recipe("iaf")
    data = PreparedData(prepared_dir, expected=recipe.features)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, checkpoint_state("teacher", recipe, build_teacher(recipe), []))
    objective = build_objective(recipe, data, "student", path)
    assert isinstance(objective.loss, DistillLoss) and objective.best_metric == "val/kl"
    assert objective.metadata == {"teacher_checkpoint": str(path)}
    assert objective.weights == recipe.distill.weights
    # The same initial student as the maximum-likelihood path would build: seed, then build.
    torch.manual_seed(recipe.train.seed)
    assert _same_weights(objective.model, build_student(recipe))


def test_distillation_starts_the_students_f0_predictor_from_the_teachers_not_the_loss(
    prepared_dir, tmp_path
):
    recipe = _student_recipe(
        "squeezewave", 'conditioning.pitch="harmonic"', 'data.f0_method="pyin"'
    )
    teacher = build_teacher(recipe)
    with torch.no_grad():
        for parameter in teacher.conditioner.f0_predictor.parameters():
            parameter.add_(0.5)  # unlike any new predictor's weights
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, checkpoint_state("teacher", recipe, teacher, []))
    student = build_student(recipe)
    frozen = load_teacher(path, student.conditioner.spec, recipe.features)
    DistillLoss(student, frozen, recipe.distill, recipe.features)
    assert not _same_weights(frozen.conditioner.f0_predictor, student.conditioner.f0_predictor)
    data = PreparedData(prepared_dir, expected=recipe.features)
    objective = build_objective(recipe, data, "student", path)
    assert _same_weights(frozen.conditioner.f0_predictor, objective.model.conditioner.f0_predictor)


def test_a_student_trained_without_the_kl_keeps_its_best_by_log_mel_distance(
    prepared_dir, tmp_path
):
    recipe = _student_recipe("iaf")
    recipe = dataclasses.replace(
        recipe, distill=dataclasses.replace(recipe.distill, weights={"stft": 1.0})
    )
    data = PreparedData(prepared_dir, expected=recipe.features)
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, checkpoint_state("teacher", recipe, build_teacher(recipe), []))
    objective = build_objective(recipe, data, "student", path)
    assert objective.best_metric == "val/log_mel_db"
    crops = SegmentDataset(data, "val", recipe.data.segment_length, random_crops=False)
    batch = next(iter(DataLoader(crops, batch_size=2)))
    assert "log_mel_db" in objective.validate(objective.model, [batch])

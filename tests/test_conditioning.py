"""The one `ConditioningSpec` every model's conditioner is built from: checked, kept by every
model, rebuilt from checkpoints, and compared when a teacher meets a student."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from factories import STUDENT_SIZES, save_model

from wavflow.checkpoint import (
    CheckpointError,
    build_student,
    build_teacher,
    load_model,
    load_teacher,
)
from wavflow.config import STUDENT_KINDS, load_recipe
from wavflow.nn.conditioning import ConditioningSpec

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"
# 20 mels, hop 64 at 16 kHz; every student at its training tests' size.
SIZES = [override for kind in STUDENT_KINDS for override in STUDENT_SIZES[kind]]
PITCH = ['conditioning.pitch="harmonic"', "conditioning.n_harmonics=3", 'data.f0_method="pyin"']


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"n_mels": 0}, "n_mels must be >= 1, got 0"),
        ({"hop_length": -4}, "hop_length must be >= 1, got -4"),
        ({"sample_rate": 0}, "sample_rate must be a positive rate in Hz, got 0"),
        ({"n_speakers": -1}, "n_speakers must be >= 0, got -1"),
        ({"speaker_channels": 0}, "speaker_channels must be >= 1, got 0"),
        ({"n_harmonics": -2}, "n_harmonics must be >= 0, got -2"),
    ],
)
def test_a_spec_out_of_range_is_refused_naming_the_setting(settings, message) -> None:
    with pytest.raises(ValueError, match=message):
        ConditioningSpec(**{"n_mels": 8, "hop_length": 4} | settings)


def test_every_model_keeps_the_spec_its_recipe_gives() -> None:
    """The teacher and each student of one recipe share the mel settings and harmonics; each
    keeps its own embedding width."""
    recipe = load_recipe(TINY, [*SIZES, *PITCH, "teacher.speaker_channels=5"])
    expected = ConditioningSpec(
        n_mels=20, hop_length=64, sample_rate=16000, n_speakers=2, n_harmonics=3
    )
    assert build_teacher(recipe, 2).conditioner.spec == dataclasses.replace(
        expected, speaker_channels=5
    )
    for kind in STUDENT_KINDS:
        assert build_student(recipe, 2, kind=kind).conditioner.spec == expected, kind


def test_a_checkpoint_rebuilds_its_models_spec(tmp_path: Path) -> None:
    recipe = load_recipe(TINY, [*PITCH, "conditioning.speakers=true"])
    teacher = build_teacher(recipe, 2)
    path = save_model(tmp_path, "teacher", recipe, teacher, ["ann", "bob"])
    model, _, _ = load_model(path)
    assert model.conditioner.spec == teacher.conditioner.spec


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("hop_length", 32, "hop_length 64 for the teacher, 32 for the student"),
        ("sample_rate", 22050, "sample_rate 16000 for the teacher, 22050 for the student"),
        ("n_mels", 16, "n_mels 20 for the teacher, 16 for the student"),
    ],
)
def test_a_teacher_of_other_input_than_the_student_is_refused(
    tmp_path: Path, setting: str, value: int, message: str
) -> None:
    recipe = load_recipe(TINY, SIZES)
    path = save_model(tmp_path, "teacher", recipe, build_teacher(recipe))
    student = dataclasses.replace(build_student(recipe).conditioner.spec, **{setting: value})
    with pytest.raises(CheckpointError, match=f"{message}.*give the student the teacher's"):
        load_teacher(path, student, recipe.features)


def test_a_teacher_with_pitch_teaches_a_student_without(tmp_path: Path) -> None:
    """Speakers and harmonics are each model's own: only the input must agree."""
    student_recipe = load_recipe(TINY, SIZES)
    teacher_recipe = load_recipe(TINY, PITCH)
    path = save_model(tmp_path, "teacher", teacher_recipe, build_teacher(teacher_recipe))
    student = build_student(student_recipe).conditioner.spec
    teacher = load_teacher(path, student, student_recipe.features)
    assert teacher.capabilities.takes_pitch and not student.n_harmonics

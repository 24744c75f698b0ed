"""Multi-speaker models: synthesis by speaker name, and a teacher's speakers checked against the
student's data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from factories import WITH_SPEAKERS, student_checkpoint

from wavflow.checkpoint import (
    CheckpointError,
    build_student,
    build_teacher,
    checkpoint_state,
    load_teacher,
    save_checkpoint,
)
from wavflow.cli import main
from wavflow.config import Recipe, load_recipe
from wavflow.synthesis import SynthesisOptions, speaker_id, vocode

ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = ["ann", "bob", "cy"]


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe(ROOT / "recipes" / "tiny_teacher.toml", ["conditioning.speakers=true"])


def test_speaker_ids_by_name(recipe: Recipe) -> None:
    teacher = build_teacher(recipe, len(SPEAKERS))
    assert speaker_id(teacher, SPEAKERS, "bob") == 1
    with pytest.raises(ValueError, match="no --speaker.*ann, bob, cy"):
        speaker_id(teacher, SPEAKERS, None)
    with pytest.raises(ValueError, match="--speaker dan.*ann, bob, cy"):
        speaker_id(teacher, SPEAKERS, "dan")
    single = build_teacher(recipe, 0)
    assert speaker_id(single, [], None) is None
    with pytest.raises(ValueError, match="without speakers"):
        speaker_id(single, ["ann"], "ann")


def test_a_multi_speaker_student_synthesises_each_voice(recipe: Recipe) -> None:
    torch.manual_seed(0)
    student = build_student(recipe, len(SPEAKERS), kind="iaf").eval()
    with torch.no_grad():  # the output convs start at zero: let the speaker reach x
        for name, parameter in student.named_parameters():
            if "head_out" in name:
                parameter.normal_(0.0, 0.1)
    feats = torch.randn(2, recipe.features.n_mels, 6)
    options = SynthesisOptions(progress=False)

    def audio(speaker: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        ids = torch.full((2,), speaker)
        return vocode(student, feats, recipe.features, options, generator, speaker=ids)

    assert audio(0).shape == (2, 6 * recipe.features.hop_length)
    assert (audio(0) - audio(2)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="speakers"):
        vocode(student, feats, recipe.features, options)


def test_a_teacher_of_other_speakers_is_refused(recipe: Recipe, tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    teacher = build_teacher(recipe, len(SPEAKERS))
    save_checkpoint(path, checkpoint_state("teacher", recipe, teacher, SPEAKERS))
    student = build_student(recipe, len(SPEAKERS), kind="iaf").conditioner.spec
    assert load_teacher(path, student, recipe.features, SPEAKERS).capabilities.n_speakers == 3
    with pytest.raises(CheckpointError, match=r"trained on speakers \['ann', 'bob', 'cy'\]"):
        load_teacher(path, student, recipe.features, ["ann", "cy", "bob"])
    load_teacher(path, student, recipe.features)  # no data to compare with: not checked


def test_synthesize_takes_the_speaker_by_name(tmp_path: Path, capsys) -> None:
    """`wavflow synthesize --speaker NAME` on a multi-speaker student: each name its own voice,
    and without a name the error lists the speakers."""
    _, _, checkpoint = student_checkpoint(
        "iaf", tmp_path, std=0.1, speakers=SPEAKERS, overrides=WITH_SPEAKERS
    )
    mel = tmp_path / "mel.npy"
    np.save(mel, np.random.default_rng(0).normal(-6, 1, (20, 8)).astype(np.float32))
    command = ["synthesize", "--checkpoint", checkpoint, str(mel), "--quiet"]
    audio = {}
    for name in ("bob", "cy"):
        assert main([*command, "--out", str(tmp_path / name), "--speaker", name]) == 0
        audio[name], _ = soundfile.read(tmp_path / name / "mel.wav")
    assert audio["bob"].shape == (8 * 64,) and np.abs(audio["bob"] - audio["cy"]).max() > 1e-3
    assert main([*command, "--out", str(tmp_path / "none")]) == 2
    assert "pass one of ann, bob, cy" in capsys.readouterr().err

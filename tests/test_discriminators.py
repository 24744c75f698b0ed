"""HiFi-GAN's discriminators and the adversarial distillation terms."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from factories import STUDENT_SIZES

from wavflow.checkpoint import build_teacher, checkpoint_state, load_checkpoint, save_checkpoint
from wavflow.config import DistillConfig, RecipeError, load_recipe, student_recipe
from wavflow.data import PreparedData
from wavflow.distill import DistillLoss
from wavflow.nn.discriminators import (
    Discriminators,
    PeriodDiscriminator,
    ScaleDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from wavflow.objectives import build_objective
from wavflow.training import train

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"
GAN_WEIGHTS = {"stft": 1.0, "adversarial": 1.0, "feature_matching": 1.0, "discriminator": 1.0}


@pytest.mark.parametrize("length", [2048, 2051])
def test_every_discriminator_scores_and_reports_each_layer(length):
    audio = torch.randn(2, 1, length)
    period = PeriodDiscriminator(5, channels=4, max_channels=16)
    scores, features = period(audio)
    assert scores.shape[:2] == (2, 1) and scores.shape[-1] == 5
    assert len(features) == len(period.layers) + 1 and features[-1] is scores
    scale = ScaleDiscriminator(2, channels=4, max_channels=16)
    scores, features = scale(audio)
    assert scores.shape[:2] == (2, 1) and scores.ndim == 3
    assert len(features) == len(scale.layers) + 1
    judged = Discriminators([2, 3], [1, 4], channels=4, max_channels=16)(audio)
    assert len(judged) == 4 and all(torch.isfinite(s).all() for s, _ in judged)


def test_a_period_discriminator_sees_only_samples_a_period_apart():
    """Changing one sample changes the scores of its own column only."""
    torch.manual_seed(0)
    judge = PeriodDiscriminator(3, channels=4, max_channels=8)
    audio = torch.randn(1, 1, 300)
    nudged = audio.clone()
    nudged[..., 151] += 1.0  # column 151 % 3 = 1
    changed = (judge(audio)[0] - judge(nudged)[0]).abs().sum(dim=(0, 1, 2))
    assert changed[1] > 0 and changed[0] == 0 and changed[2] == 0


def test_the_least_squares_losses_are_zero_where_each_side_wins():
    real = [(torch.ones(2, 1, 5), [torch.ones(2, 3, 5)])]
    fake = [(torch.zeros(2, 1, 5), [torch.zeros(2, 3, 5)])]
    assert float(discriminator_loss(real, fake)) == 0.0
    assert float(generator_loss(real)) == 0.0 and float(generator_loss(fake)) == 1.0
    assert float(feature_matching_loss(real, real)) == 0.0
    assert float(feature_matching_loss(real, fake)) == pytest.approx(1.0)


def _gan_loss():
    """A tiny IAF student's DistillLoss with every adversarial term weighted."""
    from test_distill import _batch, constant_teacher, identity_student

    cfg = DistillConfig(
        weights=GAN_WEIGHTS,
        stft_resolutions=[[64, 16, 64]],
        discriminator_periods=[2, 3],
        discriminator_scales=[1, 2],
        discriminator_channels=4,
        discriminator_max_channels=8,
    )
    student = identity_student()
    loss = DistillLoss(student, constant_teacher(), cfg).double()
    return loss, student, _batch(length=256)


def test_the_students_terms_train_the_student_only_and_the_critics_the_critic_only():
    loss, student, batch = _gan_loss()
    for name, trains_student in (
        ("adversarial", True),
        ("feature_matching", True),
        ("discriminator", False),
    ):
        loss.zero_grad(set_to_none=True)
        loss(batch)[name].backward()
        student_grads = [p.grad for p in student.parameters() if p.grad is not None]
        critic_grads = [p.grad for p in loss.critic.parameters() if p.grad is not None]
        reaches_student = any(g.abs().sum() > 0 for g in student_grads)
        reaches_critic = any(g.abs().sum() > 0 for g in critic_grads)
        assert reaches_student == trains_student, name
        assert reaches_critic != trains_student, name


def test_the_adversarial_terms_go_together():
    with pytest.raises(RecipeError, match="discriminator"):
        DistillConfig(weights={"stft": 1.0, "adversarial": 1.0})
    with pytest.raises(RecipeError, match="discriminator"):
        DistillConfig(weights={"discriminator": 1.0})
    assert not DistillConfig(weights={"stft": 1.0}).adversarial


def _tiny_gan_recipe(steps: int, weights: dict[str, float]):
    kind = "squeezewave"
    recipe = student_recipe(
        load_recipe(
            TINY,
            [
                f'student.kind="{kind}"',
                *STUDENT_SIZES[kind],
                f"train.steps={steps}",
                "train.checkpoint_every=2",
                "train.eval_every=1000",
                "train.keep_last=10",
            ],
        )
    )
    distill = dataclasses.replace(
        recipe.distill,
        weights=weights,
        discriminator_periods=[2],
        discriminator_scales=[1],
        discriminator_channels=4,
        discriminator_max_channels=8,
    )
    return dataclasses.replace(recipe, distill=distill)


def _resume(recipe, data: PreparedData, teacher: Path, run: Path) -> None:
    """Continue the distillation run in `run` with `recipe`."""
    objective = build_objective(recipe, data, "student", teacher)
    train(objective, recipe, data, run, resume=True, progress=False)


@pytest.mark.slow
def test_the_discriminators_train_save_and_resume_with_the_student(prepared_dir, tmp_path):
    data = PreparedData(prepared_dir)
    teacher = tmp_path / "teacher.pt"
    recipe = _tiny_gan_recipe(4, GAN_WEIGHTS)
    save_checkpoint(teacher, checkpoint_state("teacher", recipe, build_teacher(recipe), []))

    whole = build_objective(recipe, data, "student", teacher)
    initial = {k: v.clone() for k, v in whole.critic.state_dict().items()}
    train(whole, recipe, data, tmp_path / "whole", progress=False)
    saved = load_checkpoint(tmp_path / "whole" / "ckpt_00000004.pt")
    assert any(not torch.equal(initial[k], saved["critic"][k]) for k in initial)

    # A run killed after step 2: its folder without the later checkpoint.
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "whole", split)
    (split / "ckpt_00000004.pt").unlink()
    _resume(recipe, data, teacher, split)
    resumed = load_checkpoint(tmp_path / "split" / "ckpt_00000004.pt")
    for part in ("model", "critic"):
        for key, value in saved[part].items():
            assert torch.equal(value, resumed[part][key]), (part, key)

    plain = _tiny_gan_recipe(6, {"stft": 1.0})
    with pytest.raises(RecipeError, match="discriminators"):
        _resume(plain, data, teacher, split)

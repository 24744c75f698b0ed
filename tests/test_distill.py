"""Distillation losses: KL estimators against exact values, variance, gradient routing."""

from __future__ import annotations

import math

import pytest
import torch
from factories import SMALLEST_WAVENET, tiny_teacher

from wavflow.config import DistillConfig
from wavflow.distill import (
    DistillLoss,
    choose_estimator,
    floored_head,
    gaussian_kl,
    multi_resolution_stft_loss,
    per_step_kl,
    power_loss,
)
from wavflow.distributions import GaussianOutput
from wavflow.flows import IAFStudent, WaveGlow
from wavflow.flows.base import StandardGaussian, StandardLogistic
from wavflow.nn.conditioning import ConditioningSpec
from wavflow.teacher import WaveNet

MEAN_P, LOG_SCALE_P = 0.3, -0.5


def constant_teacher(output: str = "gaussian") -> WaveNet:
    """A teacher whose every step is N(MEAN_P, exp(LOG_SCALE_P)^2), whatever the context."""
    teacher = tiny_teacher(output, torch.float32, n_mixtures=2, **SMALLEST_WAVENET)
    with torch.no_grad():
        teacher.stack.head_out.weight.zero_()
        if output == "gaussian":
            teacher.stack.head_out.bias.copy_(torch.tensor([MEAN_P, LOG_SCALE_P]))
    return teacher.double()


def identity_student(base: str = "gaussian") -> IAFStudent:
    torch.manual_seed(1)
    return IAFStudent(
        ConditioningSpec(8, 4), base=base, flow_layers=(2, 2), layers_per_cycle=2, channels=8
    ).double()


def exact_kl() -> float:
    return float(
        gaussian_kl(
            torch.tensor(0.0), torch.tensor(0.0), torch.tensor(MEAN_P), torch.tensor(LOG_SCALE_P)
        )
    )


def test_gaussian_kl_matches_torch_distributions():
    torch.manual_seed(0)
    m_q, s_q, m_p, s_p = (torch.randn(100, dtype=torch.float64) for _ in range(4))
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(m_q, s_q.exp()), torch.distributions.Normal(m_p, s_p.exp())
    )
    assert torch.allclose(gaussian_kl(m_q, s_q, m_p, s_p), reference)


def _batch(length: int = 64, batch: int = 4) -> dict:
    rng = torch.Generator().manual_seed(2)
    return {
        "feats": torch.randn(batch, 8, length // 4, dtype=torch.float64, generator=rng),
        "audio": 0.3 * torch.randn(batch, 1, length, dtype=torch.float64, generator=rng),
        "speaker": torch.zeros(batch, dtype=torch.long),
    }


@pytest.mark.parametrize("estimator", ["closed_form", "per_step", "sample"])
def test_each_estimator_is_unbiased_for_gaussian_student_and_teacher(estimator):
    cfg = DistillConfig(
        weights={"kl": 1.0}, kl_estimator=estimator, kl_samples=4, skip_receptive_field=False
    )
    loss = DistillLoss(identity_student(), constant_teacher(), cfg)
    estimates = torch.tensor([float(loss(_batch(length=256))["kl"].detach()) for _ in range(20)])
    standard_error = float(estimates.std()) / math.sqrt(len(estimates)) + 1e-9
    assert abs(float(estimates.mean()) - exact_kl()) < 4 * standard_error + 1e-6
    if estimator == "closed_form":
        assert float(estimates.std()) < 1e-9  # exact: no sampling noise at all


def test_per_step_variance_falls_with_more_samples():
    head = GaussianOutput()
    params = torch.tensor([MEAN_P, LOG_SCALE_P], dtype=torch.float64)[None, :, None]
    params = params.expand(1, 2, 2000)
    loc = torch.zeros(1, 1, 2000, dtype=torch.float64)
    for base in (StandardGaussian(), StandardLogistic()):
        one = per_step_kl(head, params, base, loc, loc, n_samples=1)
        many = per_step_kl(head, params, base, loc, loc, n_samples=16)
        assert float(many.var()) < float(one.var()) / 8
        error = 4 * math.sqrt(float(one.var()) / one.numel())
        assert abs(float(many.mean()) - float(one.mean())) < error


def test_logistic_student_per_step_kl_matches_monte_carlo_of_the_densities():
    student = identity_student("logistic")
    cfg = DistillConfig(
        weights={"kl": 1.0}, kl_estimator="per_step", kl_samples=8, skip_receptive_field=False
    )
    estimate = float(DistillLoss(student, constant_teacher(), cfg)(_batch(length=4096))["kl"])
    # KL(Logistic(0, 1) || N(m, s^2)) by brute-force Monte Carlo.
    z = StandardLogistic().sample((400_000,), dtype=torch.float64)
    log_q = StandardLogistic().log_density(z)
    log_p = torch.distributions.Normal(MEAN_P, math.exp(LOG_SCALE_P)).log_prob(z)
    assert abs(estimate - float((log_q - log_p).mean())) < 0.05 * float((log_q - log_p).mean())


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))


@pytest.mark.parametrize("student_kind", ["iaf", "waveglow"])
def test_gradients_reach_every_student_parameter_and_no_teacher_parameter(student_kind):
    if student_kind == "iaf":
        student = identity_student()
    else:
        torch.manual_seed(1)
        spec = ConditioningSpec(8, 4)
        student = WaveGlow(
            spec, n_flows=2, n_layers=2, channels=8, group=4, early_every=4, early_channels=2
        ).double()
    teacher = constant_teacher()
    _perturb(student)
    _perturb(teacher)
    cfg = DistillConfig(
        weights={"kl": 1.0, "stft": 1.0, "power": 1.0, "contrastive": 0.3},
        stft_resolutions=[[32, 8, 32], [16, 4, 16]],
    )
    loss_module = DistillLoss(student, teacher, cfg)
    losses = loss_module(_batch())
    assert set(losses) >= {"kl", "stft", "power", "contrastive"}
    sum(cfg.weights[k] * v for k, v in losses.items() if k in cfg.weights).backward()
    for name, parameter in student.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training


def test_estimator_choice():
    teacher, mol_teacher = constant_teacher(), constant_teacher("mol")
    assert choose_estimator(identity_student(), teacher, "auto") == "closed_form"
    assert choose_estimator(identity_student("logistic"), teacher, "auto") == "per_step"
    assert choose_estimator(identity_student(), mol_teacher, "auto") == "per_step"
    with pytest.raises(ValueError, match="closed_form"):
        choose_estimator(identity_student(), mol_teacher, "closed_form")


def test_spectral_losses_are_zero_only_for_matching_audio():
    torch.manual_seed(0)
    real = 0.3 * torch.randn(2, 1, 2048)
    resolutions = [[256, 64, 256], [128, 32, 128]]
    assert float(multi_resolution_stft_loss(real, real, resolutions)) < 1e-6
    assert float(multi_resolution_stft_loss(0.5 * real, real, resolutions)) > 0.3
    assert float(power_loss(real, real, 256, 64, 256)) < 1e-10
    assert float(power_loss(0.5 * real, real, 256, 64, 256)) > 0.5


def test_mel_loss_is_zero_for_real_audio_and_grows_with_a_level_change() -> None:
    from wavflow.config import FeatureConfig
    from wavflow.distill import mel_loss

    features = FeatureConfig(
        sample_rate=8000, n_fft=256, hop_length=64, win_length=256, n_mels=16, fmax=4000.0
    )
    # White noise: every band well above the log floor.
    real = 0.3 * torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(0))
    assert float(mel_loss(real, real, features)) == 0.0
    # Twice as loud: every band's log-mel moves by log 2.
    assert float(mel_loss(2 * real, real, features)) == pytest.approx(math.log(2), rel=0.05)


def test_mel_loss_reaches_the_student_and_needs_features() -> None:
    from wavflow.config import FeatureConfig

    cfg = DistillConfig(weights={"kl": 1.0, "mel": 1.0})
    with pytest.raises(ValueError, match="mel"):
        DistillLoss(identity_student(), constant_teacher(), cfg)
    features = FeatureConfig(
        sample_rate=8000, n_fft=64, hop_length=4, win_length=64, n_mels=8, fmax=4000.0
    )
    student = identity_student()
    losses = DistillLoss(student, constant_teacher(), cfg, features)(_batch(length=256))
    losses["mel"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_a_receptive_field_longer_than_the_crop_is_a_clear_error() -> None:
    cfg = DistillConfig(weights={"kl": 1.0}, kl_estimator="closed_form", skip_receptive_field=True)
    teacher = constant_teacher()
    loss = DistillLoss(identity_student(), teacher, cfg)
    with pytest.raises(ValueError, match="skip_receptive_field"):
        loss(_batch(length=teacher.receptive_field // 4 * 4))


@pytest.mark.parametrize("estimator", ["closed_form", "sample"])
def test_a_teacher_floor_scores_student_samples_with_the_raised_floor(estimator) -> None:
    """With distill.teacher_log_scale_min above the teacher's log-scale (-0.5), the KL is the
    one against N(MEAN_P, 1), and the teacher itself keeps its own floor."""
    teacher = constant_teacher()
    cfg = DistillConfig(
        weights={"kl": 1.0},
        kl_estimator=estimator,
        skip_receptive_field=False,
        teacher_log_scale_min=0.0,
    )
    loss = DistillLoss(identity_student(), teacher, cfg)
    floored = float(
        gaussian_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(MEAN_P), torch.tensor(0.0))
    )
    estimates = torch.tensor([float(loss(_batch(length=256))["kl"].detach()) for _ in range(20)])
    standard_error = float(estimates.std()) / math.sqrt(len(estimates)) + 1e-9
    assert abs(float(estimates.mean()) - floored) < 4 * standard_error + 1e-6
    assert abs(floored - exact_kl()) > 0.1  # the floor changed what is measured
    assert teacher.head.log_scale_min == -7.0
    assert floored_head(teacher.head, -9.0) is teacher.head  # a lower floor changes nothing


def test_spectral_losses_alone_never_run_the_teacher_and_equal_the_distilled_ones() -> None:
    """A weights table without the teacher's terms skips its pass; the spectral terms are the
    ones computed beside the KL for the same student noise."""
    cfg = DistillConfig(weights={"stft": 1.0}, skip_receptive_field=False)
    teacher = constant_teacher()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    torch.manual_seed(5)
    spectral = DistillLoss(identity_student(), teacher, cfg)(_batch(length=1024))
    assert calls == [] and set(spectral) == {"stft"}
    both = DistillConfig(weights={"kl": 1.0, "stft": 1.0}, skip_receptive_field=False)
    torch.manual_seed(5)
    distilled = DistillLoss(identity_student(), teacher, both)(_batch(length=1024))
    assert calls and set(distilled) == {"kl", "log_scale", "stft"}
    torch.testing.assert_close(spectral["stft"], distilled["stft"])

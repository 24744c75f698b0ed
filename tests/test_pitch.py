"""Pitch conditioning: F0 tracking, the harmonic excitation, and its place in the models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_teacher

from wavflow.audio import estimate_f0
from wavflow.checkpoint import build_student
from wavflow.config import FeatureConfig, RecipeError, load_recipe
from wavflow.flows import IAFStudent, SqueezeWave
from wavflow.flows.layers import HarmonicShift
from wavflow.nn.conditioning import (
    ConditioningSpec,
    F0Predictor,
    excitation_phase,
    harmonic_excitation,
    pulse_source,
)
from wavflow.teacher import WaveNet

FEATURES = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=256, win_length=1024)


def test_pyin_f0_is_aligned_with_mel_frames():
    t = np.arange(16000 * 2) / 16000
    f0_true = 120 + 40 * t  # a rising tone, frame j centred on j * hop + hop / 2
    audio = 0.5 * np.sin(2 * np.pi * np.cumsum(f0_true) / 16000).astype(np.float32)
    audio[16000:20000] = 0.0
    f0 = estimate_f0(audio, FEATURES)
    assert f0.shape == (len(audio) // 256,)
    centres = (np.arange(len(f0)) * 256 + 128) / 16000
    voiced = f0 > 0
    assert voiced.mean() > 0.7 and not voiced[66:76].any()
    cents = 1200 * np.abs(np.log2(f0[voiced] / (120 + 40 * centres[voiced])))
    assert np.median(cents) < 20


def test_excitation_harmonics_voicing_and_nyquist():
    f0 = torch.tensor([[0.0, 0.0, 200.0, 200.0, 200.0, 0.0, 3000.0, 3000.0]])
    e = harmonic_excitation(f0, 100, 16000, n_harmonics=3)
    assert e.shape == (1, 6, 800)
    assert e[:, :, :200].abs().max() == 0 and e[:, :, 500:600].abs().max() == 0
    voiced = e[0, :, 250:450]
    # sin^2 + cos^2 = 1 for each harmonic below Nyquist
    assert torch.allclose(voiced[0] ** 2 + voiced[1] ** 2, torch.ones(200), atol=1e-5)
    phase = torch.atan2(voiced[0].double(), voiced[1].double())  # sin, cos of the phase
    step = torch.remainder(phase[1:] - phase[:-1], 2 * math.pi)
    assert torch.allclose(step, torch.full_like(step, 2 * math.pi * 200 / 16000), atol=1e-4)
    assert e[0, 4:, 650:].abs().max() == 0  # harmonic 3 of 3 kHz is above 8 kHz
    assert e[0, 2:4, 650:].abs().max() > 0  # harmonic 2 (6 kHz) is below


def test_pulse_source_is_a_flat_unit_power_pulse_train_where_voiced():
    f0 = torch.tensor([[0.0] * 4 + [250.0] * 60 + [0.0] * 4], dtype=torch.float64)
    pulses, voiced = pulse_source(f0, 100, 16000)[0]
    assert pulses[:400].abs().max() == 0 and pulses[-400:].abs().max() == 0
    assert voiced[:400].sum() == 0 and bool((voiced[400:6400] == 1).all())
    steady = pulses[1000:5800]  # 75 whole periods of 64 samples, away from the voicing edges
    assert abs(float((steady**2).mean()) - 1) < 1e-6
    # One pulse per period, and all 31 harmonics below 8 kHz at one amplitude (a flat source).
    assert bool((steady.reshape(-1, 64).argmax(dim=1) == steady[:64].argmax()).all())
    amplitudes = torch.fft.rfft(steady).abs() / len(steady)
    harmonics = amplitudes[75 * torch.arange(1, 32)]
    assert torch.allclose(harmonics, torch.full_like(harmonics, math.sqrt(2 / 31) / 2), rtol=1e-6)
    assert amplitudes.sum() - harmonics.sum() < 1e-6 * amplitudes.sum()


def test_a_harmonic_source_without_pitch_or_noise_is_refused_naming_the_field():
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quality.toml"
    with pytest.raises(RecipeError, match=r"\[student.iaf\] harmonic_source needs pitch"):
        build_student(load_recipe(recipe, ['conditioning.pitch="none"']))
    with pytest.raises(RecipeError, match=r"\[student.squeezewave\] source_noise must be > 0"):
        build_student(
            load_recipe(recipe, ["student.squeezewave.source_noise=0.0"]), kind="squeezewave"
        )


def test_pulse_source_continues_a_passed_phase():
    torch.manual_seed(0)
    f0 = 100 + 100 * torch.rand(1, 12, dtype=torch.float64)
    phase = excitation_phase(f0, 64, 16000)
    whole = pulse_source(f0, 64, 16000)
    right = pulse_source(f0[:, 6:], 64, 16000, phase[:, 6 * 64 :])
    # Half a frame in, F0's interpolation no longer sees the cut.
    torch.testing.assert_close(right[..., 32:], whole[..., 6 * 64 + 32 :], atol=1e-9, rtol=0)


def test_excitation_phase_is_continuous_across_chunks():
    torch.manual_seed(0)
    f0 = 100 + 100 * torch.rand(1, 12)
    whole = harmonic_excitation(f0, 64, 16000, 4)
    phase = excitation_phase(f0, 64, 16000)
    left = harmonic_excitation(f0[:, :6], 64, 16000, 4, phase[:, : 6 * 64])
    right = harmonic_excitation(f0[:, 6:], 64, 16000, 4, phase[:, 6 * 64 :])
    joined = torch.cat([left, right], dim=-1)
    # Away from the cut the chunks agree with the whole; at the cut there is no phase jump.
    assert torch.allclose(joined[..., :300], whole[..., :300], atol=1e-4)
    step = (joined[0, 0, 6 * 64] - joined[0, 0, 6 * 64 - 1]).abs()
    assert step < 2 * math.pi * 200 / 16000 + 1e-3


def _pitch_teacher(**options) -> WaveNet:
    model = tiny_teacher("gaussian", hop_length=16, n_harmonics=3, sample_rate=16000, **options)
    with torch.no_grad():
        model.stack.head_out.weight.normal_(0, 0.3)
    return model


def test_teacher_location_moves_with_the_excitation():
    model = _pitch_teacher()
    feats = torch.randn(1, 8, 4, dtype=torch.float64)
    x = 0.1 * torch.randn(1, 1, 64, dtype=torch.float64)
    voiced = model(x, model.condition(feats, f0=torch.full((1, 4), 150.0, dtype=torch.float64)))
    other = model(x, model.condition(feats, f0=torch.full((1, 4), 300.0, dtype=torch.float64)))
    unvoiced = model(x, model.condition(feats, f0=torch.zeros(1, 4, dtype=torch.float64)))
    assert not torch.allclose(voiced[:, 0], other[:, 0])
    assert model.conditioner.out_channels == 8 + 6
    with pytest.raises(ValueError, match="pitch"):
        model.condition(feats)
    assert unvoiced.shape == voiced.shape


def test_pitch_teacher_is_causal_and_naive_matches_teacher_forcing():
    model = _pitch_teacher()
    cond = model.condition(
        torch.randn(1, 8, 3, dtype=torch.float64),
        f0=torch.tensor([[120.0, 0.0, 180.0]], dtype=torch.float64),
    )
    generated, _ = model.generate(cond, "naive", temperature=0.0)
    params = model(generated, cond)
    mean, _ = model.head.split(params)
    assert torch.allclose(generated, mean.clamp(-1, 1), atol=1e-9)
    x = torch.rand(1, 1, 48, dtype=torch.float64).requires_grad_()
    (grad,) = torch.autograd.grad(model(x, cond)[0, :, 20].sum(), x)
    assert grad[0, 0, 20:].abs().max() == 0


def test_iaf_shift_carries_the_excitation():
    torch.manual_seed(0)
    student = IAFStudent(
        ConditioningSpec(8, 16, sample_rate=16000, n_harmonics=3),
        base="gaussian",
        flow_layers=(2, 2),
        layers_per_cycle=2,
        channels=8,
    ).double()
    with torch.no_grad():
        for flow in student.flow.flows:
            flow.net.head_out.weight.normal_(0, 0.3)
    feats = torch.randn(1, 8, 4, dtype=torch.float64)
    z = torch.randn(1, 1, 64, dtype=torch.float64)
    a = student.flow(z, student.condition(feats, f0=torch.full((1, 4), 150.0).double()))[0]
    b = student.flow(z, student.condition(feats, f0=torch.full((1, 4), 250.0).double()))[0]
    assert not torch.allclose(a, b)
    x, log_q = student.rsample_and_log_prob(
        student.condition(feats, f0=torch.full((1, 4), 150.0).double())
    )
    cond = student.condition(feats, f0=torch.full((1, 4), 150.0).double())
    assert torch.allclose(student.log_prob(x, cond), log_q, atol=1e-6)


def _pitch_squeezewave() -> SqueezeWave:
    """A tiny SqueezeWave (fold 8, hop 16) with pitch, its harmonic weights made non-zero."""
    torch.manual_seed(0)
    spec = ConditioningSpec(8, 16, sample_rate=16000, n_harmonics=3)
    student = SqueezeWave(spec, **SqueezeWave.PRESETS["tiny"]).double()
    with torch.no_grad():
        for layer in student.modules():
            if isinstance(layer, HarmonicShift):
                layer.weights.bias.fill_(0.5)
    return student


def test_harmonic_shift_starts_as_the_identity_and_keeps_volume():
    layer = HarmonicShift(8, 5, 4)
    z, cond = torch.randn(2, 8, 6), torch.randn(2, 5 + 4 * 8, 6)
    x, logdet = layer(z, cond)
    assert torch.equal(x, z) and torch.equal(logdet, torch.zeros(2))
    torch.nn.init.normal_(layer.weights.parametrizations.weight.original0)
    x, logdet = layer(z, cond)
    assert not torch.allclose(x, z) and torch.equal(logdet, torch.zeros(2))


def test_squeezewave_adds_the_excitation_to_its_output():
    student = _pitch_squeezewave()
    feats = torch.randn(1, 8, 32, dtype=torch.float64)
    voiced = torch.full((1, 32), 250.0, dtype=torch.float64)
    cond = {
        name: student.condition(feats, f0=f0) for name, f0 in [("on", voiced), ("off", 0 * voiced)]
    }
    # cond = [frame features | 2K excitation signals folded 8 per step]
    assert cond["on"].shape == (1, student.conditioner.frame_channels + 6 * 8, 64)
    mean = {name: student.sample(c, temperature=0.0)[0, 0] for name, c in cond.items()}
    difference = mean["on"] - mean["off"]  # the weighted harmonics of 250 Hz, nothing else
    spectrum = torch.fft.rfft(difference).abs()  # 512 samples: bins of 31.25 Hz
    harmonic_bins = [8, 16, 24]  # 250, 500, 750 Hz
    assert spectrum[harmonic_bins].sum() > 0.95 * spectrum.sum()
    x, log_q = student.rsample_and_log_prob(cond["on"])
    assert torch.allclose(student.log_prob(x, cond["on"]), log_q, atol=1e-8)


def test_squeezewave_predicts_f0_for_bare_mels():
    student = _pitch_squeezewave()
    f0 = student.conditioner.f0_predictor(torch.randn(2, 8, 6, dtype=torch.float64))
    assert f0.shape == (2, 6) and (f0 >= 0).all()
    with pytest.raises(ValueError, match="pitch"):
        student.condition(torch.randn(1, 8, 4, dtype=torch.float64))


def test_f0_predictor_learns_a_mel_to_f0_mapping():
    torch.manual_seed(0)
    predictor = F0Predictor(n_mels=8, channels=16)
    f0 = torch.where(torch.rand(16, 20) > 0.3, 100 + 200 * torch.rand(16, 20), torch.zeros(16, 20))
    feats = torch.cat(
        [
            torch.log(f0.clamp_min(1) / 100)[:, None],
            (f0 > 0).float()[:, None],
            torch.randn(16, 6, 20),
        ],
        dim=1,
    )
    optimizer = torch.optim.Adam(predictor.parameters(), 2e-2)
    first = float(predictor.loss(feats, f0))
    for _ in range(120):
        optimizer.zero_grad()
        loss = predictor.loss(feats, f0)
        loss.backward()
        optimizer.step()
    assert float(loss) < first / 4
    predicted = predictor(feats)
    assert ((predicted > 0) == (f0 > 0)).float().mean() > 0.9


def test_aligned_phase_finds_the_fundamentals_offset():
    import math

    from wavflow.nn.conditioning import aligned_phase, excitation_phase

    rate, hop, frames = 16000, 256, 40
    f0 = torch.full((1, frames), 150.0)
    phase = excitation_phase(f0, hop, rate)[0]
    offset = 1.1  # the recording's fundamental is ahead of the accumulated phase by this much
    audio = 0.5 * torch.cos(phase + offset) + 0.1 * torch.cos(2 * (phase + offset) + 0.3)
    aligned = aligned_phase(audio[None].float(), f0, hop, rate)[0]
    error = torch.remainder(aligned - phase - offset + math.pi, 2 * math.pi) - math.pi
    assert error[2 * hop : -2 * hop].abs().max() < 0.01  # (edges: the low-pass is cut off)


def test_a_phase_aligned_teacher_trains_with_the_aligned_excitation(monkeypatch):
    from wavflow import objectives

    model = _pitch_teacher(align_phase=True)
    seen = []
    real = objectives.aligned_phase
    monkeypatch.setattr(objectives, "aligned_phase", lambda *a: seen.append(a) or real(*a))
    objective = objectives.likelihood_objective("teacher", model, None)
    batch = {
        "audio": 0.1 * torch.randn(2, 1, 64, dtype=torch.float64),
        "feats": torch.randn(2, 8, 4, dtype=torch.float64),
        "f0": torch.full((2, 4), 120.0, dtype=torch.float64),
        "speaker": torch.zeros(2, dtype=torch.long),
    }
    losses = objective.loss(batch)
    assert seen and torch.isfinite(losses["nll"])
    unaligned = objectives.LikelihoodLoss(model)(batch)["nll"]
    assert not torch.equal(losses["nll"], unaligned)  # the phase changed the excitation
    # Validation (and so best.pt) scores the objective that training minimises.
    assert objective.validate(model, [batch])["nll"] == pytest.approx(float(losses["nll"]))

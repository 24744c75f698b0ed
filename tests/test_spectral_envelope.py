"""The spectrally shaped prior (`SpectralEnvelope`): its filter is the mel's envelope, minimum
phase, crossfaded between frames without changing a time-invariant filter, and an IAF student
built with it trains from a recipe. Log-det and round trip: tests/test_flows.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wavflow.audio import log_mel
from wavflow.config import FeatureConfig, load_recipe
from wavflow.flows.spectral_envelope import SpectralEnvelope, minimum_phase
from wavflow.nn.conditioning import pack_mels

SPEECH = FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=256, win_length=1024, n_mels=80)
DB = 20 / np.log(10)


def _vowel(seconds: float = 1.0, f0: float = 120.0) -> torch.Tensor:
    """(1, T) a pulse train through two resonances (500 and 1,500 Hz) plus a little noise."""
    rate = SPEECH.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    pulses = np.zeros_like(t)
    pulses[(np.arange(0, len(t), rate / f0)).astype(int)] = 1.0
    signal = pulses
    for centre, bandwidth in ((500.0, 80.0), (1500.0, 120.0)):
        radius = np.exp(-np.pi * bandwidth / rate)
        theta = 2 * np.pi * centre / rate
        a1, a2 = -2 * radius * np.cos(theta), radius**2
        out = np.zeros_like(signal)
        for n in range(len(signal)):
            out[n] = signal[n] - a1 * out[n - 1] * (n >= 1) - a2 * out[n - 2] * (n >= 2)
        signal = out
    signal = signal + 1e-3 * np.random.default_rng(0).standard_normal(len(t))
    return torch.tensor(0.3 * signal / np.abs(signal).max(), dtype=torch.float32)[None]


def test_white_noise_through_the_filter_has_the_mels_spectrum() -> None:
    """Unit noise filtered by the envelope of a vowel's mel comes back with that mel: within
    3 dB on average in each quarter of the bands below 4 kHz (where the vowel has its energy),
    so both the level and the shape are right (a missing window normalisation would be 26 dB
    off). The lowest quarter comes out about 2.5 dB loud: there the mel bands resolve the
    harmonics, and interpolating their log levels fills the valleys between them. Frame by
    frame a noise-excited resonance fluctuates by several dB, so frames are not compared."""
    audio = _vowel()
    mel = log_mel(audio, SPEECH)
    layer = SpectralEnvelope(SPEECH, taps=SPEECH.n_fft)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 1, mel.shape[-1] * SPEECH.hop_length, generator=generator)
    with torch.no_grad():
        x, _ = layer(noise, pack_mels(mel, SPEECH.hop_length))
    difference = (log_mel(x[:, 0], SPEECH) - mel)[0, :, 1:-1].numpy() * DB  # (bands, frames)
    quarters = [difference[start : start + 14].mean() for start in (4, 18, 32, 46)]
    assert max(abs(q) for q in quarters) < 3.0, quarters


def test_minimum_phase_keeps_the_magnitude_and_starts_at_its_peak() -> None:
    frequencies = torch.linspace(0, 1, 257, dtype=torch.float64)
    log_magnitude = torch.stack([torch.cos(3 * frequencies), -2 * frequencies])  # smooth
    response = minimum_phase(log_magnitude, n_fft=512, taps=512)
    torch.testing.assert_close(torch.fft.rfft(response).abs().log(), log_magnitude)
    assert (response[:, 0] > 0).all()
    # Minimum phase puts the energy first: more of it in the first 4 taps than the
    # zero-phase (symmetric) response of the same magnitude has in its first 4 around 0.
    zero_phase = torch.fft.irfft(log_magnitude.exp(), n=512)
    early = response[:, :4].square().sum(1)
    assert (early > zero_phase[:, :4].square().sum(1)).all()


def test_a_constant_mel_is_one_time_invariant_causal_filter() -> None:
    """With every frame alike the crossfade must vanish: x is y convolved with h_0."""
    features = FeatureConfig(sample_rate=16000, n_fft=64, hop_length=16, win_length=64, n_mels=8)
    layer = SpectralEnvelope(features, taps=40).double()
    frames = 6
    mel = (torch.linspace(-1, -4, 8, dtype=torch.float64)[None, :, None]).expand(1, 8, frames)
    cond = pack_mels(mel, 16)
    y = torch.randn(1, 1, frames * 16, dtype=torch.float64)
    with torch.no_grad():
        x, logdet = layer(y, cond)
        response = layer.filters(cond, torch.float64)[0, 0].numpy()
    expected = np.convolve(y[0, 0].numpy(), response)[: frames * 16]
    np.testing.assert_allclose(x[0, 0].numpy(), expected, atol=1e-12)
    assert logdet.item() == pytest.approx(frames * 16 * np.log(response[0]))


def test_envelope_taps_needs_the_envelope() -> None:
    recipe = load_recipe(None, ['student.kind="iaf"', "student.iaf.envelope_taps=64"])
    from wavflow.checkpoint import build_student

    with pytest.raises(ValueError, match="envelope_taps needs envelope = true"):
        build_student(recipe)
    recipe = load_recipe(
        None,
        ['student.kind="iaf"', "student.iaf.envelope_taps=64", "student.iaf.envelope=true"],
    )
    student = build_student(recipe)
    assert student.receptive_field == 64 + sum(step.receptive_field for step in student.steps)

"""Linear prediction from the mel: the Levinson fit, its calibration on known spectra, and the
prediction and synthesis filters as exact inverses, whole or in chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.signal
import torch

from wavflow.audio import log_mel
from wavflow.config import FeatureConfig
from wavflow.nn.lpc import LinearPrediction, levinson

FEATURES = FeatureConfig(
    sample_rate=16000, n_fft=1024, hop_length=256, win_length=1024, n_mels=80, fmax=8000.0
)


def test_levinson_solves_the_normal_equations() -> None:
    lags = np.arange(13)
    autocorrelation = np.exp(-0.2 * lags) * np.cos(0.7 * lags) + 0.5 * 0.9**lags
    r = torch.tensor(autocorrelation)
    coefficients, error = levinson(r[None], 12)
    expected = scipy.linalg.solve_toeplitz(autocorrelation[:12], autocorrelation[1:])
    np.testing.assert_allclose(coefficients[0].numpy(), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(float(error[0]), r[0] - (expected * autocorrelation[1:]).sum())


def _mels_of(audio: np.ndarray) -> torch.Tensor:
    return log_mel(torch.tensor(audio, dtype=torch.float32)[None], FEATURES).double()


def test_white_noise_gives_its_level_and_no_prediction() -> None:
    noise = 0.05 * np.random.default_rng(0).standard_normal(16000)
    lpc = LinearPrediction(FEATURES, 16)
    coefficients, log_gain = lpc.frames(_mels_of(noise))
    inner = slice(4, -4)  # frames away from the edges' padding
    np.testing.assert_allclose(log_gain[0, inner].median(), math.log(0.05), atol=0.15)
    # The fit follows each frame's random periodogram a little, but predicts nothing.
    x = torch.tensor(noise[: coefficients.shape[1] * FEATURES.hop_length])[None, None]
    residual = x - lpc.predict(x, lpc.per_sample(coefficients))
    assert 0.9 < float(residual.var() / x.var()) < 1.1


def test_a_resonance_is_found_and_its_excitation_has_unit_variance() -> None:
    """Noise through a pole pair at 500 Hz (radius 0.95): the fit recovers the resonance, and
    the residual normalised by the gain is white with variance about 1."""
    rng = np.random.default_rng(1)
    pole = 0.95 * np.exp(2j * np.pi * 500 / FEATURES.sample_rate)
    denominator = np.poly([pole, pole.conjugate()]).real
    audio = scipy.signal.lfilter([0.02], denominator, rng.standard_normal(32000))
    lpc = LinearPrediction(FEATURES, 16)
    coefficients, log_gain = lpc.frames(_mels_of(audio))
    roots = np.roots(np.concatenate([[1.0], -coefficients[0, 40].numpy()]))
    strongest = roots[np.argmax(np.abs(roots))]
    assert abs(abs(np.angle(strongest)) * FEATURES.sample_rate / (2 * np.pi) - 500) < 60
    assert np.abs(roots).max() < 1  # a stable synthesis filter
    frames = coefficients.shape[1]
    x = torch.tensor(audio[: frames * FEATURES.hop_length])[None, None]
    residual = x - lpc.predict(x, lpc.per_sample(coefficients))
    normalised = residual[0, 0] / torch.exp(lpc.per_sample(log_gain[..., None]))[0, 0]
    variance = float(normalised[8 * 256 : -8 * 256].var())
    assert 0.6 < variance < 1.4
    assert x[0, 0].var() / residual[0, 0].var() > 30  # about 20 dB of prediction gain


def _random_frames(batch: int, frames: int) -> torch.Tensor:
    """Stable per-frame predictors of order 6 (from random reflection coefficients)."""
    generator = torch.Generator().manual_seed(2)
    reflections = 0.9 * (
        2 * torch.rand(batch, frames, 6, generator=generator, dtype=torch.float64) - 1
    )
    rows = []
    for k in reflections.reshape(-1, 6).numpy():  # step-up recursion
        a = np.zeros(0)
        for value in k:
            a = np.concatenate([a - value * a[::-1], [value]])
        rows.append(a)
    return torch.tensor(np.array(rows)).reshape(batch, frames, 6)


def test_synthesis_inverts_the_prediction_whole_and_in_chunks() -> None:
    features = FeatureConfig(sample_rate=16000, n_mels=8, hop_length=4, n_fft=16, win_length=16)
    lpc = LinearPrediction(features, 6)
    coefficients = _random_frames(3, 12)
    excitation = torch.randn(3, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x, history = lpc.synthesize(excitation, coefficients)
    residual = x[:, None] - lpc.predict(x[:, None], lpc.per_sample(coefficients))
    torch.testing.assert_close(residual[:, 0], excitation, rtol=0, atol=1e-10)
    torch.testing.assert_close(history, x[:, -6:], rtol=0, atol=0)
    # In chunks of 5 and 7 frames, each continuing the history the last returned.
    first, history = lpc.synthesize(excitation[:, :20], coefficients[:, :5])
    second, _ = lpc.synthesize(excitation[:, 20:], coefficients[:, 5:], history)
    torch.testing.assert_close(torch.cat([first, second], -1), x, rtol=0, atol=1e-12)
    # Rows that stop early are zero after their length, their history at it.
    lengths = torch.tensor([48, 13, 0])
    short, history = lpc.synthesize(excitation, coefficients, lengths=lengths)
    torch.testing.assert_close(short[0], x[0], rtol=0, atol=0)
    torch.testing.assert_close(short[1, :13], x[1, :13], rtol=0, atol=0)
    assert (short[1, 13:] == 0).all() and (short[2] == 0).all()
    torch.testing.assert_close(history[1], x[1, 7:13], rtol=0, atol=0)


def test_rejects_an_order_the_spectrum_cannot_carry() -> None:
    with pytest.raises(ValueError, match="lpc_order"):
        LinearPrediction(FEATURES, FEATURES.n_fft // 2)

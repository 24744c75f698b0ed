"""Copy-synthesis metrics: each checked against a value known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch

from wavflow import metrics
from wavflow.audio import log_mel
from wavflow.config import FeatureConfig
from wavflow.corpus import default_speakers, synthesize_utterance

RATE = 16000
FEATURES = FeatureConfig(sample_rate=RATE, n_fft=1024, hop_length=256, win_length=1024)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """3 s of the built-in corpus's speech-like audio (pauses included), float64."""
    audio, _ = synthesize_utterance(np.random.default_rng([0, 0]), default_speakers()[0], RATE, 3)
    return audio.astype(np.float64)


def _with_noise(audio: np.ndarray, snr_db: float) -> np.ndarray:
    noise = np.random.default_rng(1).standard_normal(len(audio))
    return audio + noise * np.sqrt(np.mean(audio**2) / 10 ** (snr_db / 10))


def test_pesq_and_stoi_of_audio_against_itself_are_at_their_maxima(speech):
    assert metrics.pesq_wideband(speech, speech, RATE) == pytest.approx(4.644, abs=0.01)
    assert metrics.short_time_objective_intelligibility(speech, speech, RATE) == pytest.approx(1)


def test_pesq_and_stoi_fall_monotonically_with_added_noise(speech):
    noisy = [_with_noise(speech, snr) for snr in (30, 20, 10)]
    pesq = [metrics.pesq_wideband(speech, y, RATE) for y in noisy]
    stoi = [metrics.short_time_objective_intelligibility(speech, y, RATE) for y in noisy]
    assert 4.64 > pesq[0] > pesq[1] > pesq[2] >= 1.0
    assert 1.0 > stoi[0] > stoi[1] > stoi[2] > 0.5


def test_pesq_resamples_other_rates_to_16k(speech):
    noisy = _with_noise(speech, 20)
    at_16k = metrics.pesq_wideband(speech, noisy, RATE)
    up = [scipy.signal.resample_poly(x, 3, 2) for x in (speech, noisy)]  # 24 kHz
    assert metrics.pesq_wideband(*up, 24000) == pytest.approx(at_16k, abs=0.1)


def test_mcd_ignores_gain_because_c0_is_excluded(speech):
    assert metrics.mel_cepstral_distortion(speech, 0.3 * speech, RATE) < 0.05
    assert metrics.mel_cepstral_distortion(speech, speech, RATE) == 0.0


@pytest.mark.parametrize("alpha", [0.0, None])
def test_mcd_of_a_first_order_filter_equals_its_cepstral_distance(speech, alpha):
    """H(z) = 1 - a z^-1 multiplies each frame's spectrum by |H|; its (minimum-phase) cepstrum
    is c_n = -a^n / n, so unwarped MCD = (10 sqrt 2 / ln 10) sqrt(sum_{n=1}^{24} a^2n / n^2).
    Warped, the cepstrum is the cosine series of log|H| over the all-pass-warped frequency."""
    a = 0.5
    filtered = scipy.signal.lfilter([1.0, -a], [1.0], speech)
    if alpha == 0.0:
        n = np.arange(1, metrics.MCD_ORDER + 1)
        cepstrum = -(a**n) / n
    else:
        warp = metrics.mcd_alpha(RATE)
        beta = np.linspace(0, np.pi, 20001)
        # Linear frequency that the warped frequency beta maps from (all-pass with -alpha).
        omega = beta - 2 * np.arctan(warp * np.sin(beta) / (1 + warp * np.cos(beta)))
        log_h = np.log(np.abs(1 - a * np.exp(-1j * omega)))
        n = np.arange(1, metrics.MCD_ORDER + 1)
        cepstrum = 2 / np.pi * np.trapezoid(log_h * np.cos(n[:, None] * beta), beta, axis=1)
    expected = 10 * math.sqrt(2) / math.log(10) * np.sqrt(np.sum(cepstrum**2))
    measured = metrics.mel_cepstral_distortion(speech, filtered, RATE, alpha=alpha)
    assert measured == pytest.approx(expected, rel=0.01)


def _tone_between_silences() -> np.ndarray:
    """A 150 Hz harmonic complex of 64 frames (about 1 s) with 32 frames of digital silence
    on each side, so that frames wholly in the gaps are the silent ones."""
    t = np.arange(64 * 256) / RATE
    tone = 0.1 * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20))
    gap = np.zeros(32 * 256)
    return np.concatenate([gap, tone, gap])


def test_silence_floor_measures_an_added_noise_floor():
    clean = _tone_between_silences()
    noise = 1e-4 * np.random.default_rng(0).standard_normal(len(clean))
    real, fake = clean + noise, clean + 10 * noise
    assert metrics.silence_floor(real, fake, FEATURES) == pytest.approx(20.0, abs=0.01)
    assert metrics.silence_floor(real, real, FEATURES) == 0.0
    # Every band of a silent frame is 20 dB up; in tone frames only the bands above the
    # harmonics are, so the speech-frame distance is smaller.
    speech = metrics.log_mel_distance(real, fake, FEATURES, speech_only=True)
    assert speech < 15.0 < metrics.log_mel_distance(real, fake, FEATURES) < 20.0
    tone = clean[32 * 256 : -32 * 256]
    assert math.isnan(metrics.silence_floor(tone, tone, FEATURES))


def test_log_mel_distance_in_db_of_a_gain():
    real = _tone_between_silences()
    real = real + 1e-3 * np.random.default_rng(0).standard_normal(len(real))
    assert metrics.log_mel_distance(real, 2 * real, FEATURES) == pytest.approx(20 * math.log10(2))


def test_f0_errors_on_known_tracks():
    real = np.array([100.0, 100.0, 200.0, 0.0, 0.0, 150.0])
    fake = np.array([100.0 * 2 ** (1 / 12), 100.0, 0.0, 0.0, 120.0, 150.0])
    errors = metrics.f0_errors(real, fake)
    assert errors["f0_rmse_cents"] == pytest.approx(math.sqrt(100**2 / 3))
    assert errors["vuv_error"] == pytest.approx(2 / 6)
    assert errors["voiced_recall"] == pytest.approx(3 / 4)
    assert math.isnan(metrics.f0_errors(real, np.zeros(6))["f0_rmse_cents"])


def test_griffin_lim_inverts_the_log_mel_on_the_same_frames(speech):
    audio = speech[: len(speech) // 256 * 256].astype(np.float32)
    mel = log_mel(torch.from_numpy(audio)[None], FEATURES)[0]
    anchor = metrics.griffin_lim(mel, FEATURES)
    assert anchor.shape == audio.shape and np.isfinite(anchor).all()
    # Misaligned frames or a wrong filterbank would leave the mel far off and STOI low.
    assert metrics.log_mel_distance(audio, anchor, FEATURES, speech_only=True) < 4.0
    assert metrics.short_time_objective_intelligibility(audio, anchor, RATE) > 0.85


def test_dnsmos_is_optional(speech):
    if not metrics.dnsmos_available():
        pytest.skip("speechmos is not installed (pip install 'wavflow[dnsmos]')")
    assert 1.0 <= metrics.dnsmos_overall(speech, RATE) <= 5.0

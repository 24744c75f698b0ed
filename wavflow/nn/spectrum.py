"""The spectral envelope a log-mel implies, as a magnitude on the rfft bins.

A mel frame says how much energy fell in each band. Read as a smooth spectrum (levels
interpolated linearly in frequency between band centres) and calibrated against unit white
noise, it gives |H(f)|, the magnitude of the filter that turns unit white noise into a signal
with that mel. `SpectralEnvelope` (a student's prior) takes its minimum-phase response, and
`LinearPrediction` (the teacher's) the all-pole fit of its power |H|^2.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from wavflow.audio import mel_filterbank
from wavflow.config import FeatureConfig


def band_interpolation(features: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(n_freq, n_mels) weights that interpolate per-band log levels linearly in frequency
    between band centres (held beyond the first and last), and the bands' log gains.

    A flat magnitude A gives band b the mel value A * sum_f M[b, f]; subtracting the log of
    that sum turns a log-mel into the log magnitude of the flat spectrum it would come from.
    """
    basis = mel_filterbank(
        features.sample_rate,
        features.n_fft,
        features.n_mels,
        features.fmin,
        features.fmax,
        features.mel_norm,
    )
    freqs = np.arange(basis.shape[1]) * features.sample_rate / features.n_fft
    gain = basis.sum(axis=1)
    # A band narrower than the bin spacing can be empty (few bins, many bands): it says
    # nothing about the spectrum, so the interpolation skips it.
    used = np.flatnonzero(gain > 0)
    centres = (basis[used] * freqs).sum(axis=1) / gain[used]
    weights = np.zeros((len(freqs), len(gain)))
    if len(used) == 1:
        weights[:, used[0]] = 1.0
        return weights, np.log(np.where(gain > 0, gain, 1.0))
    upper = np.clip(np.searchsorted(centres, freqs), 1, len(used) - 1)
    gap = centres[upper] - centres[upper - 1]  # 0 where two bands share their only bin
    fraction = np.clip((freqs - centres[upper - 1]) / np.where(gap > 0, gap, 1.0), 0, 1)
    rows = np.arange(len(freqs))
    weights[rows, used[upper - 1]] = 1 - fraction
    weights[rows, used[upper]] += fraction
    return weights, np.log(np.where(gain > 0, gain, 1.0))


def noise_calibration(features: FeatureConfig) -> np.ndarray:
    """Per-bin log gain from a mel's magnitude to the filter that makes unit white noise
    have that magnitude: the STFT of unit noise has E|X| = sqrt(pi / 4 * sum w^2) (Rayleigh);
    with pre-emphasis the mel saw x filtered by 1 - a e^{-iw}, which the filter must undo."""
    window = np.hanning(features.win_length + 1)[:-1]
    if features.window == "hamming":
        window = np.hamming(features.win_length + 1)[:-1]
    offset = 0.5 * math.log(math.pi / 4 * float((window**2).sum()))
    omega = np.pi * np.arange(features.n_fft // 2 + 1) / (features.n_fft // 2)
    emphasis = np.abs(1 - features.preemphasis * np.exp(-1j * omega))
    return -offset - np.log(np.maximum(emphasis, 1e-2))


def envelope_log_magnitude(
    mels: Tensor, interpolation: Tensor, band_gain: Tensor, calibration: Tensor
) -> Tensor:
    """Natural-log mels (B, n_mels, F) -> log |H| (B, F, n_fft // 2 + 1) in the mels' dtype,
    from `band_interpolation`'s weights and band gains and `noise_calibration`."""
    dtype = mels.dtype
    levels = mels - band_gain.to(dtype)[:, None]  # (B, n_mels, F)
    log_magnitude = torch.einsum("fb,nbj->njf", interpolation.to(dtype), levels)
    return log_magnitude + calibration.to(dtype)

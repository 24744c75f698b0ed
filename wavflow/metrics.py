"""Copy-synthesis quality metrics: the figures vocoder papers report, as pure functions.

Each metric compares the real audio (`real`) with the audio under test (`fake`) made from the
real audio's mel, so both have the same timing: frames are aligned one to one, no DTW. Waveforms
are float in [-1, 1] at `sample_rate`, numpy or torch, shaped (T,), (1, T) or (1, 1, T) for one
utterance; the log-mel and MCD functions also take batches (B, T) or (B, 1, T), pooling frames.

| metric | unit, range | computed by |
|---|---|---|
| `pesq_wideband` | MOS-LQO 1.04-4.64 | `pesq` (ITU-T P.862.2), at 16 kHz |
| `short_time_objective_intelligibility` | 0-1 | `pystoi` (classic STOI) |
| `mel_cepstral_distortion` | dB, speech frames | `pysptk` (sp2mc warping, c0 excluded) |
| `log_mel_distance` | dB RMS, all or speech frames | wavflow's `log_mel` |
| `silence_floor` | dB, silent frames | wavflow's `log_mel` |
| `f0_errors` | cents, error rates | pyin (`librosa`) via `track_f0` |
| `dnsmos_overall` | 1-5, optional | `speechmos` (a noise-suppression quality predictor) |

A frame is *silent* when the real audio's frame energy is more than `SILENCE_DB` below its
loudest frame, and a *speech* frame otherwise. `griffin_lim` makes the untrained anchor that
every vocoder must beat: audio from the same log-mel by 32 Griffin-Lim iterations.

References:
    Rix et al., "Perceptual evaluation of speech quality (PESQ)", ICASSP 2001; ITU-T P.862.2.
    Taal et al., "An algorithm for intelligibility prediction of time-frequency weighted noisy
    speech", IEEE TASLP 2011 (STOI).
    Kubichek, "Mel-cepstral distance measure for objective speech quality assessment", 1993.
    Mauch and Dixon, "pYIN", ICASSP 2014.
    Reddy et al., "DNSMOS", arXiv:2010.15258.
    Griffin and Lim, "Signal estimation from modified short-time Fourier transform", 1984;
    Perraudin et al., "A fast Griffin-Lim algorithm", WASPAA 2013.
"""

from __future__ import annotations

import functools
import math
import warnings
from types import ModuleType

import numpy as np
import scipy.signal
import torch
from torch import Tensor

from wavflow.audio import estimate_f0, log_mel, resample, stft_magnitude
from wavflow.config import FeatureConfig

# pesq, pystoi, pysptk and librosa are imported inside the functions that use them: training
# imports this module (through validation), and the GPU machine that trains has none of them.

SILENCE_DB = 40.0
PESQ_RATE = 16000
DB_PER_NEPER = 20.0 / math.log(10.0)
MCD_CONSTANT = 10.0 * math.sqrt(2.0) / math.log(10.0)
MCD_ORDER = 24
MCD_WINDOW_SECONDS = 0.025
MCD_HOP_SECONDS = 0.005
# Power floor (-100 dB re full scale) so that digital silence has a finite log spectrum.
POWER_FLOOR = 1e-10

Audio = np.ndarray | Tensor


def _batch(audio: Audio) -> Tensor:
    """Any waveform -> (B, T) float32 tensor on the CPU; a 1-D input is one item."""
    audio = torch.as_tensor(audio).detach().float().cpu()
    return audio.reshape(1, -1) if audio.ndim == 1 else audio.reshape(audio.shape[0], -1)


def _mono(audio: Audio) -> np.ndarray:
    """One utterance -> (T,) float64 numpy."""
    return _batch(audio).reshape(-1).double().numpy()


def _aligned(real: Audio, fake: Audio) -> tuple[np.ndarray, np.ndarray]:
    """Both as (T,) float64, cut to the shorter length."""
    real, fake = _mono(real), _mono(fake)
    n = min(len(real), len(fake))
    return real[:n], fake[:n]


def pesq_wideband(real: Audio, fake: Audio, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO of `fake` against `real`, by the `pesq` package.

    PESQ is defined at 16 kHz (wide band): other rates are resampled to 16 kHz first (soxr).
    Identical audio scores 4.64; the floor is about 1.0.

    Args:
        real, fake: one utterance each, (T,) at `sample_rate`.

    Returns:
        The score, or NaN when PESQ finds no speech in `real` (e.g. silence, under 0.25 s).
    """
    from pesq import PesqError, pesq

    real, fake = (resample(x.astype(np.float32), sample_rate, PESQ_RATE) for x in (real, fake))
    real, fake = _aligned(real, fake)
    # Dither at -120 dBFS, far below 16-bit resolution: the package divides by the output's
    # level, so a digitally silent output (a student at temperature 0, say) would crash it.
    fake = fake + 1e-6 * np.random.default_rng(0).standard_normal(len(fake))
    try:
        return float(pesq(PESQ_RATE, real, fake, "wb"))
    except PesqError:
        return math.nan


def short_time_objective_intelligibility(real: Audio, fake: Audio, sample_rate: int) -> float:
    """Classic STOI (`pystoi`, extended=False) of `fake` against `real`: 1 for identical audio.

    `pystoi` resamples to 10 kHz and drops the real audio's silent frames itself.

    Args:
        real, fake: one utterance each, (T,) at `sample_rate`.
    """
    import pystoi

    real, fake = _aligned(real, fake)
    return float(pystoi.stoi(real, fake, sample_rate, extended=False))


def frame_energy_db(audio: Audio, n_fft: int, hop_length: int, win_length: int) -> Tensor:
    """Energy of each STFT frame in dB (`stft_magnitude` framing): (B, T) -> (B, T // hop)."""
    power = stft_magnitude(_batch(audio), n_fft, hop_length, win_length).square().sum(dim=1)
    return 10.0 * torch.log10(power.clamp_min(POWER_FLOOR))


def speech_frames(
    real: Audio, n_fft: int, hop_length: int, win_length: int, silence_db: float = SILENCE_DB
) -> Tensor:
    """(B, T // hop) bool: frames within `silence_db` of each item's loudest frame."""
    energy = frame_energy_db(real, n_fft, hop_length, win_length)
    return energy > energy.amax(dim=-1, keepdim=True) - silence_db


def _feature_speech_frames(
    real: Audio, features: FeatureConfig, silence_db: float = SILENCE_DB
) -> Tensor:
    """`speech_frames` at the mel frames of `features`."""
    frames = features.n_fft, features.hop_length, features.win_length
    return speech_frames(real, *frames, silence_db=silence_db)


def log_mel_distance(
    real: Audio, fake: Audio, features: FeatureConfig, speech_only: bool = False
) -> float:
    """RMS difference of the log-mels (wavflow's `log_mel`, `features`) in dB.

    d = sqrt(mean_{bands, frames} (20 log10 mel_fake - 20 log10 mel_real)^2), over all frames
    or over the real audio's speech frames only (NaN if none).

    Args:
        real, fake: (T,) or batches (B, T) / (B, 1, T) of equal shape.
    """
    difference = DB_PER_NEPER * (log_mel(_batch(fake), features) - log_mel(_batch(real), features))
    if speech_only:
        difference = difference.transpose(1, 2)[_feature_speech_frames(real, features)]
    return float(difference.square().mean().sqrt()) if difference.numel() else math.nan


def silence_floor(
    real: Audio, fake: Audio, features: FeatureConfig, silence_db: float = SILENCE_DB
) -> float:
    """Noise floor excess in dB: mean log-mel level of `fake` minus that of `real`, over bands
    and the frames where `real` is more than `silence_db` below its loudest frame.

    A vocoder that fills pauses with hiss scores well above 0. Levels are 20 log10 of the
    mel magnitudes, floored at the features' `log_floor`.

    Returns:
        dB, NaN when `real` has no silent frame.
    """
    silent = ~_feature_speech_frames(real, features, silence_db)
    difference = DB_PER_NEPER * (log_mel(_batch(fake), features) - log_mel(_batch(real), features))
    silent_difference = difference.transpose(1, 2)[silent]  # (frames, n_mels)
    return float(silent_difference.mean()) if silent_difference.numel() else math.nan


def mcd_analysis(sample_rate: int) -> tuple[int, int, int]:
    """(n_fft, hop, window) of the MCD's STFT: a 25 ms Hann window every 5 ms."""
    hop = 2 * max(1, round(sample_rate * MCD_HOP_SECONDS / 2))  # even: n_fft - hop must be
    window = round(sample_rate * MCD_WINDOW_SECONDS)
    return 2 ** math.ceil(math.log2(window)), hop, window


@functools.lru_cache(maxsize=8)
def mcd_alpha(sample_rate: int) -> float:
    """All-pass constant whose warping best fits the mel scale (`pysptk.util.mcepalpha`)."""
    return float(_pysptk().util.mcepalpha(sample_rate))


def mel_cepstra(
    audio: Audio, sample_rate: int, order: int = MCD_ORDER, alpha: float | None = None
) -> np.ndarray:
    """Mel-cepstra c_0..c_order of every frame: `pysptk.sp2mc` of the STFT power spectrum.

    The log power spectrum's cepstrum is frequency-warped by an all-pass of constant `alpha`
    (default `mcd_alpha(sample_rate)`, 0.41 at 16 kHz), so that log|X(w)| = sum_m c_m
    cos(m beta(w)) with beta the warped (mel-like) frequency. The warping (`pysptk.freqt`) is
    linear, so it is applied to all frames at once as a matrix; the result equals sp2mc's.

    Args:
        audio: (T,) or (B, T).

    Returns:
        (B, frames, order + 1) float64, frames = T // hop of `mcd_analysis`.
    """
    alpha = mcd_alpha(sample_rate) if alpha is None else alpha
    n_fft, hop, window = mcd_analysis(sample_rate)
    power = stft_magnitude(_batch(audio), n_fft, hop, window).double().square()
    log_power = (power + POWER_FLOOR).log().transpose(1, 2).numpy()  # (B, F, n_fft // 2 + 1)
    # As sp2mc: the real cepstrum of the log power spectrum with c_0 halved, then warped.
    cepstrum = np.fft.irfft(log_power, n=n_fft, axis=-1)
    cepstrum[..., 0] /= 2.0
    return cepstrum @ _warping_matrix(n_fft, order, float(alpha))


@functools.lru_cache(maxsize=8)
def _warping_matrix(length: int, order: int, alpha: float) -> np.ndarray:
    """(length, order + 1): row i is `pysptk.freqt` of the i-th unit cepstrum."""
    freqt = _pysptk().freqt
    return np.stack([freqt(row, order, alpha) for row in np.eye(length)])


def _pysptk() -> ModuleType:
    """The pysptk module, imported on first use."""
    with warnings.catch_warnings():
        # pysptk 1.0.1 imports the deprecated pkg_resources (for its example audio only).
        warnings.simplefilter("ignore", UserWarning)
        import pysptk
    return pysptk


def mel_cepstral_distortion(
    real: Audio,
    fake: Audio,
    sample_rate: int,
    order: int = MCD_ORDER,
    alpha: float | None = None,
) -> float:
    """Mel-cepstral distortion in dB over the real audio's speech frames (aligned, no DTW).

    MCD = (10 sqrt(2) / ln 10) * mean_frames sqrt(sum_{m=1}^{order} (c_m - c'_m)^2), with the
    `mel_cepstra` of each; c_0 (the frame's level) is excluded, so a gain changes nothing.
    For SPTK-convention cepstra this is the RMS log-spectral distance in dB over warped
    frequency. Frames where `real` is more than `SILENCE_DB` below its loudest are left out:
    noise in pauses is what `silence_floor` measures.

    Args:
        real, fake: (T,) or (B, T), equal shapes.

    Returns:
        dB; NaN when no frame is speech.
    """
    difference = mel_cepstra(fake, sample_rate, order, alpha) - mel_cepstra(
        real, sample_rate, order, alpha
    )
    n_fft, hop, window = mcd_analysis(sample_rate)
    speech = speech_frames(real, n_fft, hop, window).numpy()
    distances = np.sqrt(np.square(difference[..., 1:]).sum(axis=-1))[speech]
    return float(MCD_CONSTANT * distances.mean()) if distances.size else math.nan


def track_f0(audio: Audio, features: FeatureConfig, f0_min: float, f0_max: float) -> np.ndarray:
    """pyin F0 in Hz (0 = unvoiced) at the mel frame rate over [f0_min, f0_max]: (T // hop,)."""
    return estimate_f0(_mono(audio).astype(np.float32), features, f0_min, f0_max)


def f0_errors(real_f0: np.ndarray, fake_f0: np.ndarray) -> dict[str, float]:
    """Pitch errors of F0 tracks (Hz, 0 = unvoiced) on the same frames.

    Returns:
        "f0_rmse_cents": RMS of 1200 log2(f0_fake / f0_real) on frames voiced in both (NaN
        when there are none); "vuv_error": share of frames whose voicing decisions differ;
        "voiced_recall": share of the real voiced frames voiced in the fake (NaN if none).
    """
    n = min(len(real_f0), len(fake_f0))
    real_f0, fake_f0 = np.asarray(real_f0[:n], np.float64), np.asarray(fake_f0[:n], np.float64)
    real_voiced, fake_voiced = real_f0 > 0, fake_f0 > 0
    both = real_voiced & fake_voiced
    cents = 1200.0 * np.log2(fake_f0[both] / real_f0[both])
    return {
        "f0_rmse_cents": float(np.sqrt(np.mean(cents**2))) if both.any() else math.nan,
        "vuv_error": float(np.mean(real_voiced != fake_voiced)) if n else math.nan,
        "voiced_recall": float(both.sum() / real_voiced.sum()) if real_voiced.any() else math.nan,
    }


def dnsmos_available() -> bool:
    """Whether the optional `speechmos` package (`pip install wavflow[dnsmos]`) is installed."""
    try:
        import speechmos  # noqa: F401
    except ImportError:
        return False
    return True


def dnsmos_overall(audio: Audio, sample_rate: int) -> float:
    """DNSMOS P.835 "overall" of `audio` alone, by `speechmos` at 16 kHz (resampled).

    DNSMOS is a network trained to predict listeners' ratings of *noise suppression* output;
    it is a reference-free predictor, not a listening test, so read it beside PESQ and STOI.
    """
    from speechmos import dnsmos

    audio = resample(_mono(audio).astype(np.float32), sample_rate, PESQ_RATE)
    return float(dnsmos.run(np.clip(audio, -1.0, 1.0), PESQ_RATE)["ovrl_mos"])


def griffin_lim(
    mel: np.ndarray | Tensor, features: FeatureConfig, n_iter: int = 32, seed: int = 0
) -> np.ndarray:
    """Audio from a wavflow log-mel by Griffin-Lim: the floor any trained vocoder must beat.

    Undoes `log_mel` step by step: exp; the filterbank by non-negative least squares
    (`librosa.feature.inverse.mel_to_stft` with the features' exact filterbank); the phase by
    `n_iter` iterations of `librosa.griffinlim` (its fast, momentum 0.99 variant) with the
    features' window, n_fft, hop and win and `stft_magnitude`'s framing (reflect padding of
    (n_fft - hop) / 2 each side, uncentred frames); then the pre-emphasis, if any.

    Args:
        mel: (n_mels, frames) natural-log mel magnitudes.
        features: the settings the mel was made with.

    Returns:
        (frames * hop,) float32.
    """
    import librosa

    mel = np.exp(np.asarray(torch.as_tensor(mel).double().cpu()))
    magnitude = librosa.feature.inverse.mel_to_stft(
        mel,
        sr=features.sample_rate,
        n_fft=features.n_fft,
        power=1.0,
        fmin=features.fmin,
        fmax=features.fmax,
        norm="slaney" if features.mel_norm == "slaney" else None,
    )
    pad = (features.n_fft - features.hop_length) // 2
    frames = mel.shape[-1]
    padded = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=features.hop_length,
        win_length=features.win_length,
        n_fft=features.n_fft,
        window=features.window,
        center=False,
        length=frames * features.hop_length + 2 * pad,
        random_state=seed,
    )
    audio = padded[pad : pad + frames * features.hop_length]
    if features.preemphasis:
        audio = scipy.signal.lfilter([1.0], [1.0, -features.preemphasis], audio)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)

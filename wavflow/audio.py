"""Audio I/O, resampling, mu-law, pre-emphasis and the one log-mel function (pure functions).

Waveforms are float32 in [-1, 1]: numpy `(samples,)` on disk, torch `(B, T)` or `(B, 1, T)` in
models. Mels are `(B, n_mels, frames)` natural-log magnitudes with `frames = T // hop_length`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr
import torch
from torch import Tensor

from wavflow.config import FeatureConfig

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


def check_features_match(expected: FeatureConfig, found: FeatureConfig, where: str) -> None:
    """Raise a ValueError listing every setting where `found` (from `where`) differs."""
    diffs = [
        f"{name}: expected {getattr(expected, name)!r}, {where} has {getattr(found, name)!r}"
        for name in expected.__dataclass_fields__
        if getattr(expected, name) != getattr(found, name)
    ]
    if diffs:
        raise ValueError(
            f"feature settings of {where} do not match: "
            + "; ".join(diffs)
            + ". Re-prepare the data with this recipe, or use the recipe it was made with."
        )


def load_audio(path: str | Path, sample_rate: int | None = None) -> np.ndarray:
    """Read wav/flac/ogg (integer or float), mix to mono, resample to `sample_rate` if given.

    Returns:
        (samples,) float32 in [-1, 1].

    Raises:
        AudioError: unreadable, corrupt, empty or non-finite audio, naming the file.
    """
    path = Path(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types for corrupt input
        raise AudioError(f"{path}: cannot read audio ({error})") from error
    if data.size == 0:
        raise AudioError(f"{path}: file holds no samples")
    audio = data.mean(axis=1)  # (samples, channels) -> (samples,)
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    if sample_rate is not None and rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """High-quality (soxr VHQ) resampling of a (samples,) float array."""
    if rate_in == rate_out:
        return audio
    return soxr.resample(audio, rate_in, rate_out, quality="VHQ").astype(np.float32)


def save_audio(
    path: str | Path, audio: np.ndarray | Tensor, sample_rate: int, float32: bool = False
) -> None:
    """Write (samples,) audio as 16-bit PCM wav (or float wav), clipping to [-1, 1]."""
    if isinstance(audio, Tensor):
        audio = audio.detach().float().cpu().numpy()
    audio = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sample_rate, subtype="FLOAT" if float32 else "PCM_16")


def trim_silence(audio: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    """Drop leading and trailing audio quieter than `top_db` below the peak frame."""
    trimmed, _ = librosa.effects.trim(audio, top_db=top_db)
    return trimmed


def peak_normalize(audio: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale so that max |audio| = `peak`; silence (all zeros) is returned unchanged."""
    top = float(np.abs(audio).max(initial=0.0))
    return audio if top == 0.0 else (audio * (peak / top)).astype(np.float32)


def mulaw_encode(audio: Tensor, channels: int = 256) -> Tensor:
    """Mu-law companding to integer classes 0..channels-1 of audio in [-1, 1]."""
    mu = channels - 1
    compressed = torch.sign(audio) * torch.log1p(mu * audio.abs()) / np.log1p(mu)
    return ((compressed + 1) / 2 * mu + 0.5).long().clamp(0, mu)


def mulaw_decode(classes: Tensor, channels: int = 256) -> Tensor:
    """Inverse of `mulaw_encode`: classes -> audio in [-1, 1]."""
    mu = channels - 1
    compressed = 2 * classes.float() / mu - 1
    return torch.sign(compressed) * ((1 + mu) ** compressed.abs() - 1) / mu


def preemphasis(audio: Tensor, coefficient: float) -> Tensor:
    """y_t = x_t - a x_{t-1} over the last axis (x_{-1} = 0)."""
    if coefficient == 0:
        return audio
    return torch.cat([audio[..., :1], audio[..., 1:] - coefficient * audio[..., :-1]], dim=-1)


@functools.lru_cache(maxsize=16)
def _mel_basis(cfg: FeatureConfig) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) librosa filterbank for `cfg`."""
    return librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        norm="slaney" if cfg.mel_norm == "slaney" else None,
    ).astype(np.float32)


def stft_magnitude(
    audio: Tensor, n_fft: int, hop_length: int, win_length: int, window: str = "hann"
) -> Tensor:
    """|STFT| with `frames = T // hop_length` (reflect padding of (n_fft - hop) / 2 each side).

    Args:
        audio: (B, T) or (B, 1, T) float waveform.

    Returns:
        (B, n_fft // 2 + 1, frames) magnitudes.
    """
    audio = audio.reshape(audio.shape[0], -1).float()
    pad = (n_fft - hop_length) // 2
    # Reflect padding needs pad < T; short clips fall back to zeros.
    mode = "reflect" if audio.shape[-1] > pad else "constant"
    padded = torch.nn.functional.pad(audio[:, None], (pad, pad), mode=mode)[:, 0]
    window_fn = torch.hann_window if window == "hann" else torch.hamming_window
    spec = torch.stft(
        padded,
        n_fft,
        hop_length,
        win_length,
        window_fn(win_length, device=audio.device),
        center=False,
        return_complex=True,
    )
    # Clamp before sqrt: the gradient of |z| at 0 is undefined.
    return spec.real.square().add(spec.imag.square()).clamp_min(1e-12).sqrt()


def log_mel(audio: Tensor, cfg: FeatureConfig) -> Tensor:
    """The log-mel spectrogram used by data preparation, losses and evaluation (CPU or GPU).

    mel = log(max(M |STFT(preemph(x))|, floor)), M the librosa filterbank.

    Args:
        audio: (B, T) or (B, 1, T) float in [-1, 1].
        cfg: feature settings.

    Returns:
        (B, n_mels, T // hop_length) natural-log magnitudes.
    """
    audio = preemphasis(audio.reshape(audio.shape[0], -1), cfg.preemphasis)
    magnitude = stft_magnitude(audio, cfg.n_fft, cfg.hop_length, cfg.win_length, cfg.window)
    basis = torch.from_numpy(_mel_basis(cfg)).to(magnitude.device)
    return torch.matmul(basis, magnitude).clamp_min(cfg.log_floor).log()


def estimate_f0(
    audio: np.ndarray, cfg: FeatureConfig, f0_min: float = 60.0, f0_max: float = 500.0
) -> np.ndarray:
    """F0 in Hz at the mel frame rate (pyin), 0 where unvoiced.

    Frame j of `log_mel` is centred on sample j * hop + hop / 2, so pyin runs on the audio from
    sample hop / 2 on, with centred frames of the same hop.

    Args:
        audio: (samples,) float in [-1, 1].

    Returns:
        (samples // hop_length,) float32.
    """
    frames = len(audio) // cfg.hop_length
    frame_length = max(cfg.n_fft, int(2 ** np.ceil(np.log2(3 * cfg.sample_rate / f0_min))))
    f0, voiced, _ = librosa.pyin(
        np.asarray(audio[cfg.hop_length // 2 :], dtype=np.float32),
        fmin=f0_min,
        fmax=f0_max,
        sr=cfg.sample_rate,
        frame_length=frame_length,
        hop_length=cfg.hop_length,
        center=True,
    )
    f0 = np.where(voiced & np.isfinite(f0), f0, 0.0)[:frames]
    return np.pad(f0, (0, frames - len(f0))).astype(np.float32)

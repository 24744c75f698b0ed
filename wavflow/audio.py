"""Audio I/O, resampling, mu-law, pre-emphasis and the one log-mel function (pure functions).

Waveforms are float32 in [-1, 1]: numpy `(samples,)` on disk, torch `(B, T)` or `(B, 1, T)` in
models. Mels are `(B, n_mels, frames)` natural-log magnitudes with `frames = T // hop_length`;
`convention_mel` and `from_convention_mel` convert to and from other toolkits' forms (log10,
normalised by the training split's statistics).

The filterbank and silence trimming are wavflow's own numpy, equal to librosa's: librosa, with
its numba and llvmlite, is imported only inside `estimate_f0` (pyin, run by data preparation),
so that training, synthesis, benchmarks and preparation without F0 run where it is missing.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from pathlib import Path

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
    """Raise a ValueError listing every setting where `found` (from `where`) differs; the
    measured statistics (mel_mean, mel_std) are no settings and may differ."""
    diffs = [
        f"{name}: expected {getattr(expected, name)!r}, {where} has {getattr(found, name)!r}"
        for name, setting in expected.__dataclass_fields__.items()
        if setting.compare and getattr(expected, name) != getattr(found, name)
    ]
    if diffs:
        raise AudioError(
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


# librosa.effects.trim's analysis: frames of 2048 samples every 512, centred (zero padding), and
# its power floor of 1e-10 (an amplitude of 1e-5), which keeps log10 of digital silence finite.
_TRIM_FRAME = 2048
_TRIM_HOP = 512
_TRIM_POWER_FLOOR = 1e-10


def trim_silence(audio: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    """Drop leading and trailing audio quieter than `top_db` below the loudest frame.

    Equal to `librosa.effects.trim(audio, top_db=top_db)[0]`: frame j (2048 samples centred on
    sample 512 j, zero-padded at the ends) is kept when 10 log10(p_j / max_i p_i) > -top_db,
    p the mean square floored at 1e-10; the result runs from the first kept frame's centre to
    one hop past the last one's (at most the end).

    Args:
        audio: (samples,) float.

    Returns:
        (kept,) a slice of `audio`; empty when no frame is kept.
    """
    power = _frame_power(audio)
    level_db = 10.0 * np.log10(np.maximum(power, _TRIM_POWER_FLOOR))
    kept = np.flatnonzero(level_db - level_db.max() > -top_db)
    if kept.size == 0:
        return audio[:0]
    return audio[kept[0] * _TRIM_HOP : min(len(audio), (kept[-1] + 1) * _TRIM_HOP)]


def _frame_power(audio: np.ndarray) -> np.ndarray:
    """Mean square of each centred, zero-padded trimming frame: (samples,) -> (1 + samples // 512,)
    float64."""
    padded = np.pad(np.square(audio, dtype=np.float64), _TRIM_FRAME // 2)
    windows = np.lib.stride_tricks.sliding_window_view(padded, _TRIM_FRAME)[::_TRIM_HOP]
    return windows.mean(axis=1)


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


# Slaney's mel scale (Auditory Toolbox; librosa's default, htk=False): linear below 1 kHz at
# 200/3 Hz per mel, logarithmic above it with 27 mels per factor 6.4 in frequency.
_HZ_PER_MEL = 200.0 / 3.0
_BREAK_HZ = 1000.0
_BREAK_MEL = _BREAK_HZ / _HZ_PER_MEL
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Hz -> Slaney mels: f / (200/3) below 1 kHz, 15 + ln(f / 1000) / (ln 6.4 / 27) above
    (`librosa.hz_to_mel`, htk=False). Float64, shaped as `hz`."""
    hz = np.asarray(hz, dtype=np.float64)
    # The maximum keeps the log finite on the linear branch, which np.where discards.
    above = _BREAK_MEL + np.log(np.maximum(hz, _BREAK_HZ) / _BREAK_HZ) / _LOG_STEP
    return np.where(hz >= _BREAK_HZ, above, hz / _HZ_PER_MEL)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of `hz_to_mel` (`librosa.mel_to_hz`, htk=False). Float64, shaped as `mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    above = _BREAK_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _BREAK_MEL) - _BREAK_MEL))
    return np.where(mel >= _BREAK_MEL, above, mel * _HZ_PER_MEL)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float, norm: str = "slaney"
) -> np.ndarray:
    """Triangular mel filters on the rfft bins, equal to `librosa.filters.mel` (htk=False).

    Band i rises from edge e_i to e_{i+1} and falls to e_{i+2}, with the n_mels + 2 edges
    equally spaced in Slaney mels from fmin to fmax; at bin frequency f its weight is
    max(0, min((f - e_i) / (e_{i+1} - e_i), (e_{i+2} - f) / (e_{i+2} - e_{i+1}))). With
    norm "slaney" band i is scaled by 2 / (e_{i+2} - e_i), so that every band has area 1 in Hz;
    "none" leaves peaks of 1.

    Args:
        sample_rate: audio rate in Hz.
        n_fft: FFT size; the filters cover its n_fft // 2 + 1 bins, k * sample_rate / n_fft Hz.
        n_mels: number of bands.
        fmin, fmax: lowest and highest edge in Hz.
        norm: "slaney" (area normalisation) or "none".

    Returns:
        (n_mels, n_fft // 2 + 1) float32 weights.
    """
    if norm not in ("slaney", "none"):
        raise ValueError(f"mel norm must be 'slaney' or 'none': {norm!r}")
    bins_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (n_fft // 2 + 1,)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)  # (n_mels + 1,)
    offsets = edges[:, None] - bins_hz[None, :]  # (n_mels + 2, bins): e_j - f
    rising = -offsets[:-2] / widths[:-1, None]
    falling = offsets[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, bins)
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _mel_basis(cfg: FeatureConfig) -> np.ndarray:
    """The (n_mels, n_fft // 2 + 1) filterbank for `cfg` (`mel_filterbank`)."""
    return mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, cfg.mel_norm)


def stft_magnitude(
    audio: Tensor, n_fft: int, hop_length: int, win_length: int, window: str = "hann"
) -> Tensor:
    """|STFT| with `frames = T // hop_length` (reflect padding of (n_fft - hop) / 2 each side).

    Args:
        audio: (B, T) or (B, 1, T) float waveform.

    Returns:
        (B, n_fft // 2 + 1, frames) magnitudes.
    """
    power = _stft_power(audio, n_fft, hop_length, win_length, window, (n_fft - hop_length) // 2)
    # Clamp before sqrt: the gradient of |z| at 0 is undefined.
    return power.clamp_min(1e-12).sqrt()


def _stft_power(
    audio: Tensor, n_fft: int, hop_length: int, win_length: int, window: str, pad: int
) -> Tensor:
    """|STFT|^2 (B, n_fft // 2 + 1, frames) of (B, T) or (B, 1, T) audio reflect-padded by
    `pad` samples each side, frames not centred (torch.stft center=False)."""
    audio = audio.reshape(audio.shape[0], -1).float()
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
    return spec.real.square().add(spec.imag.square())


def _convention_magnitude(audio: Tensor, cfg: FeatureConfig) -> Tensor:
    """|STFT| (B, n_fft // 2 + 1, T // hop) exactly as `cfg.convention` computes it."""
    if cfg.convention == "parallel_wavegan":
        # librosa.stft(center=True): frame j centred on sample j * hop; its last frame (centred
        # on the sample after the audio) is dropped so that frames = T // hop.
        frames = audio.shape[-1] // cfg.hop_length
        power = _stft_power(
            audio, cfg.n_fft, cfg.hop_length, cfg.win_length, cfg.window, cfg.n_fft // 2
        )[..., :frames]
        # A clamp far below the 1e-10 floor keeps the gradient of |z| at 0 finite.
        return power.clamp_min(1e-24).sqrt()
    if cfg.convention == "hifigan":
        pad = (cfg.n_fft - cfg.hop_length) // 2
        power = _stft_power(audio, cfg.n_fft, cfg.hop_length, cfg.win_length, cfg.window, pad)
        return (power + 1e-9).sqrt()  # hifi-gan's own epsilon, inside the square root
    return stft_magnitude(audio, cfg.n_fft, cfg.hop_length, cfg.win_length, cfg.window)


def log_mel(audio: Tensor, cfg: FeatureConfig) -> Tensor:
    """The log-mel spectrogram used by data preparation, losses and evaluation (CPU or GPU).

    mel = ln(max(M |STFT(preemph(x))|, floor)), M librosa's Slaney filterbank (`mel_filterbank`),
    always natural-log inside wavflow (models, losses, prepared data); `convention_mel` writes
    other toolkits' form. The STFT follows `cfg.convention` (T samples give T // hop frames in
    every convention):

    - "wavflow": reflect padding of (n_fft - hop) / 2 each side, frames not centred,
      |z| = sqrt(max(|z|^2, 1e-12)); frame j covers samples [j hop, (j + 1) hop) at its centre.
    - "hifigan": the same padding, |z| = sqrt(|z|^2 + 1e-9) (jik876/hifi-gan `meldataset.py`).
    - "parallel_wavegan": `librosa.stft(center=True, pad_mode="reflect")`, frame j centred on
      sample j hop, the last frame dropped; |z| exact (kan-bayashi/ParallelWaveGAN
      `logmelfilterbank`, which pads the audio to (T // hop + 1) hop for that frame).

    Args:
        audio: (B, T) or (B, 1, T) float in [-1, 1].
        cfg: feature settings.

    Returns:
        (B, n_mels, T // hop_length) natural-log magnitudes.
    """
    audio = preemphasis(audio.reshape(audio.shape[0], -1), cfg.preemphasis)
    magnitude = _convention_magnitude(audio, cfg)
    basis = torch.from_numpy(_mel_basis(cfg)).to(magnitude.device)
    return torch.matmul(basis, magnitude).clamp_min(cfg.log_floor).log()


# Each convention's written mels: "natural-log" (ln), "log10", or "normalised" (by the stats).
_LOG10_CONVENTIONS = ("parallel_wavegan",)


def convention_mel(
    mel: np.ndarray, cfg: FeatureConfig, normalized: bool | None = None
) -> np.ndarray:
    """wavflow's natural-log mels (n_mels, frames) as `cfg.convention`'s toolkit writes them.

    hifigan and wavflow: unchanged. parallel_wavegan: log10(mel) = ln(mel) / ln 10, then
    (log10 mel - mel_mean) / mel_std per band with the statistics of `wavflow prepare`.

    Args:
        normalized: normalise by the statistics (default: when the convention does).

    Raises:
        ValueError: normalisation asked for but `cfg` holds no statistics.
    """
    normalized = cfg.normalized if normalized is None else normalized
    mel = mel / np.log(10.0) if cfg.convention in _LOG10_CONVENTIONS else mel
    if not normalized:
        return mel.astype(np.float32)
    mean, std = normalization_stats(cfg)
    return ((mel - mean) / std).astype(np.float32)


def from_convention_mel(mel: np.ndarray, cfg: FeatureConfig, normalized: bool) -> np.ndarray:
    """Inverse of `convention_mel`: a mel written in `cfg.convention`'s form (normalised when
    `normalized`) -> wavflow's natural-log mel (n_mels, frames)."""
    if normalized:
        mean, std = normalization_stats(cfg)
        mel = mel * std + mean
    mel = mel * np.log(10.0) if cfg.convention in _LOG10_CONVENTIONS else mel
    return mel.astype(np.float32)


def normalization_stats(cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(n_mels, 1) mean and standard deviation, in the convention's log units.

    Raises:
        ValueError: `cfg` holds no statistics (data not prepared by `wavflow prepare`).
    """
    if not cfg.mel_mean:
        raise AudioError(
            "normalised mels need the training split's statistics, which these feature settings "
            "lack: prepare the data with `wavflow prepare` and train on it"
        )
    return np.array(cfg.mel_mean)[:, None], np.array(cfg.mel_std)[:, None]


def mel_statistics(mels: Iterable[np.ndarray], cfg: FeatureConfig) -> FeatureConfig:
    """`cfg` with mel_mean and mel_std measured over natural-log mels (n_mels, frames_i), in
    the convention's log units (log10 for parallel_wavegan), as sklearn's StandardScaler does
    (population standard deviation over all frames)."""
    total, squares, count = np.zeros(cfg.n_mels), np.zeros(cfg.n_mels), 0
    for mel in mels:
        written = convention_mel(np.asarray(mel, dtype=np.float64), cfg, normalized=False)
        total += written.sum(axis=1, dtype=np.float64)
        squares += np.square(written, dtype=np.float64).sum(axis=1)
        count += written.shape[1]
    mean = total / max(count, 1)
    # A constant band (all floor) would give std 0; 1 leaves it centred but unscaled.
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    std = np.where(std > 1e-8, std, 1.0)
    return dataclasses.replace(cfg, mel_mean=tuple(mean.tolist()), mel_std=tuple(std.tolist()))


def mel_form(cfg: FeatureConfig, normalized: bool) -> str:
    """How a checkpoint with `cfg` expects .npy mels, e.g. "natural-log hifigan mels"."""
    if normalized:
        return f"normalised {cfg.convention} mels"
    scale = "log10" if cfg.convention in _LOG10_CONVENTIONS else "natural-log"
    return f"{scale} {cfg.convention} mels"


def mel_mismatch(mel: np.ndarray, cfg: FeatureConfig, normalized: bool) -> str | None:
    """A warning when the statistics of a supplied mel (n_mels, frames) do not fit `cfg`.

    The three forms differ clearly in their global mean: normalised mels average 0,
    natural-log mels the training split's mean m (typically -5 to -7 at a 1e-5 floor) and log10
    mels m / ln 10. The nearest of the three is the guess; m is taken from the statistics when
    `cfg` has them, else `TYPICAL_LOG_MEL_MEAN`.

    Returns:
        "these look like log10 mels; this checkpoint expects natural-log hifigan mels", or None.
    """
    natural = float(np.mean(cfg.mel_mean)) if cfg.mel_mean else TYPICAL_LOG_MEL_MEAN
    if cfg.mel_mean and cfg.convention in _LOG10_CONVENTIONS:
        natural *= np.log(10.0)  # stored in the convention's (log10) units
    means = {"normalised": 0.0, "log10": natural / np.log(10.0), "natural-log": natural}
    found = float(np.mean(mel))
    guess = min(means, key=lambda form: abs(found - means[form]))
    expected = mel_form(cfg, normalized)
    if expected.startswith(guess):
        return None
    return f"these look like {guess} mels; this checkpoint expects {expected}"


# Mean of natural-log mels (floor 1e-5, peak 0.95) of the built-in corpus: -5.9 at 22.05 kHz,
# -5.5 at 16 kHz (four 3 s utterances, one per default speaker).
TYPICAL_LOG_MEL_MEAN = -5.8


def estimate_f0(
    audio: np.ndarray, cfg: FeatureConfig, f0_min: float = 60.0, f0_max: float = 500.0
) -> np.ndarray:
    """F0 in Hz at the mel frame rate (librosa's pyin), 0 where unvoiced.

    Frame j of `log_mel` is centred on sample j * hop + hop / 2, so pyin runs on the audio from
    sample hop / 2 on, with centred frames of the same hop.

    Args:
        audio: (samples,) float in [-1, 1].

    Returns:
        (samples // hop_length,) float32.
    """
    # Imported here: librosa brings numba and llvmlite, which training and synthesis never need.
    import librosa

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

"""The builtin corpus's voice: a formant synthesiser with known F0, in the style of Klatt (1980).

    Rosenberg glottal pulses (phase accumulator; F0 with declination, accents, jitter,
    shimmer, vibrato) + aspiration noise -> cascade of 5 time-varying formant resonators
    -> + band-pass frication noise (fricatives, stop bursts)

`wavflow.speech_plan` draws what is said (phones, durations, F0 contour) from a seeded
``np.random.Generator``, so an utterance is reproducible and its true F0 is known frame by
frame. Parameters live on a 5 ms frame grid (``f0_hop`` samples) and are interpolated to
samples; the resonators change coefficients once per frame while carrying their filter state
across frames, so minutes of audio take seconds.

References:
    D. H. Klatt, "Software for a cascade/parallel formant synthesizer", JASA 67(3), 1980.
    A. E. Rosenberg, "Effect of glottal pulse shape on the quality of natural vowels",
    JASA 49(2B), 1971.
"""

from collections.abc import Callable

import numpy as np
from scipy import signal

from wavflow.config import OptionError
from wavflow.speech_plan import (
    NOISE_BANDS,
    Speaker,
    Tracks,
    f0_contour,
    frame_tracks,
    plan_segments,
)

FRAME_RATE_HZ = 200  # parameter frames per second: f0_hop = sample_rate // FRAME_RATE_HZ
VOICED_THRESHOLD = 0.1  # voicing amplitude (vowel = 1) from which the true F0 is reported
NOISE_FLOOR = 1e-4  # RMS of the background noise, so pauses are near-silent, not digital zero
_HIGHER_FORMANTS = (3400.0, 4400.0)  # F4, F5 in Hz, adult male, vowel-independent


def default_speakers(n: int = 4) -> list[Speaker]:
    """Speakers spread from a low male voice (100 Hz) to a high female/child voice (250 Hz).

    Args:
        n: Number of speakers, at least 1.

    Returns:
        ``n`` speakers named ``spk0`` ... ``spk{n-1}``, F0 rising geometrically, with formant
        scale, open quotient, breathiness and vibrato rising along with it.
    """
    if n < 1:
        raise OptionError(f"n must be >= 1, got {n}")
    return [_speaker(i, i / max(n - 1, 1)) for i in range(n)]


def _speaker(index: int, t: float) -> Speaker:
    """Speaker number ``index`` at position ``t`` in [0, 1] from low male to high voice."""
    return Speaker(
        name=f"spk{index}",
        f0_mean=100.0 * 2.5**t,
        f0_range=5.0 + 3.0 * t,
        formant_scale=1.0 + 0.22 * t,
        open_quotient=0.55 + 0.15 * t,
        breathiness=0.04 + 0.08 * t,
        jitter=0.006 + 0.004 * t,
        shimmer=0.04 + 0.02 * t,
        vibrato_depth=0.15 + 0.1 * t,
        vibrato_rate=4.8 + 0.8 * t,
        speaking_rate=0.9 + 0.2 * ((index * 0.618) % 1.0),  # golden-ratio spread, no order
    )


def synthesize_utterance(
    rng: np.random.Generator, speaker: Speaker, sample_rate: int, duration: float
) -> tuple[np.ndarray, np.ndarray]:
    """Synthesise one speech-like utterance and its true F0.

    Args:
        rng: Source of all randomness; the same generator state gives the same audio.
        speaker: Voice parameters.
        sample_rate: Samples per second, at least 8000.
        duration: Length in seconds, at least 1.0; leading and trailing pauses included.

    Returns:
        audio: (round(duration * sample_rate),) float32 in [-1, 1], peak in [0.5, 0.9].
        f0: (samples // hop + 1,) float32 true F0 in Hz at sample ``k * hop`` (frame ``k``),
            ``hop = sample_rate // 200``; 0 where unvoiced.
    """
    if sample_rate < 8000:
        raise OptionError(f"sample_rate must be >= 8000, got {sample_rate}")
    if duration < 1.0:
        raise OptionError(f"duration must be >= 1.0 s, got {duration}")
    hop = sample_rate // FRAME_RATE_HZ
    n_samples = round(duration * sample_rate)
    n_frames = n_samples // hop + 1
    segments = plan_segments(rng, speaker, n_frames, frames_per_ms=sample_rate / hop / 1000)
    tracks = frame_tracks(segments)
    f0_frames = f0_contour(rng, speaker, segments, frame_rate=sample_rate / hop)
    audio, f0 = _render(rng, speaker, tracks, f0_frames, sample_rate, n_samples)
    at_frames = np.minimum(np.arange(n_frames) * hop, n_samples - 1)
    true_f0 = np.where(tracks.voicing >= VOICED_THRESHOLD, f0[at_frames], 0.0)
    return audio, true_f0.astype(np.float32)


def _render(
    rng: np.random.Generator,
    speaker: Speaker,
    tracks: Tracks,
    f0_frames: np.ndarray,
    sample_rate: int,
    n_samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Source, vocal tract and frication to audio.

    Returns:
        audio: (S,) float32, peak in [0.5, 0.9] plus the noise floor.
        f0: (S,) float64 F0 in Hz per sample, jitter included.
    """
    hop = sample_rate // FRAME_RATE_HZ
    samples = np.arange(n_samples)
    frame_samples = np.arange(len(f0_frames)) * hop

    def per_sample(x: np.ndarray) -> np.ndarray:
        return np.interp(samples, frame_samples, x)

    voicing = per_sample(tracks.voicing)
    pulses, flow, f0 = _glottal_source(rng, per_sample(f0_frames), speaker, sample_rate)
    aspiration = rng.standard_normal(n_samples) * (0.4 + flow)  # louder while the glottis opens
    noise_level = per_sample(tracks.aspiration) + speaker.breathiness * voicing
    excitation = voicing * per_sample(tracks.gain) * _unit_rms(pulses)
    excitation += noise_level * _unit_rms(aspiration)
    formants, bandwidths = _formant_tracks(rng, tracks.formants, speaker, sample_rate)
    speech = _vocal_tract(excitation, formants, bandwidths, sample_rate, hop)
    speech /= _rms(speech[voicing > 0.8]) + 1e-9
    speech += _frication(rng, per_sample, tracks.noise, speaker.formant_scale, sample_rate)
    highpass = signal.butter(2, 50.0, "highpass", fs=sample_rate, output="sos")
    speech = signal.sosfilt(highpass, speech)  # no DC or rumble from the noise sources
    speech *= rng.uniform(0.5, 0.9) / np.abs(speech).max()
    speech += NOISE_FLOOR * rng.standard_normal(n_samples)
    return np.clip(speech, -1.0, 1.0).astype(np.float32), f0


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) if x.size else 0.0


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (_rms(x) + 1e-12)


def _glottal_source(
    rng: np.random.Generator, f0: np.ndarray, speaker: Speaker, sample_rate: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rosenberg glottal pulses from a continuous phase accumulator, with jitter and shimmer.

    The phase is the running sum of F0 / sample_rate, so F0 may change every sample; jitter
    scales F0 per period and shimmer the pulse amplitude per period.

    Args:
        f0: (S,) F0 in Hz per sample.

    Returns:
        pulses: (S,) glottal flow derivative (flow x lip radiation), the voiced excitation.
        flow: (S,) glottal flow, 0 (closed) to about 1.
        f0: (S,) F0 in Hz after jitter.
    """
    period = (np.cumsum(f0) / sample_rate).astype(np.int64)
    f0 = f0 * (1.0 + speaker.jitter * rng.standard_normal(period[-1] + 1))[period]
    phase = np.cumsum(f0) / sample_rate
    period = phase.astype(np.int64)
    shimmer = 1.0 + speaker.shimmer * rng.standard_normal(period[-1] + 1)
    flow = _rosenberg(phase - period, speaker.open_quotient) * shimmer[period]
    return np.diff(flow, prepend=0.0), flow, f0


def _rosenberg(phase: np.ndarray, open_quotient: float, speed_quotient: float = 2.5) -> np.ndarray:
    """Rosenberg (1971) glottal flow pulse at ``phase`` in [0, 1) of a period.

    Cosine opening for ``open_quotient * sq / (1 + sq)`` of the period, quarter-cosine
    closing for the rest of the open phase, then closed (0).
    """
    rise = open_quotient * speed_quotient / (1.0 + speed_quotient)
    fall = open_quotient - rise
    opening = 0.5 * (1.0 - np.cos(np.pi * phase / rise))
    closing = np.cos(0.5 * np.pi * np.clip((phase - rise) / fall, 0.0, 1.0))
    return np.where(phase < rise, opening, np.where(phase < open_quotient, closing, 0.0))


def _formant_tracks(
    rng: np.random.Generator, f123: np.ndarray, speaker: Speaker, sample_rate: int
) -> tuple[np.ndarray, np.ndarray]:
    """F1-F5 and bandwidths in Hz per frame, scaled for the speaker.

    F4 and F5 are dropped where they would pass 0.45 * sample_rate; F1-F3 are clipped there.

    Returns:
        formants, bandwidths: (N, K) in Hz, K = 3 to 5.
    """
    higher = np.broadcast_to(
        np.asarray(_HIGHER_FORMANTS) * rng.uniform(0.97, 1.03, 2), (len(f123), 2)
    )
    formants = np.hstack([f123, higher]) * speaker.formant_scale * rng.uniform(0.97, 1.03)
    keep = (np.arange(5) < 3) | (formants.max(axis=0) < 0.45 * sample_rate)
    formants = np.minimum(formants[:, keep], 0.45 * sample_rate)
    return formants, (50.0 + 0.05 * formants) * (1.0 + speaker.breathiness)


def _vocal_tract(
    excitation: np.ndarray,
    formants: np.ndarray,
    bandwidths: np.ndarray,
    sample_rate: int,
    hop: int,
) -> np.ndarray:
    """Cascade of 2nd-order resonators whose coefficients change every ``hop`` samples.

    Resonator (Klatt 1980): ``y[n] = A x[n] + B y[n-1] + C y[n-2]`` with
    ``C = -exp(-2 pi bw / fs)``, ``B = 2 exp(-pi bw / fs) cos(2 pi f / fs)``, ``A = 1 - B - C``
    (unit gain at 0 Hz). The state ``zi`` carries across blocks, so there is no click.

    Args:
        excitation: (S,) source signal.
        formants, bandwidths: (N, K) Hz for block k = samples [k * hop, (k + 1) * hop);
            N >= ceil(S / hop).

    Returns:
        (S,) filtered signal.
    """
    radius = np.exp(-np.pi * bandwidths / sample_rate)
    a1 = -2.0 * radius * np.cos(2.0 * np.pi * formants / sample_rate)
    a2 = radius**2
    zeros, ones = np.zeros_like(a1), np.ones_like(a1)
    sos = np.stack([1.0 + a1 + a2, zeros, zeros, ones, a1, a2], axis=-1)  # (N, K, 6)
    sos = np.ascontiguousarray(sos)  # sosfilt needs C order; column selection may not give it
    out = np.empty_like(excitation)
    state = np.zeros((formants.shape[1], 2))
    for block, start in enumerate(range(0, len(excitation), hop)):
        part = slice(start, start + hop)
        out[part], state = signal.sosfilt(sos[block], excitation[part], zi=state)
    return out


def _frication(
    rng: np.random.Generator,
    per_sample: Callable[[np.ndarray], np.ndarray],
    noise: np.ndarray,
    formant_scale: float,
    sample_rate: int,
) -> np.ndarray:
    """Band-pass noise per frication band, unit RMS, times its per-frame envelope.

    Args:
        per_sample: Interpolates an (N,) frame track to (S,) samples.
        noise: (N, len(NOISE_BANDS)) envelope per band, relative to the vowel RMS.

    Returns:
        (S,) frication signal.
    """
    out = 0.0
    for envelope, (low, high) in zip(noise.T, NOISE_BANDS.values()):
        if not envelope.any():
            continue
        high = min(high * formant_scale, 0.45 * sample_rate)
        low = min(low * formant_scale, 0.5 * high)
        band = signal.butter(4, [low, high], "bandpass", fs=sample_rate, output="sos")
        envelope = per_sample(envelope)
        shaped = signal.sosfilt(band, rng.standard_normal(len(envelope)))
        out = out + _unit_rms(shaped) * envelope
    return out

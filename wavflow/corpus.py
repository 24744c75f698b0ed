"""Built-in speech-like corpus: a formant synthesiser with known F0, and an espeak-ng renderer.

Nothing can be downloaded, so the demo, the tests and new users train on audio made here.
The builtin engine is a small source-filter synthesiser in the style of Klatt (1980):

    Rosenberg glottal pulses (phase accumulator; F0 with declination, accents, jitter,
    shimmer, vibrato) + aspiration noise -> cascade of 5 time-varying formant resonators
    -> + band-pass frication noise (fricatives, stop bursts)

A seeded ``np.random.Generator`` draws phrases of words of syllables (vowels, diphthongs,
fricatives, stops, nasals, approximants) and pauses, so an utterance is reproducible and its
true F0 is known frame by frame. Parameters live on a 5 ms frame grid (``f0_hop`` samples)
and are interpolated to samples; the resonators change coefficients once per frame while
carrying their filter state across frames, so minutes of audio take seconds.

References:
    D. H. Klatt, "Software for a cascade/parallel formant synthesizer", JASA 67(3), 1980.
    A. E. Rosenberg, "Effect of glottal pulse shape on the quality of natural vowels",
    JASA 49(2B), 1971.
    G. E. Peterson, H. L. Barney, "Control methods used in a study of the vowels", JASA 24, 1952.
"""

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
import soundfile as sf
import soxr
from scipy import ndimage, signal

from wavflow.config import OptionError

ENGINES = ("builtin", "espeak")
FRAME_RATE_HZ = 200  # parameter frames per second: f0_hop = sample_rate // FRAME_RATE_HZ
MIN_SECONDS, MAX_SECONDS = 1.5, 5.0  # utterance durations drawn by write_corpus
VOICED_THRESHOLD = 0.1  # voicing amplitude (vowel = 1) from which the true F0 is reported
NOISE_FLOOR = 1e-4  # RMS of the background noise, so pauses are near-silent, not digital zero

_SENTENCES_FILE = Path(__file__).resolve().parents[1] / "data" / "corpus_sentences.txt"
_FALLBACK_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her.",
    "How much wood would a woodchuck chuck?",
    "She sells sea shells by the sea shore.",
    "We will meet at the station at half past nine.",
)
_ESPEAK_VARIANTS = ("m3", "f2", "m1", "f4", "m7", "f3", "m5", "f1")

# F1-F3 targets in Hz for an adult male (Peterson & Barney 1952; schwa is the rest position).
_VOWELS = {
    "a": (730.0, 1090.0, 2440.0),
    "i": (270.0, 2290.0, 3010.0),
    "u": (300.0, 870.0, 2240.0),
    "e": (460.0, 1890.0, 2560.0),
    "o": (500.0, 900.0, 2450.0),
    "ae": (660.0, 1720.0, 2410.0),
    "ih": (390.0, 1990.0, 2550.0),
    "uh": (440.0, 1020.0, 2240.0),
    "ah": (640.0, 1190.0, 2390.0),
    "er": (490.0, 1350.0, 1690.0),
    "schwa": (500.0, 1500.0, 2500.0),
}
_FULL_VOWELS = ("a", "i", "u", "e", "o", "ae", "ih", "uh", "ah", "er")
_REDUCED_VOWELS = ("schwa", "schwa", "ih", "uh")
_DIPHTHONGS = (("a", "ih"), ("e", "ih"), ("o", "uh"), ("a", "uh"), ("o", "ih"))
_HIGHER_FORMANTS = (3400.0, 4400.0)  # F4, F5 in Hz, adult male, vowel-independent
# Frication and burst noise bands in Hz for formant_scale 1.
_NOISE_BANDS = {
    "s": (3800.0, 7500.0),
    "sh": (1900.0, 4500.0),
    "f": (1000.0, 7500.0),
    "p": (400.0, 3000.0),
    "t": (2800.0, 7500.0),
    "k": (1400.0, 3200.0),
}
_ONSETS = ("", "", "", "p", "t", "k", "b", "d", "g", "s", "sh", "f", "h", "z", "v", "m", "n")
_ONSETS += ("l", "r", "w", "j", "s t", "s p", "s k", "s m", "p r", "t r", "k l", "b l", "f r")
_CODAS = ("", "", "", "", "", "n", "m", "s", "t", "k", "d", "l", "r", "z", "sh", "f", "p")
_CODAS += ("n t", "s t", "n d", "k s")

T = TypeVar("T")


@dataclass(frozen=True)
class Speaker:
    """A synthetic voice of the builtin engine.

    Attributes:
        name: Folder and file prefix in the corpus.
        f0_mean: Mean fundamental frequency in Hz.
        f0_range: Intonation range in semitones; declination and accents scale with it.
        formant_scale: Multiplies every formant and frication frequency (about 1 / vocal tract
            length): 1.0 for an adult male, about 1.2 for a woman or child.
        open_quotient: Fraction of each glottal period during which the glottis is open.
        breathiness: Aspiration noise amplitude relative to the glottal pulses.
        jitter: Standard deviation of the relative F0 change from one period to the next.
        shimmer: Standard deviation of the relative amplitude change from one period to the next.
        vibrato_depth: Vibrato amplitude in semitones.
        vibrato_rate: Vibrato frequency in Hz.
        speaking_rate: Speed factor; 1 keeps the tabulated phone durations.
    """

    name: str
    f0_mean: float
    f0_range: float
    formant_scale: float
    open_quotient: float = 0.6
    breathiness: float = 0.05
    jitter: float = 0.006
    shimmer: float = 0.04
    vibrato_depth: float = 0.2
    vibrato_rate: float = 5.0
    speaking_rate: float = 1.0


class _Sound(NamedTuple):
    """Source and filter targets of one phone; amplitudes are relative to a vowel."""

    voicing: float  # glottal pulse amplitude
    aspiration: float  # noise through the formant cascade (h, stop release)
    noise: str | None  # frication band, a key of _NOISE_BANDS
    noise_level: float  # frication RMS relative to the RMS of the vowels
    formants: tuple[float, float, float] | None  # F1-F3 in Hz; None: from the neighbours


_SILENCE = _Sound(0.0, 0.0, None, 0.0, _VOWELS["schwa"])
_CLOSURE = _Sound(0.0, 0.0, None, 0.0, None)
_VOICE_BAR = _Sound(0.2, 0.0, None, 0.0, None)
_RELEASE = _Sound(0.0, 0.45, None, 0.0, None)
# Name -> (sound, duration range in ms).
_CONSONANTS = {
    "s": (_Sound(0.0, 0.0, "s", 0.3, None), (80.0, 150.0)),
    "sh": (_Sound(0.0, 0.0, "sh", 0.3, None), (80.0, 150.0)),
    "f": (_Sound(0.0, 0.0, "f", 0.06, None), (70.0, 130.0)),
    "h": (_Sound(0.0, 0.5, None, 0.0, None), (50.0, 90.0)),
    "z": (_Sound(0.45, 0.0, "s", 0.15, None), (60.0, 110.0)),
    "v": (_Sound(0.5, 0.0, "f", 0.04, None), (50.0, 90.0)),
    "m": (_Sound(0.55, 0.0, None, 0.0, (280.0, 1000.0, 2200.0)), (50.0, 90.0)),
    "n": (_Sound(0.55, 0.0, None, 0.0, (280.0, 1600.0, 2500.0)), (50.0, 90.0)),
    "l": (_Sound(0.8, 0.0, None, 0.0, (360.0, 1300.0, 2700.0)), (40.0, 80.0)),
    "r": (_Sound(0.8, 0.0, None, 0.0, (420.0, 1300.0, 1600.0)), (40.0, 80.0)),
    "w": (_Sound(0.8, 0.0, None, 0.0, (300.0, 610.0, 2200.0)), (40.0, 80.0)),
    "j": (_Sound(0.8, 0.0, None, 0.0, (260.0, 2070.0, 3000.0)), (40.0, 80.0)),
}
# Stop -> (burst band, voiced).
_STOPS = {
    "p": ("p", False),
    "t": ("t", False),
    "k": ("k", False),
    "b": ("p", True),
    "d": ("t", True),
    "g": ("k", True),
}


@dataclass(frozen=True)
class _Segment:
    """A stretch of frames with constant targets (the formants may glide)."""

    frames: int
    sound: _Sound
    formants_end: tuple[float, float, float] | None = None  # diphthong glide target
    gain: float = 1.0  # voicing gain: stressed 1, unstressed less
    accent: float = 0.0  # pitch accent height in units of Speaker.f0_range
    boundary: bool = False  # a pause that ends an intonation phrase


class _Tracks(NamedTuple):
    """Frame-rate synthesis parameters, N frames at hop spacing."""

    voicing: np.ndarray  # (N,) glottal amplitude, vowel = 1
    aspiration: np.ndarray  # (N,) aspiration amplitude
    noise: np.ndarray  # (N, len(_NOISE_BANDS)) frication amplitude per band
    formants: np.ndarray  # (N, 3) F1-F3 in Hz (targets are NaN where coarticulated)
    gain: np.ndarray  # (N,) syllable envelope on the voicing


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
    segments = _plan(rng, speaker, n_frames, frames_per_ms=sample_rate / hop / 1000)
    tracks = _tracks(segments)
    f0_frames = _f0_contour(rng, speaker, segments, frame_rate=sample_rate / hop)
    audio, f0 = _render(rng, speaker, tracks, f0_frames, sample_rate, n_samples)
    at_frames = np.minimum(np.arange(n_frames) * hop, n_samples - 1)
    true_f0 = np.where(tracks.voicing >= VOICED_THRESHOLD, f0[at_frames], 0.0)
    return audio, true_f0.astype(np.float32)


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[rng.integers(len(options))]


def _draw_frames(rng: np.random.Generator, ms: tuple[float, float], frames_per_ms: float) -> int:
    return max(1, round(rng.uniform(*ms) * frames_per_ms))


def _plan(
    rng: np.random.Generator, speaker: Speaker, n_frames: int, frames_per_ms: float
) -> list[_Segment]:
    """Lead pause, words with gaps and phrase pauses, trail pause: exactly ``n_frames``."""
    lead = _Segment(_draw_frames(rng, (80.0, 250.0), frames_per_ms), _SILENCE, boundary=True)
    budget = n_frames - lead.frames - _draw_frames(rng, (100.0, 300.0), frames_per_ms)
    per_ms = frames_per_ms / speaker.speaking_rate
    segments, used, words_in_phrase = [lead], 0, 0
    while True:
        # A few tries, so the end of the utterance can still take a short word.
        candidates = (_word(rng, per_ms) for _ in range(4))
        word = next((w for w in candidates if used + _length(w) <= budget), None)
        if word is None:
            break
        segments += word
        used += _length(word)
        words_in_phrase += 1
        gap = _gap(rng, per_ms, words_in_phrase)
        if gap is not None and used + gap.frames <= budget:
            segments.append(gap)
            used += gap.frames
            words_in_phrase = 0 if gap.boundary else words_in_phrase
    segments.append(_Segment(n_frames - lead.frames - used, _SILENCE, boundary=True))
    return segments


def _length(segments: list[_Segment]) -> int:
    return sum(segment.frames for segment in segments)


def _gap(rng: np.random.Generator, per_ms: float, words_in_phrase: int) -> _Segment | None:
    """A phrase pause (200-450 ms), a short gap between words (30-100 ms), or none."""
    if words_in_phrase >= 2 and rng.random() < 0.35:
        return _Segment(_draw_frames(rng, (200.0, 450.0), per_ms), _SILENCE, boundary=True)
    if rng.random() < 0.3:
        return _Segment(_draw_frames(rng, (30.0, 100.0), per_ms), _SILENCE)
    return None


def _word(rng: np.random.Generator, per_ms: float) -> list[_Segment]:
    """One to three syllables, one of them stressed and often pitch-accented."""
    n_syllables = rng.choice(3, p=[0.5, 0.35, 0.15]) + 1
    stress = rng.integers(n_syllables)
    accented = rng.random() < 0.6
    return [
        segment
        for i in range(n_syllables)
        for segment in _syllable(rng, per_ms, stressed=i == stress, accented=accented)
    ]


def _syllable(
    rng: np.random.Generator, per_ms: float, stressed: bool, accented: bool
) -> list[_Segment]:
    onset = [s for name in _pick(rng, _ONSETS).split() for s in _consonant(rng, name, per_ms)]
    nucleus = _vowel(rng, per_ms, stressed, accented and stressed)
    coda = [s for name in _pick(rng, _CODAS).split() for s in _consonant(rng, name, per_ms)]
    return [*onset, nucleus, *coda]


def _vowel(rng: np.random.Generator, per_ms: float, stressed: bool, accented: bool) -> _Segment:
    """A full vowel or diphthong when stressed, a short reduced vowel otherwise."""
    if stressed and rng.random() < 0.25:
        (first, second), ms = _pick(rng, _DIPHTHONGS), (180.0, 300.0)
    elif stressed:
        first = second = _pick(rng, _FULL_VOWELS)
        ms = (110.0, 220.0)
    else:
        first = second = _pick(rng, _REDUCED_VOWELS)
        ms = (50.0, 100.0)
    token = rng.normal(1.0, 0.03, 3)  # no two tokens of a vowel alike
    start = tuple(np.asarray(_VOWELS[first]) * token)
    return _Segment(
        frames=_draw_frames(rng, ms, per_ms),
        sound=_Sound(1.0, 0.0, None, 0.0, start),
        formants_end=tuple(np.asarray(_VOWELS[second]) * token),
        gain=1.0 if stressed else 0.6,
        accent=rng.uniform(0.3, 0.7) if accented else 0.0,
    )


def _consonant(rng: np.random.Generator, name: str, per_ms: float) -> list[_Segment]:
    """A stop is closure, burst and, when voiceless, aspiration; others are one segment."""
    if name in _STOPS:
        band, voiced = _STOPS[name]
        burst = _Sound(0.0, 0.0, band, 0.25 if voiced else 0.4, None)
        segments = [
            _Segment(_draw_frames(rng, (40.0, 80.0), per_ms), _VOICE_BAR if voiced else _CLOSURE),
            _Segment(_draw_frames(rng, (8.0, 15.0), per_ms), burst),
        ]
        if not voiced:
            segments.append(_Segment(_draw_frames(rng, (20.0, 50.0), per_ms), _RELEASE))
        return segments
    sound, ms = _CONSONANTS[name]
    return [_Segment(_draw_frames(rng, ms, per_ms), sound)]


def _tracks(segments: list[_Segment]) -> _Tracks:
    """Frame tracks from the segments, smoothed into attacks, decays and transitions."""
    raw = _Tracks(*(np.concatenate(parts) for parts in zip(*map(_segment_tracks, segments))))
    return _Tracks(
        voicing=_smooth(raw.voicing, 5),
        aspiration=_smooth(raw.aspiration, 3),
        noise=_smooth(raw.noise, 3),
        formants=_smooth(_fill_gaps(raw.formants), 9),
        gain=_smooth(raw.gain, 5),
    )


def _segment_tracks(segment: _Segment) -> _Tracks:
    n, sound = segment.frames, segment.sound
    noise = np.zeros((n, len(_NOISE_BANDS)))
    if sound.noise is not None:
        noise[:, list(_NOISE_BANDS).index(sound.noise)] = sound.noise_level
    start = np.full(3, np.nan) if sound.formants is None else np.asarray(sound.formants)
    end = start if segment.formants_end is None else np.asarray(segment.formants_end)
    return _Tracks(
        voicing=np.full(n, sound.voicing),
        aspiration=np.full(n, sound.aspiration),
        noise=noise,
        formants=np.linspace(start, end, n),
        gain=segment.gain * np.linspace(1.0, 0.75, n),  # each syllable decays
    )


def _smooth(x: np.ndarray, frames: int) -> np.ndarray:
    """Hann-window moving average over ``frames`` frames along axis 0."""
    window = np.hanning(frames + 2)[1:-1]
    return ndimage.convolve1d(x, window / window.sum(), axis=0, mode="nearest")


def _fill_gaps(formants: np.ndarray) -> np.ndarray:
    """Coarticulation: NaN frames (N, 3) interpolate linearly between their neighbours."""
    frames = np.arange(len(formants))
    known = ~np.isnan(formants[:, 0])
    return np.stack([np.interp(frames, frames[known], f[known]) for f in formants.T], axis=1)


def _f0_contour(
    rng: np.random.Generator, speaker: Speaker, segments: list[_Segment], frame_rate: float
) -> np.ndarray:
    """F0 per frame in Hz: intonation, the utterance's key, slow drift and vibrato.

    Returns:
        (N,) F0 in Hz, defined (and continuous) through unvoiced frames too.
    """
    starts = np.cumsum([0] + [segment.frames for segment in segments])
    frames = np.arange(starts[-1])
    semitones = speaker.f0_range * _intonation(rng, segments, starts, frame_rate)
    semitones += rng.normal(0.0, 1.0)  # this utterance's key
    drift = _smooth(rng.standard_normal(len(frames)), int(0.2 * frame_rate))
    semitones += 0.3 * drift / (drift.std() + 1e-9)
    vibrato_phase = 2 * np.pi * speaker.vibrato_rate * frames / frame_rate
    semitones += speaker.vibrato_depth * np.sin(vibrato_phase + rng.uniform(0.0, 2 * np.pi))
    return speaker.f0_mean * 2.0 ** (semitones / 12.0)


def _intonation(
    rng: np.random.Generator, segments: list[_Segment], starts: np.ndarray, frame_rate: float
) -> np.ndarray:
    """Pitch per frame in units of the speaker's F0 range (semitones / f0_range).

    Each phrase declines from its start to its end, falls (or, as a question, rises) over its
    last 300 ms, and rises in a Gaussian bump on each accented vowel.

    Returns:
        (N,) pitch, N = starts[-1].
    """
    frames = np.arange(starts[-1])
    contour = np.zeros(len(frames))
    for first, last in _phrases(segments, starts):
        after = frames[first:]
        top, fall = rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.6)
        final = rng.uniform(0.4, 0.8) if rng.random() < 0.25 else -0.25
        ending = np.clip((after - last) / (0.3 * frame_rate) + 1.0, 0.0, 1.0)
        declination = top - fall * np.clip((after - first) / (last - first), 0.0, 1.0)
        contour[first:] = declination + final * ending**2  # overwrites the last phrase's tail
    contour = _smooth(contour, 5)  # no F0 jumps where the voicing of two phrases overlaps
    for segment, start in zip(segments, starts):
        if segment.accent > 0:
            centre = start + segment.frames / 2 + 0.03 * frame_rate  # peaks lag the vowel centre
            width = max(segment.frames / 2, 0.04 * frame_rate)
            contour += segment.accent * np.exp(-0.5 * ((frames - centre) / width) ** 2)
    return contour


def _phrases(segments: list[_Segment], starts: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) frames of each run of speech between phrase boundaries."""
    spans, first = [], None
    for segment, start in zip(segments, starts):
        if segment.boundary and first is not None:
            spans.append((first, int(start)))
            first = None
        elif not segment.boundary and first is None:
            first = int(start)
    return spans


def _render(
    rng: np.random.Generator,
    speaker: Speaker,
    tracks: _Tracks,
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
        noise: (N, len(_NOISE_BANDS)) envelope per band, relative to the vowel RMS.

    Returns:
        (S,) frication signal.
    """
    out = 0.0
    for envelope, (low, high) in zip(noise.T, _NOISE_BANDS.values()):
        if not envelope.any():
            continue
        high = min(high * formant_scale, 0.45 * sample_rate)
        low = min(low * formant_scale, 0.5 * high)
        band = signal.butter(4, [low, high], "bandpass", fs=sample_rate, output="sos")
        envelope = per_sample(envelope)
        shaped = signal.sosfilt(band, rng.standard_normal(len(envelope)))
        out = out + _unit_rms(shaped) * envelope
    return out


def write_corpus(
    out_dir: Path,
    minutes: float,
    sample_rate: int = 16000,
    seed: int = 0,
    engine: str = "builtin",
    n_speakers: int = 4,
) -> list[Path]:
    """Write a multi-speaker corpus of ``minutes`` of speech(-like) audio.

    Layout: ``out_dir/<speaker>/<speaker>_<NNNN>.wav`` (16-bit PCM, NNNN counts per speaker),
    for the builtin engine ``<speaker>_<NNNN>.f0.npy`` beside it (float32 true F0 in Hz per
    ``f0_hop`` samples, 0 = unvoiced), and ``out_dir/corpus.json`` with the engine, seed,
    sample_rate, f0_hop (null for espeak), speakers and utterances (id, speaker, path, seconds,
    and f0_path for builtin; paths relative to ``out_dir``). Utterances go round-robin over the
    speakers until the total reaches ``minutes``, so it overshoots by less than one utterance.
    Utterance ``i`` draws from ``np.random.default_rng([seed, i])``. Existing files with other
    names in ``out_dir`` are left alone.

    Args:
        out_dir: Output folder, created if missing.
        minutes: Total audio length in minutes, > 0.
        sample_rate: Samples per second, at least 8000.
        seed: Non-negative seed; the same seed gives byte-identical files.
        engine: ``"builtin"`` (formant synthesiser, 1.5-5 s utterances, true F0) or ``"espeak"``
            (espeak-ng reads ``data/corpus_sentences.txt``; needs espeak-ng on PATH).
        n_speakers: Number of voices, at least 1.

    Returns:
        The wav paths in the order written.
    """
    _check_corpus_args(minutes, sample_rate, seed, engine, n_speakers)
    out_dir = Path(out_dir)
    if engine == "builtin":
        speakers = default_speakers(n_speakers)
        names = [speaker.name for speaker in speakers]
        speaker_info = [asdict(speaker) for speaker in speakers]
        render = _builtin_renderer(speakers, sample_rate, seed)
        f0_hop = sample_rate // FRAME_RATE_HZ
    else:
        speaker_info = _espeak_voices(n_speakers)
        names = [voice["name"] for voice in speaker_info]
        render = _espeak_renderer(speaker_info, sample_rate, seed)
        f0_hop = None
    utterances = _write_utterances(out_dir, minutes * 60.0, sample_rate, names, render)
    manifest = {
        "engine": engine,
        "seed": seed,
        "sample_rate": sample_rate,
        "f0_hop": f0_hop,
        "seconds": sum(utterance["seconds"] for utterance in utterances),
        "speakers": speaker_info,
        "utterances": utterances,
    }
    (out_dir / "corpus.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return [out_dir / utterance["path"] for utterance in utterances]


def _check_corpus_args(
    minutes: float, sample_rate: int, seed: int, engine: str, n_speakers: int
) -> None:
    if not minutes > 0:
        raise OptionError(f"minutes must be > 0, got {minutes}")
    if sample_rate < 8000:
        raise OptionError(f"sample_rate must be >= 8000, got {sample_rate}")
    if seed < 0:
        raise OptionError(f"seed must be >= 0, got {seed}")
    if engine not in ENGINES:
        raise OptionError(f"engine must be one of {ENGINES}, got {engine!r}")
    if n_speakers < 1:
        raise OptionError(f"n_speakers must be >= 1, got {n_speakers}")
    if engine == "espeak" and shutil.which("espeak-ng") is None:
        raise RuntimeError(
            "engine='espeak' needs espeak-ng on PATH: install it (apt-get install espeak-ng) "
            "or use engine='builtin'"
        )


Renderer = Callable[[int], tuple[np.ndarray, np.ndarray | None]]


def _write_utterances(
    out_dir: Path, seconds: float, sample_rate: int, names: list[str], render: Renderer
) -> list[dict]:
    """Render utterance 0, 1, ... round-robin over ``names`` until ``seconds`` are written."""
    utterances, total = [], 0.0
    while total < seconds:
        index = len(utterances)
        audio, f0 = render(index)
        name = names[index % len(names)]
        utterance_id = f"{name}_{index // len(names):04d}"
        wav = out_dir / name / f"{utterance_id}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, audio, sample_rate, subtype="PCM_16")
        entry = {
            "id": utterance_id,
            "speaker": name,
            "path": wav.relative_to(out_dir).as_posix(),
            "seconds": len(audio) / sample_rate,
        }
        if f0 is not None:
            np.save(wav.with_suffix(".f0.npy"), f0)
            entry["f0_path"] = wav.with_suffix(".f0.npy").relative_to(out_dir).as_posix()
        utterances.append(entry)
        total += entry["seconds"]
    return utterances


def _builtin_renderer(speakers: list[Speaker], sample_rate: int, seed: int) -> Renderer:
    def render(index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([seed, index])
        duration = rng.uniform(MIN_SECONDS, MAX_SECONDS)
        return synthesize_utterance(rng, speakers[index % len(speakers)], sample_rate, duration)

    return render


def _espeak_voices(n: int) -> list[dict]:
    """espeak-ng voice settings per speaker: variant, pitch (0-99), speed (words/min)."""
    return [
        {
            "name": f"spk{i}",
            "voice": f"en+{_ESPEAK_VARIANTS[i % len(_ESPEAK_VARIANTS)]}",
            "pitch": 35 + 10 * (i % 3),
            "speed": 145 + 10 * (i % 4),
        }
        for i in range(n)
    ]


def _espeak_renderer(voices: list[dict], sample_rate: int, seed: int) -> Renderer:
    sentences = load_sentences()
    order = np.random.default_rng(seed).permutation(len(sentences))

    def render(index: int) -> tuple[np.ndarray, None]:
        rng = np.random.default_rng([seed, index])
        voice = voices[index % len(voices)]
        pitch = int(np.clip(voice["pitch"] + rng.integers(-5, 6), 0, 99))
        speed = voice["speed"] + int(rng.integers(-10, 11))
        text = sentences[order[index % len(sentences)]]
        audio = _espeak(text, voice["voice"], pitch, speed, sample_rate)
        audio *= rng.uniform(0.5, 0.9) / (np.abs(audio).max() + 1e-9)  # same peaks as builtin
        return audio, None

    return render


def _espeak(text: str, voice: str, pitch: int, speed: int, sample_rate: int) -> np.ndarray:
    """Render ``text`` with espeak-ng; returns (S,) float32 mono at ``sample_rate``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "utterance.wav"
        command = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path)]
        subprocess.run([*command, text], check=True, capture_output=True)
        audio, rate = sf.read(path, dtype="float32")
    return soxr.resample(audio, rate, sample_rate).astype(np.float32)


def load_sentences() -> list[str]:
    """Sentences for the espeak engine: ``data/corpus_sentences.txt``, one per line.

    Falls back to a few built-in sentences where the file is missing (a non-editable install
    ships the package without ``data/``). Blank lines and ``#`` comments are skipped.
    """
    if _SENTENCES_FILE.is_file():
        lines = (line.strip() for line in _SENTENCES_FILE.read_text(encoding="utf-8").splitlines())
        sentences = [line for line in lines if line and not line.startswith("#")]
        if sentences:
            return sentences
    return list(_FALLBACK_SENTENCES)

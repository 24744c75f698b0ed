"""What the builtin corpus says and how: phones, their durations and prosody on a frame grid.

A seeded ``np.random.Generator`` draws phrases of words of syllables (vowels, diphthongs,
fricatives, stops, nasals, approximants) and pauses (`plan_segments`), turns them into smoothed
frame tracks of source and filter targets (`frame_tracks`) and draws an F0 contour with
declination, accents, drift and vibrato (`f0_contour`). `wavflow.formant` renders them to audio.

References:
    G. E. Peterson, H. L. Barney, "Control methods used in a study of the vowels", JASA 24, 1952.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
from scipy import ndimage

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
# Frication and burst noise bands in Hz for formant_scale 1.
NOISE_BANDS = {
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
    noise: str | None  # frication band, a key of NOISE_BANDS
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


class Tracks(NamedTuple):
    """Frame-rate synthesis parameters, N frames at hop spacing."""

    voicing: np.ndarray  # (N,) glottal amplitude, vowel = 1
    aspiration: np.ndarray  # (N,) aspiration amplitude
    noise: np.ndarray  # (N, len(NOISE_BANDS)) frication amplitude per band
    formants: np.ndarray  # (N, 3) F1-F3 in Hz (targets are NaN where coarticulated)
    gain: np.ndarray  # (N,) syllable envelope on the voicing


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[rng.integers(len(options))]


def _draw_frames(rng: np.random.Generator, ms: tuple[float, float], frames_per_ms: float) -> int:
    return max(1, round(rng.uniform(*ms) * frames_per_ms))


def plan_segments(
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


def frame_tracks(segments: list[_Segment]) -> Tracks:
    """Frame tracks from the segments, smoothed into attacks, decays and transitions."""
    raw = Tracks(*(np.concatenate(parts) for parts in zip(*map(_segment_tracks, segments))))
    return Tracks(
        voicing=_smooth(raw.voicing, 5),
        aspiration=_smooth(raw.aspiration, 3),
        noise=_smooth(raw.noise, 3),
        formants=_smooth(_fill_gaps(raw.formants), 9),
        gain=_smooth(raw.gain, 5),
    )


def _segment_tracks(segment: _Segment) -> Tracks:
    n, sound = segment.frames, segment.sound
    noise = np.zeros((n, len(NOISE_BANDS)))
    if sound.noise is not None:
        noise[:, list(NOISE_BANDS).index(sound.noise)] = sound.noise_level
    start = np.full(3, np.nan) if sound.formants is None else np.asarray(sound.formants)
    end = start if segment.formants_end is None else np.asarray(segment.formants_end)
    return Tracks(
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


def f0_contour(
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

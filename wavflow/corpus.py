"""Built-in speech-like corpus: `write_corpus` with the builtin formant voice or espeak-ng.

Nothing can be downloaded, so the demo, the tests and new users train on audio made here.
The builtin engine (`wavflow.formant`, planned by `wavflow.speech_plan`) is a small
source-filter synthesiser whose true F0 is known frame by frame; the espeak engine reads
sentences with espeak-ng. The same seed gives byte-identical files.
"""

import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from wavflow.config import OptionError
from wavflow.formant import FRAME_RATE_HZ, default_speakers, synthesize_utterance
from wavflow.speech_plan import Speaker

ENGINES = ("builtin", "espeak")
MIN_SECONDS, MAX_SECONDS = 1.5, 5.0  # utterance durations drawn by write_corpus

_SENTENCES_FILE = Path(__file__).resolve().parents[1] / "data" / "corpus_sentences.txt"
_FALLBACK_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her.",
    "How much wood would a woodchuck chuck?",
    "She sells sea shells by the sea shore.",
    "We will meet at the station at half past nine.",
)
_ESPEAK_VARIANTS = ("m3", "f2", "m1", "f4", "m7", "f3", "m5", "f1")


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

"""Tests for the built-in speech-like corpus (wavflow/corpus.py)."""

import json
import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from wavflow import corpus
from wavflow.corpus import default_speakers, synthesize_utterance, write_corpus

SR = 16000
HOP = SR // 200
MINUTES = 0.35  # 21 s: at least 5 utterances of at most 5 s, so every speaker of 4 appears


def _utterance(speaker: int = 0, seed: int = 0, duration: float = 3.0, sample_rate: int = SR):
    rng = np.random.default_rng([seed, 0])
    return synthesize_utterance(rng, default_speakers()[speaker], sample_rate, duration)


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[Path], dict]:
    out_dir = tmp_path_factory.mktemp("corpus")
    paths = write_corpus(out_dir, minutes=MINUTES, sample_rate=SR, seed=3)
    return out_dir, paths, json.loads((out_dir / "corpus.json").read_text())


@pytest.fixture(scope="module")
def loaded(written) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(speaker, audio read back from the 16-bit wav, true F0) per utterance."""
    out_dir, _, manifest = written
    return [
        (
            entry["speaker"],
            sf.read(out_dir / entry["path"], dtype="float32")[0],
            np.load(out_dir / entry["f0_path"]),
        )
        for entry in manifest["utterances"]
    ]


def _frame_features(audio: np.ndarray) -> dict[str, np.ndarray]:
    """RMS, spectral flatness, zero-crossing rate, centroid per HOP frame (centred)."""
    return {
        "rms": librosa.feature.rms(y=audio, frame_length=512, hop_length=HOP)[0],
        "flatness": librosa.feature.spectral_flatness(y=audio, n_fft=512, hop_length=HOP)[0],
        "zcr": librosa.feature.zero_crossing_rate(audio, frame_length=512, hop_length=HOP)[0],
        "centroid": librosa.feature.spectral_centroid(y=audio, sr=SR, n_fft=512, hop_length=HOP)[0],
    }


def test_same_seed_gives_identical_audio_and_f0():
    audio_a, f0_a = _utterance(seed=5)
    audio_b, f0_b = _utterance(seed=5)
    assert audio_a.tobytes() == audio_b.tobytes()
    assert f0_a.tobytes() == f0_b.tobytes()


def test_different_seeds_differ():
    audio_a, _ = _utterance(seed=5)
    audio_b, _ = _utterance(seed=6)
    assert not np.allclose(audio_a, audio_b)


def test_write_corpus_is_byte_identical_for_a_seed(tmp_path):
    first = write_corpus(tmp_path / "a", minutes=0.05, seed=1)
    second = write_corpus(tmp_path / "b", minutes=0.05, seed=1)
    assert [p.relative_to(tmp_path / "a") for p in first] == [
        p.relative_to(tmp_path / "b") for p in second
    ]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second))
    other = write_corpus(tmp_path / "c", minutes=0.05, seed=2)
    assert first[0].read_bytes() != other[0].read_bytes()


@pytest.mark.parametrize("duration", [1.5, 5.0])
@pytest.mark.parametrize("speaker", [0, 3])
def test_length_peak_dtype_and_f0_frames(duration, speaker):
    audio, f0 = _utterance(speaker, seed=11, duration=duration)
    assert audio.dtype == np.float32 and audio.shape == (round(duration * SR),)
    assert np.isfinite(audio).all()
    assert 0.45 <= np.abs(audio).max() <= 0.95
    assert f0.dtype == np.float32 and f0.shape == (len(audio) // HOP + 1,)
    voiced = f0[f0 > 0]
    assert 0.2 < len(voiced) / len(f0) < 0.9
    assert voiced.min() > 50 and voiced.max() < 600


@pytest.mark.parametrize("sample_rate", [8000, 22050])
def test_other_sample_rates(sample_rate):
    audio, f0 = _utterance(speaker=3, duration=2.0, sample_rate=sample_rate)
    assert audio.shape == (2 * sample_rate,) and np.isfinite(audio).all()
    assert f0.shape == (len(audio) // (sample_rate // 200) + 1,)
    assert 0.45 <= np.abs(audio).max() <= 0.95


def test_write_corpus_files_and_manifest(written):
    out_dir, paths, manifest = written
    assert manifest["engine"] == "builtin" and manifest["seed"] == 3
    assert manifest["sample_rate"] == SR and manifest["f0_hop"] == HOP
    assert [s["name"] for s in manifest["speakers"]] == ["spk0", "spk1", "spk2", "spk3"]
    seconds = [entry["seconds"] for entry in manifest["utterances"]]
    # Stops at the first utterance that reaches the total: overshoots by less than one.
    assert sum(seconds[:-1]) < MINUTES * 60 <= sum(seconds)
    assert all(1.5 <= s <= 5.0 for s in seconds)
    assert paths == [out_dir / entry["path"] for entry in manifest["utterances"]]
    for i, entry in enumerate(manifest["utterances"]):
        speaker = f"spk{i % 4}"
        assert entry["path"] == f"{speaker}/{speaker}_{i // 4:04d}.wav"
        info = sf.info(out_dir / entry["path"])
        assert info.samplerate == SR and info.subtype == "PCM_16" and info.channels == 1
        assert info.frames == round(entry["seconds"] * SR)
        f0 = np.load(out_dir / entry["f0_path"])
        assert f0.dtype == np.float32 and f0.shape == (info.frames // HOP + 1,)


def test_pyin_agrees_with_true_f0(loaded):
    """An independent pitch tracker finds the recorded F0: the audio is periodic there."""
    within, recall = [], []
    for _, audio, f0 in loaded[:4]:
        estimate, voiced, _ = librosa.pyin(
            audio, fmin=60, fmax=500, sr=SR, frame_length=1024, hop_length=HOP
        )
        both = voiced & (f0 > 0)
        within.append(np.abs(12 * np.log2(estimate[both] / f0[both])) < 1.0)
        recall.append(both.sum() / (f0 > 0).sum())
    assert np.mean(np.concatenate(within)) > 0.9
    assert min(recall) > 0.8


def test_formants_move_over_time():
    """LPC formants of the voiced frames: F1 and F2 plausible, F2 sweeps between vowels."""
    audio, f0 = _utterance(speaker=0, seed=2, duration=5.0)
    formants = []
    for frame in np.flatnonzero(f0 > 0)[3:-3]:
        chunk = audio[frame * HOP - 256 : frame * HOP + 256].astype(np.float64)
        if len(chunk) == 512 and np.sqrt(np.mean(chunk**2)) > 0.05:
            formants.append(_lpc_formants(chunk))
    f1, f2 = np.array([f[:2] for f in formants if len(f) >= 2]).T
    assert len(f1) > 100
    assert 250 < np.median(f1) < 900 and 800 < np.median(f2) < 2200
    assert np.percentile(f2, 90) - np.percentile(f2, 10) > 400  # a held vowel: < 100 Hz
    centroid = _frame_features(audio)["centroid"][: len(f0)][f0 > 0]
    assert centroid.std() > 150


def _lpc_formants(chunk: np.ndarray, order: int = 18) -> np.ndarray:
    """Formant frequencies in Hz from the roots of an LPC polynomial (bandwidth < 500 Hz)."""
    emphasised = np.append(chunk[0], chunk[1:] - 0.97 * chunk[:-1]) * np.hanning(len(chunk))
    roots = np.roots(librosa.lpc(emphasised, order=order))
    roots = roots[np.imag(roots) > 0]
    frequency = np.angle(roots) * SR / (2 * np.pi)
    bandwidth = -np.log(np.abs(roots)) * SR / np.pi
    return np.sort(frequency[(frequency > 150) & (bandwidth < 500)])


def test_has_noisy_unvoiced_frames_and_pauses(loaded):
    noisy, silent, noisy_unvoiced = [], [], []
    for _, audio, f0 in loaded:
        features = _frame_features(audio)
        loud = features["rms"] > 0.05 * features["rms"].max()
        is_noisy = loud & (features["flatness"] > 0.05) & (features["zcr"] > 0.25)
        noisy.append(is_noisy)
        silent.append(features["rms"] < 1e-3 * features["rms"].max())
        noisy_unvoiced.append(f0[is_noisy[: len(f0)]] == 0)
    assert np.mean(np.concatenate(noisy)) > 0.01
    assert np.mean(np.concatenate(silent)) > 0.05
    assert np.mean(np.concatenate(noisy_unvoiced)) > 0.7


def test_speakers_differ_in_median_f0(loaded):
    medians = {
        name: np.median(np.concatenate([f0[f0 > 0] for n, _, f0 in loaded if n == name]))
        for name in ["spk0", "spk1", "spk2", "spk3"]
    }
    values = list(medians.values())
    assert values == sorted(values)
    assert 80 < medians["spk0"] < 130 and 200 < medians["spk3"] < 320


def test_default_speakers():
    assert len(default_speakers(1)) == 1
    speakers = default_speakers(6)
    assert len({s.name for s in speakers}) == 6
    f0 = [s.f0_mean for s in speakers]
    assert f0 == sorted(f0) and f0[0] == pytest.approx(100) and f0[-1] == pytest.approx(250)
    assert speakers[-1].formant_scale > speakers[0].formant_scale
    with pytest.raises(ValueError, match="n"):
        default_speakers(0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"minutes": 0}, "minutes"),
        ({"minutes": 1, "sample_rate": 4000}, "sample_rate"),
        ({"minutes": 1, "engine": "festival"}, "engine"),
        ({"minutes": 1, "seed": -1}, "seed"),
        ({"minutes": 1, "n_speakers": 0}, "n_speakers"),
    ],
)
def test_write_corpus_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        write_corpus(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_synthesize_rejects_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="duration"):
        synthesize_utterance(rng, default_speakers()[0], SR, 0.5)
    with pytest.raises(ValueError, match="sample_rate"):
        synthesize_utterance(rng, default_speakers()[0], 4000, 2.0)


def test_espeak_missing_raises_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        write_corpus(tmp_path, minutes=0.1, engine="espeak")


def test_sentences_file_and_fallback(tmp_path, monkeypatch):
    assert len(corpus.load_sentences()) >= 50
    monkeypatch.setattr(corpus, "_SENTENCES_FILE", tmp_path / "missing.txt")
    assert len(corpus.load_sentences()) > 0


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_engine(tmp_path):
    paths = write_corpus(tmp_path, minutes=0.1, sample_rate=SR, engine="espeak", n_speakers=2)
    manifest = json.loads((tmp_path / "corpus.json").read_text())
    assert manifest["engine"] == "espeak" and manifest["f0_hop"] is None
    assert sum(entry["seconds"] for entry in manifest["utterances"]) >= 6.0
    assert not list(tmp_path.rglob("*.npy"))
    assert {p.parent.name for p in paths} == {"spk0", "spk1"}
    audio, sample_rate = sf.read(paths[0], dtype="float32")
    assert sample_rate == SR and 0.45 <= np.abs(audio).max() <= 0.95
    assert (
        paths[0].read_bytes()
        == write_corpus(tmp_path / "again", minutes=0.1, engine="espeak", n_speakers=2)[
            0
        ].read_bytes()
    )

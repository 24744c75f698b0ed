"""Audio I/O, resampling, mu-law, pre-emphasis, and the log-mel and its conventions against
independent librosa/numpy computations."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow.audio import (
    AudioError,
    check_features_match,
    convention_mel,
    from_convention_mel,
    load_audio,
    log_mel,
    mel_mismatch,
    mel_statistics,
    mulaw_decode,
    mulaw_encode,
    peak_normalize,
    preemphasis,
    resample,
    save_audio,
    trim_silence,
)
from wavflow.config import FeatureConfig, RecipeError


def _tone(rate: int = 16000, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_load_reads_integer_and_float_wav(tmp_path, subtype):
    audio = _tone()
    sf.write(tmp_path / "a.wav", audio, 16000, subtype=subtype)
    loaded = load_audio(tmp_path / "a.wav")
    assert loaded.dtype == np.float32
    assert np.abs(loaded - audio).max() < 1e-4


@pytest.mark.parametrize("suffix", [".flac", ".ogg"])
def test_load_reads_flac_and_ogg(tmp_path, suffix):
    audio = _tone()
    sf.write(tmp_path / f"a{suffix}", audio, 16000)
    loaded = load_audio(tmp_path / f"a{suffix}")
    tolerance = 1e-3 if suffix == ".flac" else 0.1  # ogg vorbis is lossy
    assert np.abs(loaded[: len(audio)] - audio).max() < tolerance


def test_load_mixes_stereo_to_mono(tmp_path):
    left, right = _tone(freq=440), _tone(freq=660)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 16000, subtype="FLOAT")
    assert np.allclose(load_audio(tmp_path / "s.wav"), (left + right) / 2, atol=1e-6)


def test_load_resamples(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(rate=22050, freq=440), 22050, subtype="FLOAT")
    loaded = load_audio(tmp_path / "a.wav", 16000)
    assert len(loaded) == 8000
    spectrum = np.abs(np.fft.rfft(loaded))
    assert abs(np.argmax(spectrum) * 16000 / len(loaded) - 440) < 3


def test_resample_round_trip_is_close():
    audio = _tone(rate=16000, freq=300)
    back = resample(resample(audio, 16000, 24000), 24000, 16000)
    assert np.abs(back[100:-100] - audio[100:-100]).max() < 1e-3


@pytest.mark.parametrize("content", [b"", b"not a wav file at all" * 10])
def test_load_rejects_corrupt_files_naming_them(tmp_path, content):
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="broken.wav"):
        load_audio(path)


def test_save_writes_16_bit_and_float(tmp_path):
    audio = _tone()
    save_audio(tmp_path / "a.wav", audio, 16000)
    save_audio(tmp_path / "b.wav", torch.from_numpy(audio), 16000, float32=True)
    assert sf.info(tmp_path / "a.wav").subtype == "PCM_16"
    assert sf.info(tmp_path / "b.wav").subtype == "FLOAT"
    assert np.abs(sf.read(tmp_path / "a.wav")[0] - audio).max() < 1e-4


def test_mulaw_round_trip_and_range():
    x = torch.linspace(-1, 1, 1001)
    classes = mulaw_encode(x)
    assert classes.min() == 0 and classes.max() == 255
    assert (mulaw_decode(classes) - x).abs().max() < 0.025  # the coarsest step, near +-1
    small = torch.tensor([0.001, -0.001])
    assert (mulaw_decode(mulaw_encode(small)) - small).abs().max() < 1e-3


def test_preemphasis_formula():
    x = torch.tensor([[1.0, 2.0, 4.0]])
    assert torch.allclose(preemphasis(x, 0.5), torch.tensor([[1.0, 1.5, 3.0]]))
    assert preemphasis(x, 0.0) is x


def test_trim_and_peak_normalise():
    audio = np.concatenate([np.zeros(4000), _tone(), np.zeros(4000)]).astype(np.float32)
    trimmed = trim_silence(audio, 40)
    assert 8000 <= len(trimmed) < 12000
    assert np.isclose(np.abs(peak_normalize(trimmed, 0.9)).max(), 0.9)
    assert not peak_normalize(np.zeros(10, np.float32)).any()


@pytest.mark.parametrize(
    "cfg",
    [
        FeatureConfig(sample_rate=16000, n_fft=1024, hop_length=256, win_length=1024, fmax=8000),
        FeatureConfig(sample_rate=22050, n_fft=1024, hop_length=256, win_length=800, fmin=50.0),
        FeatureConfig(
            sample_rate=16000,
            n_fft=512,
            hop_length=128,
            win_length=512,
            n_mels=40,
            window="hamming",
            mel_norm="none",
            preemphasis=0.97,
        ),
    ],
)
def test_log_mel_matches_librosa(cfg):
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(cfg.sample_rate) + _tone(cfg.sample_rate, 1.0)).astype(
        np.float32
    )
    ours = log_mel(torch.from_numpy(audio)[None], cfg)[0].numpy()
    pad = (cfg.n_fft - cfg.hop_length) // 2
    emphasised = np.concatenate([audio[:1], audio[1:] - cfg.preemphasis * audio[:-1]])
    reference = librosa.feature.melspectrogram(
        y=np.pad(emphasised, (pad, pad), mode="reflect"),
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=cfg.window,
        center=False,
        power=1.0,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        norm="slaney" if cfg.mel_norm == "slaney" else None,
    )
    assert ours.shape == (cfg.n_mels, len(audio) // cfg.hop_length) == reference.shape
    assert np.abs(ours - np.log(np.maximum(reference, cfg.log_floor))).max() < 1e-3


def test_log_mel_is_batched_and_differentiable():
    cfg = FeatureConfig(sample_rate=16000, n_fft=256, hop_length=64, win_length=256, n_mels=20)
    audio = torch.randn(3, 1, 1024, requires_grad=True)
    mel = log_mel(audio, cfg)
    assert mel.shape == (3, 20, 16)
    assert torch.allclose(mel[1], log_mel(audio[1:2], cfg)[0])
    mel.sum().backward()
    assert torch.isfinite(audio.grad).all()


def test_feature_mismatch_is_reported():
    a = FeatureConfig(sample_rate=16000, fmax=8000)
    b = FeatureConfig(sample_rate=16000, fmax=7600, hop_length=200, win_length=800, n_fft=1024)
    with pytest.raises(ValueError, match="fmax: expected 8000") as error:
        check_features_match(a, b, "the checkpoint")
    assert "hop_length" in str(error.value)
    check_features_match(a, a, "the same")


def test_feature_config_rejects_nonsense():
    with pytest.raises(RecipeError, match="fmax"):
        FeatureConfig(sample_rate=16000, fmax=9000)
    with pytest.raises(RecipeError, match="hop"):
        FeatureConfig(hop_length=2048)


def hifigan_reference(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """jik876/hifi-gan `meldataset.mel_spectrogram` in numpy: reflect padding of (n_fft - hop)/2,
    frames of n_fft not centred, periodic Hann window of win_length centred in the frame,
    sqrt(|X|^2 + 1e-9), Slaney mel filters, ln(clamp(., 1e-5))."""
    pad = (cfg.n_fft - cfg.hop_length) // 2
    frames = librosa.util.frame(
        np.pad(audio.astype(np.float64), (pad, pad), mode="reflect"),
        frame_length=cfg.n_fft,
        hop_length=cfg.hop_length,
    )  # (n_fft, frames)
    window = librosa.util.pad_center(
        librosa.filters.get_window("hann", cfg.win_length), size=cfg.n_fft
    )
    spectrum = np.fft.rfft(frames * window[:, None], axis=0)
    magnitude = np.sqrt(np.abs(spectrum) ** 2 + 1e-9)
    basis = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    return np.log(np.clip(basis @ magnitude, 1e-5, None))


def parallel_wavegan_reference(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """kan-bayashi/ParallelWaveGAN `logmelfilterbank`: librosa.stft (centred, reflect), |X|,
    mel filters, log10(max(., 1e-10)); (n_mels, T // hop + 1) frames, frame j centred on j hop."""
    stft = librosa.stft(
        audio.astype(np.float64),
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        pad_mode="reflect",
    )
    basis = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
    )
    return np.log10(np.maximum(1e-10, np.abs(stft).T @ basis.T)).T


def _speech_like(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    audio = 0.05 * rng.standard_normal(int(rate * seconds)) + _tone(rate, seconds, 220.0)
    return audio[: int(rate * seconds) // 256 * 256 + 100].astype(np.float32)  # not frame-aligned


def _wavflow_mel(audio: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    return log_mel(torch.from_numpy(audio)[None], cfg)[0].numpy()


def test_hifigan_preset_matches_hifigans_mel_spectrogram():
    cfg = FeatureConfig(convention="hifigan")
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.win_length, cfg.n_mels) == (
        22050,
        1024,
        256,
        1024,
        80,
    )
    assert (cfg.fmin, cfg.fmax, cfg.log_floor, cfg.mel_norm) == (0.0, 8000.0, 1e-5, "slaney")
    audio = _speech_like(cfg.sample_rate, 1.0)
    ours = convention_mel(_wavflow_mel(audio, cfg), cfg)
    reference = hifigan_reference(audio, cfg)
    assert ours.shape == reference.shape == (80, len(audio) // 256)
    assert np.abs(ours - reference).max() < 1e-3


def test_parallel_wavegan_preset_matches_its_logmelfilterbank():
    cfg = FeatureConfig(convention="parallel_wavegan")
    assert (cfg.fmin, cfg.fmax, cfg.log_floor) == (80.0, 7600.0, 1e-10)
    audio = _speech_like(cfg.sample_rate, 1.0, seed=1)
    ours = convention_mel(_wavflow_mel(audio, cfg), cfg, normalized=False)
    reference = parallel_wavegan_reference(audio, cfg)
    # Theirs has one frame more, centred on the sample after the audio (which their recipe pads).
    assert reference.shape == (80, len(audio) // 256 + 1)
    assert ours.shape == (80, len(audio) // 256)
    assert np.abs(ours - reference[:, :-1]).max() < 1e-3


@pytest.mark.parametrize(
    ("convention", "centre"), [("wavflow", 128), ("hifigan", 128), ("parallel_wavegan", 0)]
)
def test_each_convention_aligns_frame_j_with_its_samples(convention, centre):
    """A click at sample j0 * hop + centre lands in frame j0 (the frame centred on it)."""
    cfg = FeatureConfig(convention=convention)
    audio = np.zeros(40 * 256, np.float32)
    audio[17 * 256 + centre] = 1.0
    energy = np.exp(_wavflow_mel(audio, cfg)).sum(axis=0)
    assert int(np.argmax(energy)) == 17
    assert energy[16] == pytest.approx(energy[18], rel=0.05)  # symmetric about frame 17


def test_mel_statistics_and_normalisation_round_trip():
    cfg = FeatureConfig(convention="parallel_wavegan")
    mels = [
        _wavflow_mel(_speech_like(cfg.sample_rate, s, seed), cfg)
        for seed, s in [(0, 0.5), (1, 0.8)]
    ]
    measured = mel_statistics(mels, cfg)
    # numpy's own StandardScaler: log10 mels, population std over all frames of all utterances.
    frames = np.concatenate([m / np.log(10.0) for m in mels], axis=1)
    assert np.allclose(measured.mel_mean, frames.mean(axis=1), atol=1e-5)
    assert np.allclose(measured.mel_std, frames.std(axis=1), atol=1e-5)
    assert measured == cfg  # statistics are measurements, not settings
    check_features_match(cfg, measured, "the prepared data")
    normalised = convention_mel(mels[0], measured)
    assert abs(normalised.mean()) < 1.0
    assert np.allclose(
        from_convention_mel(normalised, measured, normalized=True), mels[0], atol=1e-4
    )
    with pytest.raises(ValueError, match="statistics"):
        convention_mel(mels[0], cfg)


@pytest.mark.parametrize(
    ("convention", "written", "normalized", "warning"),
    [
        (
            "hifigan",
            "log10",
            False,
            "these look like log10 mels; this checkpoint expects natural-log hifigan mels",
        ),
        ("hifigan", "natural-log", False, None),
        ("parallel_wavegan", "log10", False, None),
        ("parallel_wavegan", "normalised", True, None),
        ("parallel_wavegan", "normalised", False, "these look like normalised mels"),
        ("parallel_wavegan", "natural-log", True, "these look like natural-log mels"),
        ("wavflow", "normalised", False, "this checkpoint expects natural-log wavflow mels"),
    ],
)
def test_supplied_mels_of_another_convention_are_named(convention, written, normalized, warning):
    cfg = FeatureConfig(convention=convention)
    mels = [_wavflow_mel(_speech_like(cfg.sample_rate, 0.5, seed), cfg) for seed in (0, 1)]
    cfg = mel_statistics(mels, cfg)
    mel = mels[1]
    forms = {
        "natural-log": mel,
        "log10": mel / np.log(10.0),
        "normalised": (mel - mel.mean(axis=1, keepdims=True)) / mel.std(axis=1, keepdims=True),
    }
    found = mel_mismatch(forms[written], cfg, normalized)
    if warning is None:
        assert found is None
    else:
        assert found is not None and warning in found


def test_unknown_convention_and_pre_emphasis_outside_wavflow_are_errors():
    with pytest.raises(RecipeError, match="convention"):
        FeatureConfig(convention="tacotron")
    with pytest.raises(RecipeError, match="preemphasis"):
        FeatureConfig(convention="hifigan", preemphasis=0.97)

"""Training, synthesis and benchmarks run without librosa (the GPU machine has none): the mel
filterbank and silence trimming are wavflow's own, equal to librosa's, and librosa is imported
only for pyin F0 (data preparation, evaluation)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wavflow.audio import _mel_basis, hz_to_mel, mel_to_hz, trim_silence
from wavflow.config import FeatureConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# What the GPU machine lacks: needed only for F0 in preparation, and for evaluation's metrics.
GPU_MACHINE_LACKS = ("librosa", "numba", "llvmlite", "sklearn", "pesq", "pystoi", "pysptk")


@pytest.mark.parametrize(
    "cfg",
    [
        FeatureConfig(),  # wavflow: hifi-gan's 22.05 kHz, 1024, 80 bands, 0-8000 Hz
        FeatureConfig(convention="hifigan"),
        # ParallelWaveGAN's 24 kHz recipes: 2048 / 300 / 1200, 80 bands, 80-7600 Hz.
        FeatureConfig(
            convention="parallel_wavegan",
            sample_rate=24000,
            n_fft=2048,
            hop_length=300,
            win_length=1200,
        ),
        FeatureConfig(sample_rate=16000, n_fft=256, hop_length=64, win_length=256, n_mels=20),
        FeatureConfig(
            sample_rate=16000, n_fft=512, hop_length=128, win_length=512, n_mels=40, mel_norm="none"
        ),
        FeatureConfig(
            sample_rate=44100,
            n_fft=2048,
            hop_length=512,
            win_length=2048,
            n_mels=128,
            fmin=30.0,
            fmax=22050.0,
        ),
    ],
    ids=["wavflow", "hifigan", "parallel_wavegan", "tiny", "no-norm", "44k-full-band"],
)
def test_filterbank_equals_librosas(cfg: FeatureConfig) -> None:
    librosa = pytest.importorskip("librosa")
    reference = librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        norm="slaney" if cfg.mel_norm == "slaney" else None,
    )
    ours = _mel_basis(cfg)
    assert ours.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=0)


def test_slaney_scale_is_linear_below_1khz_and_inverts() -> None:
    hz = np.array([0.0, 200.0 / 3.0, 1000.0, 6400.0, 16000.0])
    # 200/3 Hz per mel up to 15 mels at 1 kHz, then 27 mels per factor 6.4.
    expected = [0.0, 1.0, 15.0, 42.0, 15.0 + 27.0 * np.log(16.0) / np.log(6.4)]
    np.testing.assert_allclose(hz_to_mel(hz), expected, rtol=1e-12)
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12, atol=1e-9)


def _burst(length: int, start: int, stop: int, seed: int) -> np.ndarray:
    """Quiet noise (-70 dB) of `length` samples with a loud tone and noise in [start, stop)."""
    rng = np.random.default_rng(seed)
    audio = 3e-4 * rng.standard_normal(length)
    t = np.arange(stop - start)
    audio[start:stop] += 0.5 * np.sin(0.05 * t) * np.hanning(stop - start)
    return audio.astype(np.float32)


@pytest.mark.parametrize(
    "audio",
    [
        _burst(40000, 9000, 30001, seed=0),
        _burst(40000, 0, 40000, seed=1),  # loud to both ends: nothing trimmed
        _burst(7777, 3000, 4100, seed=2),  # not a whole number of hops
        _burst(900, 100, 800, seed=3),  # shorter than one frame
        np.zeros(5000, dtype=np.float32),  # digital silence: every frame at the floor
    ],
    ids=["burst", "loud-to-the-ends", "odd-length", "shorter-than-a-frame", "silence"],
)
@pytest.mark.parametrize("top_db", [20.0, 40.0, 60.0])
def test_trim_equals_librosas(audio: np.ndarray, top_db: float) -> None:
    librosa = pytest.importorskip("librosa")
    reference, _ = librosa.effects.trim(audio, top_db=top_db)
    np.testing.assert_array_equal(trim_silence(audio, top_db), reference)


def test_trim_keeps_the_burst_and_drops_the_quiet_ends() -> None:
    trimmed = trim_silence(_burst(40000, 9000, 30001, seed=0), top_db=40.0)
    # Within one 2048-sample frame of the burst's 21001 samples, cut at 512-sample hops.
    assert abs(len(trimmed) - 21001) < 2048 and len(trimmed) % 512 == 0


def test_training_synthesis_and_bench_never_import_librosa() -> None:
    """With those packages made unimportable, as on the GPU machine, the training, synthesis,
    benchmark and export stacks and the CLI import, silence trimming (preparation without F0,
    as the GPU tests' fixture does) runs and a log-mel (features, the mel loss) computes."""
    probe = "; ".join(
        [
            "import sys",
            f"sys.modules.update(dict.fromkeys({GPU_MACHINE_LACKS!r}))",  # None: ImportError
            "import numpy as np, torch",
            "import wavflow.cli, wavflow.training, wavflow.synthesis, wavflow.benchmark",
            "import wavflow.export, wavflow.checkpoint, wavflow.data, wavflow.evaluation",
            "import wavflow.validation, wavflow.distill",
            "from wavflow.audio import log_mel, trim_silence",
            "from wavflow.config import FeatureConfig",
            "audio = torch.from_numpy(trim_silence(np.ones(4096, np.float32)))[None]",
            "print(tuple(log_mel(audio, FeatureConfig()).shape))",
        ]
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 80, 16)"


def test_the_subprocess_probe_would_see_a_librosa_import() -> None:
    """The blocking in the probe above works: an import of librosa then fails."""
    probe = f"import sys; sys.modules.update(dict.fromkeys({GPU_MACHINE_LACKS!r})); import librosa"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode != 0 and "librosa" in result.stderr


def test_validation_metrics_without_pysptk_and_librosa_give_the_log_mel_distance() -> None:
    """A student's validation on the GPU machine: MCD and F0 need packages it lacks, so only
    the log-mel distance is reported (instead of the run stopping at its first validation)."""
    probe = "; ".join(
        [
            "import sys",
            f"sys.modules.update(dict.fromkeys({GPU_MACHINE_LACKS!r}))",
            "import torch",
            "from wavflow.config import load_recipe",
            "from wavflow.validation import sample_metrics",
            f"recipe = load_recipe({str(RECIPES / 'tiny_teacher.toml')!r})",
            "real = torch.randn(2, 1, 4096, generator=torch.Generator().manual_seed(0))",
            "print(sorted(sample_metrics(0.5 * real, real, recipe)))",
        ]
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['log_mel_db']"

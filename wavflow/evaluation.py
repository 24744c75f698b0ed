"""Drawing audio from any model, and spectral metrics against real audio.

All metrics take waveforms (B, 1, T) or (B, T) in [-1, 1] and return floats.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from wavflow.audio import log_mel  # noqa: E402
from wavflow.config import FeatureConfig  # noqa: E402
from wavflow.teacher import WaveNet  # noqa: E402

DB_PER_NEPER = 20.0 / math.log(10.0)
MCD_CONSTANT = 10.0 * math.sqrt(2.0) / math.log(10.0)


@torch.no_grad()
def generate_audio(
    model: nn.Module,
    feats: Tensor,
    speaker: Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    method: str = "cached",
) -> Tensor:
    """Audio (B, 1, frames * hop) for mels (B, n_mels, frames): sequential for the teacher,
    one parallel pass for a student."""
    cond = model.condition(feats, speaker)
    if isinstance(model, WaveNet):
        return model.generate(cond, method=method, temperature=temperature, generator=generator)
    return model.sample(cond, temperature=temperature, generator=generator)


def log_mel_distance(fake: Tensor, real: Tensor, features: FeatureConfig) -> float:
    """Root-mean-square difference of log-mel spectrograms in dB, over bands and frames."""
    fake_mel, real_mel = log_mel(fake, features), log_mel(real, features)
    return float((fake_mel - real_mel).square().mean().sqrt() * DB_PER_NEPER)


def mel_cepstral_distortion(
    fake: Tensor, real: Tensor, features: FeatureConfig, n_coefficients: int = 13
) -> float:
    """Mel-cepstral distortion in dB: (10 sqrt 2 / ln 10) * mean_frames ||c_fake - c_real||,
    cepstra as the DCT-II of the log-mel (natural log) spectrum, c_0 (energy) excluded."""
    fake_c = _mel_cepstrum(log_mel(fake, features), n_coefficients)
    real_c = _mel_cepstrum(log_mel(real, features), n_coefficients)
    return float(MCD_CONSTANT * (fake_c - real_c).square().sum(dim=1).sqrt().mean())


def _mel_cepstrum(mel: Tensor, n_coefficients: int) -> Tensor:
    """(B, n_mels, F) log-mel -> (B, n_coefficients - 1, F) orthonormal DCT-II, c_0 dropped."""
    n = mel.shape[1]
    k = torch.arange(n_coefficients, dtype=mel.dtype, device=mel.device)[:, None]
    m = torch.arange(n, dtype=mel.dtype, device=mel.device)[None, :]
    basis = torch.cos(math.pi / n * (m + 0.5) * k) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return torch.einsum("km,bmf->bkf", basis, mel)[:, 1:]


def mel_figure(real: Tensor, fake: Tensor, features: FeatureConfig) -> plt.Figure:
    """A two-panel figure of the log-mels of `real` and `fake` (first item of each)."""
    figure, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for axis, audio, title in zip(axes, (real, fake), ("real", "generated")):
        axis.imshow(log_mel(audio[:1].float(), features)[0].cpu(), origin="lower", aspect="auto")
        axis.set_title(title)
        axis.set_ylabel("mel band")
    axes[-1].set_xlabel("frame")
    figure.tight_layout()
    return figure

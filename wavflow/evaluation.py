"""Drawing audio from any model, and spectral metrics against real audio.

All metrics take waveforms (B, 1, T) or (B, T) in [-1, 1] and return floats.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from wavflow.audio import estimate_f0, log_mel  # noqa: E402
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
    f0: Tensor | None = None,
) -> Tensor:
    """Audio (B, 1, frames * hop) for mels (B, n_mels, frames) (and F0 (B, frames) Hz for
    pitch-conditioned models): sequential for the teacher, one parallel pass for a student."""
    cond = model.condition(feats, speaker, f0)
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


@torch.no_grad()
def sample_metrics(fake: Tensor, real: Tensor, features: FeatureConfig) -> dict[str, float]:
    """Spectral distances of generated audio to the real audio it was conditioned on."""
    return {
        "log_mel_db": log_mel_distance(fake, real, features),
        "mcd_db": mel_cepstral_distortion(fake, real, features),
        **pitch_metrics(fake, real, features),
    }


def pitch_metrics(fake: Tensor, real: Tensor, features: FeatureConfig) -> dict[str, float]:
    """F0 of generated against real audio, both tracked with pyin at the frame rate.

    Returns:
        "f0_rmse_cents": RMS of 1200 log2(f0_fake / f0_real) on frames voiced in both (NaN
        when there are none); "vuv_error": share of frames whose voicing decisions differ;
        "voiced_recall": share of the real audio's voiced frames that are voiced in the fake.
    """
    fake_f0, real_f0 = _track_f0(fake, features), _track_f0(real, features)
    fake_voiced, real_voiced = fake_f0 > 0, real_f0 > 0
    both = fake_voiced & real_voiced
    cents = 1200 * np.log2(fake_f0[both] / real_f0[both]) if both.any() else np.array([np.nan])
    return {
        "f0_rmse_cents": float(np.sqrt(np.mean(cents**2))),
        "vuv_error": float(np.mean(fake_voiced != real_voiced)),
        "voiced_recall": float(both.sum() / max(1, real_voiced.sum())),
    }


def _track_f0(audio: Tensor, features: FeatureConfig) -> np.ndarray:
    """pyin F0 (Hz, 0 = unvoiced) of every item of (B, 1, T) audio, frames concatenated."""
    return np.concatenate(
        [estimate_f0(x.float().reshape(-1).cpu().numpy(), features) for x in audio]
    )


@torch.no_grad()
def distillation_metrics(
    student: nn.Module, teacher: WaveNet, batch: dict, features: FeatureConfig, seed: int = 0
) -> dict[str, float]:
    """KL(student || teacher) per sample (exact student density), the teacher's NLL of the
    student's samples, and the samples' spectral distances to the real audio."""
    generator = torch.Generator(device=batch["audio"].device).manual_seed(seed)
    f0 = batch.get("f0")
    cond = student.condition(batch["feats"], batch["speaker"], f0)
    x, log_q = student.rsample_and_log_prob(cond, generator=generator)
    log_p = teacher.log_prob(x, teacher.condition(batch["feats"], batch["speaker"], f0))
    length = x.shape[-1]
    return {
        "kl": float(((log_q - log_p) / length).mean()),
        "teacher_nll_of_student": float((-log_p / length).mean()),
        **sample_metrics(x, batch["audio"], features),
    }


def validation_clips(data_dir: Path, features: FeatureConfig, n_clips: int, seconds: float) -> dict:
    """A batch of the first `n_clips` validation utterances, cut to `seconds` from their middle
    (shorter ones are dropped): audio (N, 1, T), feats (N, n_mels, T / hop), speaker (N,)."""
    from wavflow.data import PreparedData, SegmentDataset

    segment = max(1, int(seconds * features.sample_rate) // features.hop_length)
    prepared = PreparedData(data_dir, expected=features)
    dataset = SegmentDataset(prepared, "val", segment * features.hop_length, random_crops=False)
    long_enough = [i for i, r in enumerate(dataset.records) if r["frames"] >= segment]
    items = [dataset[i] for i in long_enough[:n_clips]]
    if not items:
        raise ValueError(f"{data_dir}: no validation utterance is {seconds} s long; use less")
    return {
        "audio": torch.stack([item["audio"] for item in items]),
        "feats": torch.stack([item["feats"] for item in items]),
        "f0": torch.stack([item["f0"] for item in items]),
        "speaker": torch.tensor([item["speaker"] for item in items]),
    }


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: Path,
    data_dir: Path,
    teacher_path: Path | None = None,
    n_clips: int = 4,
    seconds: float = 1.0,
    nll_seconds: float = 0.1,
    seed: int = 0,
    teacher_samples: bool = True,
) -> dict:
    """Metrics of a teacher or student checkpoint on validation clips (see `wavflow evaluate`).

    Returns a dict with the model's kind, its NLL where defined (nats per sample), and for the
    teacher's sequential samples ("teacher_samples") and the student's parallel samples
    ("student_samples"): log-mel distance and MCD to the real audio (dB), and for students the
    KL to the teacher and the teacher's NLL of the student's samples. `teacher_samples=False`
    skips the teacher's (slow, sequential) samples when evaluating a student.
    """
    from wavflow.checkpoint import load_model, load_teacher

    model, recipe, state = load_model(checkpoint)
    features = recipe.features
    clips = validation_clips(data_dir, features, n_clips, seconds)
    short = _shorten(clips, features, nll_seconds)
    result: dict = {"checkpoint": str(checkpoint), "kind": state["kind"], "step": state["step"]}
    if state["kind"] == "teacher":
        teacher = model
    else:
        teacher_path = teacher_path or state.get("metadata", {}).get("teacher_checkpoint")
        teacher = load_teacher(teacher_path, features) if teacher_path else None
        result["student"] = recipe.student.kind
    result["nll"] = _nll(model, short if state["kind"] == "student" else clips)

    def draw(generator_model: nn.Module) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return generate_audio(
            generator_model, clips["feats"], clips["speaker"], generator=generator, f0=clips["f0"]
        )

    if teacher is not None:
        result["teacher_nll_of_real"] = _nll(teacher, clips)
        if teacher_samples or state["kind"] == "teacher":
            result["teacher_samples"] = sample_metrics(draw(teacher), clips["audio"], features)
    if state["kind"] == "student" and teacher is not None:
        result["student_samples"] = distillation_metrics(model, teacher, clips, features, seed)
    elif state["kind"] == "student":
        result["student_samples"] = sample_metrics(draw(model), clips["audio"], features)
    return result


def _nll(model: nn.Module, clips: dict) -> float:
    """Mean negative log-density of the real clips, nats per sample."""
    cond = model.condition(clips["feats"], clips["speaker"], clips["f0"])
    return float((-model.log_prob(clips["audio"], cond) / clips["audio"].shape[-1]).mean())


def _shorten(clips: dict, features: FeatureConfig, seconds: float) -> dict:
    """The first `seconds` of each clip (at least one frame): the IAF's density of real audio
    runs its sequential inverse, so it is evaluated on short clips."""
    frames = max(1, int(seconds * features.sample_rate) // features.hop_length)
    return {
        "audio": clips["audio"][..., : frames * features.hop_length],
        "feats": clips["feats"][..., :frames],
        "f0": clips["f0"][..., :frames],
        "speaker": clips["speaker"],
    }

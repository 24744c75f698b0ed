"""Validation metrics of training runs: KL to the teacher, distances of samples to real crops.

The training loop calls these on fixed validation crops at every evaluation; the figures of a
finished model on whole utterances, with anchors, come from `wavflow.evaluation`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from wavflow import metrics
from wavflow.audio import log_mel
from wavflow.capabilities import Vocoder
from wavflow.config import FeatureConfig, Recipe
from wavflow.data import DataError, PreparedData, SegmentDataset
from wavflow.distill import choose_estimator
from wavflow.teacher import WaveNet


@torch.no_grad()
def generate_audio(
    model: Vocoder,
    feats: Tensor,
    speaker: Tensor | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    f0: Tensor | None = None,
) -> Tensor:
    """Audio (B, 1, frames * hop) for mels (B, n_mels, frames) (and F0 (B, frames) Hz for
    pitch-conditioned models), by the model's own `synthesize`: sequential for the teacher,
    one parallel pass for a student."""
    x, _ = model.synthesize(model.condition(feats, speaker, f0), temperature, generator)
    return x


def mel_figure(real: Tensor, fake: Tensor, features: FeatureConfig) -> Figure:
    """A two-panel figure of the log-mels of `real` and `fake` (first item of each).

    A bare `Figure`, not pyplot's: no GUI backend is chosen (importing this module leaves
    matplotlib's backend to the application), and nothing stays registered with pyplot.
    """
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots(2, 1, sharex=True)
    for axis, audio, title in zip(axes, (real, fake), ("real", "generated")):
        mel = log_mel(audio[:1].float(), features)[0].cpu()
        axis.imshow(mel, origin="lower", aspect="auto")
        axis.set_title(title)
        axis.set_ylabel("mel band")
    axes[-1].set_xlabel("frame")
    figure.tight_layout()
    return figure


@torch.no_grad()
def sample_metrics(
    fake: Tensor, real: Tensor, recipe: Recipe, real_f0: Tensor | None = None
) -> dict[str, float]:
    """Spectral and pitch distances of generated crops (B, 1, T) to the real crops.

    Frames of all items are pooled. `real_f0` (B, T // hop) Hz is the real side's F0 where
    `prepare` stored it; otherwise pyin tracks it. MCD needs pysptk and the F0 errors librosa's
    pyin; where those are not installed (the GPU machine of scripts/gpu_check.sh) only
    "log_mel_db" is given.
    """
    features = recipe.features
    values = {"log_mel_db": metrics.log_mel_distance(real, fake, features)}
    if not all(importlib.util.find_spec(name) for name in ("pysptk", "librosa")):
        return values
    if real_f0 is None:
        real_f0_np = _pooled_f0(real, recipe)
    else:
        real_f0_np = real_f0.float().cpu().numpy().reshape(-1)
    return values | {
        "mcd_db": metrics.mel_cepstral_distortion(real, fake, features.sample_rate),
        **metrics.f0_errors(real_f0_np, _pooled_f0(fake, recipe)),
    }


def _pooled_f0(audio: Tensor, recipe: Recipe) -> np.ndarray:
    """pyin F0 (Hz) of every item of (B, 1, T) over the recipe's range, frames concatenated."""
    data = recipe.data
    return np.concatenate(
        [metrics.track_f0(x, recipe.features, data.f0_min, data.f0_max) for x in audio]
    )


def kl_first_step(student: nn.Module, teacher: WaveNet, recipe: Recipe) -> int:
    """First step of the KL, as in training: per-step estimators leave out the teacher's first
    receptive-field steps (context = zero padding) when `distill.skip_receptive_field`; the
    sample estimator (a total density per clip) cannot, and neither does its training loss."""
    per_step = choose_estimator(student, teacher, recipe.distill.kl_estimator) != "sample"
    return teacher.receptive_field if per_step and recipe.distill.skip_receptive_field else 0


def kl_to_teacher(
    student: nn.Module,
    teacher: WaveNet,
    student_cond: Tensor,
    teacher_cond: Tensor,
    first_step: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """A student sample x (B, 1, T), the Monte Carlo KL(student || teacher) of it and the
    teacher's NLL of it, both nats per sample over steps `first_step`..T-1.

    Per-step densities log q(x_t | x_<t) come from IAF students (x = loc + exp(log_scale) z);
    other students give a density of the whole clip, so their `first_step` must be 0.
    """
    if first_step:
        x, _, log_scale, z = student.rsample_with_stats(student_cond, generator=generator)
        log_q = (student.base.log_density(z) - log_scale)[:, 0, first_step:].sum(-1)
    else:
        x, log_q = student.rsample_and_log_prob(student_cond, generator=generator)
    steps = x.shape[-1] - first_step
    if steps <= 0:
        raise ValueError(f"clips of {x.shape[-1]} samples lie within the first {first_step} steps")
    log_p = teacher.log_prob_per_step(x, teacher_cond)[:, first_step:].sum(-1)
    return x, {
        "kl": float(((log_q - log_p) / steps).mean()),
        "teacher_nll_of_student": float((-log_p / steps).mean()),
    }


@torch.no_grad()
def distillation_metrics(
    student: nn.Module, teacher: WaveNet, batch: dict, recipe: Recipe, seed: int = 0
) -> dict[str, float]:
    """Validation metrics of distillation on crops: the KL to the teacher with the training
    loss's definition (`kl_first_step`), the teacher's NLL of the student's samples, and their
    `sample_metrics` against the real crops (the stored F0 as the real side where there is)."""
    generator = torch.Generator(device=batch["audio"].device).manual_seed(seed)
    f0 = batch.get("f0")
    student_cond = student.condition(batch["feats"], batch["speaker"], f0)
    teacher_cond = teacher.condition(batch["feats"], batch["speaker"], f0)
    first = kl_first_step(student, teacher, recipe)
    x, kl = kl_to_teacher(student, teacher, student_cond, teacher_cond, first, generator)
    stored_f0 = f0 if recipe.data.f0_method != "none" else None
    return kl | sample_metrics(x, batch["audio"], recipe, stored_f0)


def validation_clips(data_dir: Path, features: FeatureConfig, n_clips: int, seconds: float) -> dict:
    """A batch of the first `n_clips` validation utterances, cut to `seconds` from their middle
    (shorter ones are dropped): audio (N, 1, T), feats (N, n_mels, T / hop), speaker (N,)."""
    segment = max(1, int(seconds * features.sample_rate) // features.hop_length)
    prepared = PreparedData(data_dir, expected=features)
    dataset = SegmentDataset(prepared, "val", segment * features.hop_length, random_crops=False)
    long_enough = [i for i, r in enumerate(dataset.records) if r["frames"] >= segment]
    items = [dataset[i] for i in long_enough[:n_clips]]
    if not items:
        raise DataError(f"{data_dir}: no validation utterance is {seconds} s long; use less")
    return {
        "audio": torch.stack([item["audio"] for item in items]),
        "feats": torch.stack([item["feats"] for item in items]),
        "f0": torch.stack([item["f0"] for item in items]),
        "speaker": torch.tensor([item["speaker"] for item in items]),
    }

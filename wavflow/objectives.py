"""Recipe -> objective: what a training run optimises, shared by the CLI and the demo.

`build_objective(recipe, data, kind, teacher)` builds the model a run trains (the teacher, or
the recipe's student) for a prepared dataset's speakers and wraps it with its loss:

- maximum likelihood (`likelihood_objective`): {"nll": -log p(x | mel) / T} for the teacher
  and the coupling students, whose density of data is one parallel pass;
- distillation (`distillation_objective`): the `[distill]` losses of `DistillLoss` against a
  frozen teacher checkpoint, for every student.

Each objective also says how to validate its model and what to show in TensorBoard.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from wavflow.checkpoint import build_student, build_teacher, load_teacher, speaker_count
from wavflow.config import FeatureConfig, Recipe, RecipeError
from wavflow.data import PreparedData
from wavflow.distill import DistillLoss
from wavflow.nn.conditioning import aligned_phase
from wavflow.validation import distillation_metrics, generate_audio, mel_figure

if TYPE_CHECKING:  # TensorBoard is the training loop's import, not this module's
    from torch.utils.tensorboard import SummaryWriter


@dataclass
class Objective:
    """What a run trains: the model to save, a loss module, and how to validate it.

    Attributes:
        kind: "teacher" or "student" (what the checkpoint holds).
        model: the module whose weights are trained, saved and averaged (EMA).
        loss: module whose forward(batch) returns named losses (B-averaged, per sample); it
            contains `model` (and, for distillation, a frozen teacher). DDP wraps this module.
        weights: weight per loss name in the total; names missing here are logged only.
        validate: (model, batches) -> named validation metrics; `best_metric` picks `best.pt`.
        best_metric: the validation metric to minimise.
        media: optional (model, batch, writer, step) hook for TensorBoard audio and images.
        metadata: plain data saved in every checkpoint (e.g. the teacher a student came from).
        critic: discriminators inside `loss` that train beside `model` (their own loss is one
            of the named losses), or None; optimised, clipped and saved separately from it.
    """

    kind: str
    model: nn.Module
    loss: nn.Module
    weights: dict[str, float]
    validate: Callable[[nn.Module, list[dict[str, Any]]], dict[str, float]]
    best_metric: str = "val/nll"
    media: Callable[[nn.Module, dict[str, Any], SummaryWriter, int], None] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    critic: nn.Module | None = None


def build_objective(
    recipe: Recipe,
    data: PreparedData,
    kind: str = "teacher",
    teacher: str | Path | None = None,
) -> Objective:
    """The objective of one run, its model new from the recipe and sized for `data`'s speakers.

    The initial weights are drawn from `train.seed` alone, so every DDP rank builds the same
    model (`train` seeds each rank's own draws afterwards).

    Args:
        recipe: the resolved recipe (for a student, `config.student_recipe`'s).
        data: the prepared dataset the run trains on.
        kind: "teacher" (the WaveNet, by maximum likelihood) or "student" (`[student] kind`).
        teacher: for a student, the teacher checkpoint to distil from; None trains the
            student by maximum likelihood.

    Returns:
        The objective, with a teacher checkpoint's path in its metadata.

    Raises:
        RecipeError: an unknown `kind`, or an IAF student without a teacher.
        CheckpointError: `teacher` is not a teacher, reads other input than the student, or
            was trained on other speakers.
    """
    if kind not in ("teacher", "student"):
        raise RecipeError(f"unknown objective kind '{kind}': use 'teacher' or 'student'")
    if kind == "student" and teacher is None and recipe.student.kind == "iaf":
        raise RecipeError(
            "the IAF student's density of data needs its sequential inverse (T steps), so it "
            "is not trained by maximum likelihood: distil it with --teacher"
        )
    n_speakers = speaker_count(recipe, data.speakers)
    torch.manual_seed(recipe.train.seed)
    if kind == "teacher":
        return likelihood_objective("teacher", build_teacher(recipe, n_speakers), recipe.features)
    student = build_student(recipe, n_speakers)
    if teacher is None:
        return likelihood_objective("student", student, recipe.features)
    frozen = load_teacher(teacher, student.conditioner.spec, recipe.features, data.speakers)
    return distillation_objective(student, frozen, recipe, str(teacher))


class LikelihoodLoss(nn.Module):
    """Maximum likelihood: {"nll": -log p(x | mel) / T}, nats per sample, batch mean.

    Works for any model with `condition(feats, speaker)` and `log_prob(x, cond) -> (B,)`: the
    teacher and the coupling students.
    """

    def __init__(self, model: nn.Module, align_phase: bool = False) -> None:
        super().__init__()
        self.model = model
        self.align_phase = align_phase

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        audio = batch["audio"]
        feats, speaker, f0 = batch["feats"], batch["speaker"], batch.get("f0")
        if self.align_phase:  # the excitation in phase with the real fundamental
            conditioner = self.model.conditioner
            hop, rate = conditioner.upsampler.hop_length, conditioner.sample_rate
            phase = aligned_phase(audio[:, 0], f0, hop, rate)
            cond = conditioner(feats, speaker, f0, phase)
        else:
            cond = self.model.condition(feats, speaker, f0)
        losses = {"nll": -(self.model.log_prob(audio, cond) / audio.shape[-1]).mean()}
        return losses | f0_predictor_loss(self.model, batch)


def f0_predictor_loss(model: nn.Module, batch: dict[str, Any]) -> dict[str, Tensor]:
    """{"f0": loss} of the model's F0 predictor when it is conditioned on pitch, else {}."""
    predictor = model.conditioner.f0_predictor  # every model's `ConditionerBase` has one or None
    if predictor is None:
        return {}
    return {"f0": predictor.loss(batch["feats"], batch["f0"])}


def likelihood_objective(kind: str, model: nn.Module, features: FeatureConfig) -> Objective:
    """Train `model` (teacher or coupling student) by maximum likelihood."""

    # Only a teacher declares `align_phase` (`WaveNet`); coupling students never align. The
    # validation NLL is the training objective's, so it aligns the same way.
    loss = LikelihoodLoss(model, align_phase=kind == "teacher" and model.align_phase)

    def validate(model: nn.Module, batches: list[dict[str, Any]]) -> dict[str, float]:
        nll = [float(loss(b)["nll"]) for b in batches]
        audio = torch.cat([b["audio"].flatten() for b in batches])
        return {"nll": sum(nll) / len(nll), "baseline_nll": context_free_nll(audio)}

    def media(model: nn.Module, batch: dict[str, Any], writer: SummaryWriter, step: int) -> None:
        log_media(model, batch, writer, step, features)

    weights = {"nll": 1.0, "f0": 1.0}
    return Objective(kind, model, loss, weights, validate, "val/nll", media)


def context_free_nll(audio: Tensor) -> float:
    """NLL (nats per sample) of the best context-free Gaussian: 0.5 log(2 pi e var)."""
    return 0.5 * math.log(2 * math.pi * math.e * float(audio.double().var()))


def distillation_objective(
    student: nn.Module, teacher: nn.Module, recipe: Recipe, teacher_path: str = ""
) -> Objective:
    """Distil `student` from the frozen `teacher` with the `[distill]` losses.

    The student's F0 predictor (pitch students, for synthesis from bare mels) starts from the
    teacher's, which was trained on the same data.
    """

    def validate(model: nn.Module, batches: list[dict[str, Any]]) -> dict[str, float]:
        rows = [distillation_metrics(model, teacher, b, recipe) for b in batches]
        return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]}

    def media(model: nn.Module, batch: dict[str, Any], writer: SummaryWriter, step: int) -> None:
        log_media(model, batch, writer, step, recipe.features)

    copy_f0_predictor(teacher, student)
    loss = DistillLoss(student, teacher, recipe.distill, recipe.features)
    return Objective(
        "student",
        student,
        loss,
        recipe.distill.weights,
        validate,
        best_distillation_metric(recipe.distill.weights),
        media,
        {"teacher_checkpoint": teacher_path},
        loss.critic,
    )


def best_distillation_metric(weights: dict[str, float]) -> str:
    """The validation metric that picks a distilled student's `best.pt`: the KL to the
    teacher when it is trained, else the log-mel distance to the real crops (dB), which the
    spectral losses lower. A student that never sees the KL does not lower it: by KL, the
    demo's spectral-only IAF kept step 250 of 600, while the quality recipe's IAF climbs in
    PESQ-wb all the way (2.05 at step 500, 2.58 at 2,000)."""
    return "val/kl" if weights.get("kl", 0) else "val/log_mel_db"


def copy_f0_predictor(teacher: nn.Module, student: nn.Module) -> None:
    """Load the teacher's F0 predictor weights into the student's, when both have one."""
    source, target = teacher.conditioner.f0_predictor, student.conditioner.f0_predictor
    if source is not None and target is not None:
        target.load_state_dict(source.state_dict())


@torch.no_grad()
def log_media(
    model: nn.Module,
    batch: dict[str, Any],
    writer: SummaryWriter,
    step: int,
    features: FeatureConfig,
    seconds: float = 0.25,
) -> None:
    """Real and generated validation audio (first item, up to `seconds`) and their mels."""
    frames = max(
        1, min(batch["feats"].shape[-1], int(seconds * features.sample_rate) // features.hop_length)
    )
    feats, real = (
        batch["feats"][:1, :, :frames],
        batch["audio"][:1, :, : frames * features.hop_length],
    )
    f0 = batch["f0"][:1, :frames]
    fake = generate_audio(model, feats, batch["speaker"][:1], f0=f0)
    rate = features.sample_rate
    writer.add_audio("audio/real", real[0, 0].float().cpu().clamp(-1, 1), step, rate)
    writer.add_audio("audio/generated", fake[0, 0].float().cpu().clamp(-1, 1), step, rate)
    writer.add_figure("mel/real_vs_generated", mel_figure(real, fake, features), step)

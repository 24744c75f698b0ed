"""The recipe's sections: one frozen dataclass per TOML table, each checking its own values."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from wavflow.config.tables import RecipeError, from_dict, require


@dataclass(frozen=True)
class FeatureConfig:
    """Log-mel settings (`[features]`), stored with prepared data and checkpoints.

    `convention` names how other toolkits write their mels (see `wavflow.audio.log_mel` for
    the formulas); fmin, fmax and log_floor left unset take that convention's values:

    - "wavflow" and "hifigan": fmin 0, fmax 8000, floor 1e-5 (jik876/hifi-gan's
      `mel_spectrogram` at 22.05 kHz, 1024/256/1024, 80 bands, the defaults here).
    - "parallel_wavegan" (also ESPnet): fmin 80, fmax 7600, floor 1e-10, log10 mels,
      normalised by the training split's per-band mean and standard deviation.

    Attributes:
        convention: "wavflow", "hifigan" or "parallel_wavegan".
        sample_rate: audio rate in Hz.
        n_fft: FFT size in samples.
        hop_length: samples per frame; the models' upsampling factor.
        win_length: analysis window in samples (<= n_fft).
        window: "hann" or "hamming".
        n_mels: mel bands.
        fmin, fmax: filterbank range in Hz (fmax <= sample_rate / 2).
        log_floor: magnitudes are clamped to this before the log.
        mel_norm: librosa filterbank normalisation: "slaney" or "none".
        preemphasis: coefficient a of y_t = x_t - a x_{t-1} before the STFT (0: off).
        mel_mean, mel_std: (n_mels,) per-band mean and standard deviation of the training
            split's natural-log mels, measured by `wavflow prepare` (empty until then). They
            are measurements, not settings: feature comparisons ignore them.
    """

    convention: str = "wavflow"
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    window: str = "hann"
    n_mels: int = 80
    fmin: float | None = None
    fmax: float | None = None
    log_floor: float | None = None
    mel_norm: str = "slaney"
    preemphasis: float = 0.0
    mel_mean: tuple[float, ...] = field(default=(), compare=False)
    mel_std: tuple[float, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.convention not in CONVENTION_DEFAULTS:
            known = ", ".join(CONVENTION_DEFAULTS)
            raise RecipeError(f"[features] convention must be one of {known}: {self.convention!r}")
        # Frozen: fill the convention's values, and make tuples of lists read from TOML/JSON.
        for name, value in CONVENTION_DEFAULTS[self.convention].items():
            given = getattr(self, name)
            object.__setattr__(self, name, float(value if given is None else given))
        for name in ("mel_mean", "mel_std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        require(
            "features",
            [
                (self.sample_rate >= 8000, "sample_rate must be at least 8000 Hz"),
                (0 < self.hop_length <= self.win_length <= self.n_fft, "need hop<=win<=n_fft"),
                (self.window in ("hann", "hamming"), "window must be 'hann' or 'hamming'"),
                (0 <= self.fmin < self.fmax <= self.sample_rate / 2, "need 0<=fmin<fmax<=sr/2"),
                (self.mel_norm in ("slaney", "none"), "mel_norm must be 'slaney' or 'none'"),
                (self.log_floor > 0, "log_floor must be positive"),
                (0 <= self.preemphasis < 1, "preemphasis must be in [0, 1)"),
                (
                    self.convention == "wavflow" or self.preemphasis == 0,
                    "preemphasis is part of the wavflow convention only",
                ),
                ((self.n_fft - self.hop_length) % 2 == 0, "n_fft - hop_length must be even"),
                (len(self.mel_mean) in (0, self.n_mels), "mel_mean needs one value per band"),
                (len(self.mel_std) == len(self.mel_mean), "mel_std needs one value per band"),
                (all(s > 0 for s in self.mel_std), "mel_std must be positive"),
            ],
        )

    @property
    def normalized(self) -> bool:
        """Whether this convention's mels are mean-variance normalised (needs the stats)."""
        return self.convention == "parallel_wavegan"


# Per convention: the values of fmin, fmax and log_floor that a recipe leaves unset.
CONVENTION_DEFAULTS: dict[str, dict[str, float]] = {
    "wavflow": {"fmin": 0.0, "fmax": 8000.0, "log_floor": 1e-5},
    "hifigan": {"fmin": 0.0, "fmax": 8000.0, "log_floor": 1e-5},
    "parallel_wavegan": {"fmin": 80.0, "fmax": 7600.0, "log_floor": 1e-10},
}


@dataclass(frozen=True)
class DataConfig:
    """Data preparation and training crops (`[data]`).

    Attributes:
        segment_length: training crop in samples (a multiple of the hop).
        val_fraction: share of utterances held out for validation.
        split_seed: seed of the deterministic train/validation split.
        trim_db: leading/trailing audio this far below the peak is trimmed.
        peak: peak level after normalisation.
        silence_db: a clip whose RMS is below this (dBFS) before normalisation is skipped as silent.
        num_workers: DataLoader workers (0: load in the main process).
        corpus_minutes: minutes of built-in corpus the demo generates.
        f0_method: F0 tracker run by `wavflow prepare`: "pyin" (librosa) or "none".
        f0_min, f0_max: the tracker's F0 search range in Hz.
    """

    segment_length: int = 8192
    val_fraction: float = 0.05
    split_seed: int = 1234
    trim_db: float = 40.0
    peak: float = 0.95
    silence_db: float = -60.0
    num_workers: int = 0
    corpus_minutes: float = 5.0
    f0_method: str = "pyin"
    f0_min: float = 60.0
    f0_max: float = 500.0

    def __post_init__(self) -> None:
        require(
            "data",
            [
                (self.segment_length > 0, "segment_length must be positive"),
                (0 < self.val_fraction < 1, "val_fraction must be in (0, 1)"),
                (0 < self.peak <= 1, "peak must be in (0, 1]"),
                (self.num_workers >= 0, "num_workers must be >= 0"),
                (self.f0_method in ("pyin", "none"), "f0_method must be 'pyin' or 'none'"),
                (0 < self.f0_min < self.f0_max, "need 0 < f0_min < f0_max"),
            ],
        )


@dataclass(frozen=True)
class ConditioningConfig:
    """What every model is conditioned on besides the mels (`[conditioning]`): part of each
    model's architecture, so it is stored in checkpoints and compared on resume.

    Attributes:
        speakers: condition on speaker identity (global conditioning) when the data has several.
        pitch: "harmonic" conditions every model on a harmonic excitation built from F0
            (sin and cos of k times the F0 phase, k = 1..n_harmonics, zero where unvoiced) that
            enters the signal path and the gates; "none" uses mels (and speakers) only. It
            needs F0 in the data (`data.f0_method`).
        n_harmonics: harmonics of the excitation.
    """

    speakers: bool = False
    pitch: str = "none"
    n_harmonics: int = 8

    @property
    def harmonics(self) -> int:
        """Harmonics of the excitation the models are conditioned on (0: no pitch)."""
        return self.n_harmonics if self.pitch == "harmonic" else 0

    def __post_init__(self) -> None:
        require(
            "conditioning",
            [
                (self.pitch in ("none", "harmonic"), "pitch must be 'none' or 'harmonic'"),
                (self.n_harmonics >= 1, "n_harmonics must be >= 1"),
            ],
        )


@dataclass(frozen=True)
class TeacherConfig:
    """The WaveNet teacher (`[teacher]`): `WaveNet`'s arguments, `speaker_channels` in its
    `ConditioningSpec` (`wavflow.checkpoint.spec_and_sizes`).

    Attributes:
        n_layers: residual blocks.
        n_cycles: dilation cycles (dilations 1..2^(n_layers/n_cycles - 1), repeated).
        kernel_size: taps of each dilated conv.
        residual_channels, gate_channels, skip_channels: widths.
        output: "gaussian" (ClariNet) or "mol" (discretised mixture of logistics).
        n_mixtures: logistic components of the "mol" head.
        log_scale_min: floor on predicted log-scales.
        speaker_channels: speaker embedding width.
        envelope: model the signal normalised by the level its mel gives (`WaveNet`): a
            mel-adaptive teacher, quiet in silences from the start.
        envelope_offset: the learned offset of that level at initialisation.
        input_noise: std of the noise on the stack's input in training (`WaveNet`; 0: none).
        align_phase: train with the F0 excitation in phase with the real audio's fundamental
            (`WaveNet`, `aligned_phase`).
        lpc_order: taps of the linear prediction from the mel's envelope added to the location
            (`WaveNet`, LPCNet's split: the stack models the excitation; 0: none). Needs
            `envelope`; set `envelope_offset = 0` with it (the LPC gain is calibrated).
    """

    n_layers: int = 24
    n_cycles: int = 4
    kernel_size: int = 3
    residual_channels: int = 128
    gate_channels: int = 256
    skip_channels: int = 128
    output: str = "mol"
    n_mixtures: int = 10
    log_scale_min: float = -7.0
    speaker_channels: int = 16
    envelope: bool = False
    envelope_offset: float = -2.7
    input_noise: float = 0.0
    align_phase: bool = False
    lpc_order: int = 0

    def __post_init__(self) -> None:
        require(
            "teacher",
            [
                (self.lpc_order >= 0, "lpc_order must be >= 0"),
                (not self.lpc_order or self.envelope, "lpc_order needs envelope = true"),
                (self.output in ("gaussian", "mol"), "output must be 'gaussian' or 'mol'"),
                (self.n_layers % self.n_cycles == 0, "n_cycles must divide n_layers"),
                (self.gate_channels % 2 == 0, "gate_channels must be even"),
                (self.input_noise >= 0, "input_noise must be >= 0"),
            ],
        )


STUDENT_KINDS = ("iaf", "waveglow", "flowavenet", "squeezewave")


@dataclass(frozen=True)
class StudentConfig:
    """Parallel students (`[student]`): `kind` picks one; `[student.<kind>]` holds its sizes.

    Attributes:
        kind: "iaf", "waveglow", "flowavenet" or "squeezewave".
        iaf, waveglow, flowavenet, squeezewave: keyword arguments of each student's constructor,
            and `speaker_channels` for its `ConditioningSpec` (`wavflow.checkpoint.spec_and_sizes`).
    """

    kind: str = "iaf"
    iaf: dict[str, Any] = field(default_factory=dict)
    waveglow: dict[str, Any] = field(default_factory=dict)
    flowavenet: dict[str, Any] = field(default_factory=dict)
    squeezewave: dict[str, Any] = field(default_factory=dict)

    def sizes(self, kind: str | None = None) -> dict[str, Any]:
        """Constructor keyword arguments of student `kind` (default: `self.kind`)."""
        return dict(getattr(self, kind or self.kind))


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (`[train]`), shared by teacher and students.

    Attributes:
        steps: optimiser steps in all.
        batch_size: crops per step (per process under DDP).
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: linear warm-up from 0 to `lr`.
        min_lr_ratio: the cosine decay ends at `lr * min_lr_ratio`.
        grad_clip: maximum global gradient norm.
        ema_decay: Polyak averaging decay of the EMA weights (0: off).
        log_every, eval_every, checkpoint_every: intervals in steps.
        val_batches: validation batches per evaluation.
        keep_last: checkpoints kept besides `best.pt`.
        max_bad_steps: consecutive NaN/inf losses tolerated before training stops.
        seed: seed of initialisation, crops and noise.
        device: "auto", "cpu" or "cuda[:N]".
        max_seconds: a safety stop after this much wall time (0: none); a checkpoint is
            written. Budgets are `steps`, so that results do not depend on the machine's load.
        student_steps: optimiser steps of a student trained with this recipe (0: `steps`),
            so that one recipe gives the teacher and its students their own budgets.
    """

    steps: int = 100_000
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.01
    grad_clip: float = 10.0
    ema_decay: float = 0.9995
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 1000
    val_batches: int = 4
    keep_last: int = 3
    max_bad_steps: int = 20
    seed: int = 0
    device: str = "auto"
    max_seconds: float = 0.0
    student_steps: int = 0

    def __post_init__(self) -> None:
        require(
            "train",
            [
                (self.steps > 0 and self.batch_size > 0, "steps and batch_size must be positive"),
                (self.student_steps >= 0, "student_steps must be >= 0 (0: use steps)"),
                (self.lr > 0, "lr must be positive"),
                (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
                (self.keep_last >= 1, "keep_last must be >= 1"),
            ],
        )


KL_ESTIMATORS = ("auto", "closed_form", "per_step", "sample")

LOSS_NAMES = (
    "kl",
    "stft",
    "mel",
    "power",
    "contrastive",
    "log_scale",
    "adversarial",
    "feature_matching",
    "discriminator",
)
# The terms that need the discriminators: weight "discriminator" (their own loss) with
# "adversarial" or "feature_matching" (what they teach the student), or none of them.
ADVERSARIAL_TERMS = ("adversarial", "feature_matching", "discriminator")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation losses (`[distill]`).

    Attributes:
        weights: loss weight per named term, of `LOSS_NAMES`; a missing name is not computed.
        kl_estimator: "auto" (closed form for a Gaussian IAF student of a Gaussian teacher,
            per-step for other IAF students, sample-based for coupling students), "closed_form",
            "per_step" (Parallel WaveNet's low-variance form) or "sample".
        kl_samples: samples per timestep for the per-step cross-entropy.
        skip_receptive_field: leave the teacher's first receptive-field steps out of the KL.
        log_scale_min: clamp on student log-scales inside the KL.
        teacher_log_scale_min: floor on the teacher's log-scales when it scores student samples
            in the KL and the log-scale regulariser (-inf: the teacher's own floor). A teacher
            trained down to sigma >= 1.7e-5 makes the sample-based KL of a coupling student
            explode where the teacher is sure of a sample and the student is not; a higher
            floor here bounds those terms without changing the teacher.
        stft_resolutions: [n_fft, hop, win] of each multi-resolution STFT loss term.
        discriminator_periods: periods of HiFi-GAN's multi-period discriminators, used when
            the "adversarial", "feature_matching" and "discriminator" terms are weighted.
        discriminator_scales: average-pooling factors of its multi-scale discriminators.
        discriminator_channels: first layer's width of every discriminator (doubled per layer).
        discriminator_max_channels: their widest layer (HiFi-GAN: 1024).
        students: settings of this section that differ for one student kind, e.g.
            `[distill.students.squeezewave]` with `teacher_log_scale_min = -7.0` and its own
            `weights` table (which replaces the section's whole); applied by `for_student`.
    """

    weights: dict[str, float] = field(default_factory=lambda: {"kl": 1.0, "stft": 1.0})
    kl_estimator: str = "auto"
    kl_samples: int = 4
    skip_receptive_field: bool = True
    log_scale_min: float = -7.0
    teacher_log_scale_min: float = -math.inf
    stft_resolutions: list[list[int]] = field(
        default_factory=lambda: [[1024, 256, 1024], [2048, 512, 2048], [512, 128, 512]]
    )
    discriminator_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    discriminator_scales: list[int] = field(default_factory=lambda: [1, 2, 4])
    discriminator_channels: int = 16
    discriminator_max_channels: int = 256
    students: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def adversarial(self) -> bool:
        """Whether the discriminators are trained (their terms are weighted)."""
        return any(self.weights.get(name, 0) for name in ADVERSARIAL_TERMS)

    def for_student(self, kind: str) -> DistillConfig:
        """These settings with `students[kind]`'s in their place (checked like the section).

        Raises:
            RecipeError: naming the key of `[distill.students.<kind>]` that is not a setting
                of `[distill]` or has the wrong type.
        """
        overrides = self.students.get(kind, {})
        if not overrides:
            return self
        where = f"distill.students.{kind}"
        if "students" in overrides:
            raise RecipeError(f"'{where}.students': per-student settings do not nest")
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return from_dict(DistillConfig, base | overrides, where)

    def __post_init__(self) -> None:
        require(
            "distill",
            [
                (
                    set(self.students) <= set(STUDENT_KINDS),
                    f"students: tables are named by a student kind, one of {STUDENT_KINDS}",
                ),
                (
                    self.kl_estimator in KL_ESTIMATORS,
                    f"kl_estimator must be one of {KL_ESTIMATORS}",
                ),
                (self.kl_samples >= 1, "kl_samples must be >= 1"),
                (
                    all(len(r) == 3 for r in self.stft_resolutions),
                    "stft_resolutions: [n_fft, hop, win] each",
                ),
                (set(self.weights) <= set(LOSS_NAMES), f"weights: known losses are {LOSS_NAMES}"),
                (
                    not self.adversarial
                    or (
                        self.weights.get("discriminator", 0) > 0
                        and self.weights.get("adversarial", 0)
                        + self.weights.get("feature_matching", 0)
                        > 0
                    ),
                    "weights: the adversarial terms go together: weight 'discriminator' (the "
                    "discriminators' own loss) and 'adversarial' or 'feature_matching'",
                ),
                (
                    self.discriminator_channels >= 1
                    and self.discriminator_max_channels >= self.discriminator_channels,
                    "discriminator_channels must be >= 1 and <= discriminator_max_channels",
                ),
                (
                    all(p >= 2 for p in self.discriminator_periods)
                    and all(s >= 1 for s in self.discriminator_scales),
                    "discriminator_periods must be >= 2 and discriminator_scales >= 1",
                ),
            ],
        )


@dataclass(frozen=True)
class Recipe:
    """A whole recipe: one field per TOML section."""

    features: FeatureConfig = field(default_factory=FeatureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if self.conditioning.pitch == "harmonic" and self.data.f0_method == "none":
            raise RecipeError(
                "conditioning.pitch = 'harmonic' needs F0, but data.f0_method = 'none': "
                "set data.f0_method = 'pyin' or conditioning.pitch = 'none'"
            )


def student_recipe(recipe: Recipe, kind: str | None = None) -> Recipe:
    """The recipe a student trains with: `[student] kind` set to `kind` (when given),
    `train.steps` replaced by `train.student_steps` (when set) and `[distill]` with that
    kind's `[distill.students.<kind>]` applied."""
    student = dataclasses.replace(recipe.student, kind=kind or recipe.student.kind)
    steps = recipe.train.student_steps or recipe.train.steps
    train = dataclasses.replace(recipe.train, steps=steps)
    distill = recipe.distill.for_student(student.kind)
    return dataclasses.replace(recipe, student=student, train=train, distill=distill)

"""Copy-synthesis evaluation of vocoders, with the real audio and Griffin-Lim as anchor rows.

`evaluate` scores whole utterances: each model vocodes the mel of real audio (computed with
the checkpoint's feature settings) and its output is compared with that audio by the metrics of
`wavflow.metrics`. Two anchors are rows of every table, on the same audio: the real audio itself
(the ceiling: PESQ 4.64, STOI 1) and Griffin-Lim from the same mel (the floor, no training).
Density figures (NLL, KL to the teacher) are kept apart from the quality table. The two
markdown tables are in `wavflow.evaluation_report` and are imported from here too.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from wavflow import metrics
from wavflow.audio import AUDIO_SUFFIXES, AudioError, check_features_match, load_audio, log_mel
from wavflow.checkpoint import load_model, load_teacher
from wavflow.config import DataConfig, FeatureConfig, OptionError, Recipe
from wavflow.data import DataError, PreparedData
from wavflow.evaluation_report import density_table, quality_table
from wavflow.metrics import log_mel_distance
from wavflow.progress import progress_bar
from wavflow.synthesis import SynthesisOptions, has_pitch, vocode
from wavflow.teacher import WaveNet
from wavflow.validation import kl_first_step, kl_to_teacher

REAL = "real audio (ceiling)"
MIN_SECONDS = 0.5  # STOI needs about 30 frames of 25.6 ms of speech


@dataclass(frozen=True)
class EvaluationOptions:
    """How `evaluate` runs (see `wavflow evaluate --help`).

    Attributes:
        max_utterances: utterances scored (the first usable ones, by name); 0 = all.
        max_seconds: each utterance is cut to its first `max_seconds` (0 = whole): the
            teacher's sequential generation is slow.
        seed: noise seed of every model's samples.
        temperature: scale of the models' sampling noise (1: the model's own distribution).
        griffin_lim_iterations: of the Griffin-Lim anchor.
        nll_seconds: when > 0, a student's density of real audio is also scored, on the first
            `nll_seconds` of each utterance, the teacher's beside it (0: not scored; the
            IAF's runs its sequential inverse, about a minute for 0.1 s on a CPU).
        device: where the models run ("cpu", "cuda", ...).
        progress: show a progress bar.
    """

    max_utterances: int = 10
    max_seconds: float = 5.0
    seed: int = 0
    temperature: float = 1.0
    griffin_lim_iterations: int = 32
    nll_seconds: float = 0.0
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.max_utterances < 0 or self.griffin_lim_iterations < 1 or self.nll_seconds < 0:
            raise OptionError(
                "need max_utterances >= 0, Griffin-Lim iterations >= 1, NLL seconds >= 0"
            )
        if 0 < self.max_seconds < MIN_SECONDS or self.max_seconds < 0:
            raise OptionError(f"max_seconds must be 0 (whole utterances) or >= {MIN_SECONDS}")


@dataclass
class Utterance:
    """Real audio to vocode: (frames * hop,) float32, and its stored F0 (frames,) Hz or None."""

    name: str
    audio: np.ndarray
    f0: np.ndarray | None = None


def _usable(
    name: str,
    audio: np.ndarray,
    features: FeatureConfig,
    data: DataConfig,
    options: EvaluationOptions,
) -> tuple[Utterance | None, str]:
    """The utterance cut to `max_seconds` and whole frames, or None and why it is unusable."""
    limit = (
        len(audio) if options.max_seconds <= 0 else int(options.max_seconds * features.sample_rate)
    )
    frames = min(len(audio), limit) // features.hop_length
    if frames * features.hop_length < MIN_SECONDS * features.sample_rate:
        return None, f"too short ({len(audio) / features.sample_rate:.2f} s < {MIN_SECONDS} s)"
    rms_db = 20 * math.log10(max(float(np.sqrt(np.mean(np.square(audio)))), 1e-12))
    if rms_db < data.silence_db:
        return None, f"silent (RMS {rms_db:.1f} dBFS < {data.silence_db} dBFS)"
    # A copy: prepared audio is memory-mapped read-only.
    return Utterance(name, np.array(audio[: frames * features.hop_length], np.float32)), ""


def audio_utterances(
    inputs: list[Path], features: FeatureConfig, data: DataConfig, options: EvaluationOptions
) -> tuple[list[Utterance], list[dict[str, str]]]:
    """Audio files and folders (searched recursively) resampled to the features' rate, as
    they are (not trimmed or normalised). Unreadable, corrupt, silent and too-short files are
    named in a warning and returned as skipped ({"file", "reason"})."""
    files = []
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            files += [(p, p.relative_to(item).with_suffix("").as_posix()) for p in found]
        else:
            files.append((item, item.stem))
    usable, skipped = [], []
    for path, name in files:
        if options.max_utterances and len(usable) == options.max_utterances:
            break
        try:
            utterance, reason = _usable(
                name, load_audio(path, features.sample_rate), features, data, options
            )
        except AudioError as error:
            utterance, reason = None, str(error)
        if utterance is None:
            skipped.append(_skip(str(path), reason))
            continue
        if any(u.name == utterance.name for u in usable):
            utterance.name = str(path)  # same relative name under two input folders
        usable.append(utterance)
    return usable, skipped


def prepared_utterances(
    data_dir: Path, features: FeatureConfig, data: DataConfig, options: EvaluationOptions
) -> tuple[list[Utterance], list[dict[str, str]]]:
    """The validation utterances of a prepared dataset, whole (up to `max_seconds`), with the
    F0 `prepare` stored (None where it stored none)."""
    prepared = PreparedData(data_dir, expected=features)
    usable, skipped = [], []
    for record in prepared.split("val"):
        if options.max_utterances and len(usable) == options.max_utterances:
            break
        audio, _ = prepared.load(record)
        utterance, reason = _usable(record["id"], np.asarray(audio), features, data, options)
        if utterance is None:
            skipped.append(_skip(record["id"], reason))
            continue
        if prepared.has_f0:
            utterance.f0 = np.array(
                prepared.load_f0(record)[: len(utterance.audio) // features.hop_length]
            )
        usable.append(utterance)
    return usable, skipped


def _skip(name: str, reason: str) -> dict[str, str]:
    warnings.warn(f"evaluate: skipped {name}: {reason}", stacklevel=3)
    return {"file": name, "reason": reason}


@dataclass
class _Item:
    """An utterance ready to vocode: its mel (1, n_mels, F) and the real side's F0 (F,) Hz."""

    name: str
    audio: np.ndarray
    mel: Tensor
    f0: np.ndarray


@dataclass
class _Model:
    label: str
    path: Path
    model: nn.Module
    recipe: Recipe
    state: dict[str, Any]


def evaluate(
    checkpoints: dict[str, Path],
    audio: list[Path] | None = None,
    data_dir: Path | None = None,
    options: EvaluationOptions = EvaluationOptions(),
    teacher_path: Path | None = None,
) -> dict[str, Any]:
    """Copy-synthesis scores of every checkpoint and of the two anchors, on the same audio.

    Args:
        checkpoints: row label -> checkpoint; all must share feature settings. The first one's
            recipe gives the features (mels, Griffin-Lim), the F0 search range and the
            silence threshold for skipping inputs.
        audio: audio files or folders (`audio_utterances`); or
        data_dir: a prepared dataset, whose validation utterances are scored with their stored
            F0 as the real side (`prepared_utterances`).
        teacher_path: teacher for the students' KL (default: the one each was distilled from).

    Returns:
        {"source", "sample_rate", "utterances" (names), "skipped" ([{"file", "reason"}]),
        "settings" (what the figures mean), "rows": {label: {"mean": {metric: value},
        "utterances": {name: {metric: value}}, and for models "checkpoint", "kind", "student",
        "step", "density" (`_density`)}}}, rows in order: real audio, Griffin-Lim, models.
        Metrics (`score`): pesq_wb, stoi, mcd_db, log_mel_db, log_mel_speech_db, silence_db,
        vuv_error, f0_rmse_cents, voiced_recall, and dnsmos_ovrl with `speechmos` installed.

    Raises:
        ValueError: neither or both of `audio` and `data_dir`, or no usable utterance.
    """
    if (audio is None) == (data_dir is None):
        raise OptionError("evaluate needs audio inputs or a prepared dataset (one of them)")
    device = torch.device(options.device)
    models = _load_models(checkpoints, device)
    features, data = models[0].recipe.features, models[0].recipe.data
    if data_dir is not None:
        source = f"{data_dir} (validation split)"
        utterances, skipped = prepared_utterances(data_dir, features, data, options)
    else:
        source = ", ".join(str(path) for path in audio)
        utterances, skipped = audio_utterances(audio, features, data, options)
    if not utterances:
        raise DataError(f"no usable utterance in {source} ({len(skipped)} skipped)")
    hide = not options.progress
    items = [
        _item(u, features, data) for u in progress_bar(utterances, desc="mels, F0", disable=hide)
    ]
    with_dnsmos = metrics.dnsmos_available()
    rows = {REAL: _row([i.audio for i in items], items, data, features, with_dnsmos, real=True)}
    iterations = options.griffin_lim_iterations
    anchor = [metrics.griffin_lim(i.mel[0], features, iterations, options.seed) for i in items]
    rows[f"Griffin-Lim ({iterations} iterations)"] = _row(
        anchor, items, data, features, with_dnsmos
    )
    teachers: dict[str, WaveNet] = {}
    for entry in models:
        outputs = [
            _vocode(entry, i, options) for i in progress_bar(items, desc=entry.label, disable=hide)
        ]
        rows[entry.label] = {
            "checkpoint": str(entry.path),
            "kind": entry.state["kind"],
            "student": entry.recipe.student.kind if entry.state["kind"] == "student" else None,
            "step": entry.state.get("step"),
            **_row(outputs, items, data, features, with_dnsmos),
            "density": _density(entry, _teacher_of(entry, teacher_path, teachers), items, options),
        }
    return {
        "source": source,
        "sample_rate": features.sample_rate,
        "utterances": [u.name for u in utterances],
        "skipped": skipped,
        "settings": _settings(options, features, data, with_dnsmos),
        "rows": rows,
    }


def _load_models(checkpoints: dict[str, Path], device: torch.device) -> list[_Model]:
    models = []
    for label, path in checkpoints.items():
        model, recipe, state = load_model(path)
        if models:
            check_features_match(models[0].recipe.features, recipe.features, str(path))
        models.append(_Model(label, Path(path), model.to(device), recipe, state))
    return models


def _item(utterance: Utterance, features: FeatureConfig, data: DataConfig) -> _Item:
    audio = torch.from_numpy(utterance.audio)[None]
    with torch.no_grad():
        mel = log_mel(audio, features)
    f0 = (
        utterance.f0
        if utterance.f0 is not None
        else metrics.track_f0(utterance.audio, features, data.f0_min, data.f0_max)
    )
    return _Item(utterance.name, utterance.audio, mel, np.asarray(f0, dtype=np.float32))


def _vocode(entry: _Model, item: _Item, options: EvaluationOptions) -> np.ndarray:
    """The model's audio for the item's mel: the teacher's cached sequential generation, a
    student's parallel pass; pitch models take the real side's F0."""
    features = entry.recipe.features
    device = next(entry.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(options.seed)
    f0 = torch.from_numpy(item.f0)[None].to(device) if has_pitch(entry.model) else None
    synthesis = SynthesisOptions(seed=options.seed, temperature=options.temperature)
    audio = vocode(entry.model, item.mel.to(device), features, synthesis, generator, f0=f0)
    return audio[0, : len(item.audio)].float().cpu().numpy()


def score(
    real: np.ndarray,
    fake: np.ndarray,
    real_f0: np.ndarray,
    fake_f0: np.ndarray,
    features: FeatureConfig,
    with_dnsmos: bool = False,
) -> dict[str, float]:
    """Every `wavflow.metrics` figure of `fake` (T,) against `real` (T,) at the features' rate,
    with their F0 tracks (frames,) Hz."""
    rate = features.sample_rate
    result = {
        "pesq_wb": metrics.pesq_wideband(real, fake, rate),
        "stoi": metrics.short_time_objective_intelligibility(real, fake, rate),
        "mcd_db": metrics.mel_cepstral_distortion(real, fake, rate),
        "log_mel_db": log_mel_distance(real, fake, features),
        "log_mel_speech_db": log_mel_distance(real, fake, features, speech_only=True),
        "silence_db": metrics.silence_floor(real, fake, features),
        **metrics.f0_errors(real_f0, fake_f0),
    }
    if with_dnsmos:
        result["dnsmos_ovrl"] = metrics.dnsmos_overall(fake, rate)
    return result


def _row(
    outputs: list[np.ndarray],
    items: list[_Item],
    data: DataConfig,
    features: FeatureConfig,
    with_dnsmos: bool,
    real: bool = False,
) -> dict[str, Any]:
    """Scores per utterance and their means (NaN-skipping: F0 and silence can be undefined)."""
    per_utterance = {}
    for fake, item in zip(outputs, items):
        # The real row's F0 is the real side's own track.
        fake_f0 = item.f0 if real else metrics.track_f0(fake, features, data.f0_min, data.f0_max)
        per_utterance[item.name] = score(item.audio, fake, item.f0, fake_f0, features, with_dnsmos)
    return {"mean": _mean(list(per_utterance.values())), "utterances": per_utterance}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return {key: float(np.nanmean([row[key] for row in rows])) for key in rows[0]}


def _teacher_of(
    entry: _Model, teacher_path: Path | None, cache: dict[str, WaveNet]
) -> WaveNet | None:
    """The teacher a student's KL is taken against, loaded once; None for teachers or when
    the student's teacher checkpoint is not there."""
    if entry.state["kind"] != "student":
        return None
    path = teacher_path or entry.state.get("metadata", {}).get("teacher_checkpoint")
    if not path or not Path(path).is_file():
        warnings.warn(f"evaluate: {entry.label}: no teacher checkpoint, no KL", stacklevel=3)
        return None
    if str(path) not in cache:
        device = next(entry.model.parameters()).device
        student = entry.model.conditioner.spec
        cache[str(path)] = load_teacher(path, student, entry.recipe.features).to(device)
    return cache[str(path)]


@torch.no_grad()
def _density(
    entry: _Model, teacher: WaveNet | None, items: list[_Item], options: EvaluationOptions
) -> dict[str, float]:
    """Density figures in nats per sample, apart from the quality scores.

    Teacher: "nll_of_real_audio" on the evaluated utterances. Student: "kl_to_teacher" and
    "teacher_nll_of_samples" (its own samples, `kl_to_teacher`); with `options.nll_seconds`,
    also "student_nll_of_real_audio" and "teacher_nll_of_real_audio" on the same first
    "nll_seconds" of each utterance. A distilled (mode-seeking) student's density of real audio
    can be astronomically low: it says how it was trained, not how it sounds.
    """
    model, features = entry.model, entry.recipe.features
    batches = [_batch(item, next(model.parameters()).device) for item in items]
    if entry.state["kind"] == "teacher":
        return {"nll_of_real_audio": float(np.mean([_nll(model, b) for b in batches]))}
    result = {}
    if teacher is not None:
        first = kl_first_step(model, teacher, entry.recipe)
        kl = [_kl(model, teacher, b, first, options.seed) for b in batches]
        result["kl_to_teacher"] = float(np.mean([row["kl"] for row in kl]))
        result["teacher_nll_of_samples"] = float(np.mean([r["teacher_nll_of_student"] for r in kl]))
    if options.nll_seconds > 0:
        frames = round(options.nll_seconds * features.sample_rate / features.hop_length)
        frames = min([max(1, frames)] + [b["feats"].shape[-1] for b in batches])
        # One batch of equal-length openings: the IAF's inverse costs the same for 1 or B items.
        short = _stack([_first_frames(b, frames, features.hop_length) for b in batches])
        result["nll_seconds"] = frames * features.hop_length / features.sample_rate
        result["student_nll_of_real_audio"] = _nll(model, short)
        if teacher is not None:
            result["teacher_nll_of_real_audio"] = _nll(teacher, short)
    return result


def _batch(item: _Item, device: torch.device) -> dict[str, Tensor]:
    """audio (1, 1, T), feats (1, n_mels, F), f0 (1, F) of one item on `device`."""
    return {
        "audio": torch.from_numpy(item.audio)[None, None].to(device),
        "feats": item.mel.to(device),
        "f0": torch.from_numpy(item.f0)[None].to(device),
    }


def _first_frames(batch: dict[str, Tensor], frames: int, hop: int) -> dict[str, Tensor]:
    """The first `frames` frames of a `_batch` (the IAF's density of real audio is sequential)."""
    return {
        "audio": batch["audio"][..., : frames * hop],
        "feats": batch["feats"][..., :frames],
        "f0": batch["f0"][..., :frames],
    }


def _stack(batches: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {key: torch.cat([b[key] for b in batches]) for key in batches[0]}


def _kl(
    student: nn.Module, teacher: WaveNet, batch: dict[str, Tensor], first: int, seed: int
) -> dict[str, float]:
    generator = torch.Generator(device=batch["feats"].device).manual_seed(seed)
    student_cond = student.condition(batch["feats"], None, batch["f0"])
    teacher_cond = teacher.condition(batch["feats"], None, batch["f0"])
    return kl_to_teacher(student, teacher, student_cond, teacher_cond, first, generator)[1]


def _nll(model: nn.Module, batch: dict[str, Tensor]) -> float:
    """Mean negative log-density of the real audio, nats per sample."""
    cond = model.condition(batch["feats"], None, batch["f0"])
    return float((-model.log_prob(batch["audio"], cond) / batch["audio"].shape[-1]).mean())


def _settings(
    options: EvaluationOptions, features: FeatureConfig, data: DataConfig, with_dnsmos: bool
) -> dict[str, Any]:
    """What the figures mean, stored beside them."""
    rate = features.sample_rate
    n_fft, hop, window = metrics.mcd_analysis(rate)
    resampled = "" if rate == metrics.PESQ_RATE else f" (resampled from {rate} Hz)"
    return asdict(options) | {
        "pesq": f"pesq package, wide band at {metrics.PESQ_RATE} Hz{resampled}",
        "stoi": "pystoi, classic STOI (extended=False)",
        "mcd": f"pysptk sp2mc of a {window}-sample Hann STFT every {hop} samples (n_fft "
        f"{n_fft}), order {metrics.MCD_ORDER}, alpha {metrics.mcd_alpha(rate):.3f}, c0 "
        "excluded, aligned speech frames (no DTW)",
        "frames": f"speech: within {metrics.SILENCE_DB:g} dB of the real audio's loudest frame; "
        "silence: the others",
        "f0": f"pyin over {data.f0_min:g}-{data.f0_max:g} Hz",
        "dnsmos": "speechmos DNSMOS overall (a noise-suppression quality predictor)"
        if with_dnsmos
        else "not computed: pip install 'wavflow[dnsmos]'",
    }


__all__ = [
    "REAL",
    "EvaluationOptions",
    "Utterance",
    "audio_utterances",
    "density_table",
    "evaluate",
    "prepared_utterances",
    "quality_table",
    "score",
]

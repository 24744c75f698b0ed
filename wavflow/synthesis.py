"""Batch synthesis from a checkpoint: audio files, folders or mel arrays in, one wav each out.

Students synthesise in one parallel pass; utterances longer than `chunk_seconds` go through in
overlapping chunks whose context covers the student's receptive field (capped at
`max_context_seconds`), with the noise drawn once for the whole utterance, so memory stays
bounded and chunk edges agree with the unchunked output. Teachers generate sequentially (cached
by default), batched over utterances of different lengths.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from wavflow.audio import (
    AUDIO_SUFFIXES,
    AudioError,
    estimate_f0,
    from_convention_mel,
    load_audio,
    log_mel,
    mel_mismatch,
    normalization_stats,
    save_audio,
)
from wavflow.checkpoint import load_model
from wavflow.config import FeatureConfig, OptionError
from wavflow.distributed import pick_device
from wavflow.nn.conditioning import excitation_phase
from wavflow.progress import progress_bar

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}
# int8 is a storage dtype of the teacher's cached-path weights only; a student computes in it.
STUDENT_DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class SynthesisOptions:
    """How to synthesise (see `wavflow synthesize --help`)."""

    method: str = "cached"
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "fp32"
    chunk_seconds: float = 10.0
    max_context_seconds: float = 1.0
    use_ema: bool = True
    progress: bool = True
    normalized: bool = False
    speaker: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise OptionError(f"--dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.temperature < 0 or self.batch_size < 1 or self.chunk_seconds <= 0:
            raise OptionError("temperature >= 0, batch size >= 1 and chunk length > 0 are needed")


@dataclass
class SynthesisReport:
    """Files written, and inputs that failed with the reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def collect_inputs(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(file, name relative to its input root) for every audio or .npy file in `inputs`, but
    the `<name>.f0.npy` F0 files that go with mel arrays (`features_of` reads those)."""
    found = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                is_f0 = path.name.lower().endswith(".f0.npy")
                if path.suffix.lower() in (*AUDIO_SUFFIXES, ".npy") and not is_f0:
                    found.append((path, path.relative_to(item)))
        else:
            found.append((item, Path(item.name)))
    return found


def features_of(
    path: Path, features: FeatureConfig, want_f0: bool = False, normalized: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mel (n_mels, frames) and, when `want_f0`, F0 (frames,) Hz of one input.

    Audio files: both computed (F0 by pyin). Mel arrays (.npy): in the checkpoint's convention
    (`wavflow.audio.convention_mel`; normalised by its statistics when `normalized`), converted
    to natural-log mels, with a warning when their statistics suggest another convention; F0
    from a sibling `<name>.f0.npy` when there is one, else None (the model's F0 predictor fills
    it in).

    Raises:
        AudioError: missing/unreadable file, or a mel (or F0) array of the wrong shape.
    """
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.suffix.lower() != ".npy":
        audio = load_audio(path, features.sample_rate)
        with torch.no_grad():
            mel = log_mel(torch.from_numpy(audio)[None], features)[0].numpy()
        return mel, estimate_f0(audio, features) if want_f0 else None
    mel = _load_array(path)
    if mel.ndim != 2 or mel.shape[0] != features.n_mels:
        raise AudioError(
            f"{path}: expected a mel of shape ({features.n_mels}, frames), got {mel.shape}"
        )
    if (mismatch := mel_mismatch(mel, features, normalized)) is not None:
        warnings.warn(f"{path}: {mismatch}", stacklevel=2)
    mel = from_convention_mel(mel, features, normalized)
    f0_path = path.with_name(path.stem + ".f0.npy")
    if not want_f0 or not f0_path.is_file():
        return mel, None
    f0 = _load_array(f0_path)
    if f0.shape != (mel.shape[1],):
        raise AudioError(f"{f0_path}: expected F0 of shape ({mel.shape[1]},), got {f0.shape}")
    return mel, f0


def _load_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise AudioError(f"{path}: not a readable .npy array ({error})") from error
    if not np.isfinite(array).all():
        raise AudioError(f"{path}: the array holds NaN or infinite values")
    return array.astype(np.float32)


def has_pitch(model: nn.Module) -> bool:
    """Whether the model is conditioned on a harmonic excitation from F0."""
    return model.capabilities.takes_pitch


def prepare_for_inference(model: nn.Module, dtype: str, device: torch.device) -> nn.Module:
    """Eval mode on `device`; students are cast to `dtype` (the teacher keeps float32
    activations and takes bf16 or int8 weights inside its cached path)."""
    model = model.eval().to(device)
    if model.capabilities.sequential:
        return model
    if dtype not in STUDENT_DTYPES:
        raise OptionError(
            f"--dtype {dtype} is for the teacher's cached weights: a student computes in "
            f"{' or '.join(STUDENT_DTYPES)}"
        )
    return model.to(DTYPES[dtype])


@torch.inference_mode()
def vocode(
    model: nn.Module,
    feats: Tensor,
    features: FeatureConfig,
    options: SynthesisOptions,
    generator: torch.Generator | None = None,
    frames: list[int] | None = None,
    f0: Tensor | None = None,
    speaker: Tensor | None = None,
) -> Tensor:
    """Mels (B, n_mels, F) -> audio (B, F * hop) with the options' method, dtype and chunking.

    Args:
        frames: true frame count of each item (the rest is padding); the teacher stops there.
        f0: (B, F) Hz for pitch-conditioned models; None: predicted from the mels.
        speaker: (B,) speaker ids for a model with speakers (`speaker_ids`).
    """
    if has_pitch(model) and f0 is None:
        f0 = predict_f0(model, feats)
    if model.capabilities.sequential:
        lengths = None if frames is None else torch.tensor(frames) * features.hop_length
        cond = model.condition(feats, speaker, f0)
        weights = DTYPES[options.dtype] if options.dtype != "fp32" else None
        x, _ = model.generate(
            cond, options.method, options.temperature, generator, lengths, weight_dtype=weights
        )
        return x[:, 0]
    dtype = next(model.parameters()).dtype
    feats = feats.to(dtype)
    total = feats.shape[-1] * features.hop_length
    # Noise is drawn in float32 whatever the dtype, so bf16 and fp32 runs share it.
    shape = (feats.shape[0], 1, total)
    z = model.base.sample(shape, options.temperature, generator, device=feats.device).to(dtype)
    # A student may declare a chunk that bounds its memory on long utterances.
    preferred = model.capabilities.chunk_seconds
    seconds = options.chunk_seconds if preferred is None else min(options.chunk_seconds, preferred)
    chunk = _aligned_frames(model, features, seconds)
    context = _aligned_frames(model, features, _context_seconds(model, features, options))
    return _vocode_items(model, feats, z, chunk, context, features, f0, speaker)


def _vocode_items(
    model: nn.Module,
    feats: Tensor,
    z: Tensor,
    chunk: int,
    context: int,
    features: FeatureConfig,
    f0: Tensor | None,
    speaker: Tensor | None,
) -> Tensor:
    """Mels (B, n_mels, F) and noise (B, 1, F * hop) -> audio (B, F * hop): one parallel pass,
    or chunks of `chunk` frames with `context` frames of context when F is longer."""
    if feats.shape[-1] <= chunk:
        x, _ = model.flow(z, model.condition(feats, speaker, f0))
        return x[:, 0]
    return _vocode_chunks(model, feats, z, chunk, context, features, f0, speaker)


def _context_seconds(model: nn.Module, features: FeatureConfig, options: SynthesisOptions) -> float:
    field_samples = model.capabilities.receptive_field
    if field_samples is None:
        return options.max_context_seconds
    return min(options.max_context_seconds, field_samples / features.sample_rate)


def _aligned_frames(model: nn.Module, features: FeatureConfig, seconds: float) -> int:
    """`seconds` in frames, rounded up to what the student's time folds need."""
    multiple = math.lcm(features.hop_length, model.capabilities.time_multiple)
    step = multiple // features.hop_length
    frames = math.ceil(seconds * features.sample_rate / features.hop_length)
    return max(step, math.ceil(frames / step) * step)


def _vocode_chunks(
    model: nn.Module,
    feats: Tensor,
    z: Tensor,
    chunk: int,
    context: int,
    features: FeatureConfig,
    f0: Tensor | None,
    speaker: Tensor | None,
) -> Tensor:
    """Synthesise frames [s, s + chunk) from a window with `context` frames before (and after,
    for non-causal students; two frames for causal ones), and keep the middle. Window edges are
    padded (mel edge, zero noise) to keep fold alignment; the excitation's phase is the whole
    utterance's, so it is continuous across chunks."""
    hop, frames = features.hop_length, feats.shape[-1]
    # A causal student needs past context only, plus its conditioner's look-ahead.
    capabilities = model.capabilities
    lookahead = context
    if capabilities.causal:
        lookahead = _aligned_frames(model, features, capabilities.lookahead / features.sample_rate)
    phase = None if f0 is None else excitation_phase(f0, hop, features.sample_rate)
    pieces = []
    for start in range(0, frames, chunk):
        stop = min(start + chunk, frames)
        left, right = min(context, start), min(lookahead, frames - stop)
        span = slice(start - left, stop + right)
        window, noise = feats[..., span], z[..., span.start * hop : span.stop * hop]
        pad = _fold_padding(model, window.shape[-1], hop)
        window = torch.nn.functional.pad(window, (0, pad), mode="replicate") if pad else window
        noise = torch.nn.functional.pad(noise, (0, pad * hop))
        if f0 is None:
            cond = model.condition(window, speaker)
        else:
            window_f0 = torch.nn.functional.pad(f0[..., span], (0, pad))
            window_phase = torch.nn.functional.pad(
                phase[..., span.start * hop : span.stop * hop], (0, pad * hop)
            )
            cond = model.conditioner(window, speaker, window_f0, window_phase)
        x, _ = model.flow(noise, cond)
        pieces.append(x[:, 0, left * hop : (left + stop - start) * hop])
    return torch.cat(pieces, dim=-1)


def _fold_padding(model: nn.Module, frames: int, hop: int) -> int:
    """Frames to add so that frames * hop is a multiple of the student's time folds."""
    multiple = math.lcm(hop, model.capabilities.time_multiple) // hop
    return (-frames) % multiple


def synthesize_files(
    checkpoint: Path, inputs: list[Path], out_dir: Path, options: SynthesisOptions
) -> SynthesisReport:
    """Synthesise every input with the checkpoint's model; failures are reported, not fatal.

    Utterances of similar length are batched together (sorted by frames).
    """
    model, recipe, state = load_model(checkpoint, use_ema=options.use_ema)
    device = pick_device(options.device)
    model = prepare_for_inference(model, options.dtype, device)
    speaker = speaker_id(model, state.get("speakers", []), options.speaker)
    features = recipe.features
    if options.normalized:
        normalization_stats(features)  # raises before any input is read when there are none
    report = SynthesisReport()
    items = []
    for path, name in collect_inputs(inputs):
        try:
            items.append((name, *features_of(path, features, has_pitch(model), options.normalized)))
        except AudioError as error:
            report.failed.append((str(path), str(error)))
    items.sort(key=lambda item: item[1].shape[1])
    generator = torch.Generator(device=device).manual_seed(options.seed)
    batches = [items[i : i + options.batch_size] for i in range(0, len(items), options.batch_size)]
    for batch in progress_bar(
        batches, desc="synthesize", unit="batch", disable=not options.progress
    ):
        feats, frames = _pad_batch([mel for _, mel, _ in batch], features)
        f0 = _batch_f0([f0 for _, _, f0 in batch], feats, model)
        f0 = None if f0 is None else f0.to(device)
        speakers = None if speaker is None else torch.full((len(batch),), speaker, device=device)
        audio = vocode(model, feats.to(device), features, options, generator, frames, f0, speakers)
        for (name, _, _), n, wave in zip(batch, frames, audio):
            path = (out_dir / name).with_suffix(".wav")
            save_audio(path, wave[: n * features.hop_length].float().cpu(), features.sample_rate)
            report.written.append(path)
    return report


def speaker_id(model: nn.Module, speakers: list[str], name: str | None) -> int | None:
    """The id of speaker `name` among a checkpoint's `speakers` (None for a model without).

    Raises:
        ValueError: a name for a model without speakers, none (or an unknown one) for a model
            with them; the message lists the speakers.
    """
    if not model.capabilities.n_speakers:
        if name is not None:
            raise OptionError(f"--speaker {name}: this model was trained without speakers")
        return None
    if name not in speakers:
        given = "no --speaker" if name is None else f"--speaker {name}"
        raise OptionError(
            f"{given}: this model conditions on speakers, pass one of {', '.join(speakers)}"
        )
    return speakers.index(name)


@torch.inference_mode()
def predict_f0(model: nn.Module, feats: Tensor) -> Tensor:
    """F0 (B, F) Hz from mels (B, n_mels, F) by the model's own F0 predictor, float32."""
    predictor = model.conditioner.f0_predictor
    return predictor(feats.to(next(predictor.parameters()).dtype)).float()


def _batch_f0(f0s: list[np.ndarray | None], feats: Tensor, model: nn.Module) -> Tensor | None:
    """F0 (B, max F) for a batch: given where known, predicted from the mels where not."""
    if not has_pitch(model):
        return None
    if any(f0 is None for f0 in f0s):
        batch = predict_f0(model, feats).clone()  # an inference tensor: clone to edit it
    else:
        batch = torch.zeros(feats.shape[0], feats.shape[-1])
    for i, f0 in enumerate(f0s):
        if f0 is not None:
            batch[i] = 0.0
            batch[i, : len(f0)] = torch.from_numpy(f0)
    return batch


def _pad_batch(mels: list[np.ndarray], features: FeatureConfig) -> tuple[Tensor, list[int]]:
    """Stack mels (n_mels, F_i) into (B, n_mels, max F) padded with the log floor."""
    frames = [mel.shape[1] for mel in mels]
    floor = float(np.log(features.log_floor))
    feats = np.full((len(mels), features.n_mels, max(frames)), floor, dtype=np.float32)
    for i, mel in enumerate(mels):
        feats[i, :, : mel.shape[1]] = mel
    return torch.from_numpy(feats), frames

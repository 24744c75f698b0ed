"""Batch synthesis from a checkpoint: audio files, folders or mel arrays in, one wav each out.

Students synthesise in one parallel pass; utterances longer than `chunk_seconds` go through in
overlapping chunks whose context covers the student's receptive field (capped at
`max_context_seconds`), with the noise drawn once for the whole utterance, so memory stays
bounded and chunk edges agree with the unchunked output. Teachers generate sequentially (cached
by default), batched over utterances of different lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from wavflow.audio import AUDIO_SUFFIXES, AudioError, load_audio, log_mel, save_audio
from wavflow.checkpoint import load_model
from wavflow.config import FeatureConfig
from wavflow.teacher import WaveNet
from wavflow.training import pick_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got '{self.dtype}'")
        if self.temperature < 0 or self.batch_size < 1 or self.chunk_seconds <= 0:
            raise ValueError("temperature >= 0, batch size >= 1 and chunk length > 0 are needed")


@dataclass
class SynthesisReport:
    """Files written, and inputs that failed with the reason."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def collect_inputs(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(file, name relative to its input root) for every audio or .npy file in `inputs`."""
    found = []
    for item in inputs:
        if item.is_dir():
            for path in sorted(item.rglob("*")):
                if path.suffix.lower() in (*AUDIO_SUFFIXES, ".npy"):
                    found.append((path, path.relative_to(item)))
        else:
            found.append((item, Path(item.name)))
    return found


def features_of(path: Path, features: FeatureConfig) -> np.ndarray:
    """Mel (n_mels, frames) of an audio file (computed) or an .npy array (checked).

    Raises:
        AudioError: missing/unreadable file, or a mel array with the wrong shape, naming it.
    """
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            mel = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise AudioError(f"{path}: not a readable .npy array ({error})") from error
        if mel.ndim != 2 or mel.shape[0] != features.n_mels:
            raise AudioError(
                f"{path}: expected a mel of shape ({features.n_mels}, frames), got {mel.shape}"
            )
        if not np.isfinite(mel).all():
            raise AudioError(f"{path}: the mel holds NaN or infinite values")
        return mel.astype(np.float32)
    audio = load_audio(path, features.sample_rate)
    with torch.no_grad():
        return log_mel(torch.from_numpy(audio)[None], features)[0].numpy()


def prepare_for_inference(model: nn.Module, dtype: str, device: torch.device) -> nn.Module:
    """Eval mode on `device`; students are cast to `dtype` (the teacher keeps float32
    activations and takes bf16 weights inside its cached path)."""
    model = model.eval().to(device)
    return model if isinstance(model, WaveNet) else model.to(DTYPES[dtype])


@torch.inference_mode()
def vocode(
    model: nn.Module,
    feats: Tensor,
    features: FeatureConfig,
    options: SynthesisOptions,
    generator: torch.Generator | None = None,
    frames: list[int] | None = None,
) -> Tensor:
    """Mels (B, n_mels, F) -> audio (B, F * hop) with the options' method, dtype and chunking.

    Args:
        frames: true frame count of each item (the rest is padding); the teacher stops there.
    """
    if isinstance(model, WaveNet):
        lengths = None if frames is None else torch.tensor(frames) * features.hop_length
        cond = model.condition(feats)
        weights = DTYPES[options.dtype] if options.dtype != "fp32" else None
        x = model.generate(
            cond, options.method, options.temperature, generator, lengths, weight_dtype=weights
        )
        return x[:, 0]
    dtype = next(model.parameters()).dtype
    feats = feats.to(dtype)
    total = feats.shape[-1] * features.hop_length
    # Noise is drawn in float32 whatever the dtype, so bf16 and fp32 runs share it.
    shape = (feats.shape[0], 1, total)
    z = model.base.sample(shape, options.temperature, generator, device=feats.device).to(dtype)
    chunk = _aligned_frames(model, features, options.chunk_seconds)
    if feats.shape[-1] <= chunk:
        x, _ = model.flow(z, model.condition(feats))
        return x[:, 0]
    context = _aligned_frames(model, features, _context_seconds(model, features, options))
    return _vocode_chunks(model, feats, z, chunk, context, features.hop_length)


def _context_seconds(model: nn.Module, features: FeatureConfig, options: SynthesisOptions) -> float:
    field_samples = getattr(model, "receptive_field", None)
    if field_samples is None:
        return options.max_context_seconds
    return min(options.max_context_seconds, field_samples / features.sample_rate)


def _aligned_frames(model: nn.Module, features: FeatureConfig, seconds: float) -> int:
    """`seconds` in frames, rounded up to what the student's time folds need."""
    multiple = math.lcm(features.hop_length, getattr(model, "time_multiple", 1))
    step = multiple // features.hop_length
    frames = math.ceil(seconds * features.sample_rate / features.hop_length)
    return max(step, math.ceil(frames / step) * step)


def _vocode_chunks(
    model: nn.Module, feats: Tensor, z: Tensor, chunk: int, context: int, hop: int
) -> Tensor:
    """Synthesise frames [s, s + chunk) from a window with `context` frames either side; keep
    the middle. Window edges are padded (mel floor, zero noise) to keep fold alignment."""
    frames = feats.shape[-1]
    pieces = []
    for start in range(0, frames, chunk):
        stop = min(start + chunk, frames)
        left, right = min(context, start), min(context, frames - stop)
        window = feats[..., start - left : stop + right]
        noise = z[..., (start - left) * hop : (stop + right) * hop]
        pad = _fold_padding(model, window.shape[-1], hop)
        if pad:
            window = torch.nn.functional.pad(window, (0, pad), mode="replicate")
            noise = torch.nn.functional.pad(noise, (0, pad * hop))
        x, _ = model.flow(noise, model.condition(window))
        pieces.append(x[:, 0, left * hop : (left + stop - start) * hop])
    return torch.cat(pieces, dim=-1)


def _fold_padding(model: nn.Module, frames: int, hop: int) -> int:
    """Frames to add so that frames * hop is a multiple of the student's time folds."""
    multiple = math.lcm(hop, getattr(model, "time_multiple", 1)) // hop
    return (-frames) % multiple


def synthesize_files(
    checkpoint: Path, inputs: list[Path], out_dir: Path, options: SynthesisOptions
) -> SynthesisReport:
    """Synthesise every input with the checkpoint's model; failures are reported, not fatal.

    Utterances of similar length are batched together (sorted by frames).
    """
    model, recipe, _ = load_model(checkpoint, use_ema=options.use_ema)
    device = pick_device(options.device)
    model = prepare_for_inference(model, options.dtype, device)
    features = recipe.features
    report = SynthesisReport()
    items = []
    for path, name in collect_inputs(inputs):
        try:
            items.append((name, features_of(path, features)))
        except AudioError as error:
            report.failed.append((str(path), str(error)))
    items.sort(key=lambda item: item[1].shape[1])
    generator = torch.Generator(device=device).manual_seed(options.seed)
    batches = [items[i : i + options.batch_size] for i in range(0, len(items), options.batch_size)]
    for batch in tqdm(batches, desc="synthesize", unit="batch", disable=not options.progress):
        feats, frames = _pad_batch([mel for _, mel in batch], features)
        audio = vocode(model, feats.to(device), features, options, generator, frames)
        for (name, _), n, wave in zip(batch, frames, audio):
            path = (out_dir / name).with_suffix(".wav")
            save_audio(path, wave[: n * features.hop_length].float().cpu(), features.sample_rate)
            report.written.append(path)
    return report


def _pad_batch(mels: list[np.ndarray], features: FeatureConfig) -> tuple[Tensor, list[int]]:
    """Stack mels (n_mels, F_i) into (B, n_mels, max F) padded with the log floor."""
    frames = [mel.shape[1] for mel in mels]
    floor = float(np.log(features.log_floor))
    feats = np.full((len(mels), features.n_mels, max(frames)), floor, dtype=np.float32)
    for i, mel in enumerate(mels):
        feats[i, :, : mel.shape[1]] = mel
    return torch.from_numpy(feats), frames


class _DeployedStudent(nn.Module):
    """The student's sampling path as one module: (feats (B, n_mels, F), z (B, 1, F * hop)) ->
    audio (B, F * hop). Noise is an input so that deployments choose their own RNG."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, feats: Tensor, z: Tensor) -> Tensor:
        x, _ = self.student.flow(z, self.student.condition(feats))
        return x[:, 0]


def export_student(checkpoint: Path, out_path: Path, example_seconds: float = 1.0) -> Path:
    """Trace a student checkpoint to TorchScript (`torch.jit.load` needs no wavflow).

    The traced module takes `(feats, z)`; its inputs' lengths must be multiples of the
    student's time folds (as for the student itself).

    Raises:
        ValueError: the checkpoint holds a teacher (sequential models are not exported).
    """
    model, recipe, state = load_model(checkpoint)
    if state["kind"] != "student":
        raise ValueError(f"{checkpoint}: only students are exported, this is a {state['kind']}")
    features = recipe.features
    frames = _aligned_frames(model, features, example_seconds)
    feats = torch.randn(1, features.n_mels, frames)
    z = torch.randn(1, 1, frames * features.hop_length)
    deployed = _DeployedStudent(model.eval())
    with torch.no_grad():
        traced = torch.jit.trace(deployed, (feats, z), check_trace=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(out_path))
    return out_path

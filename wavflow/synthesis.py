"""Batch synthesis from a checkpoint: audio files, folders or mel arrays in, one wav each out."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wavflow.audio import AUDIO_SUFFIXES, AudioError, load_audio, log_mel, save_audio
from wavflow.checkpoint import load_model
from wavflow.config import FeatureConfig
from wavflow.evaluation import generate_audio
from wavflow.training import pick_device


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


def synthesize_files(
    checkpoint: Path,
    inputs: list[Path],
    out_dir: Path,
    method: str = "cached",
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    use_ema: bool = True,
    progress: bool = True,
) -> SynthesisReport:
    """Synthesise every input with the checkpoint's model; failures are reported, not fatal.

    Utterances of similar length are batched together (sorted by frames).
    """
    model, recipe, _ = load_model(checkpoint, use_ema=use_ema)
    target = pick_device(device)
    model.to(target)
    features = recipe.features
    report = SynthesisReport()
    items = []
    for path, name in collect_inputs(inputs):
        try:
            items.append((name, features_of(path, features)))
        except AudioError as error:
            report.failed.append((str(path), str(error)))
    items.sort(key=lambda item: item[1].shape[1])
    generator = torch.Generator(device=target).manual_seed(seed)
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in tqdm(batches, desc="synthesize", disable=not progress):
        for (name, _), audio in zip(
            batch, _synthesize_batch(model, batch, features, target, method, temperature, generator)
        ):
            path = (out_dir / name).with_suffix(".wav")
            save_audio(path, audio, features.sample_rate)
            report.written.append(path)
    return report


def _synthesize_batch(model, batch, features, device, method, temperature, generator):
    """Pad a batch of mels to the longest, synthesise, and cut each back to its own length."""
    frames = [mel.shape[1] for _, mel in batch]
    floor = float(np.log(features.log_floor))
    feats = np.full((len(batch), features.n_mels, max(frames)), floor, dtype=np.float32)
    for i, (_, mel) in enumerate(batch):
        feats[i, :, : mel.shape[1]] = mel
    audio = generate_audio(
        model, torch.from_numpy(feats).to(device), None, temperature, generator, method
    )
    return [audio[i, 0, : n * features.hop_length].cpu() for i, n in enumerate(frames)]

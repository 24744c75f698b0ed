"""Data preparation (audio folders, LJSpeech) and training crops of aligned audio and mels.

A prepared dataset is a folder:

    features.json   feature settings (`FeatureConfig`, with the training split's mel statistics)
                    and the preparation settings
    manifest.jsonl  one JSON line per utterance: id, source, samples, frames, split, speaker
    audio/<id>.npy  (samples,) float32 in [-1, 1], samples = frames * hop_length
    mels/<id>.npy   (n_mels, frames) float32 log-mel
    f0/<id>.npy     (frames,) float32 F0 in Hz at the mel frame rate, 0 = unvoiced (when the
                    recipe's `data.f0_method` is not "none")
    done/<id>.json  the utterance's manifest line, written last (marks it complete)
    skipped.jsonl   inputs that were skipped, with the reason
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from wavflow.audio import (
    AUDIO_SUFFIXES,
    AudioError,
    check_features_match,
    estimate_f0,
    load_audio,
    log_mel,
    mel_statistics,
    peak_normalize,
    trim_silence,
)
from wavflow.config import DataConfig, FeatureConfig, Recipe, from_dict
from wavflow.progress import progress_bar


class DataError(ValueError):
    """A dataset that cannot be used; the message names the folder or file and what to do."""


@dataclass(frozen=True)
class Source:
    """One input utterance: its id (unique, '/'-separated), audio path and speaker name."""

    id: str
    path: Path
    speaker: str


def find_sources(in_dir: Path) -> list[Source]:
    """Audio inputs under `in_dir`: the LJSpeech layout (metadata.csv + wavs/) or any folder.

    In a plain folder, the id is the path relative to `in_dir` without suffix, and the speaker the
    first folder below `in_dir` (or "default" for files at the top).
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise DataError(f"input folder not found: {in_dir}")
    metadata = in_dir / "metadata.csv"
    if metadata.is_file() and (in_dir / "wavs").is_dir():
        ids = [line.split("|", 1)[0].strip() for line in metadata.read_text().splitlines()]
        return [Source(i, in_dir / "wavs" / f"{i}.wav", "ljspeech") for i in ids if i]
    sources = []
    for path in sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
        relative = path.relative_to(in_dir)
        speaker = relative.parts[0] if len(relative.parts) > 1 else "default"
        sources.append(Source(relative.with_suffix("").as_posix(), path, speaker))
    return sources


def is_validation(utterance_id: str, fraction: float, seed: int) -> bool:
    """Deterministic split: a stable hash of (seed, id) below `fraction` means validation."""
    digest = hashlib.sha256(f"{seed}:{utterance_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def process_utterance(
    source: Source, features: FeatureConfig, data: DataConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Load, check, trim, normalise and featurise one input.

    Returns:
        audio (frames * hop,) float32, mel (n_mels, frames) float32 and F0 (frames,) in Hz
        (None when `data.f0_method` is "none").

    Raises:
        AudioError: unreadable, silent or too short, naming the file and the reason.
    """
    audio = load_audio(source.path, features.sample_rate)
    rms_db = 20 * np.log10(max(float(np.sqrt(np.mean(audio**2))), 1e-12))
    if rms_db < data.silence_db:
        raise AudioError(f"{source.path}: silent (RMS {rms_db:.1f} dBFS < {data.silence_db} dBFS)")
    audio = trim_silence(audio, data.trim_db)
    usable = len(audio) // features.hop_length * features.hop_length
    if usable < data.segment_length:
        raise AudioError(
            f"{source.path}: too short after trimming ({usable} samples < one training segment "
            f"of {data.segment_length}); lower data.segment_length or drop the file"
        )
    audio = peak_normalize(audio[:usable], data.peak)
    with torch.no_grad():
        mel = log_mel(torch.from_numpy(audio)[None], features)[0].numpy()
    f0 = None
    if data.f0_method == "pyin":
        f0 = estimate_f0(audio, features, data.f0_min, data.f0_max)
    return audio, mel, f0


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp.npy")
    np.save(temporary, array)
    os.replace(temporary, path)


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _prepare_one(
    source: Source, out_dir: Path, features: FeatureConfig, data: DataConfig
) -> dict[str, Any]:
    """Prepare one input into `out_dir`; returns its manifest record or {"skipped": reason}."""
    torch.set_num_threads(1)
    try:
        audio, mel, f0 = process_utterance(source, features, data)
    except AudioError as error:
        return {"id": source.id, "source": str(source.path), "skipped": str(error)}
    _save_npy_atomic(out_dir / "audio" / f"{source.id}.npy", audio)
    _save_npy_atomic(out_dir / "mels" / f"{source.id}.npy", mel)
    if f0 is not None:
        _save_npy_atomic(out_dir / "f0" / f"{source.id}.npy", f0)
    record = {
        "id": source.id,
        "source": str(source.path),
        "samples": len(audio),
        "frames": mel.shape[1],
        "speaker": source.speaker,
        "split": "val" if is_validation(source.id, data.val_fraction, data.split_seed) else "train",
    }
    _write_text_atomic(out_dir / "done" / f"{source.id}.json", json.dumps(record))
    return record


@dataclass
class PrepareReport:
    """What `prepare_dataset` did: records kept, inputs skipped (with reasons), reused count."""

    records: list[dict[str, Any]]
    skipped: list[dict[str, str]]
    reused: int


def prepare_dataset(
    in_dir: str | Path,
    out_dir: str | Path,
    features: FeatureConfig,
    data: DataConfig,
    workers: int = 1,
    progress: bool = True,
) -> PrepareReport:
    """Prepare every input under `in_dir` into `out_dir` (see the module docstring).

    Re-running skips utterances already complete; a crash loses none of them. Skipped inputs
    are warned about one by one and listed in `skipped.jsonl`.

    Raises:
        DataError: no inputs, no usable audio, or `out_dir` prepared with other feature settings.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    sources = find_sources(in_dir)
    if not sources:
        raise DataError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) found under {in_dir}")
    _claim_output(out_dir, features, data)
    done = {s.id: out_dir / "done" / f"{s.id}.json" for s in sources}
    records = [json.loads(done[s.id].read_text()) for s in sources if done[s.id].is_file()]
    todo = [s for s in sources if not done[s.id].is_file()]
    results = _run_parallel(todo, out_dir, features, data, workers, progress)
    skipped = [r for r in results if "skipped" in r]
    for item in skipped:
        warnings.warn(f"skipped {item['skipped']}", stacklevel=2)
    records = sorted(records + [r for r in results if "skipped" not in r], key=lambda r: r["id"])
    if not records:
        raise DataError(
            f"no usable audio under {in_dir}: all {len(sources)} inputs were skipped "
            f"(first: {skipped[0]['skipped'] if skipped else 'none'})"
        )
    _ensure_validation(records, data)
    _write_text_atomic(out_dir / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    _write_text_atomic(out_dir / "skipped.jsonl", "".join(json.dumps(s) + "\n" for s in skipped))
    _write_statistics(out_dir, records, features, data)
    return PrepareReport(records, skipped, reused=len(sources) - len(todo))


def _write_statistics(
    out_dir: Path, records: list[dict[str, Any]], features: FeatureConfig, data: DataConfig
) -> None:
    """Measure the training split's per-band mel mean and standard deviation (re-measured on
    every run, so resumed and extended folders stay right) into features.json."""
    train = [r for r in records if r["split"] == "train"]
    mels = (np.load(out_dir / "mels" / f"{r['id']}.npy", mmap_mode="r") for r in train)
    measured = mel_statistics(mels, features)
    settings = {"features": dataclasses.asdict(measured), "data": dataclasses.asdict(data)}
    _write_text_atomic(out_dir / "features.json", json.dumps(settings, indent=2))


def with_statistics(recipe: Recipe, data_dir: str | Path) -> Recipe:
    """`recipe` with the mel statistics of the prepared data in `data_dir`, so that runs (and
    their checkpoints) carry them for `synthesize --normalized`; a recipe that has its own
    statistics (a run's recipe.toml on resume) keeps them."""
    if recipe.features.mel_mean:
        return recipe
    measured = PreparedData(data_dir, expected=recipe.features).features
    return dataclasses.replace(recipe, features=measured)


def _run_parallel(
    todo: list[Source],
    out_dir: Path,
    features: FeatureConfig,
    data: DataConfig,
    workers: int,
    progress: bool,
) -> list[dict[str, Any]]:
    bar = progress_bar(
        total=len(todo), desc="prepare", unit="utt", disable=not progress or not todo
    )
    results = []
    if workers <= 1 or not todo:  # nothing to spread: no pool, and no pyin compiled for it
        for source in todo:
            results.append(_prepare_one(source, out_dir, features, data))
            bar.update()
    else:
        _compile_f0_tracker(features, data)
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_prepare_one, s, out_dir, features, data) for s in todo]
            for future in futures:
                results.append(future.result())
                bar.update()
    bar.close()
    return results


def _compile_f0_tracker(features: FeatureConfig, data: DataConfig) -> None:
    """Runs pyin once on a short tone, so that numba compiles librosa's kernels and writes
    their on-disk cache in this process before the workers start: workers that compile them
    at once on a fresh install race to write the same cache files (numba/numba#10128: a
    gufunc's two cache files written by different processes), and every process that later
    loads them crashes inside pyin (a segmentation fault, seen after `prepare --workers 2` on
    a new machine: librosa's pitch cache held one process's `guf-` files and no others)."""
    if data.f0_method != "pyin":
        return
    seconds = np.arange(4 * features.n_fft) / features.sample_rate
    estimate_f0(0.5 * np.sin(2 * np.pi * 150.0 * seconds), features, data.f0_min, data.f0_max)


# [data] settings that change what `prepare` writes for an utterance.
OUTPUT_DATA_FIELDS = ("trim_db", "peak", "silence_db", "f0_method", "f0_min", "f0_max")


def _claim_output(out_dir: Path, features: FeatureConfig, data: DataConfig) -> None:
    """Write features.json, or check that an existing one matches these settings (features,
    and the `OUTPUT_DATA_FIELDS` of data), so no folder mixes utterances made two ways."""
    settings = {"features": dataclasses.asdict(features), "data": dataclasses.asdict(data)}
    path = out_dir / "features.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        found = from_dict(FeatureConfig, saved["features"], "features")
        check_features_match(features, found, str(out_dir))
        _check_data_match(data, saved.get("data", {}), out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(path, json.dumps(settings, indent=2))


def _check_data_match(data: DataConfig, saved: dict[str, Any], out_dir: Path) -> None:
    """Raise a DataError listing every output-changing [data] setting that `out_dir` was
    prepared with differently (a setting it does not record counts as different)."""
    diffs = [
        f"data.{name}: the recipe has {getattr(data, name)!r}, {out_dir} was prepared with "
        f"{saved[name]!r}"
        if name in saved
        else f"data.{name}: {out_dir} does not record it"
        for name in OUTPUT_DATA_FIELDS
        if saved.get(name, _MISSING) != getattr(data, name)
    ]
    if diffs:
        raise DataError(
            f"{out_dir} was prepared with other data settings: "
            + "; ".join(diffs)
            + ". Prepare into a new folder (or delete this one), or use the recipe it was made "
            "with."
        )


_MISSING = object()


def _ensure_validation(records: list[dict[str, Any]], data: DataConfig) -> None:
    """Guarantee one validation and one training utterance when there are two or more."""
    if len(records) < 2:
        return
    splits = {r["split"] for r in records}
    if splits == {"train"}:
        records[0]["split"] = "val"
    elif splits == {"val"}:
        records[0]["split"] = "train"


class PreparedData:
    """A prepared dataset folder: its feature settings and manifest.

    Args:
        root: the folder `wavflow prepare` wrote.
        expected: feature settings the caller needs; a mismatch raises a `ValueError`.
    """

    def __init__(self, root: str | Path, expected: FeatureConfig | None = None) -> None:
        self.root = Path(root)
        manifest, settings = self.root / "manifest.jsonl", self.root / "features.json"
        if not manifest.is_file() or not settings.is_file():
            raise DataError(f"{self.root} is not a prepared dataset: run `wavflow prepare` first")
        saved = json.loads(settings.read_text())
        self.features: FeatureConfig = from_dict(FeatureConfig, saved["features"], "features")
        if expected is not None:
            check_features_match(expected, self.features, str(self.root))
        self.records = [json.loads(line) for line in manifest.read_text().splitlines() if line]
        self.speakers = sorted({r["speaker"] for r in self.records})
        self.has_f0 = saved["data"].get("f0_method", "none") != "none"

    def require_f0(self) -> None:
        """Raise a `DataError` when the dataset was prepared without F0."""
        if not self.has_f0:
            raise DataError(
                f"{self.root} was prepared without F0 (data.f0_method = 'none') but the recipe "
                "conditions on pitch: re-run `wavflow prepare` with f0_method = 'pyin'"
            )

    def load_f0(self, record: dict[str, Any]) -> np.ndarray:
        """(frames,) F0 in Hz of one utterance (0 = unvoiced); zeros without F0."""
        if not self.has_f0:
            return np.zeros(record["frames"], dtype=np.float32)
        return np.load(self.root / "f0" / f"{record['id']}.npy", mmap_mode="r")

    def split(self, name: str) -> list[dict[str, Any]]:
        """Records of split "train" or "val"."""
        return [r for r in self.records if r["split"] == name]

    def load(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(audio (samples,), mel (n_mels, frames)) of one utterance, memory-mapped."""
        audio = np.load(self.root / "audio" / f"{record['id']}.npy", mmap_mode="r")
        mel = np.load(self.root / "mels" / f"{record['id']}.npy", mmap_mode="r")
        if mel.shape[1] * self.features.hop_length != len(audio):
            raise DataError(
                f"{self.root}/{record['id']}: mel has {mel.shape[1]} frames but the audio has "
                f"{len(audio)} samples (hop {self.features.hop_length}); re-run `wavflow prepare`"
            )
        return audio, mel


class SegmentDataset(Dataset):
    """Aligned crops: `segment_length` samples starting on a frame and exactly their mel frames.

    An item is indexed either by an int (a random crop, e.g. from `DistributedSampler`; call
    `set_epoch` for new crops) or by `(utterance, crop_seed)` from `StepBatchSampler`
    (reproducible, resumable). Validation uses fixed crops. Clips shorter than a segment are
    zero-padded at their end (audio) and floor-padded (mel).

    Returns dicts with `audio` (1, N) float32, `feats` (n_mels, N / hop) float32, `f0`
    (N / hop,) float32 Hz (zeros without F0) and `speaker` (int index into
    `PreparedData.speakers`).
    """

    def __init__(
        self,
        data: PreparedData,
        split: str,
        segment_length: int,
        random_crops: bool = True,
        seed: int = 0,
    ) -> None:
        hop = data.features.hop_length
        if segment_length % hop:
            raise DataError(f"data.segment_length ({segment_length}) must be a multiple of {hop}")
        self.data, self.records = data, data.split(split)
        if not self.records:
            raise DataError(f"{data.root} has no '{split}' utterances")
        self.segment_frames, self.hop = segment_length // hop, hop
        self.random_crops, self.seed, self.epoch = random_crops, seed, 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """New random crops for int-indexed access in this epoch."""
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, crop_seed = key if isinstance(key, tuple) else (key, hash((self.epoch, key)))
        record = self.records[index]
        audio, mel = self.data.load(record)
        spare = max(mel.shape[1] - self.segment_frames, 0)
        if self.random_crops:
            start = int(
                np.random.default_rng([self.seed, crop_seed & 0x7FFFFFFF]).integers(spare + 1)
            )
        else:
            start = spare // 2
        frames = slice(start, start + self.segment_frames)
        feats = _pad_to(
            np.asarray(mel[:, frames]), self.segment_frames, self.data.features.log_floor
        )
        wave = _pad_to(
            np.asarray(audio[frames.start * self.hop : frames.stop * self.hop])[None],
            self.segment_frames * self.hop,
            0.0,
        )
        f0 = _pad_to(np.asarray(self.data.load_f0(record)[frames])[None], self.segment_frames, 0.0)
        return {
            "audio": torch.from_numpy(wave),
            "feats": torch.from_numpy(feats),
            "f0": torch.from_numpy(f0[0]),
            "speaker": self.data.speakers.index(record["speaker"]),
        }


def _pad_to(array: np.ndarray, length: int, floor: float) -> np.ndarray:
    """Pad the last axis of a (C, n) array to `length`: zeros for audio, log(floor) for mels."""
    missing = length - array.shape[-1]
    if missing <= 0:
        return np.array(array, dtype=np.float32)  # a writable copy of the memory-mapped crop
    value = 0.0 if floor == 0.0 else float(np.log(floor))
    return np.pad(array, ((0, 0), (0, missing)), constant_values=value).astype(np.float32)


class StepBatchSampler(Sampler):
    """Infinite batches of `(utterance, crop_seed)` that depend only on (seed, step, rank).

    Because batch `s` is a pure function of its step, a resumed run sees exactly the data the
    interrupted one would have, and DDP ranks see different data without a `DistributedSampler`.

    Args:
        n_items: utterances in the dataset.
        batch_size: items per batch (per rank).
        seed: data seed.
        start_step: first step to yield (resume).
        rank: this process's rank under DDP.
    """

    def __init__(
        self, n_items: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0
    ) -> None:
        self.n_items, self.batch_size = n_items, batch_size
        self.seed, self.start_step, self.rank = seed, start_step, rank

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            rng = np.random.default_rng([self.seed, step, self.rank])
            items = rng.integers(self.n_items, size=self.batch_size)
            seeds = rng.integers(2**31, size=self.batch_size)
            yield [(int(i), int(s)) for i, s in zip(items, seeds)]
            step += 1

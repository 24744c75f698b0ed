"""Data preparation (bad inputs, LJSpeech layout, re-runs, crashes) and aligned training crops."""

from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader, DistributedSampler

import wavflow.data
from wavflow.audio import load_audio, log_mel
from wavflow.cli import main
from wavflow.config import DataConfig
from wavflow.data import (
    DataError,
    PreparedData,
    SegmentDataset,
    StepBatchSampler,
    find_sources,
    prepare_dataset,
)


def _good_files(corpus_dir: Path, n: int) -> list[Path]:
    return sorted(corpus_dir.rglob("*.wav"))[:n]


@pytest.fixture
def messy_dir(tmp_path, corpus_dir):
    """Good clips plus a corrupt file, a silent file and a too-short clip."""
    folder = tmp_path / "messy"
    for path in _good_files(corpus_dir, 4):
        target = folder / path.relative_to(corpus_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 20)
    sf.write(folder / "silent.wav", np.zeros(16000, np.float32), 16000)
    sf.write(folder / "short.flac", 0.5 * np.sin(np.arange(300) / 3).astype(np.float32), 16000)
    return folder


def test_prepare_skips_bad_files_and_names_them(messy_dir, tmp_path, tiny_recipe, capsys):
    out = tmp_path / "out"
    code = main(["prepare", str(messy_dir), str(out), "--recipe", _recipe_path(), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "prepared 4 utterances" in printed
    for name, reason in [
        ("corrupt.wav", "cannot read"),
        ("silent.wav", "silent"),
        ("short.flac", "too short"),
    ]:
        assert name in printed and reason in printed
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 3
    data = PreparedData(out, expected=tiny_recipe.features)
    assert len(data.records) == 4 and {"train", "val"} == {r["split"] for r in data.records}


def test_prepare_with_no_usable_audio_exits_2(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"junk")
    sf.write(folder / "b.wav", np.zeros(8000, np.float32), 16000)
    code = main(["prepare", str(folder), str(tmp_path / "out"), "--recipe", _recipe_path()])
    assert code == 2
    assert "no usable audio" in capsys.readouterr().err
    assert (
        main(
            ["prepare", str(tmp_path / "nothing"), str(tmp_path / "o2"), "--recipe", _recipe_path()]
        )
        == 2
    )


def test_prepared_dataset_contents(prepared_dir, corpus_dir, tiny_recipe):
    data = PreparedData(prepared_dir, expected=tiny_recipe.features)
    hop = tiny_recipe.features.hop_length
    assert len(data.records) == len(list(corpus_dir.rglob("*.wav")))
    for record in data.records[:3]:
        audio, mel = data.load(record)
        assert record["samples"] == len(audio) == mel.shape[1] * hop == record["frames"] * hop
        assert mel.shape[0] == tiny_recipe.features.n_mels
        assert np.isclose(np.abs(audio).max(), tiny_recipe.data.peak, atol=1e-3)
        source = load_audio(record["source"], tiny_recipe.features.sample_rate)
        assert len(audio) <= len(source)
    assert data.speakers == sorted({p.parent.name for p in corpus_dir.rglob("*.wav")})


def test_split_is_deterministic_and_rerun_skips(prepared_dir, corpus_dir, tiny_recipe, tmp_path):
    copy = tmp_path / "copy"
    report = prepare_dataset(
        corpus_dir, copy, tiny_recipe.features, tiny_recipe.data, progress=False
    )
    assert report.reused == 0
    assert [r["split"] for r in report.records] == [
        r["split"] for r in PreparedData(prepared_dir).records
    ]
    again = prepare_dataset(
        corpus_dir, copy, tiny_recipe.features, tiny_recipe.data, progress=False
    )
    assert again.reused == len(report.records) and again.records == report.records


def test_crash_part_way_keeps_finished_utterances(corpus_dir, tiny_recipe, tmp_path):
    out = tmp_path / "crashed"
    prepare_dataset(corpus_dir, out, tiny_recipe.features, tiny_recipe.data, progress=False)
    # Simulate a crash: the manifest was never written and one utterance was half-done.
    (out / "manifest.jsonl").unlink()
    victim = sorted((out / "done").rglob("*.json"))[0]
    victim.unlink()
    report = prepare_dataset(
        corpus_dir, out, tiny_recipe.features, tiny_recipe.data, progress=False
    )
    assert report.reused == len(report.records) - 1


def test_prepare_refuses_other_feature_settings(prepared_dir, corpus_dir, tiny_recipe):
    other = tiny_recipe.features.__class__(**{**tiny_recipe.features.__dict__, "n_mels": 40})
    with pytest.raises(ValueError, match="n_mels"):
        prepare_dataset(corpus_dir, prepared_dir, other, tiny_recipe.data, progress=False)
    with pytest.raises(ValueError, match="n_mels"):
        PreparedData(prepared_dir, expected=other)


def test_prepare_refuses_other_data_settings(prepared_dir, corpus_dir, tiny_recipe, tmp_path):
    data = tiny_recipe.data
    other = data.__class__(
        **{**data.__dict__, "f0_method": "none" if data.f0_method != "none" else "pyin"}
    )
    with pytest.raises(DataError, match="data.f0_method"):
        prepare_dataset(corpus_dir, prepared_dir, tiny_recipe.features, other, progress=False)
    # A folder from a wavflow that did not record its data settings is refused too, whole.
    old = tmp_path / "old"
    old.mkdir()
    saved = json.loads((prepared_dir / "features.json").read_text())
    (old / "features.json").write_text(json.dumps({"features": saved["features"]}))
    with pytest.raises(DataError, match="does not record it"):
        prepare_dataset(corpus_dir, old, tiny_recipe.features, data, progress=False)
    assert sorted(p.name for p in old.iterdir()) == ["features.json"]


def test_ljspeech_layout(tmp_path, corpus_dir, tiny_recipe):
    root = tmp_path / "LJSpeech-1.1"
    (root / "wavs").mkdir(parents=True)
    lines = []
    for i, path in enumerate(_good_files(corpus_dir, 3)):
        shutil.copy(path, root / "wavs" / f"LJ001-{i:04d}.wav")
        lines.append(f"LJ001-{i:04d}|Some text.|Some text.")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    sources = find_sources(root)
    assert [s.id for s in sources] == ["LJ001-0000", "LJ001-0001", "LJ001-0002"]
    report = prepare_dataset(
        root, tmp_path / "lj", tiny_recipe.features, tiny_recipe.data, progress=False
    )
    assert {r["speaker"] for r in report.records} == {"ljspeech"}


def test_mismatched_mel_and_audio_lengths_are_reported(prepared_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared_dir, copy)
    data = PreparedData(copy)
    record = data.records[0]
    mel_path = copy / "mels" / f"{record['id']}.npy"
    np.save(mel_path, np.load(mel_path)[:, :-2])
    with pytest.raises(DataError, match="re-run `wavflow prepare`"):
        data.load(record)


def test_crops_are_aligned_with_their_mels(prepared_dir, tiny_recipe):
    features = tiny_recipe.features
    data = PreparedData(prepared_dir)
    dataset = SegmentDataset(data, "train", 2048, random_crops=True, seed=1)
    pad_frames = (features.n_fft - features.hop_length) // 2 // features.hop_length + 1
    for key in [(0, 11), (1, 5), (2, 99)]:
        item = dataset[key]
        assert item["audio"].shape == (1, 2048) and item["feats"].shape == (20, 32)
        recomputed = log_mel(item["audio"], features)[0]
        # Frames whose window lies inside the crop must equal the dataset's frames exactly.
        inner = slice(pad_frames, -pad_frames)
        assert torch.allclose(recomputed[:, inner], item["feats"][:, inner], atol=1e-4)
    assert not torch.equal(dataset[(0, 1)]["audio"], dataset[(0, 2)]["audio"])
    assert torch.equal(dataset[(0, 1)]["audio"], dataset[(0, 1)]["audio"])


def test_validation_crops_are_fixed_and_short_clips_are_padded(prepared_dir):
    data = PreparedData(prepared_dir)
    val = SegmentDataset(data, "val", 1024, random_crops=False)
    assert torch.equal(val[0]["audio"], val[0]["audio"])
    longest = max(r["samples"] for r in data.records)
    padded = SegmentDataset(data, "train", (longest // 64 + 4) * 64)[0]
    assert padded["audio"][0, -64:].abs().sum() == 0
    with pytest.raises(DataError, match="multiple of 64"):
        SegmentDataset(data, "train", 1000)


def test_loader_with_workers_and_step_sampler_is_reproducible(prepared_dir):
    dataset = SegmentDataset(PreparedData(prepared_dir), "train", 1024, seed=0)

    def first_batches(start: int, workers: int) -> list[torch.Tensor]:
        sampler = StepBatchSampler(len(dataset), 3, seed=5, start_step=start)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
        return [b["audio"] for _, b in zip(range(3), loader)]

    full = first_batches(0, 2)
    resumed = first_batches(1, 0)
    assert all(torch.equal(a, b) for a, b in zip(full[1:], resumed))
    rank1 = next(iter(StepBatchSampler(len(dataset), 3, seed=5, rank=1)))
    assert rank1 != next(iter(StepBatchSampler(len(dataset), 3, seed=5, rank=0)))


def test_distributed_sampler_splits_the_dataset(prepared_dir):
    dataset = SegmentDataset(PreparedData(prepared_dir), "train", 1024)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        dataset.set_epoch(0)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=1)
        batches = list(loader)
        assert all(b["audio"].shape[1:] == (1, 1024) for b in batches)
        seen.append(set(sampler))
    assert not seen[0] & seen[1]


def test_data_config_validation():
    with pytest.raises(ValueError, match="val_fraction"):
        DataConfig(val_fraction=1.5)


def _recipe_path() -> str:
    return str(Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml")


def test_parallel_prepare_compiles_pyin_before_its_workers_start(
    corpus_dir, tiny_recipe, tmp_path, monkeypatch
):
    """Workers that compile librosa's pyin at once can tear numba's on-disk cache (a later
    pyin then segfaults): the main process compiles it first."""
    events: list[str] = []

    class InlinePool:  # runs the tasks here, recording when the pool started
        def __init__(self, workers: int) -> None:
            events.append("pool")

        def __enter__(self) -> InlinePool:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def submit(self, function, *args):
            future: Future = Future()
            future.set_result(function(*args))
            return future

    monkeypatch.setattr(wavflow.data, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(wavflow.data, "estimate_f0", lambda *args: events.append("pyin") or None)
    data_pyin = dataclasses.replace(tiny_recipe.data, f0_method="pyin")
    out = tmp_path / "parallel"
    prepare_dataset(corpus_dir, out, tiny_recipe.features, data_pyin, workers=2, progress=False)
    assert events[:2] == ["pyin", "pool"]
    events.clear()
    data = dataclasses.replace(tiny_recipe.data, f0_method="none")
    no_f0 = tmp_path / "no_f0"
    prepare_dataset(corpus_dir, no_f0, tiny_recipe.features, data, workers=2, progress=False)
    assert events == ["pool"]
    events.clear()  # a re-run with every utterance done starts no pool and compiles nothing
    prepare_dataset(corpus_dir, out, tiny_recipe.features, data_pyin, workers=2, progress=False)
    assert events == []

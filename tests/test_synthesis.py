"""Batch synthesis: inputs and failures, mel conventions, chunking, dtypes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import TINY_STUDENTS, student_checkpoint
from test_audio import hifigan_reference, parallel_wavegan_reference

from wavflow.audio import load_audio
from wavflow.cli import main
from wavflow.synthesis import SynthesisOptions, vocode


def test_synthesize_audio_and_mels_reporting_bad_inputs(
    teacher_checkpoint, corpus_dir, tmp_path, tiny_recipe, capsys
):
    wav = sorted(corpus_dir.rglob("*.wav"))[0]
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    np.save(inputs / "sub" / "mel.npy", np.random.default_rng(0).normal(-6, 1, (20, 6)))
    np.save(inputs / "wrong_bands.npy", np.zeros((40, 6)))
    (inputs / "corrupt.wav").write_bytes(b"nonsense")
    short = tmp_path / "clip.wav"
    sf.write(short, sf.read(wav)[0][:640], 16000)
    code = main(
        [
            "synthesize",
            "--checkpoint",
            teacher_checkpoint,
            str(inputs),
            str(short),
            str(tmp_path / "missing.wav"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    for name in ["wrong_bands.npy", "corrupt.wav", "missing.wav"]:
        assert name in err
    assert "expected a mel of shape (20, frames)" in err
    written = sf.read(tmp_path / "out" / "sub" / "mel.wav")[0]
    assert len(written) == 6 * 64 and np.abs(written).max() > 0
    assert len(sf.read(tmp_path / "out" / "clip.wav")[0]) == 640 // 64 * 64


def test_pitch_student_reads_f0_files_beside_mels_and_predicts_the_rest(tmp_path):
    from wavflow.synthesis import synthesize_files

    _, _, checkpoint = student_checkpoint("squeezewave_pitch", tmp_path)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    mel = np.random.default_rng(0).normal(-6, 1, (20, 8)).astype(np.float32)
    for name, f0 in [("high", 220.0), ("high_again", 220.0), ("low", 110.0), ("bare", None)]:
        np.save(inputs / f"{name}.npy", mel)
        if f0 is not None:
            np.save(inputs / f"{name}.f0.npy", np.full(8, f0, np.float32))
    np.save(inputs / "broken.npy", mel)
    np.save(inputs / "broken.f0.npy", np.full(5, 100.0, np.float32))
    options = SynthesisOptions(temperature=0.0, progress=False)  # the mean path: no noise
    report = synthesize_files(checkpoint, [inputs], tmp_path / "out", options)
    assert [Path(path).name for path, _ in report.failed] == ["broken.npy"]
    assert "broken.f0.npy" in report.failed[0][1] and "(8,)" in report.failed[0][1]
    out = {p.stem: sf.read(p)[0] for p in (tmp_path / "out").glob("*.wav")}
    assert sorted(out) == ["bare", "high", "high_again", "low"]
    assert np.array_equal(out["high"], out["high_again"])
    assert not np.allclose(out["high"], out["low"])  # the F0 file is what changed


def test_teacher_batches_of_different_lengths_match_single_items(teacher_checkpoint, tiny_recipe):
    from wavflow.checkpoint import load_model

    model, recipe, _ = load_model(teacher_checkpoint)
    feats = torch.randn(2, 20, 5)
    options = SynthesisOptions(temperature=0.0)
    both = vocode(model, feats, recipe.features, options, frames=[5, 3])
    alone = vocode(model, feats[1:], recipe.features, options)  # the same conditioning
    assert torch.allclose(both[1, : 3 * 64], alone[0, : 3 * 64], atol=1e-5)
    assert both[1, 3 * 64 :].abs().sum() == 0


@pytest.mark.parametrize(
    ("kind", "tolerance"), [("iaf", 1e-4), ("waveglow", 0.05), ("squeezewave_pitch", 1e-4)]
)
def test_chunked_synthesis_matches_unchunked(kind, tolerance, tmp_path):
    recipe, model, _ = student_checkpoint(kind, tmp_path)
    model.eval()
    feats = torch.randn(1, 20, 64)
    pitch = recipe.conditioning.harmonics
    f0 = torch.linspace(120, 240, 64)[None] if pitch else None  # (1, frames) Hz
    whole = vocode(
        model,
        feats,
        recipe.features,
        SynthesisOptions(chunk_seconds=10.0),
        torch.Generator().manual_seed(1),
        f0=f0,
    )
    chunked = vocode(
        model,
        feats,
        recipe.features,
        SynthesisOptions(chunk_seconds=0.05, max_context_seconds=0.05),
        torch.Generator().manual_seed(1),
        f0=f0,
    )
    assert whole.shape == chunked.shape == (1, 64 * 64)
    relative = float((whole - chunked).abs().max() / whole.abs().max())
    assert relative < tolerance


def test_bf16_students_stay_close_to_fp32(tmp_path):
    from wavflow.synthesis import prepare_for_inference

    recipe, model, _ = student_checkpoint("iaf", tmp_path)
    feats = torch.randn(1, 20, 32)
    full = vocode(
        prepare_for_inference(model, "fp32", torch.device("cpu")),
        feats,
        recipe.features,
        SynthesisOptions(),
        torch.Generator().manual_seed(0),
    )
    half_model = prepare_for_inference(model, "bf16", torch.device("cpu"))
    half = vocode(
        half_model,
        feats,
        recipe.features,
        SynthesisOptions(dtype="bf16"),
        torch.Generator().manual_seed(0),
    )
    assert half.dtype == torch.bfloat16
    assert float((half.float() - full).norm() / full.norm()) < 0.02


def test_int8_is_the_teachers_weights_only(teacher_checkpoint, tmp_path):
    """--dtype int8 quantises the cached teacher's weights (its mode path stays near the fp32
    one); a student, which would compute in int8, is refused by name."""
    from wavflow.checkpoint import load_model
    from wavflow.config import OptionError
    from wavflow.synthesis import prepare_for_inference

    model, recipe, _ = load_model(teacher_checkpoint)
    model = prepare_for_inference(model, "int8", torch.device("cpu"))
    feats = torch.randn(1, 20, 4)
    full = vocode(model, feats, recipe.features, SynthesisOptions(temperature=0.0))
    quantised = vocode(
        model, feats, recipe.features, SynthesisOptions(temperature=0.0, dtype="int8")
    )
    assert not torch.equal(quantised, full)
    assert float((quantised - full).norm() / full.norm()) < 0.05
    _, student, _ = student_checkpoint("iaf", tmp_path)
    with pytest.raises(OptionError, match="int8 is for the teacher's cached weights"):
        prepare_for_inference(student, "int8", torch.device("cpu"))


TINY_WAVEGLOW = [  # a tiny coupling student that trains by maximum likelihood in seconds
    *TINY_STUDENTS["waveglow"],
    "train.steps=2",
    "train.eval_every=2",
    "train.checkpoint_every=2",
]


def _trained_with_convention(convention: str, corpus_dir, tmp_path) -> tuple[Path, Path]:
    """Prepare the corpus with `convention` and train a tiny student on it for two steps by
    the CLI; returns (prepared folder, checkpoint)."""
    from conftest import TINY_TEACHER

    settings = ["--recipe", str(TINY_TEACHER), "--set", f'features.convention="{convention}"']
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    assert main(["prepare", str(corpus_dir), str(prepared), *settings, "--quiet"]) == 0
    overrides = [item for o in TINY_WAVEGLOW for item in ("--set", o)]
    train = ["train-student", "--objective", "mle", "--data", str(prepared), "--out", str(run)]
    assert main([*train, *settings, *overrides, "--quiet"]) == 0
    return prepared, min(run.glob("*.pt"))


def _synthesize(checkpoint, inputs, out, *flags) -> list[str]:
    """Run `wavflow synthesize`; returns the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        command = ["synthesize", "--checkpoint", str(checkpoint), *map(str, inputs)]
        assert main([*command, "--out", str(out), "--quiet", *flags]) == 0
    return [str(w.message) for w in caught if "look like" in str(w.message)]


@pytest.mark.slow
def test_a_hifigan_mel_made_outside_wavflow_is_vocoded(corpus_dir, tmp_path):
    _, checkpoint = _trained_with_convention("hifigan", corpus_dir, tmp_path)
    from wavflow.checkpoint import load_model

    _, recipe, _ = load_model(checkpoint)
    features = recipe.features
    assert features.convention == "hifigan"
    audio = load_audio(sorted(corpus_dir.rglob("*.wav"))[0], features.sample_rate)[:3000]
    np.save(tmp_path / "theirs.npy", hifigan_reference(audio, features).astype(np.float32))
    np.save(tmp_path / "log10.npy", hifigan_reference(audio, features) / np.log(10.0))
    assert _synthesize(checkpoint, [tmp_path / "theirs.npy"], tmp_path / "out") == []
    written = sf.read(tmp_path / "out" / "theirs.wav")[0]
    assert len(written) == 3000 // 64 * 64 and np.isfinite(written).all()
    assert _synthesize(checkpoint, [tmp_path / "log10.npy"], tmp_path / "out") == [
        f"{tmp_path / 'log10.npy'}: these look like log10 mels; this checkpoint expects "
        "natural-log hifigan mels"
    ]


@pytest.mark.slow
def test_normalisation_statistics_round_trip_from_prepare_to_synthesize(corpus_dir, tmp_path):
    prepared, checkpoint = _trained_with_convention("parallel_wavegan", corpus_dir, tmp_path)
    from wavflow.checkpoint import load_model

    _, recipe, _ = load_model(checkpoint)
    features = recipe.features
    # The training split's statistics, by ParallelWaveGAN's own formula on the prepared audio.
    records = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    frames = np.concatenate(
        [
            parallel_wavegan_reference(np.load(prepared / "audio" / f"{r['id']}.npy"), features)[
                :, :-1
            ]  # the frame past the audio, which wavflow does not make
            for r in records
            if r["split"] == "train"
        ],
        axis=1,
    )
    saved = json.loads((prepared / "features.json").read_text())["features"]
    assert np.allclose(saved["mel_mean"], features.mel_mean)
    assert np.allclose(features.mel_mean, frames.mean(axis=1), atol=2e-3)
    assert np.allclose(features.mel_std, frames.std(axis=1), rtol=2e-3)
    # One utterance as log10 mels, and normalised: the same audio (same seed) either way.
    mel = parallel_wavegan_reference(
        np.load(prepared / "audio" / f"{records[0]['id']}.npy"), features
    )
    mean, std = np.array(features.mel_mean)[:, None], np.array(features.mel_std)[:, None]
    (tmp_path / "plain").mkdir()
    (tmp_path / "normal").mkdir()
    np.save(tmp_path / "plain" / "a.npy", mel[:, :-1].astype(np.float32))
    np.save(tmp_path / "normal" / "a.npy", ((mel[:, :-1] - mean) / std).astype(np.float32))
    assert _synthesize(checkpoint, [tmp_path / "plain"], tmp_path / "out_plain") == []
    normal = [tmp_path / "normal"]
    assert _synthesize(checkpoint, normal, tmp_path / "out_normal", "--normalized") == []
    plain = sf.read(tmp_path / "out_plain" / "a.wav")[0]
    assert np.allclose(plain, sf.read(tmp_path / "out_normal" / "a.wav")[0], atol=2e-4)
    assert "normalised mels" in _synthesize(checkpoint, normal, tmp_path / "out_again")[0]


def test_normalized_needs_statistics_in_the_checkpoint(tmp_path):
    from wavflow.synthesis import synthesize_files

    _, _, checkpoint = student_checkpoint("iaf", tmp_path)  # saved without prepare's statistics
    with pytest.raises(ValueError, match="statistics"):
        synthesize_files(
            checkpoint, [tmp_path], tmp_path / "out", SynthesisOptions(normalized=True)
        )

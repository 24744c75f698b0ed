"""Deployment: torch.export, TorchScript and ONNX students against PyTorch for the same noise,
safetensors releases loaded without pickle, and the onnxruntime benchmark rows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import WITH_SPEAKERS, pitch_f0, student_checkpoint

from wavflow.checkpoint import load_model
from wavflow.cli import main
from wavflow.export import cummax_by_reduction, export_student


def _reference(checkpoint, feats, z, f0, speaker: int | None = None) -> torch.Tensor:
    """The student's own sampling pass in PyTorch, (B, T), every row as speaker id `speaker`."""
    model, _, _ = load_model(checkpoint)
    speakers = None if speaker is None else torch.full((len(feats),), speaker)
    with torch.no_grad():
        x, _ = model.flow(z, model.condition(feats, speakers, f0))
    return x[:, 0]


LOADERS = {"pt2": "torch.export.load(path).module()", "torchscript": "torch.jit.load(path)"}


@pytest.mark.parametrize(  # every student's pt2 program is also the ONNX test's
    ("kind", "fmt"),
    [("iaf", "torchscript"), ("squeezewave_pitch", "pt2"), ("iaf_spectral", "torchscript")],
)
def test_exported_student_runs_without_wavflow(kind, fmt, tmp_path):
    recipe, _, checkpoint = student_checkpoint(kind, tmp_path)
    suffix = {"pt2": "pt2", "torchscript": "ts"}[fmt]  # the format follows the suffix
    (path,) = export_student(checkpoint, tmp_path / f"student.{suffix}", example_seconds=0.05)
    # A length and batch other than the traced example's.
    feats, z, f0 = torch.randn(3, 20, 24), torch.randn(3, 1, 24 * 64), pitch_f0(recipe, 3, 24)
    inputs = [feats, z] + ([] if f0 is None else [f0])
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["wavflow"] = None  # importing wavflow now fails
        path = {str(path)!r}
        module = {LOADERS[fmt]}
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        with torch.no_grad():
            torch.save(module(*inputs), {str(tmp_path / "out.pt")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    expected = _reference(checkpoint, feats, z, f0)
    assert torch.allclose(torch.load(tmp_path / "out.pt"), expected, atol=1e-5)


def test_export_refuses_a_teacher(teacher_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="only students"):
        export_student(teacher_checkpoint, tmp_path / "t.pt2")
    with pytest.raises(ValueError, match="only students"):
        export_student(teacher_checkpoint, tmp_path / "t.onnx", "onnx")


@pytest.mark.parametrize(
    "kind", ["iaf", "waveglow", "flowavenet", "squeezewave_pitch", "iaf_spectral"]
)
def test_onnx_student_in_onnxruntime_matches_pytorch(kind, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    recipe, _, checkpoint = student_checkpoint(kind, tmp_path)
    path = tmp_path / "student.onnx"
    code = main(["export", "--checkpoint", checkpoint, "--out", str(path), "--format", "onnx"])
    assert code == 0
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    assert names == (["feats", "z", "f0"] if recipe.conditioning.harmonics else ["feats", "z"])
    # Lengths and batch sizes other than the traced example: both axes are dynamic.
    for batch, frames in [(1, 16), (3, 40)]:
        generator = torch.Generator().manual_seed(frames)
        feats = torch.randn(batch, 20, frames, generator=generator) - 5.0
        z = torch.randn(batch, 1, frames * 64, generator=generator)
        f0 = pitch_f0(recipe, batch, frames)
        inputs = {"feats": feats, "z": z} | ({} if f0 is None else {"f0": f0})
        (audio,) = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
        expected = _reference(checkpoint, feats, z, f0).numpy()
        assert audio.shape == expected.shape == (batch, frames * 64)
        assert np.abs(audio - expected).max() < 1e-4


def test_cummax_by_reduction_is_torch_cummax():
    x = torch.tensor([[1, 3, 3, 2, 5, 5, -1]])
    values, indices = cummax_by_reduction(x, -1)
    assert values.tolist() == [[1, 3, 3, 3, 5, 5, 5]]
    assert indices.tolist() == [[0, 1, 2, 2, 4, 5, 5]]  # ties: the last index, as torch
    y = torch.randn(3, 6, 4)
    expected = torch.cummax(y, dim=1)
    assert all(map(torch.equal, cummax_by_reduction(y, 1), expected))


def test_safetensors_release_loads_without_pickle(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    recipe, _, checkpoint = student_checkpoint("waveglow", tmp_path)
    release = tmp_path / "release" / "waveglow.safetensors"
    assert (
        main(
            ["export", "--checkpoint", checkpoint, "--out", str(release), "--format", "safetensors"]
        )
        == 0
    )
    described = json.loads(release.with_suffix(".json").read_text())
    assert described["kind"] == "student" and described["config"]["student"]["kind"] == "waveglow"

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    released, released_recipe, _ = load_model(release)
    assert released_recipe == recipe
    monkeypatch.undo()
    original, _, _ = load_model(checkpoint)
    for (name, a), (_, b) in zip(original.state_dict().items(), released.state_dict().items()):
        assert torch.equal(a, b), name
    mel = np.random.default_rng(0).normal(-6, 1, (20, 12)).astype(np.float32)
    np.save(tmp_path / "mel.npy", mel)
    for source, out in [(checkpoint, "from_pt"), (release, "from_release")]:
        assert (
            main(
                [
                    "synthesize",
                    "--checkpoint",
                    str(source),
                    str(tmp_path / "mel.npy"),
                    "--out",
                    str(tmp_path / out),
                    "--quiet",
                ]
            )
            == 0
        )
    assert np.array_equal(
        sf.read(tmp_path / "from_pt" / "mel.wav")[0],
        sf.read(tmp_path / "from_release" / "mel.wav")[0],
    )


def test_a_release_without_its_json_is_refused(tmp_path):
    pytest.importorskip("safetensors")
    from wavflow.checkpoint import CheckpointError

    _, _, checkpoint = student_checkpoint("iaf", tmp_path)
    release = tmp_path / "iaf.safetensors"
    export_student(checkpoint, release, "safetensors")
    release.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="iaf.json"):
        load_model(release)


def test_benchmark_has_onnxruntime_rows_beside_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from wavflow.benchmark import BenchSettings, run_benchmark

    settings = BenchSettings(
        lengths=[0.02],
        batches=[1],
        dtypes=["fp32"],
        methods=["iaf", "squeezewave"],  # squeezewave: a graph-computed 1x1 weight stays float
        repeats=1,
        student_presets={"iaf": "tiny", "squeezewave": "tiny"},
        runtimes=["pytorch", "onnxruntime"],
    )
    rows = run_benchmark(settings, tmp_path, progress=False)["rows"]
    for method in ("iaf", "squeezewave"):
        ours = [row for row in rows if row["method"] == method]
        assert [(row["runtime"], row["dtype"]) for row in ours] == [
            ("pytorch", "fp32"),
            ("onnxruntime", "fp32"),
            ("onnxruntime", "int8"),
        ]
        for row in ours[1:]:
            assert row["median_s"] > 0 and row["flops_per_sample"] == ours[0]["flops_per_sample"]
        # The same noise: onnxruntime's fp32 audio is PyTorch's; int8 weights cost a little.
        fp32, int8 = (row["quality_log_mel_db_vs_fp32"] for row in ours[1:])
        assert fp32 < 0.01 and fp32 < int8 < 10.0
    table = (tmp_path / "bench.md").read_text()
    assert "| iaf | onnxruntime | fp32 |" in table and "| iaf | onnxruntime | int8 |" in table
    with pytest.raises(ValueError, match="unknown runtime"):
        BenchSettings(
            lengths=[1.0], batches=[1], dtypes=["fp32"], methods=["iaf"], runtimes=["tvm"]
        )


SPEAKERS = ["ann", "bob", "cy"]


def _run_exported(path, fmt: str, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Audio (B, T) of an exported student without speaker input, in its own runtime."""
    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [node.name for node in session.get_inputs()] == ["feats", "z"]
        (audio,) = session.run(None, {"feats": feats.numpy(), "z": z.numpy()})
        return torch.from_numpy(audio)
    module = torch.export.load(path).module() if fmt == "pt2" else torch.jit.load(path)
    with torch.no_grad():
        return module(feats, z)


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_a_multi_speaker_student_exports_for_one_speaker(fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    _, _, checkpoint = student_checkpoint(
        "iaf", tmp_path, std=0.1, speakers=SPEAKERS, overrides=WITH_SPEAKERS
    )
    # A batch and length other than the traced example's.
    generator = torch.Generator().manual_seed(3)
    feats = torch.randn(3, 20, 24, generator=generator) - 5.0
    z = torch.randn(3, 1, 24 * 64, generator=generator)
    suffix = {"pt2": "pt2", "onnx": "onnx", "torchscript": "ts"}[fmt]  # the format's suffix
    audio = {}
    for name in ("bob", "cy"):
        path = tmp_path / f"{name}.{suffix}"
        argv = ["export", "--checkpoint", checkpoint, "--out", str(path), "--speaker", name]
        assert main(argv) == 0
        audio[name] = _run_exported(path, fmt, feats, z)
        expected = _reference(checkpoint, feats, z, None, SPEAKERS.index(name))
        assert torch.allclose(audio[name], expected, atol=1e-4)
    assert (audio["bob"] - audio["cy"]).abs().max() > 1e-3  # the speaker is in the graph


def test_export_names_the_speakers_it_needs(tmp_path, capsys):
    _, _, checkpoint = student_checkpoint(
        "iaf", tmp_path, speakers=SPEAKERS, overrides=WITH_SPEAKERS
    )
    out = str(tmp_path / "student.pt2")
    for extra, message in [
        ([], "no --speaker: this model conditions on speakers, pass one of ann, bob, cy"),
        (["--speaker", "dan"], "--speaker dan: this model conditions on speakers, pass one of"),
    ]:
        assert main(["export", "--checkpoint", checkpoint, "--out", out, *extra]) == 2
        assert capsys.readouterr().err.startswith(f"wavflow export: error: {message}")
    release = str(tmp_path / "release.safetensors")
    assert main(["export", "--checkpoint", checkpoint, "--out", release, "--speaker", "ann"]) == 2
    assert "a safetensors release keeps every speaker" in capsys.readouterr().err
    _, _, single = student_checkpoint("iaf", tmp_path / "single")
    assert main(["export", "--checkpoint", single, "--out", out, "--speaker", "ann"]) == 2
    assert "--speaker ann: this model was trained without speakers" in capsys.readouterr().err

"""Copy-synthesis evaluation: anchor rows, skipped inputs, the CLI, stored F0, the KL's steps."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from wavflow import evaluation, metrics
from wavflow.checkpoint import build_student, build_teacher, checkpoint_state, save_checkpoint
from wavflow.cli import main
from wavflow.config import load_recipe
from wavflow.data import PreparedData
from wavflow.evaluation import REAL, EvaluationOptions, evaluate, quality_table
from wavflow.validation import kl_first_step, kl_to_teacher

TINY_TEACHER = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"
GRIFFIN_LIM = "Griffin-Lim (32 iterations)"
TINY_IAF = [
    'student.kind="iaf"',
    "student.iaf.flow_layers=[2, 2]",
    "student.iaf.channels=8",
    "student.iaf.layers_per_cycle=2",
]
QUICK = EvaluationOptions(max_utterances=1, max_seconds=1.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """A random tiny teacher and an IAF student that names it as its teacher."""
    out = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    recipe = load_recipe(TINY_TEACHER)
    teacher = str(out / "teacher" / "best.pt")
    save_checkpoint(teacher, checkpoint_state("teacher", recipe, build_teacher(recipe), [], step=3))
    student_recipe = load_recipe(TINY_TEACHER, TINY_IAF)
    student = str(out / "iaf" / "best.pt")
    state = checkpoint_state(
        "student",
        student_recipe,
        build_student(student_recipe),
        [],
        step=5,
        metadata={"teacher_checkpoint": teacher},
    )
    save_checkpoint(student, state)
    return {"teacher": teacher, "iaf": student}


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory, corpus_dir):
    """Two corpus utterances, a corrupt file, a too-short one and a silent one."""
    out = tmp_path_factory.mktemp("audio")
    for wav in sorted(corpus_dir.rglob("*.wav"))[:2]:
        shutil.copy(wav, out / wav.name)
    (out / "broken.wav").write_bytes(b"RIFF but not a wav file")
    sf.write(out / "short.wav", np.full(1600, 0.1, dtype=np.float32), 16000)
    sf.write(out / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    return out


def test_anchor_rows_are_scored_and_unusable_files_named_and_skipped(checkpoints, audio_dir):
    with pytest.warns(UserWarning, match="broken.wav"):
        report = evaluate({"teacher": checkpoints["teacher"]}, [audio_dir], options=QUICK)
    assert list(report["rows"]) == [REAL, GRIFFIN_LIM, "teacher"]
    skipped = {item["file"].rsplit("/", 1)[-1]: item["reason"] for item in report["skipped"]}
    assert set(skipped) == {"broken.wav", "short.wav", "silent.wav"}
    assert "cannot read" in skipped["broken.wav"] and "too short" in skipped["short.wav"]
    assert "silent" in skipped["silent.wav"]
    assert len(report["utterances"]) == 1
    real = report["rows"][REAL]["mean"]
    assert real["pesq_wb"] == pytest.approx(4.64, abs=0.01) and real["stoi"] == pytest.approx(1)
    assert real["mcd_db"] == 0 and real["log_mel_db"] == 0 and real["vuv_error"] == 0
    anchor = report["rows"][GRIFFIN_LIM]
    assert set(anchor["utterances"]) == set(report["utterances"])
    for key in ("pesq_wb", "stoi", "mcd_db", "log_mel_db", "log_mel_speech_db", "vuv_error"):
        assert math.isfinite(anchor["mean"][key]), key
    assert 1.0 <= anchor["mean"]["pesq_wb"] < 4.6 and 0.5 < anchor["mean"]["stoi"] < 1.0
    assert report["rows"]["teacher"]["density"]["nll_of_real_audio"] > -10
    table = quality_table(report)
    assert f"| {REAL} | 4.64 | 1.000 |" in table and f"| {GRIFFIN_LIM} |" in table


def test_cli_evaluates_teacher_and_student_in_one_table(checkpoints, audio_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    arguments = ["evaluate", "--checkpoint", checkpoints["teacher"], "--checkpoint"]
    arguments += [checkpoints["iaf"], "--audio", str(audio_dir), "--out", str(out)]
    with pytest.warns(UserWarning, match="skipped"):
        code = main(arguments + ["--max-utterances", "1", "--max-seconds", "1", "--quiet"])
    assert code == 0
    printed = capsys.readouterr()
    header = "| model | PESQ-wb | STOI | MCD dB | log-mel dB (all / speech) | silence dB | V/UV"
    assert header in printed.out
    for label in (REAL, GRIFFIN_LIM, "teacher", "iaf"):
        assert f"| {label} |" in printed.out
    assert "broken.wav" in printed.err
    report = json.loads(out.read_text())
    student = report["rows"]["iaf"]
    assert student["kind"] == "student" and student["step"] == 5
    assert math.isfinite(student["density"]["kl_to_teacher"])
    assert "student_nll_of_real_audio" not in student["density"]  # only with --nll-seconds
    assert len(student["utterances"]) == 1 and "pesq_wb" in student["mean"]


def test_prepared_validation_uses_the_stored_f0_for_the_real_side(
    checkpoints, prepared_dir, tmp_path, monkeypatch
):
    data_dir = tmp_path / "prepared"
    shutil.copytree(prepared_dir, data_dir)
    settings = json.loads((data_dir / "features.json").read_text())
    settings["data"]["f0_method"] = "pyin"
    (data_dir / "features.json").write_text(json.dumps(settings))
    prepared = PreparedData(data_dir)
    for record in prepared.records:
        path = data_dir / "f0" / f"{record['id']}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.full(record["frames"], 140, "f4"))
    tracked = []
    real_track = metrics.track_f0

    def counting_track(*args, **kwargs):
        tracked.append(1)
        return real_track(*args, **kwargs)

    monkeypatch.setattr(metrics, "track_f0", counting_track)
    options = EvaluationOptions(max_utterances=1, max_seconds=1.0)
    report = evaluate({"teacher": checkpoints["teacher"]}, data_dir=data_dir, options=options)
    assert report["utterances"] == [prepared.split("val")[0]["id"]]
    assert len(tracked) == 2  # Griffin-Lim's and the teacher's output, not the real audio
    real = report["rows"][REAL]["mean"]
    assert real["vuv_error"] == 0 and real["voiced_recall"] == 1  # the stored F0 is all voiced


def test_kl_leaves_out_the_teachers_first_steps_as_training_does(tiny_recipe):
    torch.manual_seed(0)
    teacher = build_teacher(tiny_recipe).eval()
    recipe = load_recipe(TINY_TEACHER, TINY_IAF)
    student = build_student(recipe).eval()
    assert kl_first_step(student, teacher, recipe) == teacher.receptive_field > 0
    no_skip = load_recipe(TINY_TEACHER, [*TINY_IAF, "distill.skip_receptive_field=false"])
    assert kl_first_step(student, teacher, no_skip) == 0
    waveglow = load_recipe(TINY_TEACHER, ['student.kind="waveglow"', "student.waveglow.n_flows=2"])
    assert kl_first_step(build_student(waveglow), teacher, waveglow) == 0

    feats = torch.randn(2, 20, 8)
    first = teacher.receptive_field
    with torch.no_grad():
        student_cond, teacher_cond = student.condition(feats), teacher.condition(feats)
        generator = torch.Generator().manual_seed(1)
        x, kl = kl_to_teacher(student, teacher, student_cond, teacher_cond, first, generator)
        _, _, log_scale, z = student.rsample_with_stats(
            student_cond, generator=torch.Generator().manual_seed(1)
        )
        log_q = (student.base.log_density(z) - log_scale)[:, 0, first:]
        log_p = teacher.log_prob_per_step(x, teacher_cond)[:, first:]
    assert kl["kl"] == pytest.approx(float((log_q - log_p).mean()), rel=1e-5)
    assert kl["teacher_nll_of_student"] == pytest.approx(float(-log_p.mean()), rel=1e-5)


def test_options_refuse_caps_too_short_to_score():
    with pytest.raises(ValueError, match="max_seconds"):
        EvaluationOptions(max_seconds=0.2)
    assert EvaluationOptions().max_seconds >= evaluation.MIN_SECONDS


def test_temperature_reaches_the_students_samples(checkpoints, corpus_dir):
    audio = [sorted(corpus_dir.rglob("*.wav"))[0]]
    rows = {}
    for temperature in (1.0, 0.0):
        options = EvaluationOptions(max_utterances=1, max_seconds=1.0, temperature=temperature)
        report = evaluate({"iaf": checkpoints["iaf"]}, audio, options=options)
        assert report["settings"]["temperature"] == temperature
        assert f"temperature {temperature:g}" in quality_table(report)
        rows[temperature] = report["rows"]["iaf"]["mean"]["log_mel_db"]
    assert rows[0.0] != rows[1.0]

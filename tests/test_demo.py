"""The demo runs end to end on a tiny budget and reports every model."""

from __future__ import annotations

import json

import pytest

from wavflow.demo import run_demo
from wavflow.evaluation import REAL

TINY = [
    "data.corpus_minutes=0.4",
    "data.segment_length=2048",
    "train.steps=15",
    "train.student_steps=4",
    "train.eval_every=15",
    "train.checkpoint_every=15",
    "train.batch_size=2",
    "teacher.n_layers=4",
    "teacher.residual_channels=8",
    "teacher.gate_channels=16",
    "teacher.skip_channels=8",
    "student.iaf.flow_layers=[2, 2]",
    "student.iaf.layers_per_cycle=2",
    "student.iaf.channels=8",
    "student.waveglow.n_flows=2",
    "student.waveglow.channels=8",
    "student.waveglow.n_layers=2",
    "distill.stft_resolutions=[[512, 128, 512]]",
]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    report = run_demo(tmp_path, overrides=TINY, progress=False, bench=False)
    printed = capsys.readouterr().out
    rows = report["evaluation"]["rows"]
    assert list(rows) == [REAL, "Griffin-Lim (32 iterations)", "teacher", "iaf", "squeezewave"]
    assert rows[REAL]["mean"]["pesq_wb"] > 4.6 and rows["iaf"]["mean"]["pesq_wb"] >= 1.0
    assert "wavflow demo report" in printed and "| iaf |" in printed and f"| {REAL} |" in printed
    assert "| Griffin-Lim (32 iterations) |" in (tmp_path / "report.md").read_text()
    counts = {
        len(list((tmp_path / "samples" / name).glob("*.wav")))
        for name in ("real", "teacher", "iaf", "squeezewave")
    }
    assert len(counts) == 1 and counts.pop() >= 1
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["evaluation"]["rows"]["iaf"]["kind"] == "student"
    again = run_demo(tmp_path, overrides=TINY, progress=False, bench=False)
    assert again["seconds"]["teacher"] < 5, "a finished stage must not train again"

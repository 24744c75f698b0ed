"""The benchmark runs end to end on tiny models and writes its table, JSON and plot."""

from __future__ import annotations

import json

import pytest

from wavflow.benchmark import BenchSettings, run_benchmark


def test_benchmark_writes_json_table_and_plot(tmp_path):
    settings = BenchSettings(
        lengths=[0.01, 0.02],
        batches=[1, 2],
        dtypes=["fp32", "bf16"],
        methods=["teacher-naive", "teacher-cached", "iaf", "waveglow"],
        repeats=1,
        naive_seconds=0.005,
        teacher_sizes={
            "n_layers": 4,
            "n_cycles": 2,
            "residual_channels": 8,
            "gate_channels": 16,
            "skip_channels": 8,
        },
        student_presets={"iaf": "tiny", "waveglow": "tiny"},
    )
    result = run_benchmark(settings, tmp_path, progress=False)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["torch"] and saved["threads"] >= 1 and "fp32" in saved["ceiling"]
    methods = {row["method"] for row in result["rows"]}
    assert methods == {"teacher-naive", "teacher-cached", "iaf", "waveglow"}
    for row in result["rows"]:
        assert row["median_s"] > 0 and row["samples_per_s"] > 0 and row["flops_per_sample"] > 0
        if row["method"] != "teacher-naive":
            assert row["speedup_vs_naive"] is not None and row["speedup_vs_cached"] is not None
    bf16 = [r for r in result["rows"] if r["dtype"] == "bf16" and r["method"] == "iaf"]
    assert bf16 and all(r["quality_log_mel_db_vs_fp32"] is not None for r in bf16)
    assert "| teacher-cached |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_benchmark_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown bench method"):
        BenchSettings(lengths=[1.0], batches=[1], dtypes=["fp32"], methods=["hifigan"])
    with pytest.raises(ValueError, match="unknown dtype"):
        BenchSettings(lengths=[1.0], batches=[1], dtypes=["fp8"], methods=["iaf"])

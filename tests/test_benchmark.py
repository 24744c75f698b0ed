"""The benchmark runs end to end on tiny models and writes its table, JSON and plot."""

from __future__ import annotations

import json

import pytest
import torch

from wavflow.benchmark import (
    BENCH_FEATURES,
    QUICK,
    BenchSettings,
    bench_models,
    flops_per_sample,
    run_benchmark,
    time_naive_steps,
)
from wavflow.cli import main
from wavflow.flows import STUDENTS

TINY_TEACHER = {
    "n_layers": 4,
    "n_cycles": 2,
    "residual_channels": 8,
    "gate_channels": 16,
    "skip_channels": 8,
}


def test_benchmark_writes_json_table_and_plot(tmp_path):
    settings = BenchSettings(
        lengths=[0.01, 0.02],
        batches=[1, 2],
        dtypes=["fp32", "bf16"],
        methods=["teacher-naive", "teacher-cached", "iaf", "waveglow"],
        repeats=1,
        naive_fields=1.0,
        teacher_sizes=TINY_TEACHER,
        student_presets={"iaf": "tiny", "waveglow": "tiny"},
    )
    result = run_benchmark(settings, tmp_path, progress=False)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["torch"] and saved["threads"] >= 1 and "fp32" in saved["ceiling"]
    methods = {row["method"] for row in result["rows"]}
    assert methods == {"teacher-naive", "teacher-cached", "iaf", "waveglow"}
    for row in result["rows"]:
        assert row["median_s"] > 0 and row["samples_per_s"] > 0 and row["flops_per_sample"] > 0
        assert row["speedup_vs_cached"] is not None
        # The naive teacher runs at batch 1 only, so only batch-1 rows have a naive speed-up.
        assert (row["speedup_vs_naive"] is not None) == (row["batch"] == 1)
    naive = [row for row in result["rows"] if row["method"] == "teacher-naive"]
    receptive_field = bench_models(settings)["teacher"].receptive_field
    assert naive and all(row["naive_min_window"] == receptive_field for row in naive)
    bf16 = [r for r in result["rows"] if r["dtype"] == "bf16" and r["method"] == "iaf"]
    assert bf16 and all(r["quality_log_mel_db_vs_fp32"] is not None for r in bf16)
    assert "| teacher-cached |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_int8_rows_are_the_cached_teachers_only(tmp_path):
    settings = BenchSettings(
        lengths=[0.01],
        batches=[1],
        dtypes=["fp32", "int8"],
        methods=["teacher-naive", "teacher-cached", "iaf"],
        repeats=1,
        naive_fields=1.0,
        teacher_sizes=TINY_TEACHER,
        student_presets={"iaf": "tiny"},
    )
    result = run_benchmark(settings, tmp_path, progress=False)
    int8 = {row["method"] for row in result["rows"] if row["dtype"] == "int8"}
    assert int8 == {"teacher-cached"}
    assert list(result["ceiling"]) == ["fp32"]


def test_flops_are_those_of_the_arithmetic_whatever_the_grad_mode():
    """The Parallel WaveNet IAF costs 5.20 MFLOP per sample (BENCHMARKS.md) whether or not the
    caller is in inference mode, where its stacks run the fused path (in-place products the
    FLOP counter would miss)."""
    settings = BenchSettings(lengths=[0.1], batches=[1], dtypes=["fp32"], methods=["iaf"])
    model = bench_models(settings)["iaf"]
    feats = torch.randn(1, 80, 8)
    outside = flops_per_sample("iaf", model, feats)
    with torch.inference_mode():
        inside = flops_per_sample("iaf", model, feats)
    assert inside == outside
    assert round(outside / 1e6, 2) == 5.20


def test_benchmark_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown bench method"):
        BenchSettings(lengths=[1.0], batches=[1], dtypes=["fp32"], methods=["hifigan"])
    with pytest.raises(ValueError, match="unknown dtype"):
        BenchSettings(lengths=[1.0], batches=[1], dtypes=["fp8"], methods=["iaf"])


def test_naive_timing_covers_the_receptive_field():
    """Every timed naive step runs on a full window: the set-up of the measurement, not a speed
    (a step on a shorter window, as one 256-sample frame gave, would be cheaper per sample)."""
    settings = BenchSettings(
        lengths=[0.01],
        batches=[1],
        dtypes=["fp32"],
        methods=["teacher-naive"],
        teacher_sizes=TINY_TEACHER,
    )
    teacher = bench_models(settings)["teacher"]
    field_samples, steps = teacher.receptive_field, 7
    frames = -(-(field_samples + steps) // BENCH_FEATURES.hop_length)
    naive = time_naive_steps(teacher, torch.randn(1, BENCH_FEATURES.n_mels, frames), steps)
    assert len(naive.seconds) == steps and all(s > 0 for s in naive.seconds)
    assert naive.windows == [field_samples] * steps


def test_quick_benchmark_has_every_student():
    assert set(STUDENTS) <= set(QUICK.methods)


def test_bench_stream_command_reports_first_chunk_latency(tmp_path, capsys):
    """`wavflow bench --stream` prints and writes the first audio's latency and the streaming
    RTF for each chunk size."""
    argv = ["bench", "--out", str(tmp_path), "--quick", "--stream", "--methods", "iaf"]
    options = ["--lengths", "0.05", "--stream-chunks", "1,0.02s", "--repeats", "1"]
    assert main([*argv, *options]) == 0
    assert "| first audio (ms of compute) | RTF |" in capsys.readouterr().out
    rows = json.loads((tmp_path / "stream.json").read_text())["rows"]
    assert [row["chunk_frames"] for row in rows] == [1, 2]
    assert all(row["first_chunk_s"] > 0 and row["real_time_factor"] > 0 for row in rows)


def test_bench_names_the_cpu_and_its_caches(tmp_path):
    """bench.md's header names the CPU model and, where sysfs tells, its L2 size."""
    from pathlib import Path

    from wavflow.timing import cpu_caches, cpu_name

    caches = cpu_caches()
    if Path("/sys/devices/system/cpu/cpu0/cache/index2/size").exists():
        assert "L2 " in caches and "KiB" in caches
    settings = BenchSettings(
        lengths=[0.01],
        batches=[1],
        dtypes=["fp32"],
        methods=["iaf"],
        repeats=1,
        student_presets={"iaf": "tiny"},
    )
    run_benchmark(settings, tmp_path, progress=False)
    header = (tmp_path / "bench.md").read_text().splitlines()[0]
    assert cpu_name() in header and caches in header

"""Benchmark the teacher's sequential generation: cached ("Fast WaveNet") against naive.

A random-weight teacher at the paper size (24 layers, 4 cycles, kernel 3, residual 128, gate 256,
skip 128, 10-component mixture of logistics, 80 mels, hop 256) generates from the same `cond`
for every model and batch item. Each case is warmed up, then timed `--repeats` times; the JSON
keeps the median seconds, samples/s summed over the batch and the real-time factor at 22.05 kHz.

Example:
    python scripts/bench_teacher.py --batch 1,16 --seconds 1.0 --dtype fp32,bf16 --threads 2 \
        --out bench_teacher.json --profile
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import asdict

import torch

from wavflow.benchmark import BENCH_FEATURES, time_naive_steps
from wavflow.benchmark import DTYPES as BENCH_DTYPES
from wavflow.config import TeacherConfig
from wavflow.generation import IncrementalWaveNet, kernel_cache_dir, kernel_error
from wavflow.nn.conditioning import ConditioningSpec
from wavflow.teacher import WaveNet
from wavflow.timing import cpu_name

SAMPLE_RATE = BENCH_FEATURES.sample_rate
DTYPES = {**BENCH_DTYPES, "fp64": torch.float64, "int8": torch.int8}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio seconds per item")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (median kept)")
    parser.add_argument("--dtype", default="fp32,bf16", help="weight dtypes: fp32,bf16,fp64")
    parser.add_argument("--backend", default="auto", help="cached backend(s): auto,cpp,eager")
    parser.add_argument("--threads", type=int, default=2, help="torch and kernel threads")
    parser.add_argument(
        "--naive-fields",
        type=float,
        default=0.2,
        help="steady-state naive steps timed, in receptive fields, after one of warm-up (0 skips)",
    )
    parser.add_argument(
        "--naive-threads",
        type=int,
        default=1,
        help="torch threads for naive (its small convs run slower with more on a busy machine)",
    )
    parser.add_argument("--out", default="bench_teacher.json", help="JSON results path")
    parser.add_argument("--profile", action="store_true", help="print where the step's time goes")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_teacher(seed: int) -> WaveNet:
    """Random weights at the benchmark size; default init (no training needed for timing)."""
    torch.manual_seed(seed)
    sizes = asdict(TeacherConfig())  # the paper size, as `wavflow bench`
    del sizes["speaker_channels"]  # the width of a speaker embedding, which `spec` has not
    spec = ConditioningSpec(BENCH_FEATURES.n_mels, BENCH_FEATURES.hop_length, SAMPLE_RATE)
    return WaveNet(spec, **sizes).eval()


def make_inputs(
    teacher: WaveNet, batch: int, length: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same conditioning for every item, (B, C, T), and the head's noise for T samples."""
    generator = torch.Generator().manual_seed(seed)
    frames = math.ceil(length / BENCH_FEATURES.hop_length)
    feats = torch.randn(1, BENCH_FEATURES.n_mels, frames, generator=generator)
    with torch.no_grad():
        cond = teacher.condition(feats)[:, :, :length]
    noise = teacher.head.draw_noise(batch, length, torch.Generator().manual_seed(seed))
    return cond.expand(batch, -1, -1).contiguous(), noise


def time_runs(run, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of `run` (CPU: synchronous)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float], batch: int, length: int) -> dict:
    median = statistics.median(times)
    audio_seconds = batch * length / SAMPLE_RATE
    return {
        "median_s": median,
        "times_s": times,
        "samples_per_s": batch * length / median,
        # Wall seconds per second of audio (summed over the batch): < 1 is faster than real time.
        "real_time_factor": median / audio_seconds,
        "times_real_time": audio_seconds / median,
    }


def bench_cached(teacher, dtype, backend, batch, length, repeats, seed) -> dict:
    model = IncrementalWaveNet(teacher.stack, dtype=dtype, backend=backend)
    cond, noise = make_inputs(teacher, batch, length, seed)
    warm = min(length, 2048)
    model.generate(cond[:, :, :warm], teacher.head, noise[:, :, :warm])  # builds the kernel too
    times = time_runs(lambda: model.generate(cond, teacher.head, noise), repeats)
    used = model.resolved_backend(cond, teacher.head)
    return {"backend": used, **summarise(times, batch, length)}


def bench_naive(teacher, batch, steps, seed) -> dict:
    """Steady-state naive steps (full receptive-field windows, `time_naive_steps`)."""
    frames = math.ceil((teacher.receptive_field + steps) / BENCH_FEATURES.hop_length)
    feats = torch.randn(
        1, BENCH_FEATURES.n_mels, frames, generator=torch.Generator().manual_seed(seed)
    )
    naive = time_naive_steps(teacher, feats.expand(batch, -1, -1), steps)
    return summarise(naive.seconds, batch, 1) | {"window": min(naive.windows)}


def params_check(teacher, dtype, backend, length, seed) -> dict:
    """Cached params (given dtype) against the fp32 teacher-forced pass on the same samples."""
    model = IncrementalWaveNet(teacher.stack, dtype=dtype, backend=backend)
    cond, noise = make_inputs(teacher, 1, length, seed)
    x, params = model.generate(cond, teacher.head, noise, return_params=True)
    with torch.no_grad():
        reference = teacher(x, cond)
        log_prob = teacher.head.log_prob(params.float(), x)
        log_prob_ref = teacher.head.log_prob(reference, x)
    return {
        "samples": length,
        "params_max_abs_diff": (params.float() - reference).abs().max().item(),
        "log_prob_mean_abs_diff_nats": (log_prob - log_prob_ref).abs().mean().item(),
        "log_prob_per_sample_nats": log_prob_ref.mean().item(),
    }


def profile_eager(teacher, length, seed) -> str:
    """Top ops of the eager cached step (batch 1, fp32), from torch.profiler."""
    model = IncrementalWaveNet(teacher.stack, backend="eager")
    cond, noise = make_inputs(teacher, 1, length, seed)
    model.generate(cond, teacher.head, noise)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.generate(cond, teacher.head, noise)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)


def profile_kernel(teacher, dtype, batch, length, seed) -> dict[str, float]:
    """Microseconds per step in each section of the C++ kernel's step (first thread)."""
    model = IncrementalWaveNet(teacher.stack, dtype=dtype, backend="cpp")
    cond, noise = make_inputs(teacher, batch, length, seed)
    model.generate(cond[:, :, :256], teacher.head, noise[:, :, :256])
    seconds = model.profile_kernel(cond, teacher.head, noise)
    return {name: 1e6 * value / length for name, value in seconds.items()}


def print_kernel_profile(title: str, sections: dict[str, float]) -> None:
    total = sum(sections.values())
    print(f"\n{title}: {total:.1f} us/step")
    for name, value in sorted(sections.items(), key=lambda item: -item[1]):
        print(f"  {name:28s} {value:8.1f} us  {100 * value / total:5.1f}%")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    teacher = build_teacher(args.seed)
    length = round(args.seconds * SAMPLE_RATE)
    batches = [int(b) for b in args.batch.split(",")]
    backends = args.backend.split(",")
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": f"cpu ({cpu_name()}, {os.cpu_count()} cores)",
        "sample_rate": SAMPLE_RATE,
        "seconds": args.seconds,
        "receptive_field": teacher.receptive_field,
        "kernel_cache": str(kernel_cache_dir()),
        "cached": [],
        "naive": [],
        "checks": [],
    }
    for name in args.dtype.split(","):
        dtype = DTYPES[name]
        for backend in backends:
            for batch in batches:
                row = bench_cached(teacher, dtype, backend, batch, length, args.repeats, args.seed)
                row |= {"dtype": name, "batch": batch, "samples": length}
                results["cached"].append(row)
                print(
                    f"cached {row['backend']:5s} {name} batch {batch:3d}: "
                    f"{row['samples_per_s']:9.0f} samples/s  RTF {row['real_time_factor']:.3f}"
                )
            check = params_check(teacher, dtype, backend, 2048, args.seed)
            results["checks"].append({"dtype": name, "backend": backend, **check})
            print(f"  check vs fp32 teacher-forced: {check}")
    if kernel_error():
        results["kernel_error"] = kernel_error()
    if args.naive_fields > 0:
        naive_steps = max(1, round(args.naive_fields * teacher.receptive_field))
        torch.set_num_threads(args.naive_threads)
        results["naive_threads"] = args.naive_threads
        for batch in batches:
            row = bench_naive(teacher, batch, naive_steps, args.seed)
            row |= {"dtype": "fp32", "batch": batch, "steps": naive_steps}
            results["naive"].append(row)
            print(
                f"naive       fp32 batch {batch:3d}: {row['samples_per_s']:9.0f} samples/s  "
                f"RTF {row['real_time_factor']:.3f}"
            )
        torch.set_num_threads(args.threads)
    if args.profile:
        table = profile_eager(teacher, 256, args.seed)
        print("\nprofile: eager cached step, batch 1, fp32 (torch.profiler)")
        print(table)
        results["profile"] = {"eager_batch1_fp32": table}
        if kernel_error() is None:
            for name in args.dtype.split(","):
                for batch in batches:
                    steps = min(length, 4096 if batch == 1 else 1024)
                    sections = profile_kernel(teacher, DTYPES[name], batch, steps, args.seed)
                    title = f"profile: C++ kernel, {name}, batch {batch}"
                    print_kernel_profile(title, sections)
                    results["profile"][f"kernel_{name}_batch{batch}_us_per_step"] = sections
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

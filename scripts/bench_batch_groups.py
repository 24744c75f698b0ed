"""Batch synthesis of a chunk-preferring student: one pass over the batch against groups.

`wavflow.synthesis.vocode` synthesises a batch in groups of utterances whose audio fits the
student's declared chunk (`_items_per_pass`), so that the activations of a pass are those of
one utterance. This script times, side by side in one process with interleaved rounds (one
warm-up round first): batch 1, batch B in one pass per chunk (the code path before grouping),
and batch B through `vocode`; it prints median total samples/s and checks the two batch-B
outputs are identical. Random weights at the student's published size, same mels for all.

Example:
    OMP_NUM_THREADS=1 python scripts/bench_batch_groups.py --student iaf --seconds 0.5 \
        --batch 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wavflow.benchmark import BENCH_FEATURES, BenchSettings, bench_models
from wavflow.synthesis import (
    SynthesisOptions,
    _aligned_frames,
    _context_seconds,
    _vocode_items,
    vocode,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="iaf", help="a student that declares chunk_seconds")
    parser.add_argument("--seconds", type=float, default=0.5, help="audio seconds per utterance")
    parser.add_argument("--batch", type=int, default=8, help="utterances in the batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (median kept)")
    return parser.parse_args()


def one_pass(model, feats: torch.Tensor, options: SynthesisOptions) -> torch.Tensor:
    """The whole batch in each pass (chunked in time as `vocode` chunks one utterance)."""
    shape = (feats.shape[0], 1, feats.shape[-1] * BENCH_FEATURES.hop_length)
    z = model.base.sample(shape, options.temperature, torch.Generator().manual_seed(0))
    seconds = min(options.chunk_seconds, model.capabilities.chunk_seconds)
    chunk = _aligned_frames(model, BENCH_FEATURES, seconds)
    context = _aligned_frames(
        model, BENCH_FEATURES, _context_seconds(model, BENCH_FEATURES, options)
    )
    return _vocode_items(model, feats, z, chunk, context, BENCH_FEATURES, None, None)


def grouped(model, feats: torch.Tensor, options: SynthesisOptions) -> torch.Tensor:
    return vocode(model, feats, BENCH_FEATURES, options, torch.Generator().manual_seed(0))


def main() -> None:
    args = parse_args()
    settings = BenchSettings(
        lengths=[args.seconds], batches=[1], dtypes=["fp32"], methods=[args.student]
    )
    model = bench_models(settings)[args.student]
    if model.capabilities.chunk_seconds is None:
        raise SystemExit(f"{args.student} declares no chunk: vocode runs its batch in one pass")
    frames = round(args.seconds * BENCH_FEATURES.sample_rate / BENCH_FEATURES.hop_length)
    options = SynthesisOptions()
    cases = {
        "batch 1": (grouped, 1),
        f"batch {args.batch}, one pass": (one_pass, args.batch),
        f"batch {args.batch}, groups": (grouped, args.batch),
    }
    rates: dict[str, list[float]] = {name: [] for name in cases}
    outputs = {}
    with torch.inference_mode():
        for round_ in range(args.repeats + 1):
            for name, (synthesise, batch) in cases.items():
                generator = torch.Generator().manual_seed(1)
                feats = torch.randn(batch, BENCH_FEATURES.n_mels, frames, generator=generator)
                start = time.perf_counter()
                outputs[name] = synthesise(model, feats, options)
                elapsed = time.perf_counter() - start
                if round_:  # round 0 is the warm-up
                    rates[name].append(batch * frames * BENCH_FEATURES.hop_length / elapsed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.student}, "
        f"{frames * BENCH_FEATURES.hop_length / BENCH_FEATURES.sample_rate:.2f} s per utterance"
    )
    one, many = list(outputs)[1:]
    print(f"batch {args.batch} outputs identical: {torch.equal(outputs[one], outputs[many])}")
    base = statistics.median(rates["batch 1"])
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.0f}" for v in values)
        print(f"{name:22s} {median:9.0f} samples/s total  {median / base:5.2f}x batch 1  ({runs})")


if __name__ == "__main__":
    main()

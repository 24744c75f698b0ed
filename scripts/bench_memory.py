"""Peak memory of one student synthesising one utterance, against the utterance's length.

Each (student, length) runs in a fresh process: the model is built (random weights at its
published size, as `wavflow bench`), the mels made, then one `vocode` call is measured as the
growth of the process's peak resident set (`ru_maxrss`) over its resident set just before the
call. A fresh process per case keeps one case's allocator pool out of the next one's figure.
Prints one line per case and the ratio of each length's peak to the first length's.

Example:
    python scripts/bench_memory.py --student iaf --lengths 4,60
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="iaf", help="iaf, waveglow, flowavenet, squeezewave")
    parser.add_argument("--lengths", default="4,60", help="seconds of audio, comma-separated")
    parser.add_argument("--dtype", default="fp32", help="fp32 or bf16")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # the child's own case
    return parser.parse_args()


def resident_mb() -> float:
    """The current resident set in MB (Linux /proc/self/statm)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def measure(student: str, seconds: float, dtype: str) -> dict:
    """One case in this process: peak growth (MB) of one synthesis of `seconds` of audio."""
    import torch

    from wavflow.benchmark import BENCH_FEATURES, BenchSettings, bench_models
    from wavflow.synthesis import SynthesisOptions, prepare_for_inference, vocode

    settings = BenchSettings(lengths=[seconds], batches=[1], dtypes=[dtype], methods=[student])
    model = prepare_for_inference(bench_models(settings)[student], dtype, torch.device("cpu"))
    frames = round(seconds * BENCH_FEATURES.sample_rate / BENCH_FEATURES.hop_length)
    feats = torch.randn(
        1, BENCH_FEATURES.n_mels, frames, generator=torch.Generator().manual_seed(0)
    )
    before = resident_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MB
    vocode(model, feats, BENCH_FEATURES, SynthesisOptions(dtype=dtype), torch.Generator())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if peak <= peak_before:  # the building peaked higher: the call's own peak is unknown
        raise SystemExit(f"{student} {seconds:g} s: the call stayed below the process's peak")
    return {"student": student, "seconds": seconds, "dtype": dtype, "peak_mb": peak - before}


def main() -> None:
    args = parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.student, args.one, args.dtype)))
        return
    results = []
    for seconds in (float(v) for v in args.lengths.split(",")):
        command = [sys.argv[0], "--student", args.student, "--dtype", args.dtype]
        output = subprocess.run(
            [sys.executable, *command, "--one", str(seconds)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results.append(json.loads(output.splitlines()[-1]))
    first = results[0]["peak_mb"]
    for result in results:
        print(
            f"{result['student']} {result['dtype']} {result['seconds']:g} s: peak "
            f"{result['peak_mb']:.0f} MB ({result['peak_mb'] / first:.2f}x the "
            f"{results[0]['seconds']:g} s figure)"
        )


if __name__ == "__main__":
    main()

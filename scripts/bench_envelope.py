"""Synthesis time of the quality recipe's students with the level-only and the spectrally shaped
prior (`envelope_taps`), built alternately in one process, so the ratio is measured side by side.

    python scripts/bench_envelope.py [--recipe recipes/quality.toml] [--seconds 4] [--threads 1]

Prints, per student, the median over `--builds` builds of the median of `--runs` passes over
`--seconds` of audio (one parallel pass of mel -> audio), and the ratio spectral / level-only.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from wavflow.config import load_recipe
from wavflow.flows import FlowModel, build_student


def time_synthesis(model: FlowModel, feats: torch.Tensor, runs: int) -> float:
    """Median seconds of `runs` passes of `model` over `feats` (after one warm-up pass)."""
    model.eval()
    hop = model.conditioner.hop_length
    with torch.inference_mode():
        noise = torch.randn(1, 1, feats.shape[-1] * hop)
        model.flow(noise, model.condition(feats))
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.flow(noise, model.condition(feats))
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quality.toml", help="recipe with the sizes")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio per pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--runs", type=int, default=5, help="timed passes per build")
    parser.add_argument("--builds", type=int, default=3, help="builds of each variant")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    features = recipe.features
    frames = round(args.seconds * features.sample_rate / features.hop_length)
    feats = torch.randn(1, features.n_mels, frames, generator=torch.Generator().manual_seed(0)) - 5
    print(
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch "
        f"{torch.__version__}, {args.seconds:g} s at {features.sample_rate} Hz"
    )
    for kind in ("iaf", "squeezewave"):
        sizes = {**recipe.student.sizes(kind), "envelope": True}
        times: dict[int, list[float]] = {0: [], sizes.get("envelope_taps") or 1024: []}
        for _ in range(args.builds):
            for taps in times:
                model = build_student(
                    kind,
                    features.n_mels,
                    features.hop_length,
                    features=features,
                    **{**sizes, "envelope_taps": taps},
                )
                times[taps].append(time_synthesis(model, feats, args.runs))
        level, spectral = (statistics.median(t) for t in times.values())
        print(
            f"{kind}: level only {level:.4f} s, spectral envelope {spectral:.4f} s, "
            f"ratio {spectral / level:.3f}"
        )


if __name__ == "__main__":
    main()

"""Synthesis time of the quality recipe's students with each of their priors, built alternately
in one process, so the ratios are measured side by side:

- "level": the output scaled by the mel's level (`envelope_taps = 0`, no source);
- "spectral": filtered by the mel's spectral envelope (`envelope_taps` of the recipe, 1,024);
- "spectral+source": that filter and the harmonic-plus-noise source (`harmonic_source`).

    python scripts/bench_prior.py [--recipe recipes/quality.toml] [--seconds 4] [--threads 1]

Prints the CPU, then per student the median over `--builds` builds of the median of `--runs`
passes over `--seconds` of audio (one parallel pass of mel and F0 -> audio, conditioning
included), and each prior's ratio to the level-only one. Pitch conditioning as the recipe's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wavflow.checkpoint import spec_and_sizes
from wavflow.config import load_recipe
from wavflow.flows import FlowModel, build_student
from wavflow.timing import cpu_name

PRIORS = {
    "level": {"envelope_taps": 0, "harmonic_source": False},
    "spectral": {"harmonic_source": False},
    "spectral+source": {"harmonic_source": True},
}


def time_synthesis(model: FlowModel, feats: torch.Tensor, f0: torch.Tensor, runs: int) -> float:
    """Median seconds of `runs` passes of `model` over `feats`, `f0` (after one warm-up)."""
    model.eval()
    hop = model.conditioner.hop_length
    with torch.inference_mode():
        noise = torch.randn(1, 1, feats.shape[-1] * hop)
        model.flow(noise, model.condition(feats, None, f0))
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model.flow(noise, model.condition(feats, None, f0))
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
    if not recipe.conditioning.harmonics:
        raise SystemExit(f"{args.recipe}: [conditioning] has no pitch; the source needs it")
    frames = round(args.seconds * features.sample_rate / features.hop_length)
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(1, features.n_mels, frames, generator=generator) - 5
    f0 = torch.where(torch.arange(frames) % 40 < 30, 120.0, 0.0)[None]  # voiced 3/4 of frames
    print(
        f"{cpu_name()}, {args.threads} thread(s), torch {torch.__version__}, "
        f"{args.seconds:g} s at {features.sample_rate} Hz"
    )
    for kind in ("iaf", "squeezewave"):
        spec, sizes = spec_and_sizes(recipe, 0, recipe.student.sizes(kind))
        sizes = {**sizes, "envelope": True}
        sizes.setdefault("envelope_taps", 1024)
        times: dict[str, list[float]] = {name: [] for name in PRIORS}
        for _ in range(args.builds):
            for name, prior in PRIORS.items():
                model = build_student(kind, spec, features=features, **{**sizes, **prior})
                times[name].append(time_synthesis(model, feats, f0, args.runs))
        medians = {name: statistics.median(t) for name, t in times.items()}
        cells = ", ".join(
            f"{name} {seconds:.4f} s (x{seconds / medians['level']:.3f})"
            for name, seconds in medians.items()
        )
        print(f"{kind}: {cells}")


if __name__ == "__main__":
    main()

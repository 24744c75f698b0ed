"""PESQ, STOI and the silence floor against training minutes, for the checkpoints of some runs.

Every `ckpt_<step>.pt` of each run folder (or every `--every`-th) is scored by copy-synthesis
on held-back audio with `wavflow.evaluation.evaluate`, in one call, so the Griffin-Lim and
real-audio anchors are computed once and drawn as lines. Training minutes are read from the
run's `metrics.jsonl` (the logged throughput times the samples of each logging window: time
spent training, not validating), so the curve says what a step budget costs on this machine.

    python scripts/learning_curve.py runs/quality/teacher runs/quality/iaf \
        runs/quality/squeezewave --audio runs/quality/heldout --out docs/learning_curve.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wavflow.config import load_recipe  # noqa: E402
from wavflow.evaluation import REAL, EvaluationOptions, evaluate  # noqa: E402

PANELS = (("pesq_wb", "PESQ wide band"), ("stoi", "STOI"), ("silence_db", "silence floor (dB)"))


def training_minutes(run: Path) -> dict[int, float]:
    """step -> minutes of training up to it, from the run's logged throughput."""
    recipe = load_recipe(run / "recipe.toml")
    samples_per_step = recipe.train.batch_size * recipe.data.segment_length
    minutes, last_step, elapsed = {0: 0.0}, 0, 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rate = row.get("train/samples_per_s")
        if rate:
            elapsed += (row["step"] - last_step) * samples_per_step / rate / 60
            last_step = row["step"]
            minutes[last_step] = elapsed
    return minutes


def checkpoints_of(run: Path, every: int) -> list[tuple[int, Path]]:
    """(step, path) of every `every`-th checkpoint of a run, always including the last."""
    found = sorted((int(p.stem.split("_")[1]), p) for p in run.glob("ckpt_*.pt"))
    return [item for i, item in enumerate(found) if i % every == every - 1 or item == found[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (labels: folder names)")
    parser.add_argument("--audio", type=Path, required=True, help="held-back audio folder")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (JSON beside it)")
    parser.add_argument("--every", type=int, default=1, help="score every N-th checkpoint")
    parser.add_argument("--max-utterances", type=int, default=6, help="utterances (default 6)")
    parser.add_argument("--max-seconds", type=float, default=2.0, help="seconds of each")
    args = parser.parse_args()

    labels, points = {}, {}
    for run in args.runs:
        minutes = training_minutes(run)
        for step, path in checkpoints_of(run, args.every):
            label = f"{run.name}@{step}"
            labels[label] = path
            nearest = max(s for s in minutes if s <= step)
            points[label] = (run.name, step, minutes[nearest])
    options = EvaluationOptions(args.max_utterances, args.max_seconds, progress=True)
    report = evaluate(labels, [args.audio], options=options)
    curves: dict[str, list[dict]] = {}
    for label, (name, step, minute) in points.items():
        row = {"step": step, "minutes": minute} | report["rows"][label]["mean"]
        curves.setdefault(name, []).append(row)
    griffin_lim = f"Griffin-Lim ({options.griffin_lim_iterations} iterations)"
    anchors = {name: report["rows"][name]["mean"] for name in (REAL, griffin_lim)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"curves": curves, "anchors": anchors, "settings": report["settings"]}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    plot(curves, anchors, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


def plot(curves: dict[str, list[dict]], anchors: dict[str, dict], out: Path) -> None:
    """One panel per metric: each run's curve against minutes, the anchors as lines."""
    figure, axes = plt.subplots(1, len(PANELS), figsize=(13, 3.8))
    for axis, (key, title) in zip(axes, PANELS):
        for name, rows in curves.items():
            axis.plot([r["minutes"] for r in rows], [r[key] for r in rows], "o-", label=name)
        for (name, row), style in zip(anchors.items(), (":", "--")):
            axis.axhline(row[key], color="gray", linestyle=style, label=name)
        axis.set_title(title)
        axis.set_xlabel("training minutes (2 CPU cores)")
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    main()

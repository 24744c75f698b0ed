"""`wavflow demo`: the whole pipeline on the built-in corpus, with a short report at the end.

Stages, each skipped when its output is already there, so an interrupted demo continues:
corpus -> prepare -> teacher (maximum likelihood) -> students distilled from the teacher (the
IAF and the CPU-class SqueezeWave student by default) -> evaluation -> synthesis of a few
validation clips -> quick benchmark -> report. Budgets are steps: `train.steps` for the
teacher, `train.student_steps` for each student (`config.student_recipe`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from wavflow.audio import save_audio
from wavflow.benchmark import QUICK, run_benchmark
from wavflow.config import Recipe, load_recipe, student_recipe
from wavflow.corpus import write_corpus
from wavflow.data import PreparedData, prepare_dataset
from wavflow.evaluation import EvaluationOptions, density_table, evaluate, quality_table
from wavflow.objectives import build_objective
from wavflow.synthesis import SynthesisOptions, has_pitch, vocode
from wavflow.training import train
from wavflow.validation import validation_clips

# Shipped inside the package (wavflow/recipes), so an installed wheel finds it too.
DEFAULT_RECIPE = Path(str(resources.files("wavflow").joinpath("recipes", "demo.toml")))
STUDENTS = ("iaf", "squeezewave")
N_CLIPS = 3
CLIP_SECONDS = 1.0
# Whole validation utterances, capped so that the evaluation stage (the teacher generates
# sequentially) takes a minute or two on 2 CPU cores.
EVALUATION = EvaluationOptions(max_utterances=6, max_seconds=2.0)


def run_demo(
    out_dir: Path,
    recipe_path: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    bench: bool = True,
    students: tuple[str, ...] = STUDENTS,
) -> dict[str, Any]:
    """Run every stage into `out_dir`; returns (and writes `report.json`) the report."""
    recipe = load_recipe(recipe_path or DEFAULT_RECIPE, list(overrides))
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data_dir = _stage("prepare", timings, lambda: _prepare(out_dir, recipe, progress))
    teacher = _stage(
        "teacher", timings, lambda: _train(out_dir / "teacher", recipe, data_dir, progress)
    )
    distilled = {}
    for kind in students:
        run, kind_recipe = out_dir / kind, student_recipe(recipe, kind)
        distilled[kind] = _stage(
            kind,
            timings,
            lambda run=run, r=kind_recipe: _train(run, r, data_dir, progress, teacher),
        )
    report: dict[str, Any] = {}
    report["evaluation"] = _stage(
        "evaluate",
        timings,
        lambda: evaluate(
            {"teacher": teacher, **distilled},
            data_dir=data_dir,
            options=dataclasses.replace(EVALUATION, progress=progress),
        ),
    )
    _stage("synthesis", timings, lambda: _write_clips(out_dir, data_dir, teacher, distilled))
    if bench:
        report["bench"] = _stage(
            "bench", timings, lambda: run_benchmark(QUICK, out_dir / "bench", progress)
        )
    report["seconds"] = timings
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report, out_dir)
    return report


def _stage(name: str, timings: dict[str, float], work: Callable[[], Any]) -> Any:
    print(f"== {name}", flush=True)
    start = time.monotonic()
    result = work()
    timings[name] = round(time.monotonic() - start, 1)
    return result


def _prepare(out_dir: Path, recipe: Recipe, progress: bool) -> Path:
    corpus, prepared = out_dir / "corpus", out_dir / "prepared"
    if not (corpus / "corpus.json").is_file():
        write_corpus(corpus, recipe.data.corpus_minutes, recipe.features.sample_rate, seed=0)
    prepare_dataset(corpus, prepared, recipe.features, recipe.data, workers=2, progress=progress)
    return prepared


def _train(
    run: Path, recipe: Recipe, data_dir: Path, progress: bool, teacher: Path | None = None
) -> Path:
    """Train (or finish training) the teacher, or a student distilled from `teacher`."""
    if (run / "done").is_file():
        return run / "best.pt"
    data = PreparedData(data_dir, expected=recipe.features)
    kind = "teacher" if teacher is None else "student"
    objective = build_objective(recipe, data, kind, teacher)
    train(objective, recipe, data, run, resume=True, progress=progress)
    (run / "done").write_text("finished\n")
    return run / "best.pt"


def _write_clips(out_dir: Path, data_dir: Path, teacher: Path, students: dict[str, Path]) -> None:
    """Real, teacher and student audio for the same validation clips."""
    from wavflow.checkpoint import load_model

    models = {"teacher": teacher, **students}
    _, recipe, _ = load_model(teacher)
    features = recipe.features
    clips = validation_clips(data_dir, features, N_CLIPS, CLIP_SECONDS)
    for index, audio in enumerate(clips["audio"]):
        save_audio(
            out_dir / "samples" / "real" / f"clip{index}.wav", audio[0], features.sample_rate
        )
    for name, path in models.items():
        model, _, _ = load_model(path)
        f0 = clips["f0"] if has_pitch(model) else None
        generator = torch.Generator().manual_seed(0)
        audio = vocode(model, clips["feats"], features, SynthesisOptions(), generator, f0=f0)
        for index, wave in enumerate(audio):
            save_audio(out_dir / "samples" / name / f"clip{index}.wav", wave, features.sample_rate)


def print_report(report: dict[str, Any], out_dir: Path) -> None:
    """Print the quality table (with its anchors), the density and speed tables, and where the
    files are; the same text goes to `report.md`."""
    text = report_markdown(report, out_dir)
    (out_dir / "report.md").write_text(text)
    print("\n" + text)


def report_markdown(report: dict[str, Any], out_dir: Path) -> str:
    """The demo report as markdown (see `print_report`)."""
    evaluation = report["evaluation"]
    parts = [
        "# wavflow demo report",
        f"Copy-synthesis of the held-back validation utterances ({evaluation['source']}):",
        quality_table(evaluation),
        "Densities in nats per sample (KL and NLL as in training; not quality figures):",
        density_table(evaluation),
    ]
    if "bench" in report:
        parts.append(_speed_table(report["bench"]))
    parts.append(
        f"files: audio in {out_dir}/samples/<model>/, TensorBoard logs in "
        f"{out_dir}/<model>/tensorboard (tensorboard --logdir {out_dir}), benchmark in "
        f"{out_dir}/bench/ (bench.md, bench.png), everything in {out_dir}/report.json and "
        f"{out_dir}/report.md"
    )
    return "\n\n".join(parts) + "\n"


def _speed_table(bench: dict[str, Any]) -> str:
    """Batch-1 rows of the quick benchmark as a markdown table."""
    lines = ["| method | audio (s) | RTF | samples/s | x teacher-cached |", "|---|---|---|---|---|"]
    for row in bench["rows"]:
        if row["batch"] == 1:
            speedup = row["speedup_vs_cached"]
            lines.append(
                f"| {row['method']} | {row['seconds_of_audio']:.2f} | "
                f"{row['real_time_factor']:.3f} | {row['samples_per_s']:.0f} | "
                f"{'-' if speedup is None else f'{speedup:.1f}'} |"
            )
    return "\n".join(lines)

"""`wavflow demo`: the whole pipeline on the built-in corpus, with a short report at the end.

Stages (each skipped when its output is already there, so an interrupted demo continues):
corpus -> prepare -> teacher (maximum likelihood) -> synthesis of validation clips -> report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from wavflow.checkpoint import build_teacher, load_model, speaker_count
from wavflow.config import Recipe, load_recipe
from wavflow.corpus import write_corpus
from wavflow.data import PreparedData, prepare_dataset
from wavflow.evaluation import generate_audio, log_mel_distance
from wavflow.training import latest_checkpoint, likelihood_objective, train

DEFAULT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.toml"
N_CLIPS = 3
CLIP_SECONDS = 1.0


def run_demo(
    out_dir: Path, recipe_path: Path | None = None, overrides: list[str] = (), progress: bool = True
) -> dict:
    """Run every stage into `out_dir`; returns (and writes `report.json`) the report."""
    recipe = load_recipe(recipe_path or DEFAULT_RECIPE, list(overrides))
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    data_dir = _stage("prepare", timings, lambda: _prepare(out_dir, recipe, progress))
    teacher_ckpt = _stage(
        "teacher", timings, lambda: _train_teacher(out_dir, recipe, data_dir, progress)
    )
    report = _stage(
        "synthesis", timings, lambda: _evaluate_teacher(out_dir, teacher_ckpt, data_dir)
    )
    report["seconds"] = timings
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    _print_report(report, out_dir)
    return report


def _stage(name: str, timings: dict[str, float], work):
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


def _train_teacher(out_dir: Path, recipe: Recipe, data_dir: Path, progress: bool) -> Path:
    run = out_dir / "teacher"
    speakers = PreparedData(data_dir, expected=recipe.features).speakers
    torch.manual_seed(recipe.train.seed)
    model = build_teacher(recipe, speaker_count(recipe, speakers))
    objective = likelihood_objective("teacher", model, recipe.features)
    finished = (run / "best.pt").is_file() and latest_checkpoint(run) is not None
    if not finished or latest_checkpoint(run) is None:
        train(objective, recipe, data_dir, run, resume=True, progress=progress, speakers=speakers)
    return run / "best.pt"


@torch.no_grad()
def _evaluate_teacher(out_dir: Path, checkpoint: Path, data_dir: Path) -> dict:
    """Synthesise a few validation clips with the teacher; log-mel distance to the real audio."""
    model, recipe, state = load_model(checkpoint)
    features = recipe.features
    prepared = PreparedData(data_dir, expected=features)
    frames = int(CLIP_SECONDS * features.sample_rate) // features.hop_length
    distances = []
    for record in prepared.split("val")[:N_CLIPS]:
        audio, mel = prepared.load(record)
        feats = torch.from_numpy(np.array(mel[:, :frames]))[None]
        real = torch.from_numpy(np.array(audio[: frames * features.hop_length]))[None, None]
        generator = torch.Generator().manual_seed(0)
        fake = generate_audio(model, feats, None, 1.0, generator)
        distances.append(log_mel_distance(fake, real, features))
        name = record["id"].replace("/", "_")
        from wavflow.audio import save_audio

        save_audio(out_dir / "samples" / "real" / f"{name}.wav", real[0, 0], features.sample_rate)
        save_audio(
            out_dir / "samples" / "teacher" / f"{name}.wav", fake[0, 0], features.sample_rate
        )
    history = [
        json.loads(line) for line in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()
    ]
    val = [h for h in history if "val/nll" in h]
    return {
        "teacher": {
            "steps": int(state["step"]),
            "val_nll": val[-1]["val/nll"] if val else None,
            "baseline_nll": val[-1]["val/baseline_nll"] if val else None,
            "log_mel_distance_db": float(np.mean(distances)),
        }
    }


def _print_report(report: dict, out_dir: Path) -> None:
    teacher = report["teacher"]
    print("\nwavflow demo report")
    print("| model | steps | val NLL (nats/sample) | context-free NLL | log-mel distance (dB) |")
    print("|---|---|---|---|---|")
    print(
        f"| teacher | {teacher['steps']} | {teacher['val_nll']:.3f} | "
        f"{teacher['baseline_nll']:.3f} | {teacher['log_mel_distance_db']:.2f} |"
    )
    print(
        f"\nfiles: {out_dir}/samples (audio), {out_dir}/teacher/tensorboard (logs), "
        f"{out_dir}/report.json"
    )

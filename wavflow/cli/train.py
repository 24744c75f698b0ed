"""`wavflow train-teacher` and `wavflow train-student`: the training commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from wavflow.cli.options import add_recipe_options
from wavflow.config import RecipeError, load_recipe


def add_train_teacher(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "train-teacher",
        help="train the WaveNet teacher by maximum likelihood",
        description="Train the WaveNet teacher on a prepared dataset. Under torchrun, trains with "
        "DDP (NCCL on GPUs, gloo on CPU). Writes checkpoints, metrics.jsonl, TensorBoard logs "
        "and the resolved recipe.toml to --out.",
    )
    _add_training_options(command)
    command.set_defaults(run=_run_train_teacher)


def _add_training_options(command: argparse.ArgumentParser) -> None:
    add_recipe_options(command, required=False)
    command.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    command.add_argument("--out", type=Path, required=True, help="run folder")
    command.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in --out (recipe defaults to its recipe.toml)",
    )
    command.add_argument("--quiet", action="store_true", help="no progress bar")


def _training_recipe(args: argparse.Namespace):
    """The recipe of a training command: --recipe, else the run's recipe.toml on --resume,
    with the mel statistics of --data (kept in the checkpoints for `synthesize --normalized`)."""
    from wavflow.data import with_statistics

    path = args.recipe
    if path is None and args.resume and (args.out / "recipe.toml").is_file():
        path = args.out / "recipe.toml"
    if path is None:
        raise RecipeError("--recipe is required (or --resume in a run folder with recipe.toml)")
    return with_statistics(load_recipe(path, args.overrides), args.data)


def _run_train_teacher(args: argparse.Namespace) -> int:
    from wavflow.data import PreparedData
    from wavflow.objectives import build_objective
    from wavflow.training import train

    recipe = _training_recipe(args)
    data = PreparedData(args.data, expected=recipe.features)
    objective = build_objective(recipe, data, "teacher")
    state = train(objective, recipe, data, args.out, args.resume, not args.quiet)
    print(f"teacher: {state.step} steps, best validation NLL {state.best_val:.4f} nats/sample")
    return 0


def add_train_student(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "train-student",
        help="train a parallel flow student (maximum likelihood or distillation)",
        description="Train a student flow: by maximum likelihood on data (--objective mle; "
        "coupling students) or distilled from a teacher checkpoint (--teacher).",
    )
    _add_training_options(command)
    command.add_argument(
        "--student",
        choices=("iaf", "waveglow", "flowavenet", "squeezewave"),
        help="student kind (default: [student] kind of the recipe); it trains for the recipe's "
        "train.student_steps (train.steps when that is 0)",
    )
    command.add_argument(
        "--objective",
        choices=("mle", "distill"),
        default=None,
        help="mle: maximum likelihood on data; distill: Monte Carlo KL to --teacher "
        "(default: distill when --teacher is given, else mle)",
    )
    command.add_argument("--teacher", type=Path, help="teacher checkpoint to distil from")
    command.set_defaults(run=_run_train_student)


def _run_train_student(args: argparse.Namespace) -> int:
    from wavflow.config import student_recipe
    from wavflow.data import PreparedData
    from wavflow.objectives import build_objective
    from wavflow.training import train

    recipe = student_recipe(_training_recipe(args), args.student)
    objective_name = args.objective or ("distill" if args.teacher else "mle")
    if objective_name == "distill" and args.teacher is None:
        raise RecipeError("--objective distill needs --teacher TEACHER.pt")
    data = PreparedData(args.data, expected=recipe.features)
    teacher = args.teacher if objective_name == "distill" else None
    objective = build_objective(recipe, data, "student", teacher)
    state = train(objective, recipe, data, args.out, args.resume, not args.quiet)
    print(
        f"student {recipe.student.kind}: {state.step} steps, "
        f"best {objective.best_metric} {state.best_val:.4f}"
    )
    return 0

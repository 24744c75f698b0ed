"""`wavflow <command>`: corpus, prepare, train-teacher, train-student, synthesize, evaluate, bench,
export, demo.

The parser and `main` are here with the data commands (corpus, prepare) and the demo; the other
commands are grouped by concern: `wavflow.cli.train` (train-teacher, train-student),
`wavflow.cli.synthesize` (synthesize, export) and `wavflow.cli.measure` (evaluate, bench), with
the options they share in `wavflow.cli.options`.

Every command prints a clear message and exits with status 2 on bad input (a missing file, a
recipe error, unusable data: the project's error classes, `_user_errors`); any other exception
is a fault of the program and ends it with its traceback. `--help` on each command explains
every option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavflow.cli.measure import add_bench, add_evaluate
from wavflow.cli.options import add_recipe_options
from wavflow.cli.synthesize import add_export, add_synthesize
from wavflow.cli.train import add_train_student, add_train_teacher
from wavflow.config import OptionError, RecipeError, load_recipe


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `wavflow` console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except _user_errors() as error:
        print(f"wavflow {args.command}: error: {error}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """The project's error classes, which mean bad input, not a bug: the user gets their message
    without a traceback. Imported here, not at the top, so `--help` stays fast."""
    from wavflow.audio import AudioError
    from wavflow.checkpoint import CheckpointError
    from wavflow.data import DataError
    from wavflow.training import TrainingError

    return (RecipeError, OptionError, DataError, AudioError, CheckpointError, TrainingError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wavflow",
        description="Fast neural audio generation by distillation: a WaveNet teacher trained by "
        "maximum likelihood, parallel flow students distilled from it, batch synthesis and a "
        "sequential-versus-parallel speed benchmark.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_corpus(commands)
    _add_prepare(commands)
    add_train_teacher(commands)
    add_train_student(commands)
    add_synthesize(commands)
    add_evaluate(commands)
    add_bench(commands)
    add_export(commands)
    _add_demo(commands)
    return parser


def _add_corpus(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "corpus",
        help="write the built-in speech-like corpus",
        description="Write the built-in corpus: speech-like audio from a glottal source and moving "
        "formant filters (several speakers, deterministic for a seed), with its true F0.",
    )
    command.add_argument("out_dir", type=Path, help="folder to write <speaker>/<id>.wav into")
    command.add_argument("--minutes", type=float, default=5.0, help="minutes of audio (default 5)")
    command.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    command.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    command.add_argument("--speakers", type=int, default=4, help="number of speakers (default 4)")
    command.add_argument(
        "--engine",
        choices=("builtin", "espeak"),
        default="builtin",
        help="builtin: the synthetic generator; espeak: render sentences with espeak-ng "
        "(must be on PATH)",
    )
    command.set_defaults(run=_run_corpus)


def _run_corpus(args: argparse.Namespace) -> int:
    from wavflow.corpus import write_corpus

    paths = write_corpus(
        args.out_dir, args.minutes, args.sample_rate, args.seed, args.engine, args.speakers
    )
    print(f"wrote {len(paths)} utterances to {args.out_dir}")
    return 0


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "prepare",
        help="prepare a dataset (resample, trim, normalise, mels, split)",
        description="Prepare IN_DIR (a folder of wav/flac/ogg, searched recursively, or the "
        "LJSpeech layout metadata.csv + wavs/) into OUT_DIR: resampled, trimmed and "
        "peak-normalised audio, log-mels, a manifest and a train/validation split. Unusable "
        "files are skipped and listed; re-running skips what is already prepared.",
    )
    command.add_argument("in_dir", type=Path, help="folder of audio files or LJSpeech root")
    command.add_argument("out_dir", type=Path, help="output folder of the prepared dataset")
    add_recipe_options(command)
    command.add_argument(
        "--workers", type=int, default=1, help="parallel worker processes (default 1)"
    )
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from wavflow.data import prepare_dataset

    recipe = load_recipe(args.recipe, args.overrides)
    report = prepare_dataset(
        args.in_dir, args.out_dir, recipe.features, recipe.data, args.workers, not args.quiet
    )
    n_val = sum(r["split"] == "val" for r in report.records)
    print(
        f"prepared {len(report.records)} utterances ({len(report.records) - n_val} train, "
        f"{n_val} val; {report.reused} already prepared) in {args.out_dir}"
    )
    if report.skipped:
        print(f"skipped {len(report.skipped)} files:")
        for item in report.skipped:
            print(f"  {item['skipped']}")
    return 0


def _add_demo(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "demo",
        help="run the whole pipeline on the built-in corpus",
        description="The main job end to end on the built-in corpus: corpus -> prepare -> train "
        "the teacher -> distil the IAF and a coupling student -> evaluate -> synthesise "
        "validation clips -> quick benchmark -> report. Uses recipes/demo.toml unless --recipe "
        "is given; an interrupted demo continues where it stopped. Budgets are steps: "
        "train.steps for the teacher, train.student_steps for each student (e.g. --set "
        "train.student_steps=1000).",
    )
    add_recipe_options(command, required=False)
    command.add_argument(
        "--out", type=Path, default=Path("demo"), help="output folder (default demo/)"
    )
    command.add_argument(
        "--students",
        default="iaf,squeezewave",
        help="students to distil, comma-separated (default iaf,squeezewave)",
    )
    command.add_argument("--no-bench", action="store_true", help="skip the quick benchmark")
    command.add_argument("--quiet", action="store_true", help="no progress bars")
    command.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from wavflow.demo import run_demo

    run_demo(
        args.out,
        args.recipe,
        args.overrides,
        progress=not args.quiet,
        bench=not args.no_bench,
        students=tuple(args.students.split(",")),
    )
    return 0

"""`wavflow <command>`: corpus, prepare, train-teacher, train-student, synthesize, demo.

Every command prints a clear message and exits with status 2 on bad input (a missing file, a
recipe error, unusable data: the project's error classes, `_user_errors`); any other exception
is a fault of the program and ends it with its traceback. `--help` on each command explains
every option.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavflow.config import OptionError, RecipeError, load_recipe

RECIPE_HELP = "recipe TOML file (see recipes/); omitted keys take their defaults"
SET_HELP = "override a recipe value, e.g. --set train.lr=3e-4 (repeatable; values are TOML)"


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
    _add_train_teacher(commands)
    _add_train_student(commands)
    _add_synthesize(commands)
    _add_evaluate(commands)
    _add_bench(commands)
    _add_export(commands)
    _add_demo(commands)
    return parser


def _add_recipe_options(command: argparse.ArgumentParser, required: bool = True) -> None:
    command.add_argument("--recipe", type=Path, required=required, help=RECIPE_HELP)
    command.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=SET_HELP
    )


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
    _add_recipe_options(command)
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


def _add_train_teacher(commands: argparse._SubParsersAction) -> None:
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
    _add_recipe_options(command, required=False)
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


def _add_train_student(commands: argparse._SubParsersAction) -> None:
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


def _add_synthesize(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "synthesize",
        help="write audio from mels or audio files with a trained model",
        description="Synthesise one wav per input with a teacher (sequential) or student "
        "(parallel) checkpoint. Inputs are audio files or folders (their mels computed with the "
        "checkpoint's feature settings) or mel arrays (.npy, n_mels x frames).",
    )
    command.add_argument("inputs", nargs="+", type=Path, help="audio files, folders or .npy mels")
    command.add_argument(
        "--checkpoint", type=Path, required=True, help="model checkpoint (.pt or .safetensors)"
    )
    command.add_argument("--out", type=Path, required=True, help="output folder")
    command.add_argument(
        "--method",
        choices=("cached", "naive"),
        default="cached",
        help="teacher generation: cached queues (fast) or the naive window (reference)",
    )
    command.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="noise scale (default 1; 0 gives the mean path where one exists)",
    )
    command.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    command.add_argument(
        "--batch-size", type=int, default=8, help="utterances per batch (default 8)"
    )
    command.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    command.add_argument("--no-ema", action="store_true", help="use raw weights, not the EMA")
    command.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="students: compute dtype; teacher: dtype of the cached path's weights",
    )
    command.add_argument(
        "--chunk-seconds",
        type=float,
        default=10.0,
        help="students synthesise longer inputs in overlapping chunks of this length (default 10)",
    )
    command.add_argument(
        "--normalized",
        action="store_true",
        help=".npy mels are mean-variance normalised by the checkpoint's training statistics "
        "(as parallel_wavegan writes them); default: the convention's plain log mels",
    )
    command.add_argument(
        "--speaker", help="speaker name, for a model trained on several (an error lists them)"
    )
    command.add_argument(
        "--stream",
        action="store_true",
        help="push each input's frames chunk by chunk through the streaming vocoder (the "
        "teacher continues its state; students hold back their look-ahead) and report the "
        "compute time to the first audio and the real-time factor",
    )
    command.add_argument(
        "--stream-chunk",
        type=_chunk_size,
        default="10",
        help="frames per streamed chunk (10) or seconds (0.05s); default 10 frames",
    )
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=_run_synthesize)


def _chunk_size(text: str) -> str:
    """Checks a --stream-chunk value: a positive frame count or seconds with an s."""
    try:
        positive = (float(text[:-1]) if text.endswith("s") else int(text)) > 0
    except ValueError:
        positive = False
    if not positive:
        raise argparse.ArgumentTypeError(f"{text!r}: give frames (10) or seconds (0.05s)")
    return text


def _run_synthesize(args: argparse.Namespace) -> int:
    from wavflow.synthesis import SynthesisOptions, synthesize_files

    options = SynthesisOptions(
        method=args.method,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        chunk_seconds=args.chunk_seconds,
        use_ema=not args.no_ema,
        progress=not args.quiet,
        normalized=args.normalized,
        speaker=args.speaker,
    )
    if args.stream:
        return _stream_synthesize(args, options)
    report = synthesize_files(args.checkpoint, args.inputs, args.out, options)
    print(f"wrote {len(report.written)} files to {args.out}")
    for name, reason in report.failed:
        print(f"  failed: {name}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _stream_synthesize(args: argparse.Namespace, options) -> int:
    import statistics

    from wavflow.stream_synthesis import stream_files

    if args.method != "cached":
        print("wavflow synthesize: error: --stream needs --method cached", file=sys.stderr)
        return 2
    report = stream_files(args.checkpoint, args.inputs, args.out, options, args.stream_chunk)
    print(f"streamed {len(report.written)} files to {args.out} in chunks of {args.stream_chunk}")
    if report.written:
        first = statistics.median(report.first_audio_s) * 1e3
        rtf = statistics.median(report.real_time_factor)
        print(f"  median first audio after {first:.1f} ms of compute, real-time factor {rtf:.3f}")
    for name, reason in report.failed:
        print(f"  failed: {name}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "evaluate",
        help="copy-synthesis quality of checkpoints, with real-audio and Griffin-Lim anchors",
        description="Vocode whole utterances (audio files or folders, or a prepared dataset's "
        "validation split) from their mels with each checkpoint, and score the output against the "
        "real audio: PESQ wide band (pesq), STOI (pystoi), mel-cepstral distortion (pysptk), "
        "log-mel distance over all and speech frames, the silence noise floor, V/UV error and F0 "
        "RMSE (pyin), and DNSMOS when speechmos is installed. The real audio (ceiling) and "
        "Griffin-Lim on the same mel (floor) are rows of the same table. Density figures (NLL, KL "
        "to the teacher) are listed apart. Prints markdown tables; writes JSON with the means "
        "and every utterance's scores.",
    )
    command.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        required=True,
        help="model checkpoint (.pt); repeat for several models in one table (same features)",
    )
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", type=Path, nargs="+", help="audio files or folders")
    source.add_argument("--data", type=Path, help="prepared dataset (its validation split)")
    command.add_argument("--out", type=Path, required=True, help="metrics JSON file to write")
    command.add_argument(
        "--teacher", type=Path, help="teacher for the students' KL (default: their own)"
    )
    command.add_argument(
        "--max-utterances", type=int, default=10, help="utterances to score, 0 = all (default 10)"
    )
    command.add_argument(
        "--max-seconds",
        type=float,
        default=5.0,
        help="score the first S seconds of each utterance, 0 = whole (default 5; the teacher "
        "generates sequentially, about 15k samples/s at demo size on a CPU)",
    )
    command.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    command.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="scale of the models' sampling noise (default 1: their own distribution)",
    )
    command.add_argument(
        "--griffin-lim-iterations",
        type=int,
        default=32,
        help="iterations of the Griffin-Lim anchor (default 32)",
    )
    command.add_argument(
        "--nll-seconds",
        type=float,
        default=0.0,
        help="also score each student's NLL of real audio (and the teacher's) on the first S "
        "seconds of every utterance (default 0: off; the IAF's runs its sequential inverse, "
        "about a minute for 0.1 s on a CPU)",
    )
    command.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from wavflow.evaluation import EvaluationOptions, density_table, evaluate, quality_table

    options = EvaluationOptions(
        max_utterances=args.max_utterances,
        max_seconds=args.max_seconds,
        seed=args.seed,
        temperature=args.temperature,
        griffin_lim_iterations=args.griffin_lim_iterations,
        nll_seconds=args.nll_seconds,
        device=args.device,
        progress=not args.quiet,
    )
    report = evaluate(
        _checkpoint_labels(args.checkpoint), args.audio, args.data, options, args.teacher
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(quality_table(report))
    print()
    print(density_table(report))
    for item in report["skipped"]:
        print(f"skipped {item['file']}: {item['reason']}", file=sys.stderr)
    print(f"\nwrote {args.out}")
    return 0


def _checkpoint_labels(paths: list[Path]) -> dict[str, Path]:
    """Row labels: each checkpoint's run folder name (runs/iaf/best.pt -> iaf), or its path
    where two share one."""
    names = [path.resolve().parent.name or path.stem for path in paths]
    return {name if names.count(name) == 1 else str(path): path for name, path in zip(names, paths)}


def _add_bench(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "bench",
        help="benchmark sequential (teacher) against parallel (student) generation",
        description="Time the teacher's naive and cached sequential generation and each student's "
        "parallel synthesis, with random weights at recipe sizes, on the same mels in one "
        "process. Writes bench.json, bench.md (table) and bench.png (plots) to --out.",
    )
    command.add_argument("--out", type=Path, required=True, help="output folder")
    command.add_argument("--lengths", help="audio lengths in seconds, e.g. 0.25,1,4")
    command.add_argument("--batch", help="batch sizes, e.g. 1,8")
    command.add_argument("--dtype", help="dtypes: fp32, bf16 or fp32,bf16")
    command.add_argument(
        "--methods",
        help="comma-separated subset of teacher-naive, teacher-cached, iaf, waveglow, flowavenet, "
        "squeezewave",
    )
    command.add_argument("--repeats", type=int, help="timed repeats per configuration (median)")
    command.add_argument(
        "--naive-fields",
        type=float,
        help="steady-state naive-teacher steps timed, in receptive fields, after one receptive "
        "field of warm-up (default 3; --quick 0.2)",
    )
    command.add_argument(
        "--runtime",
        help="onnxruntime: also time each student exported to ONNX, fp32 and dynamic int8 on "
        "the CPU, beside its PyTorch rows (needs the onnx extra)",
    )
    command.add_argument("--threads", type=int, default=0, help="torch threads (default: all)")
    command.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    command.add_argument(
        "--quick", action="store_true", help="short lengths, batch 1, fp32: about a minute"
    )
    command.add_argument(
        "--stream",
        action="store_true",
        help="stream instead: first-chunk latency and streaming RTF per chunk size "
        "(stream.json, stream.md; lengths default to 1 s)",
    )
    command.add_argument(
        "--stream-chunks",
        type=_chunk_sizes,
        default="1,10,40",
        help="chunk sizes for --stream, frames or seconds, e.g. 1,10,0.5s (default 1,10,40)",
    )
    command.set_defaults(run=_run_bench)


def _chunk_sizes(text: str) -> list[str]:
    """Checks a comma-separated --stream-chunks list (see `_chunk_size`)."""
    return [_chunk_size(chunk) for chunk in text.split(",")]


def _run_bench(args: argparse.Namespace) -> int:
    import dataclasses

    from wavflow.benchmark import DEFAULT, QUICK, run_benchmark

    settings = QUICK if args.quick else DEFAULT
    changes = {"device": args.device, "threads": args.threads}
    if args.lengths:
        changes["lengths"] = [float(v) for v in args.lengths.split(",")]
    if args.batch:
        changes["batches"] = [int(v) for v in args.batch.split(",")]
    if args.dtype:
        changes["dtypes"] = args.dtype.split(",")
    if args.methods:
        changes["methods"] = args.methods.split(",")
    if args.repeats:
        changes["repeats"] = args.repeats
    if args.naive_fields:
        changes["naive_fields"] = args.naive_fields
    if args.runtime:
        changes["runtimes"] = list(dict.fromkeys(["pytorch", *args.runtime.split(",")]))
    if args.stream:
        from wavflow.stream_benchmark import run_stream_benchmark

        changes.setdefault("lengths", settings.lengths[:1] if args.quick else [1.0])
        run_stream_benchmark(dataclasses.replace(settings, **changes), args.stream_chunks, args.out)
        print((args.out / "stream.md").read_text())
        return 0
    run_benchmark(dataclasses.replace(settings, **changes), args.out)
    print((args.out / "bench.md").read_text())
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "export",
        help="export a student to torch.export, ONNX or TorchScript, or any model to safetensors",
        description="pt2, onnx and torchscript: a student's sampling path, run without wavflow "
        "by torch.export.load, onnxruntime or torch.jit.load: inputs (feats (B, n_mels, F), "
        "noise z (B, 1, F * hop)), plus F0 (B, F) in Hz for pitch-conditioned students; output "
        "audio (B, F * hop); batch and length dynamic in pt2 and ONNX. safetensors: the EMA "
        "weights, with the resolved recipe in a .json beside them (load_model and synthesize "
        "--checkpoint read the pair).",
    )
    command.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint")
    command.add_argument("--out", type=Path, required=True, help="file to write")
    command.add_argument(
        "--format",
        choices=("pt2", "onnx", "torchscript", "safetensors"),
        help="what to write (default: by the suffix of --out: .onnx, .ts (TorchScript, which "
        "torch deprecates), .safetensors; else pt2, torch.export)",
    )
    command.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from wavflow.export import export_student

    for path in export_student(args.checkpoint, args.out, args.format):
        print(f"wrote {path}")
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
    _add_recipe_options(command, required=False)
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


if __name__ == "__main__":
    sys.exit(main())

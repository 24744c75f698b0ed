"""`wavflow evaluate` and `wavflow bench`: copy-synthesis quality and generation speed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavflow.cli.options import chunk_sizes


def add_evaluate(commands: argparse._SubParsersAction) -> None:
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


def add_bench(commands: argparse._SubParsersAction) -> None:
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
    command.add_argument(
        "--dtype",
        help="dtypes, comma-separated: fp32, bf16, int8 (int8: the cached teacher's weights "
        "only; other methods skip it)",
    )
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
        type=chunk_sizes,
        default="1,10,40",
        help="chunk sizes for --stream, frames or seconds, e.g. 1,10,0.5s (default 1,10,40)",
    )
    command.set_defaults(run=_run_bench)


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

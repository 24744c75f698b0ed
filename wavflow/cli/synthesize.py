"""`wavflow synthesize` (batch or streamed) and `wavflow export`: audio from a trained model,
and a student in deployable form."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wavflow.cli.options import chunk_size


def add_synthesize(commands: argparse._SubParsersAction) -> None:
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
        choices=("fp32", "bf16", "int8"),
        default="fp32",
        help="students: compute dtype (fp32 or bf16); teacher: storage dtype of the cached "
        "path's weights (int8: quantised per row, activations stay fp32)",
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
        type=chunk_size,
        default="10",
        help="frames per streamed chunk (10) or seconds (0.05s); default 10 frames",
    )
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(run=_run_synthesize)


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


def add_export(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "export",
        help="export a student to torch.export, ONNX or TorchScript, or any model to safetensors",
        description="pt2, onnx and torchscript: a student's sampling path, run without wavflow "
        "by torch.export.load, onnxruntime or torch.jit.load: inputs (feats (B, n_mels, F), "
        "noise z (B, 1, F * hop)), plus F0 (B, F) in Hz for pitch-conditioned students; output "
        "audio (B, F * hop); batch and length dynamic in pt2 and ONNX. safetensors: the EMA "
        "weights, with the resolved recipe in a .json beside them (load_model and synthesize "
        "--checkpoint read the pair). A multi-speaker student is exported for one --speaker.",
    )
    command.add_argument("--checkpoint", type=Path, required=True, help="model checkpoint")
    command.add_argument("--out", type=Path, required=True, help="file to write")
    command.add_argument(
        "--format",
        choices=("pt2", "onnx", "torchscript", "safetensors"),
        help="what to write (default: by the suffix of --out: .onnx, .ts (TorchScript, which "
        "torch deprecates), .safetensors; else pt2, torch.export)",
    )
    command.add_argument(
        "--speaker",
        help="speaker name the exported graph synthesises, for a student trained on several "
        "(an error lists them)",
    )
    command.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from wavflow.export import export_student

    for path in export_student(args.checkpoint, args.out, args.format, speaker=args.speaker):
        print(f"wrote {path}")
    return 0

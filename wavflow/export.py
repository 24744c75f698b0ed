"""Deploying students without wavflow: TorchScript, ONNX, and safetensors release weights.

A deployed student is its sampling path as one module: inputs `feats` (B, n_mels, F)
natural-log mels, noise `z` (B, 1, F * hop) and, for pitch-conditioned students, `f0` (B, F)
in Hz (0 = unvoiced); output audio (B, F * hop). The noise is an input so that a deployment
picks its own RNG and the same noise gives the same audio in every runtime. F must make
F * hop a multiple of the student's time folds, as for the student itself. A multi-speaker
student is exported for one speaker, whose id is a constant of the graph (`--speaker NAME`).

A release is two files: `<name>.safetensors` (the EMA weights, else the raw ones, as the
checkpoint's state_dict names them) and `<name>.json` (kind, speakers and the resolved
recipe); `wavflow.checkpoint.load_model` reads the pair without unpickling anything.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wavflow.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, load_model
from wavflow.config import FeatureConfig, OptionError
from wavflow.synthesis import has_pitch, speaker_id

FORMATS = ("pt2", "onnx", "torchscript", "safetensors")
# The format a file name asks for when none is given (anything else: pt2).
SUFFIX_FORMATS = {".onnx": "onnx", ".ts": "torchscript", ".safetensors": "safetensors"}
ONNX_OPSET = 18


class _DeployedStudent(nn.Module):
    """The student's sampling path as one module: (feats (B, n_mels, F), z (B, 1, F * hop)) ->
    audio (B, F * hop). Noise is an input so that deployments choose their own RNG.

    Args:
        student: the student, in eval mode.
        speaker: the id every row is synthesised as (None for a student without speakers).
    """

    def __init__(self, student: nn.Module, speaker: int | None = None) -> None:
        super().__init__()
        self.student, self.speaker = student, speaker

    def _speakers(self, feats: Tensor) -> Tensor | None:
        """The fixed speaker's id for each of the B rows of `feats`: (B,) long, or None."""
        if self.speaker is None:
            return None
        return torch.full((feats.shape[0],), self.speaker, dtype=torch.long, device=feats.device)

    def forward(self, feats: Tensor, z: Tensor) -> Tensor:
        x, _ = self.student.flow(z, self.student.condition(feats, self._speakers(feats)))
        return x[:, 0]


class _DeployedPitchStudent(_DeployedStudent):
    """As `_DeployedStudent` for a pitch-conditioned student, with F0 (B, F) in Hz (0 =
    unvoiced) as a third input."""

    def forward(self, feats: Tensor, z: Tensor, f0: Tensor) -> Tensor:  # type: ignore[override]
        x, _ = self.student.flow(z, self.student.condition(feats, self._speakers(feats), f0))
        return x[:, 0]


def deployed_student(student: nn.Module, speaker: int | None = None) -> nn.Module:
    """The student (eval mode) wrapped as the deployed module of the module docstring, for
    speaker id `speaker` (None for a student without speakers)."""
    wrapper = _DeployedPitchStudent if has_pitch(student) else _DeployedStudent
    return wrapper(student.eval(), speaker)


def frame_multiple(student: nn.Module, hop_length: int) -> int:
    """The frame counts F a student takes are the multiples of this (its time folds)."""
    return math.lcm(hop_length, student.time_multiple) // hop_length


def example_inputs(
    student: nn.Module, features: FeatureConfig, frames: int, batch: int = 1, seed: int = 0
) -> tuple[Tensor, ...]:
    """(feats, z) or (feats, z, f0) of `frames` frames: random mels, unit noise, voiced F0."""
    generator = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, features.n_mels, frames, generator=generator) - 5.0
    z = torch.randn(batch, 1, frames * features.hop_length, generator=generator)
    if not has_pitch(student):
        return feats, z
    # A varying voiced contour with unvoiced frames: every branch of the excitation is used.
    f0 = torch.linspace(100.0, 300.0, frames).expand(batch, frames).clone()
    f0[:, : max(1, frames // 4)] = 0.0
    return feats, z, f0


def export_student(
    checkpoint: Path,
    out_path: Path,
    fmt: str | None = None,
    example_seconds: float = 1.0,
    speaker: str | None = None,
) -> list[Path]:
    """Write a checkpoint in deployable form.

    - "pt2": `torch.export` of the deployed student, batch and length dynamic
      (`torch.export.load(path).module()` runs it without wavflow).
    - "onnx": the same exported program for onnxruntime, opset `ONNX_OPSET` (onnxscript).
    - "torchscript": `torch.jit.trace` of the deployed student (`torch.jit.load`, also from
      LibTorch C++), for as long as torch keeps it: torch 2.13 deprecates `torch.jit.trace`.
    - "safetensors": the release pair of the module docstring (teachers too).

    Args:
        checkpoint: a wavflow checkpoint (.pt) or release (.safetensors).
        out_path: the file to write; a release also writes `out_path.with_suffix(".json")`.
        fmt: one of `FORMATS`; None: by the suffix of `out_path` (`SUFFIX_FORMATS`), else pt2.
        example_seconds: length of the example input the graph is traced with.
        speaker: for a multi-speaker student, the name (one of the checkpoint's speakers) whose
            voice the graph synthesises; None for a student without speakers.

    Returns:
        The files written.

    Raises:
        OptionError: an unknown format; for pt2/onnx/torchscript a speaker name a
            multi-speaker student does not know, none for such a student, or one for a student
            without speakers (the message lists the speakers); a speaker for safetensors.
        CheckpointError: a teacher for pt2/onnx/torchscript (sequential models are not
            exported).
    """
    fmt = fmt or SUFFIX_FORMATS.get(out_path.suffix.lower(), "pt2")
    if fmt not in FORMATS:
        raise OptionError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")
    if fmt == "safetensors" and speaker is not None:
        raise OptionError(
            f"--speaker {speaker}: a safetensors release keeps every speaker; --speaker picks "
            "one for pt2, onnx and torchscript"
        )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        return write_release(checkpoint, out_path)
    model, recipe, state = load_model(checkpoint)
    if state["kind"] != "student":
        raise CheckpointError(
            f"{checkpoint}: only students are exported, this is a {state['kind']}"
        )
    speaker_index = speaker_id(model, state.get("speakers", []), speaker)
    return [write_student(model, recipe.features, out_path, fmt, example_seconds, speaker_index)]


def write_student(
    student: nn.Module,
    features: FeatureConfig,
    out_path: Path,
    fmt: str,
    example_seconds: float = 1.0,
    speaker: int | None = None,
) -> Path:
    """Write a student (weight norm folded) as "pt2", "onnx" or "torchscript" (see
    `export_student`), synthesising speaker id `speaker` (None: a student without speakers)."""
    step = frame_multiple(student, features.hop_length)
    seconds_frames = example_seconds * features.sample_rate / features.hop_length
    frames = step * max(1, math.ceil(seconds_frames / step))
    # Batch 2: torch.export would take a batch of 1 for a constant.
    deployed = deployed_student(student, speaker)
    inputs = example_inputs(student, features, frames, batch=2)
    if fmt == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(deployed, inputs, check_trace=False)
        traced.save(str(out_path))
    elif fmt == "pt2":
        torch.export.save(export_program(deployed, inputs, step, features.hop_length), out_path)
    else:
        _export_onnx(deployed, inputs, step, features.hop_length, out_path)
    return out_path


def _export_onnx(
    deployed: nn.Module, inputs: tuple[Tensor, ...], step: int, hop: int, out_path: Path
) -> None:
    """The deployed student as ONNX, batch and frames (a multiple of `step`) dynamic."""
    program = export_program(deployed, inputs, step, hop)
    program = program.run_decompositions({torch.ops.aten.cummax.default: cummax_by_reduction})
    _drop_unused(program)
    torch.onnx.export(
        program,
        input_names=list(program.graph_signature.user_inputs),
        output_names=["audio"],
        f=str(out_path),
        opset_version=ONNX_OPSET,
        external_data=False,
    )


def export_program(
    deployed: nn.Module, inputs: tuple[Tensor, ...], step: int, hop: int
) -> torch.export.ExportedProgram:
    """`torch.export` of a deployed student (a copy: the caller's is left as it was) with the
    batch and the frames (a multiple of `step`; the noise `hop` times as long) dynamic."""
    batch, blocks = torch.export.Dim("batch"), torch.export.Dim("blocks")
    frames = step * blocks
    shapes: dict[str, dict[int, Any]] = {
        "feats": {0: batch, 2: frames},
        "z": {0: batch, 2: frames * hop},
    }
    if len(inputs) == 3:
        shapes["f0"] = {0: batch, 1: frames}
    deployed = copy.deepcopy(deployed)
    _freeze_flags(deployed)
    # Traced with gradients on: the inference caches of the flows (Invertible1x1Conv's W^-1,
    # reused while the parameters compare equal by value) are data-dependent, so they must
    # not be taken while exporting.
    for parameter in deployed.parameters():
        parameter.requires_grad_(True)
    with torch.enable_grad():
        return torch.export.export(deployed, inputs, dynamic_shapes=shapes)


def cummax_by_reduction(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """`torch.cummax` as a masked max over a (..., T, T) table, for ONNX (no cumulative max).

    values_t = max_{s <= t} x_s; indices_t = the last s <= t where it is reached (as torch).
    O(T^2) memory: fine for the frame-rate F0 that the pitch conditioner fills with it.
    """
    x = x.movedim(dim, -1)
    length = x.shape[-1]
    steps = torch.arange(length, device=x.device)
    later = steps[None, :] > steps[:, None]  # (T, T): entry (t, s) is s > t
    lowest = torch.finfo(x.dtype).min if x.is_floating_point() else torch.iinfo(x.dtype).min
    table = x[..., None, :].masked_fill(later, lowest)  # (..., T) -> (..., T, T), row t: x_<=t
    values = table.amax(dim=-1)
    # argmax returns the first maximum; searching the reversed rows gives the last, as torch.
    indices = length - 1 - table.flip(-1).argmax(dim=-1)
    return values.movedim(-1, dim), indices.movedim(-1, dim)


def _freeze_flags(module: nn.Module) -> None:
    """Turn 0-dim bool buffers (state flags such as ActNorm's `initialized`) into Python bools.

    They steer Python branches (`if not self.initialized`), which torch.export cannot trace on
    a buffer; in a trained model they are fixed, so they become constants of the graph.

    Raises:
        ValueError: a flag is still False (e.g. an ActNorm that never saw data).
    """
    for child in module.modules():
        for name, buffer in list(child.named_buffers(recurse=False)):
            if buffer.dtype != torch.bool or buffer.dim() != 0:
                continue
            if not buffer:
                raise CheckpointError(
                    f"{type(child).__name__}.{name} is False: this model has not run on data "
                    "yet (its data-dependent initialisation); export a trained checkpoint"
                )
            del child._buffers[name]
            setattr(child, name, True)


def _drop_unused(program: torch.export.ExportedProgram) -> None:
    """Remove what the audio does not depend on: the flows' log-determinants (slogdet of the
    1x1 convolutions, which ONNX lacks), kept alive only by export's dtype assertions."""
    graph = program.graph
    for node in list(graph.nodes):
        if node.target is torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
    graph.eliminate_dead_code()


def write_release(checkpoint: Path, out_path: Path) -> list[Path]:
    """Write `out_path` (.safetensors: the EMA weights, else the raw ones) and its .json (kind,
    speakers, resolved recipe, step), the release pair that `read_release` loads."""
    from safetensors.torch import save_file

    state = load_checkpoint(checkpoint)
    weights = state["ema"] if state.get("ema") else state["model"]
    # safetensors stores each tensor once: copies break views shared between entries.
    save_file({name: tensor.contiguous().clone() for name, tensor in weights.items()}, out_path)
    described = {
        "kind": state["kind"],
        "speakers": list(state.get("speakers", [])),
        "step": int(state.get("step", 0)),
        "config": state["config"],
    }
    meta_path = out_path.with_suffix(".json")
    meta_path.write_text(json.dumps(described, indent=2))
    return [out_path, meta_path]


def read_release(path: Path) -> dict[str, Any]:
    """A release pair as a checkpoint dict (version, kind, config, speakers, model, ema None).

    Raises:
        CheckpointError: the .json beside it is missing or unreadable, or the weights are.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise CheckpointError(f"{path}: a release needs both {path.name} and {meta_path.name}")
    try:
        described = json.loads(meta_path.read_text())
        weights = load_file(path)
    except (json.JSONDecodeError, SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable release ({error})") from error
    missing = {"kind", "config"} - set(described)
    if missing:
        raise CheckpointError(f"{meta_path}: not a wavflow release (missing {sorted(missing)})")
    return {"version": CHECKPOINT_VERSION, **described, "model": weights, "ema": None}

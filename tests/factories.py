"""Tiny models, recipes and inputs for the tests, built in one place so that every test file
shares them.

Test files import these directly (`from factories import tiny_teacher`); pytest puts tests/ on
the import path. Every factory seeds torch's global generator first, so a model's weights are a
function of its arguments. Models from plain arguments: `tiny_teacher`, `tiny_student`; from
recipes: `STUDENT_SIZES`, `TINY_STUDENTS`, `student_checkpoint`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from wavflow.checkpoint import build_student as build_recipe_student
from wavflow.checkpoint import checkpoint_state, save_checkpoint, speaker_count
from wavflow.config import Recipe, load_recipe
from wavflow.flows import STUDENTS, build_student
from wavflow.flows.base import FlowModel
from wavflow.nn.conditioning import ConditioningSpec
from wavflow.teacher import WaveNet

N_MELS, HOP = 8, 4
# WaveNet sizes: the tiny teacher's, and the smallest stack a test builds.
TINY_WAVENET = dict(
    n_layers=4, n_cycles=2, kernel_size=3, residual_channels=8, gate_channels=16, skip_channels=8
)
SMALLEST_WAVENET = dict(
    n_layers=2, n_cycles=1, kernel_size=3, residual_channels=4, gate_channels=8, skip_channels=4
)
_SPEC_SETTINGS = {spec_field.name for spec_field in dataclasses.fields(ConditioningSpec)}


def _split_spec(
    n_mels: int, hop_length: int, options: dict[str, object]
) -> tuple[ConditioningSpec, dict[str, object]]:
    """The `ConditioningSpec` of `n_mels`, `hop_length` and the spec's settings among `options`
    (n_speakers, n_harmonics, ...), and the other options (the model's own arguments)."""
    spec = ConditioningSpec(
        n_mels, hop_length, **{k: v for k, v in options.items() if k in _SPEC_SETTINGS}
    )
    return spec, {k: v for k, v in options.items() if k not in _SPEC_SETTINGS}


def tiny_teacher(
    output: str,
    dtype: torch.dtype = torch.float64,
    head_std: float | None = None,
    seed: int = 0,
    n_mels: int = N_MELS,
    hop_length: int = HOP,
    **options: object,
) -> WaveNet:
    """A WaveNet of `TINY_WAVENET` sizes with 3 mixtures, in train mode.

    Args:
        output: its head, "gaussian" or "mol".
        dtype: cast to it last, after any head weights are drawn (in float32).
        head_std: when given, the zero-initialised output conv's weight and bias are drawn from
            N(0, head_std^2), so the head's parameters depend on the input.
        seed: of torch's global generator, set before the model is built.
        n_mels, hop_length: the mel settings.
        **options: other `WaveNet` arguments, sizes included (they replace `TINY_WAVENET`'s),
            and other settings of its `ConditioningSpec`.
    """
    torch.manual_seed(seed)
    spec, arguments = _split_spec(n_mels, hop_length, TINY_WAVENET | {"n_mixtures": 3} | options)
    model = WaveNet(spec, output=output, **arguments)
    if head_std is not None:
        with torch.no_grad():
            model.stack.head_out.weight.normal_(0.0, head_std)
            model.stack.head_out.bias.normal_(0.0, head_std)
    return model.to(dtype)


def tiny_student(
    kind: str,
    n_speakers: int = 0,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    n_mels: int = N_MELS,
    hop_length: int = HOP,
    **options: object,
) -> FlowModel:
    """The student `kind` at its "tiny" preset, updated by `options` (sizes and settings of its
    `ConditioningSpec`), in train mode, its output convs at zero (each coupling and IAF layer
    the identity), cast to `dtype`."""
    torch.manual_seed(seed)
    options = STUDENTS[kind].PRESETS["tiny"] | options | {"n_speakers": n_speakers}
    spec, sizes = _split_spec(n_mels, hop_length, options)
    return build_student(kind, spec, **sizes).to(dtype)


def mel_and_f0(
    model: WaveNet, batch: int, frames: int, generator: torch.Generator, unvoiced: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mels (B, N_MELS, F) about -2 +- 2 in the model's dtype and, for a pitch model, F0 (B, F)
    uniform in 100-300 Hz with frame `unvoiced` at 0 (None without pitch)."""
    dtype = model.stack.input.weight.dtype
    feats = torch.randn(batch, N_MELS, frames, generator=generator, dtype=dtype) * 2 - 2
    if not model.conditioner.n_harmonics:
        return feats, None
    f0 = torch.rand(batch, frames, generator=generator, dtype=dtype) * 200 + 100
    f0[:, unvoiced] = 0.0
    return feats, f0


def perturbed(model: nn.Module, std: float, seed: int = 5) -> nn.Module:
    """`model` with N(0, std^2) noise added to every parameter (in place): random weights
    everywhere, since zero-initialised output convs make every flow layer the identity."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(std * torch.randn_like(parameter))
    return model


# Recipe overrides of a tiny student of each kind (the sizes the training tests train).
STUDENT_SIZES = {
    "iaf": [
        "student.iaf.flow_layers=[2, 2]",
        "student.iaf.layers_per_cycle=2",
        "student.iaf.channels=8",
    ],
    "waveglow": [
        "student.waveglow.n_flows=2",
        "student.waveglow.n_layers=2",
        "student.waveglow.channels=8",
        "student.waveglow.group=4",
        "student.waveglow.early_every=4",
    ],
    "flowavenet": [
        "student.flowavenet.n_blocks=2",
        "student.flowavenet.flows_per_block=2",
        "student.flowavenet.channels=8",
        "student.flowavenet.blocks_per_split=1",
    ],
    "squeezewave": [
        "student.squeezewave.n_flows=2",
        "student.squeezewave.fold=64",
        "student.squeezewave.channels=8",
        "student.squeezewave.n_layers=2",
        "student.squeezewave.early_channels=4",
    ],
}
# Recipe overrides of the synthesis tests' students, kind included: FloWaveNet with 2-layer
# stacks, and SqueezeWave with pitch, folding 16 samples.
TINY_STUDENTS = {
    "iaf": ['student.kind="iaf"', *STUDENT_SIZES["iaf"]],
    "waveglow": ['student.kind="waveglow"', *STUDENT_SIZES["waveglow"]],
    "iaf_spectral": [  # the output filtered by the mel's envelope (`SpectralEnvelope`)
        'student.kind="iaf"',
        *STUDENT_SIZES["iaf"],
        "student.iaf.envelope=true",
        "student.iaf.envelope_taps=64",
    ],
    "flowavenet": [
        'student.kind="flowavenet"',
        *STUDENT_SIZES["flowavenet"],
        "student.flowavenet.n_layers=2",
    ],
    "squeezewave_pitch": [
        'student.kind="squeezewave"',
        'conditioning.pitch="harmonic"',
        "conditioning.n_harmonics=3",
        "student.squeezewave.n_flows=2",
        "student.squeezewave.n_layers=2",
        "student.squeezewave.channels=8",
        "student.squeezewave.fold=16",
        "student.squeezewave.early_every=4",
    ],
}
# The mel settings of recipes/tiny_teacher.toml for recipes built from defaults: 20 bands, hop 64.
TINY_FEATURES = [
    "features.n_mels=20",
    "features.hop_length=64",
    "features.n_fft=256",
    "features.win_length=256",
]
# A recipe whose models condition on speakers (when the data has two or more).
WITH_SPEAKERS = ["conditioning.speakers=true"]


def pitch_f0(recipe: Recipe, batch: int, frames: int) -> torch.Tensor | None:
    """F0 (batch, frames) Hz for pitch students: unvoiced first frames, then 100-300 Hz."""
    if not recipe.conditioning.harmonics:
        return None
    voiced = torch.linspace(100, 300, frames - frames // 4).expand(batch, -1)
    return torch.cat([torch.zeros(batch, frames // 4), voiced], 1)


def save_model(
    folder: Path, kind: str, recipe: Recipe, model: nn.Module, speakers: Sequence[str] = ("spk0",)
) -> str:
    """`model` saved as the checkpoint `folder/<kind>.pt` of `kind` "teacher" or "student"."""
    path = folder / f"{kind}.pt"
    save_checkpoint(path, checkpoint_state(kind, recipe, model, list(speakers), step=0))
    return str(path)


def student_checkpoint(
    kind: str,
    folder: Path,
    std: float = 0.02,
    speakers: Sequence[str] = ("spk0",),
    overrides: Sequence[str] = (),
) -> tuple[Recipe, FlowModel, str]:
    """A tiny student of `TINY_STUDENTS[kind]` at `TINY_FEATURES`, saved as `folder/student.pt`.

    Its ActNorms are initialised on random mels first, as by training's first batch, then it
    is `perturbed` by `std`. It conditions on `speakers` when `overrides` include
    `WITH_SPEAKERS` and there are two or more.

    Returns:
        (its recipe, the model in train mode, the checkpoint's path).
    """
    recipe = load_recipe(None, [*TINY_STUDENTS[kind], *TINY_FEATURES, *overrides])
    torch.manual_seed(0)
    model = build_recipe_student(recipe, speaker_count(recipe, list(speakers)))
    ids = torch.zeros(2, dtype=torch.long) if model.capabilities.n_speakers else None
    with torch.no_grad():  # data-dependent initialisation (FloWaveNet's ActNorm), as training
        model.sample(model.condition(torch.randn(2, 20, 16), ids, pitch_f0(recipe, 2, 16)))
    model = perturbed(model, std)
    return recipe, model, save_model(folder, "student", recipe, model, speakers)

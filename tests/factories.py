"""Tiny models and inputs for the tests, built in one place so that every test file shares them.

Test files import these directly (`from factories import tiny_teacher`); pytest puts tests/ on
the import path. Every factory seeds torch's global generator first, so a model's weights are a
function of its arguments.
"""

from __future__ import annotations

import torch

from wavflow.flows import STUDENTS, build_student
from wavflow.flows.base import FlowModel
from wavflow.teacher import WaveNet

N_MELS, HOP = 8, 4
# WaveNet sizes: the tiny teacher's, and the smallest stack a test builds.
TINY_WAVENET = dict(
    n_layers=4, n_cycles=2, kernel_size=3, residual_channels=8, gate_channels=16, skip_channels=8
)
SMALLEST_WAVENET = dict(
    n_layers=2, n_cycles=1, kernel_size=3, residual_channels=4, gate_channels=8, skip_channels=4
)


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
        **options: other `WaveNet` arguments, sizes included (they replace `TINY_WAVENET`'s).
    """
    torch.manual_seed(seed)
    arguments = TINY_WAVENET | {"n_mixtures": 3} | options
    model = WaveNet(n_mels, hop_length, output=output, **arguments)
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
    """The student `kind` at its "tiny" preset, updated by `options`, in train mode, its
    output convs at zero (each coupling and IAF layer the identity), cast to `dtype`."""
    torch.manual_seed(seed)
    sizes = STUDENTS[kind].PRESETS["tiny"] | options
    return build_student(kind, n_mels, hop_length, n_speakers, **sizes).to(dtype)


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

"""Parallel flow students: one Flow interface, the IAF student and three coupling students."""

from __future__ import annotations

import inspect

from wavflow.config import FeatureConfig
from wavflow.flows.base import (
    Flow,
    FlowModel,
    Inverse,
    SequentialFlow,
    StandardGaussian,
    StandardLogistic,
    make_base,
)
from wavflow.flows.flowavenet import FloWaveNet
from wavflow.flows.iaf import IAFFlow, IAFStudent
from wavflow.flows.layers import (
    ActNorm,
    AffineCoupling,
    EnvelopeScale,
    FactorOut,
    HarmonicShift,
    Invertible1x1Conv,
    OutputScale,
    Permute,
    Reverse,
    Squeeze,
    SwapHalves,
)
from wavflow.flows.source import HarmonicSource
from wavflow.flows.spectral_envelope import SpectralEnvelope
from wavflow.flows.squeezewave import DepthwiseWaveNet, FrameRateConditioner, SqueezeWave
from wavflow.flows.waveglow import WaveGlow
from wavflow.nn.conditioning import ConditioningSpec

STUDENTS: dict[str, type[FlowModel]] = {
    "iaf": IAFStudent,
    "waveglow": WaveGlow,
    "flowavenet": FloWaveNet,
    "squeezewave": SqueezeWave,
}

_SHARED_ARGS = ("self", "spec", "features")


def student_sizes(kind: str) -> list[str]:
    """The size arguments `build_student` accepts for `kind` (everything but the spec and the
    mel settings)."""
    if kind not in STUDENTS:
        raise ValueError(f"unknown student kind {kind!r}; valid kinds: {', '.join(STUDENTS)}")
    parameters = inspect.signature(STUDENTS[kind].__init__).parameters
    return [name for name in parameters if name not in _SHARED_ARGS]


def build_student(
    kind: str,
    spec: ConditioningSpec,
    features: FeatureConfig | None = None,
    **sizes: object,
) -> FlowModel:
    """Builds the student `kind` (a key of `STUDENTS`) from plain arguments.

    Args:
        kind: a key of `STUDENTS`.
        spec: what the student is conditioned on (`ConditioningSpec`).
        features: the mel settings, for students that declare `takes_features`.
        **sizes: the model's size arguments, e.g. `**IAFStudent.PRESETS["tiny"]`.

    Returns:
        The new student (weight-normalised, ActNorms not yet initialised).

    Raises:
        ValueError: unknown kind, or a size key the student does not take.
    """
    valid = student_sizes(kind)
    for key in sizes:
        if key not in valid:
            raise ValueError(
                f"{STUDENTS[kind].__name__} has no size {key!r}; valid sizes: {', '.join(valid)}"
            )
    if STUDENTS[kind].takes_features:
        sizes["features"] = features
    return STUDENTS[kind](spec, **sizes)


__all__ = [
    "STUDENTS",
    "ActNorm",
    "AffineCoupling",
    "DepthwiseWaveNet",
    "EnvelopeScale",
    "SpectralEnvelope",
    "FactorOut",
    "FloWaveNet",
    "Flow",
    "FlowModel",
    "HarmonicSource",
    "FrameRateConditioner",
    "HarmonicShift",
    "IAFFlow",
    "IAFStudent",
    "Inverse",
    "Invertible1x1Conv",
    "OutputScale",
    "Permute",
    "Reverse",
    "SequentialFlow",
    "SqueezeWave",
    "Squeeze",
    "StandardGaussian",
    "StandardLogistic",
    "SwapHalves",
    "WaveGlow",
    "build_student",
    "make_base",
    "student_sizes",
]

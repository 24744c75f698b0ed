"""What a vocoder is, declared by the model: the one interface that consumers (synthesis,
evaluation, distillation, export) ask instead of probing types or attributes.

Both the teacher (`WaveNet`) and every student (`FlowModel`) satisfy `Vocoder`: they declare
`capabilities`, a `Capabilities` value, and synthesise through one call. A consumer that needs
to know something new about a model adds a field here and has each model declare it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class Capabilities:
    """A vocoder's declared properties.

    Attributes:
        sequential: generates one sample at a time (`generate(cond, state)`, the teacher);
            otherwise one parallel pass of a flow (`sample(cond)`).
        causal: x_t depends on the past only (of x for the teacher, of z for the IAF), so
            synthesis in chunks needs past context and `lookahead` only.
        receptive_field: samples of past context that one output depends on (None: not stated,
            e.g. a coupling flow's stack of non-causal convs).
        lookahead: audio samples of future conditioning that one output reads (the mel
            upsampler's reach) for a causal model; None for a non-causal one, whose future
            context synthesis sizes like its past.
        time_multiple: T must be a multiple of this (the product of a flow's time folds).
        chunk_seconds: the chunk length synthesis runs this model at (its activations stay in
            cache); None: no preference.
        takes_pitch: `condition` needs F0 (a harmonic excitation); mels without it get F0 from
            the model's F0 predictor.
        n_speakers: speakers of its embedding (0: no speaker conditioning; ids in [0, n)).
        location_scale: x_t = loc_t + exp(log_scale_t) z_t with loc and log_scale from z_<t,
            offered by `rsample_with_stats`, so that the KL to a Gaussian teacher has a closed
            form per step (the IAF students).
    """

    sequential: bool
    causal: bool
    receptive_field: int | None
    lookahead: int | None
    time_multiple: int
    chunk_seconds: float | None
    takes_pitch: bool
    n_speakers: int
    location_scale: bool


class Vocoder(Protocol):
    """What synthesis, evaluation, validation and the benchmark may call on any model."""

    @property
    def capabilities(self) -> Capabilities: ...

    def condition(
        self, feats: Tensor, speaker: Tensor | None = None, f0: Tensor | None = None
    ) -> Tensor:
        """Mels (B, n_mels, F), speaker ids (B,) and F0 (B, F) Hz -> the model's cond."""
        ...

    def synthesize(
        self,
        cond: Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        state: Any = None,
    ) -> tuple[Tensor, Any]:
        """Audio (B, 1, T) for `cond` and the state to continue from (None where the model
        keeps none: a parallel student's chunks are exact from context, `wavflow.streaming`)."""
        ...

"""The explicit incremental state of cached WaveNet generation.

As in EnCodec's streaming modules, the state is a value that generation takes and returns, so
that an utterance can be generated chunk by chunk and continue exactly where it stopped:

    state = cached.initial_state(batch)
    x1, state = teacher.generate(cond[..., :T1], state=state)
    x2, state = teacher.generate(cond[..., T1:], state=state)  # == one call on all of cond

References:
    Défossez et al., "High Fidelity Neural Audio Compression", arXiv:2210.13438 (EnCodec).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GenerationState:
    """Everything step `p` of a causal stack reads from steps before it, for B rows.

    Values live in the folded units of `FoldedStack` (u_l = 2^(l/2) h_l), so the eager step and
    the C++ kernel read and write the same state.

    Attributes:
        rings: per layer l, (B, (K - 1) d_l + 1, R): slot s % C_l holds u_l at step s, C_l the
            ring's size; the (K - 1) d_l steps before `position` are the ones step p reads.
        inputs: (B, K_in) the stack's last K_in inputs x_{p - K_in} .. x_{p - 1} (y units for a
            teacher with the envelope), zero before the utterance starts.
        position: (B,) long, on the CPU: steps generated so far per row (p).
        history: (B, order) float64, the last samples x_{p - order} .. x_{p - 1}, for a
            teacher whose location adds a linear prediction from them (`WaveNet` with
            `lpc_order`); None otherwise.
    """

    rings: list[Tensor]
    inputs: Tensor
    position: Tensor
    history: Tensor | None = None

    @classmethod
    def zeros(
        cls,
        batch: int,
        capacities: list[int],
        residual_channels: int,
        input_kernel: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> GenerationState:
        """The state before the first sample: every past value is 0 (the stack's zero padding)."""
        return cls(
            rings=[
                torch.zeros(batch, cap, residual_channels, device=device, dtype=dtype)
                for cap in capacities
            ],
            inputs=torch.zeros(batch, input_kernel, device=device, dtype=dtype),
            position=torch.zeros(batch, dtype=torch.long),
        )

    @property
    def batch(self) -> int:
        """Rows B."""
        return self.inputs.shape[0]

    def clone(self) -> GenerationState:
        """An independent copy (generation never modifies the state it is given)."""
        return GenerationState(
            [ring.clone() for ring in self.rings],
            self.inputs.clone(),
            self.position.clone(),
            None if self.history is None else self.history.clone(),
        )

    def select(self, rows: Tensor) -> GenerationState:
        """The state of the given rows (B',), in that order."""
        device_rows = rows.to(self.inputs.device)
        return GenerationState(
            [ring.index_select(0, device_rows) for ring in self.rings],
            self.inputs.index_select(0, device_rows),
            self.position.index_select(0, rows.cpu()),
            None if self.history is None else self.history.index_select(0, device_rows),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype) -> GenerationState:
        """The rings and inputs on `device` in `dtype` (positions stay on the CPU, the history
        in float64)."""
        return GenerationState(
            [ring.to(device, dtype) for ring in self.rings],
            self.inputs.to(device, dtype),
            self.position,
            None if self.history is None else self.history.to(device),
        )

    def push(self, x: Tensor) -> GenerationState:
        """After a `step`: the sample it produced (B,), the stack's input at the next step, enters
        the input window (in place; the state is returned)."""
        self.inputs[:, :-1] = self.inputs[:, 1:].clone()
        self.inputs[:, -1] = x
        self.position += 1
        return self

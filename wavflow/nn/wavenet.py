"""The gated residual WaveNet stack shared by the teacher, IAF flows and coupling transforms.

References:
    van den Oord et al., "WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wavflow.nn.conv import PaddedConv1d, ZeroConv1d
from wavflow.nn.precision import full_precision


class ResidualBlock(nn.Module):
    """One gated layer: z = tanh(W_f * x + V_f c) * sigmoid(W_g * x + V_g c).

    The gate conv maps residual -> gate channels (the first half feeds tanh, the second sigmoid);
    a 1x1 conv maps the gate_channels / 2 gated units to residual + skip channels.

    Args:
        residual_channels: channels R of the residual stream.
        gate_channels: channels G of the dilated conv output (G / 2 gated units).
        skip_channels: channels S of the skip output.
        cond_channels: channels of the conditioning `cond` at audio rate (0: unconditioned).
        kernel_size: taps of the dilated conv.
        dilation: its dilation.
        causal: left-pad (autoregressive) or centre the dilated conv.
    """

    def __init__(
        self,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        cond_channels: int,
        kernel_size: int,
        dilation: int,
        causal: bool,
    ) -> None:
        super().__init__()
        if gate_channels % 2:
            raise ValueError(f"gate_channels must be even, got {gate_channels}")
        self.residual_channels = residual_channels
        self.dilated = PaddedConv1d(
            residual_channels, gate_channels, kernel_size, dilation=dilation, causal=causal
        )
        self.cond = (
            PaddedConv1d(cond_channels, gate_channels, bias=False) if cond_channels else None
        )
        self.out = PaddedConv1d(gate_channels // 2, residual_channels + skip_channels)

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, R, T), (B, C, T) -> residual output (B, R, T), skip (B, S, T)."""
        gates = self.dilated(x)
        if self.cond is not None:
            gates = gates + self.cond(cond)
        filt, gate = gates.chunk(2, dim=1)
        out = self.out(torch.tanh(filt) * torch.sigmoid(gate))
        residual, skip = out.split(
            [self.residual_channels, out.shape[1] - self.residual_channels], 1
        )
        # sqrt(1/2) keeps the residual stream's variance from growing with depth.
        return (x + residual) * math.sqrt(0.5), skip


class WaveNetStack(nn.Module):
    """Input conv, `n_layers` gated residual blocks, and a skip-sum head.

    Dilations cycle 1, 2, 4, ..., 2^(n_layers / n_cycles - 1), `n_cycles` times.

    Args:
        in_channels: channels of the input (1 for raw audio).
        out_channels: channels of the output (e.g. distribution parameters).
        n_layers: number of residual blocks.
        n_cycles: number of dilation cycles (must divide n_layers).
        kernel_size: taps of each dilated conv.
        residual_channels, gate_channels, skip_channels: widths, see `ResidualBlock`.
        cond_channels: channels of the audio-rate conditioning (0: none).
        causal: causal convs everywhere (teacher, IAF) or centred ones (coupling transforms).
        input_kernel_size: taps of the input conv (causal when `causal`).
        zero_output: start the last conv at zero so a flow layer begins as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_layers: int,
        n_cycles: int,
        kernel_size: int,
        residual_channels: int,
        gate_channels: int,
        skip_channels: int,
        cond_channels: int = 0,
        causal: bool = True,
        input_kernel_size: int = 1,
        zero_output: bool = False,
    ) -> None:
        super().__init__()
        if n_layers % n_cycles:
            raise ValueError(f"n_cycles ({n_cycles}) must divide n_layers ({n_layers})")
        per_cycle = n_layers // n_cycles
        self.dilations = [2 ** (i % per_cycle) for i in range(n_layers)]
        self.input = PaddedConv1d(in_channels, residual_channels, input_kernel_size, causal=causal)
        self.blocks = nn.ModuleList(
            ResidualBlock(
                residual_channels,
                gate_channels,
                skip_channels,
                cond_channels,
                kernel_size,
                d,
                causal,
            )
            for d in self.dilations
        )
        self.head_hidden = PaddedConv1d(skip_channels, skip_channels)
        self.head_out = (
            ZeroConv1d(skip_channels, out_channels)
            if zero_output
            else PaddedConv1d(skip_channels, out_channels)
        )

    @property
    def receptive_field(self) -> int:
        """Samples of input that one output sees (current one included), for a causal stack."""
        return 1 + self.input.context + sum(block.dilated.context for block in self.blocks)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, in_channels, T), (B, cond_channels, T) -> (B, out_channels, T).

        Under autocast the blocks run in bfloat16, but the input conv (which reads audio) and the
        output conv (a head's parameters) run in float32 (`full_precision`).
        """
        h = full_precision(self.input, x)
        skip_sum = 0.0
        for block in self.blocks:
            h, skip = block(h, cond)
            skip_sum = skip_sum + skip
        # sqrt(1/L) keeps the skip sum at unit scale whatever the depth.
        hidden = torch.relu(
            self.head_hidden(torch.relu(skip_sum * math.sqrt(1 / len(self.blocks))))
        )
        return full_precision(self.head_out, hidden)

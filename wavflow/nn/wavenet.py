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

# Samples per tile of the fused inference path: a tile's activations at 64-128 channels
# (2-4 MB) stay in a 2-4 MB L2; 16,384 ran 30% faster per sample than 56,000 (a 2 s chunk
# and its context) at Parallel WaveNet size on a 2-core Xeon, 4,096 no faster than 16,384.
FUSED_TILE = 8192


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

    def fused_gated_units(
        self,
        residual: Tensor,
        left: int,
        length: int,
        cond: Tensor | None,
        scale: float,
        scratch: FusedScratch,
    ) -> Tensor:
        """The gated units (G / 2, T) of `forward`, from the unscaled residual stream.

        Args:
            residual: (R, left + T + right) the stream u (the input is scale * u) between
                zero margins of `left` and `right` samples, wide enough for every tap.
            left: samples of margin before the stream.
            length: T.
            cond: (C, T) conditioning, or None.
            scale: a with h = a * u.
            scratch: where the gates and units are written (a view of it is returned).
        """
        conv = self.dilated
        gates = scratch.view("gates", conv.out_channels, length)
        bias = conv.bias[:, None].expand(-1, length)
        if self.cond is None:
            gates.copy_(bias)
        else:
            torch.addmm(bias, self.cond.weight[:, :, 0], cond, out=gates)
        taps = conv.weight * scale
        start = left - conv.padding_lr[0]
        for j in range(conv.kernel_size[0]):
            offset = start + j * conv.dilation[0]
            gates.addmm_(taps[:, :, j], residual[:, offset : offset + length])
        filt, gate = gates.chunk(2, dim=0)
        units = scratch.view("units", filt.shape[0], length)
        return torch.tanh(filt, out=units).mul_(gate.sigmoid_())

    def accumulate_skip(self, units: Tensor, skip: Tensor) -> None:
        """skip += W_s units in place (S, T); the skip biases are added once, by the stack."""
        skip.addmm_(self.out.weight[self.residual_channels :, :, 0], units)

    @property
    def skip_bias(self) -> Tensor:
        """b_s (S,)."""
        return self.out.bias[self.residual_channels :]

    def accumulate_residual(self, units: Tensor, stream: Tensor, scale: float) -> None:
        """u += (W_r units + b_r) / a in place: h_{k+1} = sqrt(1/2) (h_k + r) in unscaled form."""
        weight = self.out.weight[: self.residual_channels, :, 0] / scale
        bias = self.out.bias[: self.residual_channels, None] / scale
        stream.addmm_(weight, units).add_(bias)


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
        if _fused_inference_applies(x):
            return self._fused_forward(x, cond)
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

    def _fused_forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """`forward` for inference on the CPU, the same maths in an order that runs faster.

        Each utterance goes through alone, so a batch costs what its items cost one by one
        (a (B, C, T) activation falls out of cache where a (C, T) one may not). Each layer is
        a few in-place matrix products on 2-D views instead of padded convolutions plus
        separate adds:

            gates = b + V c + sum_j W_j h[t + o_j]     (o_j: the taps' offsets; one addmm each)
            g = tanh(gates_f) * sigmoid(gates_g)
            u += (W_r g + b_r) / a_k,   skip += W_s g

        The residual stream is kept unscaled: h_k = a_k u_k with a_k = sqrt(1/2)^k, the scale
        folded into each layer's tap weights, so the residual update is one accumulation into
        a buffer that carries the convolutions' zero padding on both sides, and the dilated taps
        read views of it without a copy. Outputs equal `forward`'s up to float rounding.
        """
        outputs = [
            self._fused_item(x[i : i + 1], cond if cond is None else cond[i])
            for i in range(x.shape[0])
        ]
        return torch.cat(outputs)

    def _fused_item(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """One utterance: x (1, in_channels, T), cond (cond_channels, T) -> (1, out_channels, T).

        A causal stack runs in tiles of `FUSED_TILE` samples, all layers per tile, each layer
        keeping the last (K - 1) * D samples of its input for the next tile: the activations of
        a tile stay in cache and no sample is computed twice. A centred stack (whose taps read
        the future) runs in one tile.
        """
        length = x.shape[-1]
        h0 = full_precision(self.input, x)[0]
        tile = FUSED_TILE if self.blocks[0].dilated.causal else length
        histories = [h0.new_zeros(h0.shape[0], b.dilated.padding_lr[0]) for b in self.blocks]
        scratch = FusedScratch(h0)
        skip_bias = torch.stack([block.skip_bias for block in self.blocks]).sum(0)
        outputs = []
        for start in range(0, length, tile):
            stop = min(start + tile, length)
            part = None if cond is None else cond[:, start:stop]
            outputs.append(self._fused_tile(h0[:, start:stop], part, histories, skip_bias, scratch))
        return torch.cat(outputs, dim=-1)

    def _fused_tile(
        self,
        h0: Tensor,
        cond: Tensor | None,
        histories: list[Tensor],
        skip_bias: Tensor,
        scratch: FusedScratch,
    ) -> Tensor:
        """h0 (R, N) the input conv's output, cond (C, N) -> (1, out_channels, N).

        `histories[k]` (R, (K - 1) * D) holds block k's unscaled input before this tile (zeros
        at the start) and is replaced by its last samples including this tile. Every part of
        the residual buffer a layer reads is written first in this tile (its history, the
        stream) or is a centred stack's right margin, zero since a centred stack has one tile.
        `skip_bias` (S,) is the sum of the blocks' skip biases.
        """
        length = h0.shape[-1]
        left = max(block.dilated.padding_lr[0] for block in self.blocks)
        right = max(block.dilated.padding_lr[1] for block in self.blocks)
        residual = scratch.view("residual", h0.shape[0], left + length + right)
        stream = residual[:, left : left + length]
        stream.copy_(h0)
        skip = scratch.view("skip", skip_bias.shape[0], length).copy_(skip_bias[:, None])
        scale = 1.0  # a_k
        last = len(self.blocks) - 1
        for k, block in enumerate(self.blocks):
            past = histories[k].shape[-1]
            if past:
                residual[:, left - past : left].copy_(histories[k])
                histories[k] = residual[:, left + length - past : left + length].clone()
            units = block.fused_gated_units(residual, left, length, cond, scale, scratch)
            block.accumulate_skip(units, skip)
            if k < last:  # the last block's residual output is never read
                block.accumulate_residual(units, stream, scale)
                scale *= math.sqrt(0.5)
        skip = torch.relu(skip * math.sqrt(1 / len(self.blocks)))[None]
        hidden = torch.relu(self.head_hidden(skip))
        return full_precision(self.head_out, hidden)


class FusedScratch:
    """Buffers of the fused path, allocated once per utterance and reused by every tile and
    layer: a fresh multi-megabyte tensor per operation comes from the system as new pages,
    whose first touch (page faults) cost as much as the products that filled them.

    Args:
        like: a tensor of the dtype and device wanted.
    """

    def __init__(self, like: Tensor) -> None:
        self._like = like
        self._flat: dict[str, Tensor] = {}

    def view(self, name: str, rows: int, length: int) -> Tensor:
        """A contiguous (rows, length) view of buffer `name`, which grows to fit (its contents
        are whatever the last user left: the caller writes before it reads)."""
        size = rows * length
        if name not in self._flat or self._flat[name].numel() < size:
            self._flat[name] = self._like.new_zeros(size)
        return self._flat[name][:size].view(rows, length)


def _fused_inference_applies(x: Tensor) -> bool:
    """Whether `WaveNetStack.forward` takes its fused path: under `torch.inference_mode` (no
    graph to keep, so in-place updates are allowed), on the CPU (where the per-utterance order
    keeps activations in cache; a GPU runs the batched convolutions faster), outside autocast
    (whose casts the in-place products would bypass)."""
    return (
        torch.is_inference_mode_enabled()
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
    )

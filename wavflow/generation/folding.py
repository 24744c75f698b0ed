"""Weight folding: a `WaveNetStack`'s effective weights and constants as step-ready matrices.

Both generation backends (the eager step and the C++ kernel) compute the folded block below;
this module is the one place that states how a trained stack maps onto it.

References:
    Paine et al., "Fast Wavenet Generation Algorithm", arXiv:1611.09482.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from wavflow.nn.wavenet import WaveNetStack


@dataclass
class FoldedStack:
    """The stack's weights, folded for step-by-step use, as (in, out) matrices (float64).

    With u_l = 2^(l/2) h_l the residual update is u_{l+1} = u_l + 2^(l/2) (W_r z + b_r), so the
    sqrt(1/2) scale moves into the weights; z' = tanh(a) (1 + tanh(b / 2)) = 2 z, so the gate's
    halving moves into the rows that read z'.

    Shapes: L layers, K taps, R residual, G gate, H = G / 2 gated units, S skip, C cond, P params.
    """

    dilations: list[int]
    input_weight: Tensor  # (K_in, R): tap j reads x_{t - K_in + j}
    input_bias: Tensor  # (R,)
    dilated: Tensor  # (L, K * R, G): tap k reads u_l at t - (K - 1 - k) d
    cond: Tensor  # (C, L * G) or (0, L * G) without conditioning
    gate_bias: Tensor  # (L * G,)
    residual: Tensor  # (L, H, R), reads z'
    residual_bias: Tensor  # (L, R)
    skip: Tensor  # (L * H, S), reads z' of all layers; includes the sqrt(1 / L) scale
    skip_bias: Tensor  # (S,)
    hidden: Tensor  # (S, S)
    hidden_bias: Tensor  # (S,)
    out: Tensor  # (S, P)
    out_bias: Tensor  # (P,)

    @property
    def sizes(self) -> tuple[int, int, int, int, int, int]:
        """(L, K, R, G, S, P)."""
        n_layers, taps_by_r, gates = self.dilated.shape
        residual = self.input_bias.numel()
        return (
            n_layers,
            taps_by_r // residual,
            residual,
            gates,
            self.skip.shape[1],
            self.out.shape[1],
        )


def fold_stack(stack: WaveNetStack) -> FoldedStack:
    """Read the effective weights of a causal, one-input-channel stack and fold its constants.

    Args:
        stack: the `WaveNetStack` (weight norm or not); it is not modified.

    Returns:
        A `FoldedStack` in float64 on the CPU.
    """
    if stack.input.in_channels != 1 or not stack.input.causal:
        raise ValueError("incremental generation needs a causal stack with one input channel")

    def weight(conv: torch.nn.Conv1d) -> Tensor:
        return conv.weight.detach().to("cpu", torch.float64)  # effective weight under weight norm

    def bias(conv: torch.nn.Conv1d) -> Tensor:
        if conv.bias is None:
            return torch.zeros(conv.out_channels, dtype=torch.float64)
        return conv.bias.detach().to("cpu", torch.float64)

    n_layers = len(stack.blocks)
    residual_channels = stack.input.out_channels
    gate_channels = stack.blocks[0].dilated.out_channels
    half = gate_channels // 2
    skip_scale = math.sqrt(1.0 / n_layers)
    # Halve the rows feeding sigmoid: sigmoid(b) = (1 + tanh(b / 2)) / 2.
    gate_scale = torch.ones(gate_channels, dtype=torch.float64)
    gate_scale[half:] = 0.5

    dilated, conds, gate_biases, residual, residual_bias, skip = [], [], [], [], [], []
    skip_bias = 0.0
    for index, block in enumerate(stack.blocks):
        if not block.dilated.causal:
            raise ValueError("incremental generation needs causal dilated convs")
        alpha = 2.0 ** (index / 2)  # u_l = alpha h_l
        w = weight(block.dilated)  # (G, R, K)
        # (G, R, K) -> (K, R, G) -> (K * R, G), and u_l = alpha h_l undone on the input side.
        dilated.append(w.permute(2, 1, 0).reshape(-1, gate_channels) * gate_scale / alpha)
        gate_biases.append(bias(block.dilated) * gate_scale)
        if block.cond is not None:
            conds.append(weight(block.cond)[:, :, 0].T * gate_scale)  # (C, G)
        w_out = weight(block.out)[:, :, 0]  # (R + S, H)
        b_out = bias(block.out)
        # 0.5: the step computes z' = 2 z.
        residual.append(0.5 * alpha * w_out[:residual_channels].T)
        residual_bias.append(alpha * b_out[:residual_channels])
        skip.append(0.5 * skip_scale * w_out[residual_channels:].T)
        skip_bias = skip_bias + skip_scale * b_out[residual_channels:]
    return FoldedStack(
        dilations=list(stack.dilations),
        input_weight=weight(stack.input)[:, 0, :].T.contiguous(),
        input_bias=bias(stack.input),
        dilated=torch.stack(dilated),
        cond=torch.cat(conds, 1) if conds else torch.zeros(0, n_layers * half * 2).double(),
        gate_bias=torch.cat(gate_biases),
        residual=torch.stack(residual),
        residual_bias=torch.stack(residual_bias),
        skip=torch.cat(skip),
        skip_bias=skip_bias,
        hidden=weight(stack.head_hidden)[:, :, 0].T.contiguous(),
        hidden_bias=bias(stack.head_hidden),
        out=weight(stack.head_out)[:, :, 0].T.contiguous(),
        out_bias=bias(stack.head_out),
    )


def quantize_rows(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int8 quantisation of an (..., K, N) matrix: w[k, n] ~ scale[k] q[k, n].

    One scale per input row k (max |w[k, :]| / 127) rather than per output column: the scale
    then multiplies the activation that row reads, once per row, and the kernel's panels stay
    plain integers. Returns q (..., K, N) int8 and scale (..., K) float32 (1 for an all-zero
    row, such as padding).
    """
    peak = matrix.abs().amax(dim=-1)
    scale = torch.where(peak > 0, peak / 127.0, torch.ones_like(peak))
    q = torch.round(matrix / scale.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return q, scale.to(torch.float32)


def stored_matrix(matrix: Tensor, weight_dtype: torch.dtype, compute: torch.dtype) -> Tensor:
    """`matrix` (..., K, N) as the C++ kernel stores it (rounded to bfloat16, or quantised to
    int8 rows by `quantize_rows`), back in the compute dtype: what the eager step multiplies."""
    if weight_dtype == torch.int8:
        q, scale = quantize_rows(matrix.to(torch.float32))
        return (q.to(compute) * scale.to(compute).unsqueeze(-1)).to(compute)
    return matrix.to(weight_dtype).to(compute)

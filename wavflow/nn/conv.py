"""Convolution blocks: causal or centred dilated convs, weight norm, zero-initialised output.

All modules take and return `(B, C, T)` tensors and keep `T`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm


class PaddedConv1d(nn.Conv1d):
    """A `Conv1d` that keeps the time length, padding on the left (causal) or on both sides.

    A causal conv's output at t sees inputs t - (kernel_size - 1) * dilation .. t only.

    Args:
        in_channels: input channels C_in.
        out_channels: output channels C_out.
        kernel_size: taps K.
        dilation: spacing D between taps.
        causal: pad (K - 1) * D on the left only; otherwise split it evenly (K odd).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        dilation: int = 1,
        causal: bool = True,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, bias=bias
        )
        total = (kernel_size - 1) * dilation
        if not causal and total % 2:
            raise ValueError(f"a centred conv needs an odd kernel_size, got {kernel_size}")
        self.causal = causal
        self.padding_lr = (total, 0) if causal else (total // 2, total // 2)

    @property
    def context(self) -> int:
        """Number of past samples (beyond the current one) the conv reads: (K - 1) * D."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, T) -> (B, C_out, T)."""
        return super().forward(nn.functional.pad(x, self.padding_lr))


class ZeroConv1d(nn.Conv1d):
    """A 1x1 conv with weight and bias at zero, so a flow layer ending in it starts as identity."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


def zero_gain_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv1d:
    """A centred, weight-normalised conv whose gains g (and bias) start at zero: its output
    starts at zero like a `ZeroConv1d`, but an optimiser step changes it by an amount that
    does not grow with the scale of its input (a log-mel, say, in the tens)."""
    if kernel_size % 2 == 0:
        raise ValueError(f"a centred conv needs an odd kernel_size, got {kernel_size}")
    conv = weight_norm(
        nn.Conv1d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)
    )
    with torch.no_grad():
        conv.parametrizations.weight.original0.zero_()  # the gains g
        conv.bias.zero_()
    return conv


def add_weight_norm(module: nn.Module) -> nn.Module:
    """Weight-normalise every conv in `module` but zero-initialised ones (norm 0 is undefined)."""
    for child in module.modules():
        is_conv = isinstance(child, nn.Conv1d | nn.Conv2d)
        if is_conv and not isinstance(child, ZeroConv1d) and not _has_weight_norm(child):
            weight_norm(child)
    return module


def remove_weight_norm(module: nn.Module) -> nn.Module:
    """Fold weight norm back into plain weights (for inference); a no-op where there is none."""
    for child in module.modules():
        if _has_weight_norm(child):
            parametrize.remove_parametrizations(child, "weight", leave_parametrized=True)
    return module


def _has_weight_norm(module: nn.Module) -> bool:
    return parametrize.is_parametrized(module, "weight")

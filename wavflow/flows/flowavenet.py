"""FloWaveNet student: multi-scale blocks of ActNorm + WaveNet affine coupling + change of order.

Ported from ksw0306/FloWaveNet `model.py` and turned around: our `forward` is its `reverse`
(z -> x), our `inverse` its training pass (x -> z). Each block folds time by 2 (audio and
`cond` alike) and runs `flows_per_block` flows; every `blocks_per_split` blocks (not after the
last) half the channels are factored out, with a learned Gaussian prior given the kept half.

References:
    Kim et al., "FloWaveNet: A Generative Flow for Raw Audio", arXiv:1811.02155.
"""

from __future__ import annotations

from typing import ClassVar

from wavflow.flows.base import Flow, FlowModel, Inverse, SequentialFlow, StandardGaussian
from wavflow.flows.layers import (
    LOG_SCALE_BOUND,
    ActNorm,
    AffineCoupling,
    FactorOut,
    Squeeze,
    SwapHalves,
)
from wavflow.nn.conditioning import Conditioner, ConditioningSpec
from wavflow.nn.conv import add_weight_norm


class FloWaveNet(FlowModel):
    """FloWaveNet: `n_blocks` context blocks, each Squeeze(2) then `flows_per_block` flows.

    In the x -> z direction (as in the paper) block i folds (B, C, T_i) -> (B, 2C, T_i / 2)
    with `cond` folded alike, then applies `flows_per_block` x (ActNorm, affine coupling with a
    non-causal WaveNet, swap of the channel halves). After blocks blocks_per_split,
    2 * blocks_per_split, ... (never the last) the second half of the channels is factored out
    as noise under a learned prior N(mu(kept, cond), exp(log_sd)^2). That prior is itself an
    affine coupling of the factored half given the kept half, so the whole model is one flow
    from z (B, 1, T) to x (B, 1, T) whose z layout matches FloWaveNet's `reverse`.

    Differences from `model.py`: each coupling reads the whole folded `cond` (the original
    reads one channel half of it and swaps halves between flows), log-scales are soft-clamped,
    and ActNorm can initialise from either direction.

    Args:
        spec: what the model is conditioned on (`ConditioningSpec`); with pitch, the
            excitation is part of the conditioning of every coupling transform.
        n_blocks: context blocks (T must be a multiple of 2^n_blocks).
        flows_per_block: flows in each block.
        n_layers: gated layers in each coupling's WaveNet (and in each prior's).
        channels: residual and skip width of those WaveNets.
        gate_channels: their gate width (default = channels, as FloWaveNet).
        kernel_size: taps of their dilated convs (odd).
        blocks_per_split: factor half the channels out after every this many blocks
            (FloWaveNet's `block_per_split`; 1: after every block but the last).
        log_scale_bound: bound of the couplings' |log-scale| (soft clamp).
    """

    PRESETS: ClassVar[dict[str, dict]] = {
        # ksw0306/FloWaveNet README: --n_block 8 --n_flow 6 --n_layer 2 --block_per_split 4,
        # WaveNets of 256 channels, kernel 3.
        "flowavenet": {
            "n_blocks": 8,
            "flows_per_block": 6,
            "n_layers": 2,
            "channels": 256,
            "kernel_size": 3,
            "blocks_per_split": 4,
        },
        "tiny": {
            "n_blocks": 3,
            "flows_per_block": 2,
            "n_layers": 2,
            "channels": 8,
            "kernel_size": 3,
            "blocks_per_split": 1,
        },
    }

    def __init__(
        self,
        spec: ConditioningSpec,
        n_blocks: int = 8,
        flows_per_block: int = 6,
        n_layers: int = 2,
        channels: int = 256,
        gate_channels: int | None = None,
        kernel_size: int = 3,
        blocks_per_split: int = 4,
        log_scale_bound: float = LOG_SCALE_BOUND,
    ) -> None:
        if blocks_per_split < 1:
            raise ValueError(f"blocks_per_split must be >= 1, got {blocks_per_split}")
        conditioner = Conditioner(spec)

        def coupling(flow_channels: int, cond_channels: int) -> AffineCoupling:
            return AffineCoupling(
                flow_channels,
                cond_channels,
                n_layers,
                kernel_size,
                hidden_channels=channels,
                gate_channels=gate_channels or channels,
                log_scale_bound=log_scale_bound,
            )

        def block(index: int, in_channels: int) -> Flow:
            """Block `index` and all deeper ones: (B, in_channels, T_i) -> same, z -> x."""
            squeezed = 2 * in_channels
            cond_channels = conditioner.out_channels * 2 ** (index + 1)
            layers: list[Flow] = [Squeeze(2)]  # (B, C, T_i) -> (B, 2C, T_i / 2), cond too
            if index < n_blocks - 1:
                split = (index + 1) % blocks_per_split == 0
                deeper = block(index + 1, in_channels if split else squeezed)
                if split:
                    # The deeper blocks make the first half; the second is prior-scaled noise.
                    layers += [
                        FactorOut(deeper, in_channels, factored_first=False),
                        coupling(squeezed, cond_channels),
                    ]
                else:
                    layers.append(deeper)
            for _ in range(flows_per_block):  # x -> z: ActNorm, coupling, swap; here reversed
                layers += [
                    SwapHalves(squeezed),
                    coupling(squeezed, cond_channels),
                    ActNorm(squeezed),
                ]
            layers.append(Inverse(Squeeze(2)))  # (B, 2C, T_i / 2) -> (B, C, T_i), cond too
            return SequentialFlow(layers)

        super().__init__(block(0, 1), StandardGaussian(), conditioner, time_multiple=2**n_blocks)
        add_weight_norm(self.flow)

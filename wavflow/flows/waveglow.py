"""WaveGlow student: squeezed audio through invertible 1x1 convs and WaveNet affine couplings.

Ported from NVIDIA/waveglow `glow.py` and turned around: our `forward` is its `infer`
(z -> x), our `inverse` its training pass (x -> z). Groups of `group` samples become channels
(the audio-rate `cond` is folded the same way), and every `early_every` flows (counted in the
x -> z direction) `early_channels` channels are factored out; in sampling those channels are
fresh noise injected at the matching point.

References:
    Prenger, Valle & Catanzaro, "WaveGlow: A Flow-based Generative Network for Speech
    Synthesis", arXiv:1811.00002.
"""

from __future__ import annotations

from typing import ClassVar

from wavflow.flows.base import Flow, FlowModel, Inverse, SequentialFlow, StandardGaussian
from wavflow.flows.layers import (
    LOG_SCALE_BOUND,
    AffineCoupling,
    FactorOut,
    Invertible1x1Conv,
    Squeeze,
)
from wavflow.nn.conditioning import Conditioner, ConditioningSpec
from wavflow.nn.conv import add_weight_norm


class WaveGlow(FlowModel):
    """WaveGlow: `n_flows` steps of (1x1 conv, affine coupling) on groups of `group` samples.

    In the x -> z direction (as in the paper), flow k applies an invertible 1x1 conv and an
    affine coupling whose transform is a non-causal WaveNet reading the folded mel. Before
    flows k = early_every, 2 * early_every, ..., `early_channels` channels leave as final noise.
    Sampling (`forward`) runs this backwards from z ~ N(0, 1): coupling^-1, 1x1 conv^-1 from
    the last flow to the first, injecting the early channels from z where they left.

    Args:
        spec: what the model is conditioned on (`ConditioningSpec`); with pitch, the
            excitation is part of the conditioning of every coupling transform.
        n_flows: flows (1x1 conv + coupling).
        n_layers: gated layers in each coupling's WaveNet.
        channels: residual and skip width of those WaveNets.
        gate_channels: their gate width (default 2 * channels, as WaveGlow's `in_layers`).
        kernel_size: taps of their dilated convs (odd).
        group: samples folded into channels (T must be a multiple).
        early_every: flows between early outputs.
        early_channels: channels factored out at each early output.
        lu: LU-parametrised 1x1 convs.
        log_scale_bound: bound of the couplings' |log-scale| (soft clamp).
    """

    PRESETS: ClassVar[dict[str, dict]] = {
        # NVIDIA/waveglow config.json.
        "waveglow": {
            "n_flows": 12,
            "n_layers": 8,
            "channels": 256,
            "kernel_size": 3,
            "group": 8,
            "early_every": 4,
            "early_channels": 2,
        },
        "tiny": {
            "n_flows": 4,
            "n_layers": 2,
            "channels": 8,
            "kernel_size": 3,
            "group": 4,
            "early_every": 2,
            "early_channels": 2,
        },
    }

    def __init__(
        self,
        spec: ConditioningSpec,
        n_flows: int = 12,
        n_layers: int = 8,
        channels: int = 256,
        gate_channels: int | None = None,
        kernel_size: int = 3,
        group: int = 8,
        early_every: int = 4,
        early_channels: int = 2,
        lu: bool = False,
        log_scale_bound: float = LOG_SCALE_BOUND,
    ) -> None:
        if early_every < 1:
            raise ValueError(f"early_every must be >= 1, got {early_every}")
        last_channels = group - early_channels * ((n_flows - 1) // early_every)
        if last_channels < 2:
            raise ValueError(
                f"group={group} leaves {last_channels} channels after the early outputs "
                f"(early_channels={early_channels} every {early_every} of {n_flows} flows); "
                "the last couplings need at least 2"
            )
        conditioner = Conditioner(spec)
        cond_channels = conditioner.out_channels * group  # cond is folded like the audio
        # Built from the last flow (x -> z numbering) to the first, i.e. in z -> x order; the
        # flows after an early output sit inside a FactorOut that leaves its channels alone.
        layers: list[Flow] = []
        for k in reversed(range(n_flows)):
            remaining = group - early_channels * (k // early_every)
            coupling = AffineCoupling(
                remaining,
                cond_channels,
                n_layers,
                kernel_size,
                hidden_channels=channels,
                gate_channels=gate_channels,
                log_scale_bound=log_scale_bound,
            )
            layers += [coupling, Invertible1x1Conv(remaining, lu=lu)]
            if k % early_every == 0 and k > 0:
                layers = [FactorOut(SequentialFlow(layers), early_channels, factored_first=True)]
        # z (B, 1, T) -> (B, group, T // group) -> flows -> x (B, 1, T)
        flow = SequentialFlow([Squeeze(group), *layers, Inverse(Squeeze(group))])
        super().__init__(flow, StandardGaussian(), conditioner, time_multiple=group)
        add_weight_norm(self.flow)

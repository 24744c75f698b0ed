"""Flow layers shared by the students: affine coupling, output and envelope scales, and the
conditional shift of a folded flow (the F0 excitation). The linear layers (`wavflow.flows.linear`)
and the reshapes and permutations (`wavflow.flows.reshape`) are imported from here too, so a
student takes every layer from this one module.

Every layer is a `Flow`: `forward` is z -> x (sampling), `inverse` is x -> z, each returns its
log-det (B,). Tensors are (B, C, T).

References:
    Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803.
    Prenger et al., "WaveGlow", arXiv:1811.00002.
    Lee et al., "PriorGrad", arXiv:2106.06406.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wavflow.flows.base import Flow
from wavflow.flows.linear import ActNorm, Invertible1x1Conv
from wavflow.flows.reshape import (
    FactorOut,
    Permute,
    Reverse,
    Squeeze,
    SwapHalves,
    fold,
    zero_logdet,
)
from wavflow.nn.conv import zero_gain_conv
from wavflow.nn.wavenet import WaveNetStack

LOG_SCALE_BOUND = 7.0
"""Default bound b of the soft-clamped log-scales: |s| < b, so exp(s) lies in (e^-7, e^7)."""


def soft_clamp(raw: Tensor, bound: float) -> Tensor:
    """s = b * tanh(raw / b): the identity near 0 (a new layer's gradients are unchanged) and
    bounded by b, so exp(+-s) cannot overflow in either direction, even in fp16."""
    return bound * torch.tanh(raw / bound)


class AffineCoupling(Flow):
    """Affine coupling: half the channels, with `cond`, set a shift and scale for the other half.

        z = [z_a, z_b],  (shift, raw) = WaveNet(z_a, cond),  s = b * tanh(raw / b)
        x = [z_a, z_b * exp(s) + shift],   log|det dx/dz| = sum s

    The transform is a non-causal `WaveNetStack` whose output conv starts at zero, so a new
    layer is the identity, unless another `net` is given (SqueezeWave's depthwise-separable
    stack). The log-scale is soft-clamped (`soft_clamp`) so exp(s) stays finite in both
    directions during early training.

    Args:
        channels: C of z; the first C // 2 condition the remaining C - C // 2.
        cond_channels: channels of `cond` (0: unconditioned).
        n_layers: gated layers of the transform (dilations 1, 2, ..., 2^(n_layers - 1)).
        kernel_size: taps of its dilated convs (odd).
        hidden_channels: its residual and skip width.
        gate_channels: its gate width (default 2 * hidden_channels).
        log_scale_bound: b, the bound of |s|.
        net: a transform to use instead of the WaveNet (whose sizes are then unused):
            (B, C // 2, T), cond -> (B, 2 * (C - C // 2), T), shift first then raw log-scale,
            with an output that starts at zero.
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        n_layers: int = 8,
        kernel_size: int = 3,
        hidden_channels: int = 256,
        gate_channels: int | None = None,
        log_scale_bound: float = LOG_SCALE_BOUND,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        self.n_condition = channels // 2
        self.n_transform = channels - self.n_condition
        self.log_scale_bound = log_scale_bound
        if net is None:
            net = WaveNetStack(
                self.n_condition,
                2 * self.n_transform,
                n_layers,
                n_cycles=1,
                kernel_size=kernel_size,
                residual_channels=hidden_channels,
                gate_channels=gate_channels or 2 * hidden_channels,
                skip_channels=hidden_channels,
                cond_channels=cond_channels,
                causal=False,
                zero_output=True,
            )
        self.net = net

    def _shift_and_log_scale(self, half: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        # Under autocast a transform's output may come back in bfloat16; in that dtype exp(-s)
        # is not 1 / exp(s) and the sum of s (the log-det) is rounded by tens of nats.
        shift, raw = self.net(half, cond).to(half.dtype).chunk(2, dim=1)
        return shift, soft_clamp(raw, self.log_scale_bound)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a, z_b = z.split([self.n_condition, self.n_transform], dim=1)
        shift, log_scale = self._shift_and_log_scale(z_a, cond)
        x_b = z_b * torch.exp(log_scale) + shift
        return torch.cat([z_a, x_b], dim=1), log_scale.sum(dim=(1, 2))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x.split([self.n_condition, self.n_transform], dim=1)
        shift, log_scale = self._shift_and_log_scale(x_a, cond)
        z_b = (x_b - shift) * torch.exp(-log_scale)
        return torch.cat([x_a, z_b], dim=1), -log_scale.sum(dim=(1, 2))


class OutputScale(Flow):
    """x = exp(s) z with one learned log-scale s, log|det| = s * (elements per item).

    Placed last in the sampling direction, it lets a student start quiet (s = log 0.05 or
    lower) rather than at unit variance, which keeps a distillation KL against a teacher of
    quiet audio in a sane range from the first step.

    Args:
        init_log_scale: s at initialisation.
    """

    def __init__(self, init_log_scale: float = 0.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init_log_scale)))

    def _scale(self, inputs: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        logdet = (log_scale * inputs[0].numel()).expand(inputs.shape[0])
        return inputs * torch.exp(log_scale), logdet

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(z, self.log_scale)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(x, -self.log_scale)


class EnvelopeScale(Flow):
    """x = exp(e + c) z: the output scaled by the level the mel gives, a mel-adaptive prior.

    e (B, 1, S) is channel `channel` of `cond` (`log_envelope`: the log RMS level of the audio
    estimated from its log-mel, known before any sampling); c is one learned offset. It
    multiplies every channel of z (B, G, S) at step s, so log|det| = G sum_s (e_s + c). Placed
    last in the sampling direction, it makes a student's noise as loud as the mel says from
    the first step: quiet in silences, at speech level in speech. The density stays exact,
    since e is a function of the conditioning only.

    Args:
        channel: index of e in `cond` (negative: counted from the end).
        init_offset: c at initialisation (about -2.7 for 1024-point slaney log-mels: see
            `log_envelope`).

    References:
        Lee et al., "PriorGrad", arXiv:2106.06406.
    """

    def __init__(self, channel: int, init_offset: float = 0.0) -> None:
        super().__init__()
        self.channel = channel
        self.offset = nn.Parameter(torch.tensor(float(init_offset)))

    def log_scale(self, cond: Tensor | None) -> Tensor:
        """(B, C, S) cond -> the log-scale e + c, (B, 1, S)."""
        if cond is None:
            raise ValueError("EnvelopeScale needs cond")
        index = self.channel % cond.shape[1]
        return cond[:, index : index + 1] + self.offset

    def _scale(self, inputs: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        logdet = (log_scale.sum(dim=(1, 2)) * inputs.shape[1]).to(inputs.dtype)
        return inputs * torch.exp(log_scale), logdet

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(z, self.log_scale(cond))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(x, -self.log_scale(cond))

    def location_scale(
        self, x: Tensor, loc: Tensor, log_scale: Tensor, cond: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """This layer applied to a location-scale sample x = loc + exp(log_scale) z (each
        (B, 1, T)): the new x, loc and log_scale (`IAFStudent.forward_with_stats`)."""
        envelope_log_scale = self.log_scale(cond)
        scale = torch.exp(envelope_log_scale)
        return x * scale, loc * scale, log_scale + envelope_log_scale


class HarmonicShift(Flow):
    """x = z + sum_k a_k e_k on folded audio: the F0 excitation, weighted from the mel, added.

    `cond` (B, C_frame + K * G, S) ends with an excitation of K channels folded like the audio
    (channel k * G + i at step s is e_k[s * G + i]); the first C_frame channels (mel, speaker)
    set the weights a_k per step through a centred, weight-normalised conv whose gains start
    at zero, so a new layer is the identity and a step of the optimiser moves a_k by an amount
    that does not grow with the scale of the log-mel. A shift only: log-det 0. This puts
    pitch in the signal path of a folded flow at the cost of K multiply-adds per sample.

    Args:
        channels: G, samples folded per step (C of z and x).
        frame_channels: C_frame, the leading channels of `cond` that set the weights.
        excitation_channels: K, excitation signals folded into the end of `cond`.
        kernel_size: taps of the conv over the frame channels (odd).
    """

    def __init__(
        self, channels: int, frame_channels: int, excitation_channels: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.channels, self.excitation_channels = channels, excitation_channels
        self.weights = zero_gain_conv(frame_channels, excitation_channels, kernel_size)

    def _shift(self, cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ValueError("HarmonicShift needs cond")
        batch, _, steps = cond.shape
        weights = self.weights(cond[:, : self.weights.in_channels])  # (B, K, S)
        excitation = cond[:, -self.excitation_channels * self.channels :]
        excitation = excitation.reshape(batch, self.excitation_channels, self.channels, steps)
        return torch.einsum("bks,bkgs->bgs", weights, excitation)  # (B, G, S)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z + self._shift(cond), zero_logdet(z)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x - self._shift(cond), zero_logdet(x)


__all__ = [
    "LOG_SCALE_BOUND",
    "ActNorm",
    "AffineCoupling",
    "EnvelopeScale",
    "FactorOut",
    "HarmonicShift",
    "Invertible1x1Conv",
    "OutputScale",
    "Permute",
    "Reverse",
    "Squeeze",
    "SwapHalves",
    "fold",
    "soft_clamp",
]

"""Inverse autoregressive flow student (Parallel WaveNet, ClariNet).

One IAF step maps z to x in parallel over time, each sample scaled and shifted by a causal
WaveNet that reads only the earlier noise:

    x_t = z_t * exp(s_t(z_<t)) + mu_t(z_<t)

A stack of such steps keeps this form: x_t = loc_t + exp(log_scale_t) * z_t with loc and
log_scale depending on z_<t only, which is what the low-variance distillation KL needs.

References:
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    arXiv:1606.04934.
    van den Oord et al., "Parallel WaveNet", arXiv:1711.10433.
    Ping et al., "ClariNet", arXiv:1807.07281.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from wavflow.config import FeatureConfig
from wavflow.flows.base import Flow, FlowModel, SequentialFlow, make_base
from wavflow.flows.layers import LOG_SCALE_BOUND, EnvelopeScale, soft_clamp
from wavflow.flows.source import HarmonicSource
from wavflow.flows.spectral_envelope import SpectralEnvelope
from wavflow.nn.conditioning import Conditioner, ConditioningSpec
from wavflow.nn.conv import add_weight_norm
from wavflow.nn.wavenet import WaveNetStack


class IAFFlow(Flow):
    """One IAF step: x = z * exp(s) + mu with (mu_t, s_t) from a causal WaveNet over z_<t.

        (mu, raw) = WaveNet([0, z_1, ..., z_{T-1}], cond),  s = b * tanh(raw / b)
        x = z * exp(s) + mu,   log|det dx/dz| = sum_t s_t  (the Jacobian is triangular)

    The input is z shifted right by one sample, so the causal stack's output at t has seen
    z_<t only. Its output conv starts at zero, so a new step is the identity. The log-scale is
    soft-clamped (`soft_clamp`) to keep exp(s) finite in both directions.

    `forward` (sampling) is one parallel pass. `inverse` (density of given audio) is
    sequential: z_t needs mu_t, s_t, which need z_<t. It runs T network passes, each over a
    window of `receptive_field` samples, so it costs O(T * min(T, R) * n_layers) -- about
    T / 2 times a forward pass for T <= R. Use it for tests and short clips only.

    Args:
        cond_channels: channels of `cond` (0: unconditioned).
        n_layers: gated layers of the WaveNet.
        n_cycles: dilation cycles (must divide n_layers).
        kernel_size: taps of its causal dilated convs.
        hidden_channels: its residual and skip width.
        gate_channels: its gate width (default 2 * hidden_channels).
        input_kernel_size: taps of its causal input conv (ClariNet: 32).
        log_scale_bound: b, the bound of |s|.
        excitation_channels: 2K when `cond` ends with a harmonic excitation e (B, 2K, T) (see
            `Conditioner`): the WaveNet also predicts amplitudes a (B, 2K, T) and the shift
            becomes mu + sum_k a_k e_k, putting the excitation in the signal path.
        leading_channels: channels at the front of `cond` that the WaveNet does not read
            (`Conditioner.leading_channels`: data for the output filter).
    """

    def __init__(
        self,
        cond_channels: int,
        n_layers: int = 10,
        n_cycles: int = 1,
        kernel_size: int = 3,
        hidden_channels: int = 64,
        gate_channels: int | None = None,
        input_kernel_size: int = 1,
        log_scale_bound: float = LOG_SCALE_BOUND,
        excitation_channels: int = 0,
        leading_channels: int = 0,
    ) -> None:
        super().__init__()
        self.log_scale_bound = log_scale_bound
        self.excitation_channels = excitation_channels
        self.leading_channels = leading_channels
        self.net = WaveNetStack(
            1,
            2 + excitation_channels,
            n_layers,
            n_cycles,
            kernel_size,
            residual_channels=hidden_channels,
            gate_channels=gate_channels or 2 * hidden_channels,
            skip_channels=hidden_channels,
            cond_channels=cond_channels - leading_channels,
            causal=True,
            input_kernel_size=input_kernel_size,
            zero_output=True,
        )

    @property
    def receptive_field(self) -> int:
        """Samples of the (shifted) input that mu_t, s_t see: z_{t-R} .. z_{t-1}."""
        return self.net.receptive_field

    def _params(self, shifted: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        out = self.net(shifted, None if cond is None else cond[:, self.leading_channels :])
        if not self.excitation_channels:
            mu, raw = out.chunk(2, dim=1)
            return mu, soft_clamp(raw, self.log_scale_bound)
        mu, raw, amplitudes = out.split([1, 1, self.excitation_channels], dim=1)
        excitation = cond[:, -self.excitation_channels :]
        mu = mu + (amplitudes * excitation).sum(dim=1, keepdim=True)
        return mu, soft_clamp(raw, self.log_scale_bound)

    def shift_and_log_scale(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, 1, T) noise -> mu, s (B, 1, T), both depending on z_<t only."""
        # Shift right by one so position t reads z_<t: the flow stays autoregressive.
        shifted = nn.functional.pad(z, (1, 0))[..., :-1]
        return self._params(shifted, cond)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, log_scale = self.shift_and_log_scale(z, cond)
        return z * torch.exp(log_scale) + mu, log_scale.sum(dim=(1, 2))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sequential inverse z_t = (x_t - mu_t) * exp(-s_t), t = 0 .. T-1 (slow, see class)."""
        window = self.receptive_field
        zero = x.new_zeros(x.shape[0], 1, 1)
        z_steps: list[Tensor] = []
        log_scales: list[Tensor] = []
        for t in range(x.shape[-1]):
            start = max(0, t - window + 1)
            # The shifted input at positions start..t is z_{start-1} .. z_{t-1} (zero before 0);
            # the output at t reads nothing earlier, so the window's own zero padding is harmless.
            past = z_steps[max(start - 1, 0) : t]
            shifted = torch.cat(([zero] if start == 0 else []) + past, dim=-1)
            window_cond = None if cond is None else cond[..., start : t + 1]
            mu, log_scale = self._params(shifted, window_cond)
            mu, log_scale = mu[..., -1:], log_scale[..., -1:]
            z_steps.append((x[..., t : t + 1] - mu) * torch.exp(-log_scale))
            log_scales.append(log_scale)
        z = torch.cat(z_steps, dim=-1)
        return z, -torch.cat(log_scales, dim=-1).sum(dim=(1, 2))


class IAFStudent(FlowModel):
    """Parallel WaveNet / ClariNet student: a stack of IAF steps over logistic or Gaussian noise.

        z ~ base,  x = f_K(... f_1(z)),  each f_k an `IAFFlow`
        x_t = loc_t + exp(log_scale_t) * z_t,  loc, log_scale functions of z_<t

    Sampling and `rsample_and_log_prob` are parallel; `log_prob` of external audio runs the
    sequential inverse of every step (K * T network passes on windows of up to the receptive
    field: seconds for a few hundred samples on CPU, impractical for whole utterances).

    Args:
        spec: what the student is conditioned on (`ConditioningSpec`); with pitch, the
            excitation enters every step's shift.
        base: "logistic" (Parallel WaveNet) or "gaussian" (ClariNet).
        flow_layers: gated layers of each step's WaveNet, e.g. (10, 10, 10, 30).
        layers_per_cycle: dilations 1 .. 2^(layers_per_cycle - 1) repeat every this many layers.
        kernel_size: taps of the dilated convs.
        channels: residual and skip width of each WaveNet.
        gate_channels: gate width (default 2 * channels).
        input_kernel_size: taps of each WaveNet's causal input conv.
        log_scale_bound: bound of each step's |s| (soft clamp).
        init_log_scale: initial log-scale of the first step (0: every step the identity; about
            log(0.05) = -3 starts a distilled student near the scale of speech).
        envelope: scale the output by the level the mel gives (`EnvelopeScale`, a mel-adaptive
            prior): x = exp(e_t + c) * f(z), so the student is quiet in silences from the start.
        envelope_offset: c at initialisation.
        envelope_taps: with `envelope`, shape the output by the mel's spectral envelope as well
            as its level: a minimum-phase filter of this many taps per frame
            (`SpectralEnvelope`, a spectrally shaped prior); 0: the level only.
        features: the mel settings (needed for `envelope_taps`).
        harmonic_source: start from pulses at F0 where voiced instead of noise
            (`HarmonicSource`, a harmonic-plus-noise source; needs pitch): with the spectral
            envelope, a source-filter vocoder before any training, which the steps refine.
        source_noise: with `harmonic_source`, the noise scale in voiced samples (fixed).

    References:
        van den Oord et al., "Parallel WaveNet", arXiv:1711.10433.
        Ping et al., "ClariNet", arXiv:1807.07281.
    """

    # x_t depends on z_<=t only, so synthesis in chunks needs past context only (about 0.56 s
    # at Parallel WaveNet size). Chunks bound the memory of a long utterance; the stacks' fused
    # inference path tiles time itself (`FUSED_TILE`), so a chunk need not fit in cache and
    # 4 s chunks recompute less context than 2 s ones: RTF 1.55 against 1.79 for 4 s of audio
    # (fp32, 1 thread, 2-core Xeon).
    causal: ClassVar[bool] = True
    chunk_seconds: ClassVar[float | None] = 4.0
    location_scale: ClassVar[bool] = True
    takes_features: ClassVar[bool] = True  # for the spectral envelope (`envelope_taps`)

    PRESETS: ClassVar[dict[str, dict]] = {
        # 4 flows of 10, 10, 10, 30 layers, 64 channels (the paper gives no kernel: 3 here).
        "parallel_wavenet": {
            "base": "logistic",
            "flow_layers": (10, 10, 10, 30),
            "layers_per_cycle": 10,
            "kernel_size": 3,
            "channels": 64,
        },
        # ksw0306/ClariNet wavenet_iaf.py: 6 flows x 10 layers, 64/128/64, kernel 3, front 32.
        "clarinet": {
            "base": "gaussian",
            "flow_layers": (10, 10, 10, 10, 10, 10),
            "layers_per_cycle": 10,
            "kernel_size": 3,
            "channels": 64,
            "input_kernel_size": 32,
        },
        "tiny": {
            "base": "logistic",
            "flow_layers": (2, 2),
            "layers_per_cycle": 2,
            "kernel_size": 3,
            "channels": 8,
        },
    }

    def __init__(
        self,
        spec: ConditioningSpec,
        base: str = "logistic",
        flow_layers: Sequence[int] = (10, 10, 10, 30),
        layers_per_cycle: int = 10,
        kernel_size: int = 3,
        channels: int = 64,
        gate_channels: int | None = None,
        input_kernel_size: int = 1,
        log_scale_bound: float = LOG_SCALE_BOUND,
        init_log_scale: float = 0.0,
        envelope: bool = False,
        envelope_offset: float = -2.7,
        envelope_taps: int = 0,
        features: FeatureConfig | None = None,
        harmonic_source: bool = False,
        source_noise: float = 0.1,
    ) -> None:
        if envelope_taps and not (envelope and features is not None):
            raise ValueError("envelope_taps needs envelope = true and the feature settings")
        conditioner = Conditioner(
            spec,
            envelope,
            packed_mel=bool(envelope_taps),
            source=harmonic_source,
        )
        for n_layers in flow_layers:
            if n_layers > layers_per_cycle and n_layers % layers_per_cycle:
                raise ValueError(
                    f"each of flow_layers must be a multiple of layers_per_cycle "
                    f"({layers_per_cycle}) or below it, got {n_layers}"
                )
        flows = [
            IAFFlow(
                conditioner.out_channels,
                n_layers,
                n_cycles=max(1, n_layers // layers_per_cycle),
                kernel_size=kernel_size,
                hidden_channels=channels,
                gate_channels=gate_channels,
                input_kernel_size=input_kernel_size,
                log_scale_bound=log_scale_bound,
                excitation_channels=conditioner.excitation_channels,
                leading_channels=conditioner.leading_channels,
            )
            for n_layers in flow_layers
        ]
        if init_log_scale:
            # The first step's log-scale output starts at this bias, so a new student emits
            # noise at about the scale of audio rather than unit variance: its KL to a teacher
            # starts in the hundreds instead of the thousands of nats per sample.
            with torch.no_grad():
                flows[0].net.head_out.bias[1] = init_log_scale
        scale = (
            [self._envelope_layer(conditioner, envelope_offset, envelope_taps, features)]
            if envelope
            else []
        )
        source = (
            [HarmonicSource(conditioner.source_channel, 1, source_noise)] if harmonic_source else []
        )
        flow = SequentialFlow([*source, *flows, *scale])
        super().__init__(flow, make_base(base), conditioner)
        self.n_steps, self.envelope_taps = len(flows), envelope_taps
        self.has_source, self.has_envelope = harmonic_source, envelope
        add_weight_norm(self.flow)

    @property
    def source(self) -> HarmonicSource | None:
        """The harmonic-plus-noise source, first in sampling order (None: built without)."""
        return self.flow.flows[0] if self.has_source else None

    @property
    def steps(self) -> list[IAFFlow]:
        """The IAF steps, in sampling order."""
        start = int(self.has_source)
        return list(self.flow.flows[start : start + self.n_steps])

    @staticmethod
    def _envelope_layer(
        conditioner: Conditioner, offset: float, taps: int, features: FeatureConfig | None
    ) -> EnvelopeScale | SpectralEnvelope:
        if not taps:
            return EnvelopeScale(conditioner.envelope_channel, offset)
        return SpectralEnvelope(features, taps)  # its packed mel is cond channel 0

    @property
    def envelope(self) -> EnvelopeScale | SpectralEnvelope | None:
        """The mel-adaptive output layer (None: built without `envelope`)."""
        return self.flow.flows[-1] if self.has_envelope else None

    @property
    def receptive_field(self) -> int:
        """Noise samples z_{t-R+1} .. z_t that x_t depends on (the output filter's taps too)."""
        return max(self.envelope_taps, 1) + sum(flow.receptive_field for flow in self.steps)

    def forward_with_stats(self, z: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x = f(z) with its per-sample location and log-scale, in one parallel pass.

        Composing the steps in closed form: after step k with (mu_k, s_k),
        loc <- loc * exp(s_k) + mu_k and log_scale <- log_scale + s_k, so that
        x_t = loc_t + exp(log_scale_t) * z_t and log q(x) = sum_t [log p(z_t) - log_scale_t].

        Args:
            z: noise (B, 1, T).
            cond: (B, C, T) from `condition`.

        Returns:
            x, loc, log_scale, each (B, 1, T); loc and log_scale at t depend on z_<t only.
        """
        x, loc, log_scale = z, torch.zeros_like(z), torch.zeros_like(z)
        if self.source is not None:
            loc, log_scale = self.source.location_scale(cond)
            x = loc + torch.exp(log_scale) * z
        for flow in self.steps:
            mu, step_log_scale = flow.shift_and_log_scale(x, cond)
            scale = torch.exp(step_log_scale)
            x = x * scale + mu
            loc = loc * scale + mu
            log_scale = log_scale + step_log_scale
        if self.envelope is not None:
            x, loc, log_scale = self.envelope.location_scale(x, loc, log_scale, cond)
        return x, loc, log_scale

    def rsample_with_stats(
        self, cond: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draws z and returns `forward_with_stats(z, cond)` and z: (x, loc, log_scale, z).

        Args:
            cond: (B, C, T) from `condition`.
            temperature: scale of the base noise.
            generator: RNG for the noise.

        Returns:
            x, loc, log_scale, z, each (B, 1, T), x = loc + exp(log_scale) * z.
        """
        z = self.sample_noise(cond, temperature, generator)
        return (*self.forward_with_stats(z, cond), z)

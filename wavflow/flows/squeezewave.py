"""SqueezeWave student: WaveGlow reshaped for CPUs, conditioned at the folded rate.

WaveGlow folds 8 samples per step and runs every coupling's WaveNet at audio rate / 8 on a
mel upsampled to audio rate. SqueezeWave folds many more samples per step (`fold` = 128 or
256), so the couplings run over far fewer steps with many more channels; their transforms are
WaveNet-like stacks of depthwise-separable convolutions; and the mel is never upsampled to
audio rate: each frame is repeated (or several frames stacked) to the folded rate.

Layout as our WaveGlow port (`waveglow.py`): `forward` is z -> x (SqueezeWave's `infer`),
`inverse` is x -> z (its training pass); every `early_every` flows (x -> z numbering)
`early_channels` channels leave as final noise.

Differences from tianrengao/SqueezeWave `glow.py`: no BatchNorm before the depthwise convs
(batch statistics would make train and eval differ; every conv is weight-normalised instead,
as in WaveGlow), log-scales are soft-clamped, the depthwise convs may be dilated
(`dilation_base`; the released code uses dilation 1), and a `fold` above the hop stacks frames
into channels instead of failing. With pitch (`n_harmonics`), a `HarmonicShift` adds the F0
excitation to the folded output, so pitch is in the signal path as in our other students.

References:
    Zhai et al., "SqueezeWave: Extremely Lightweight Vocoders for On-device Speech Synthesis",
    arXiv:2001.05685.
    Prenger, Valle & Catanzaro, "WaveGlow", arXiv:1811.00002.
    Howard et al., "MobileNets" (depthwise-separable convolutions), arXiv:1704.04861.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from wavflow.config import FeatureConfig
from wavflow.flows.base import Flow, FlowModel, Inverse, SequentialFlow, StandardGaussian
from wavflow.flows.layers import (
    LOG_SCALE_BOUND,
    AffineCoupling,
    EnvelopeScale,
    FactorOut,
    HarmonicShift,
    Invertible1x1Conv,
    OutputScale,
    Squeeze,
    fold,
)
from wavflow.flows.source import HarmonicSource
from wavflow.flows.spectral_envelope import SpectralEnvelope
from wavflow.nn.conditioning import ConditionerBase, ConditioningSpec, log_envelope
from wavflow.nn.conv import ZeroConv1d, add_weight_norm


class FrameRateConditioner(ConditionerBase):
    """Mel frames (+ speaker embedding, + F0 excitation) at the folded rate: one `cond` step
    per `fold` samples.

    With hop H and fold G, T = frames * H audio samples make T / G steps:

    - G divides H: each frame is repeated H / G times (nearest-neighbour, as SqueezeWave);
    - H divides G: G / H consecutive frames are stacked into channels, (B, n_mels, F) ->
      (B, n_mels * G / H, F * H / G), so no frame is dropped.

    `cond` = [frame features (`frame_channels`: mels, then the speaker embedding); with
    `source`, the pulse source and voicing (`pulse_source`) folded like the audio, 2 G
    channels; with pitch, the harmonic excitation (2K signals at audio rate,
    `harmonic_excitation`) folded like the audio, 2K * G channels, last]. The couplings read
    the frame features only; `HarmonicShift` adds the excitation to the output. With pitch, an
    `F0Predictor` gives F0 for mels that come without.

    No parameters but the speaker embedding and the F0 predictor: every coupling projects
    this `cond` with its own 1x1 conv, and a 1x1 conv of a repeated frame equals the repeated
    projection, so nothing is lost by not learning an upsampler.

    Args:
        spec: the mel settings (hop H), speakers and harmonics K (`ConditioningSpec`).
        fold: audio samples per step (G); one of G, H must divide the other.
        envelope: end the frame features with the mel's log level per step (`log_envelope`
            averaged over the step's samples), for an `EnvelopeScale`.
        source: give the folded pulse source and voicing, for a `HarmonicSource` (needs pitch).
    """

    def __init__(
        self, spec: ConditioningSpec, fold: int, envelope: bool = False, source: bool = False
    ) -> None:
        super().__init__()
        hop_length = spec.hop_length
        if hop_length % fold and fold % hop_length:
            raise ValueError(
                f"fold={fold} and hop_length={hop_length}: one must divide the other, so that "
                "every step of the folded audio sees whole frames"
            )
        self.fold = fold
        self.repeats = max(1, hop_length // fold)
        self.frames_per_step = max(1, fold // hop_length)
        self._add_speaker_and_pitch(spec, envelope, source)
        self.frame_channels = (
            spec.n_mels * self.frames_per_step + self.speaker_channels + int(envelope)
        )
        # The folded pulse source and voicing (2 G channels) follow the frame features.
        self.source_channel = self.frame_channels if source else None
        self.out_channels = self.frame_channels + 2 * (int(source) + spec.n_harmonics) * fold

    def forward(
        self,
        feats: Tensor,
        speaker: Tensor | None = None,
        f0: Tensor | None = None,
        phase: Tensor | None = None,
    ) -> Tensor:
        """(B, n_mels, F), speaker ids (B,), F0 (B, F) Hz -> cond (B, out_channels,
        F * hop_length / fold).

        `phase` (B, F * hop): the excitation's phase when this is a chunk of a longer input.
        """
        cond = feats
        if self.frames_per_step > 1:
            if feats.shape[-1] % self.frames_per_step:
                raise ValueError(
                    f"{self.frames_per_step} frames make one step: the frame count must be a "
                    f"multiple of {self.frames_per_step}, got {feats.shape[-1]}"
                )
            cond = fold(feats, self.frames_per_step)  # (B, M, F) -> (B, M * k, F / k)
        elif self.repeats > 1:
            cond = feats.repeat_interleave(self.repeats, dim=-1)  # (B, M, F) -> (B, M, F * r)
        parts = [cond, *self.speaker_part(speaker, cond.shape[-1])]
        if self.has_envelope:
            level = fold(log_envelope(feats, self.hop_length)[:, None], self.fold)
            parts.append(level.mean(dim=1, keepdim=True))  # (B, G, T / G) -> (B, 1, T / G)
        if self.has_source:
            parts.append(fold(self.source_of(f0, phase, feats.dtype), self.fold))  # (B, 2G, T / G)
        if self.n_harmonics:
            excitation = self.excitation_of(f0, phase, feats.dtype)  # (B, 2K, T)
            parts.append(fold(excitation, self.fold))  # -> (B, 2K * G, T / G)
        return torch.cat(parts, dim=1) if len(parts) > 1 else cond


class DepthwiseWaveNet(nn.Module):
    """SqueezeWave's coupling transform: gated residual layers of depthwise-separable convs.

        h_0 = W_start a
        g_i = W_point,i (w_depth,i * h_i) + V_i cond       (depthwise conv, then 1x1 conv)
        h_{i+1} = h_i + W_res,i (tanh(g_i[:C]) * sigmoid(g_i[C:]))
        out = W_end h_L                                     (starts at zero)

    The depthwise conv has `kernel_size` taps per channel with dilation `dilation_base ** i`
    (1: SqueezeWave's released code), centred (non-causal). The cond projections V_i of all
    layers are one 1x1 conv (SqueezeWave's `cond_layer`), so the conditioning costs one GEMM
    per coupling. No skip connections: the head reads the last residual state, as SqueezeWave.

    Args:
        in_channels: channels of the coupling's conditioning half.
        out_channels: 2 x the channels of the transformed half (shift, raw log-scale).
        cond_channels: channels of `cond` it reads, the first ones (0: unconditioned); channels
            after them are left to other layers (SqueezeWave's folded excitation).
        n_layers: gated layers L.
        channels: residual width C (gates 2C).
        kernel_size: taps of the depthwise convs (odd).
        dilation_base: layer i dilates by dilation_base ** i.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_channels: int,
        n_layers: int = 8,
        channels: int = 256,
        kernel_size: int = 3,
        dilation_base: int = 1,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(
                f"a centred depthwise conv needs an odd kernel_size, got {kernel_size}"
            )
        self.channels = channels
        self.n_layers = n_layers
        self.start = nn.Conv1d(in_channels, channels, 1)
        self.cond = nn.Conv1d(cond_channels, 2 * channels * n_layers, 1) if cond_channels else None
        self.depthwise = nn.ModuleList()
        self.pointwise = nn.ModuleList()
        self.residual = nn.ModuleList()
        for i in range(n_layers):
            dilation = dilation_base**i
            self.depthwise.append(
                nn.Conv1d(
                    channels,
                    channels,
                    kernel_size,
                    dilation=dilation,
                    padding=(kernel_size - 1) // 2 * dilation,  # centred: keeps T
                    groups=channels,
                )
            )
            self.pointwise.append(nn.Conv1d(channels, 2 * channels, 1))
            self.residual.append(nn.Conv1d(channels, channels, 1))
        self.end = ZeroConv1d(channels, out_channels)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """(B, in_channels, T), (B, cond_channels, T) -> (B, out_channels, T)."""
        # The convs run as 2-D convs on (B, C, 1, T) channels-last tensors: on CPU, oneDNN
        # reads that layout directly, while a conv1d on (B, C, T) reorders its input and
        # output to a blocked layout on every call (about 2x slower here); elsewhere neutral.
        h = _conv(self.start, _channels_last(x))
        # (B, cond_channels, 1, T) -> (B, 2C * L, 1, T): every layer's conditioning in one conv
        if self.cond is not None:  # channels after the first cond_channels are not ours
            conds = _conv(self.cond, _channels_last(cond[:, : self.cond.in_channels]))
        else:
            conds = None
        width = 2 * self.channels
        for i in range(self.n_layers):
            gates = _conv(self.pointwise[i], _conv(self.depthwise[i], h))
            if conds is not None:
                gates = gates + conds[:, i * width : (i + 1) * width]
            filt, gate = gates.chunk(2, dim=1)
            h = h + _conv(self.residual[i], gated_tanh(filt, gate))
        return _conv(self.end, h).squeeze(2)  # (B, out, 1, T) -> (B, out, T)


def _channels_last(x: Tensor) -> Tensor:
    """(B, C, T) -> (B, C, 1, T) laid out channels-last (channel stride 1)."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _conv(conv: nn.Conv1d, x: Tensor) -> Tensor:
    """`conv` applied to a (B, C, 1, T) tensor as a 2-D conv with a (1, K) kernel."""
    return nn.functional.conv2d(
        x,
        conv.weight.unsqueeze(2),  # (C_out, C_in / groups, K) -> (C_out, C_in / groups, 1, K)
        conv.bias,
        padding=(0, conv.padding[0]),
        dilation=(1, conv.dilation[0]),
        groups=conv.groups,
    )


def gated_tanh(filt: Tensor, gate: Tensor) -> Tensor:
    """tanh(filt) * sigmoid(gate), with tanh(a) = 2 sigmoid(2a) - 1.

    PyTorch's CPU tanh is about 8x slower than its sigmoid (float32, AVX-512); this form
    costs two sigmoids and three cheap passes, and is exact up to rounding (absolute error
    ~1e-7 in float32).
    """
    doubled = torch.sigmoid(2 * filt)
    if doubled.requires_grad:  # autograd keeps the sigmoids: no in-place arithmetic
        return (2 * doubled - 1) * torch.sigmoid(gate)
    return doubled.mul_(2).sub_(1).mul_(torch.sigmoid(gate))


def _published(fold: int, channels: int) -> dict:
    """A published SqueezeWave size: 12 flows of 8 layers, kernel 3, 16 channels out every 2."""
    return {
        "n_flows": 12,
        "fold": fold,
        "n_layers": 8,
        "channels": channels,
        "kernel_size": 3,
        "early_every": 2,
        "early_channels": 16,
    }


class SqueezeWave(FlowModel):
    """SqueezeWave: WaveGlow's flows on `fold` samples per step with depthwise-separable couplings.

    z (B, 1, T) is folded to (B, fold, T / fold); in the x -> z direction flow k applies an
    invertible 1x1 conv and an affine coupling whose transform is a `DepthwiseWaveNet`
    reading the frame-rate `cond` (`FrameRateConditioner`, already at T / fold steps, so the
    fold leaves it alone). Before flows k = early_every, 2 * early_every, ... `early_channels`
    channels leave as final noise. Sampling (`forward`) runs this backwards from z ~ N(0, 1).

    `condition` returns cond (B, C, T / fold): `sample`, `rsample_and_log_prob` draw
    T = fold * cond's length samples (`samples_per_cond_step` = fold).

    Published sizes (`PRESETS`, all 12 flows of 8 layers, kernel 3, 16 channels out every 2
    flows): SqueezeWave-128L/-128S fold 128 samples per step (L = 128 steps per 16384-sample
    crop) with 256/128 channels; -64L/-64S fold 256 (L = 64). "squeezewave" (the default of
    `wavflow bench`) is -128L; "cpu" is a small model for CPU training, "tiny" the tests' size.

    Args:
        spec: what the model is conditioned on (`ConditioningSpec`); with pitch, a
            `HarmonicShift` adds the excitation to the output (not in the published model).
        n_flows: flows (1x1 conv + coupling).
        fold: audio samples folded into channels per step (T must be a multiple); one of
            fold and the spec's hop_length must divide the other.
        n_layers: gated layers in each coupling's transform.
        channels: residual width of those transforms (gates: 2 * channels).
        kernel_size: taps of their depthwise convs (odd).
        dilation_base: depthwise conv i dilates by dilation_base ** i (1: as SqueezeWave).
        early_every: flows between early outputs.
        early_channels: channels factored out at each early output (0: none).
        lu: LU-parametrised 1x1 convs.
        log_scale_bound: bound of the couplings' |log-scale| (soft clamp).
        init_log_scale: log of a learned output scale applied last (0: none). For
            distillation start quiet, about -6: started at the level of speech (-3), the
            student can settle in a local optimum that fills silences with a loud pattern
            repeating every `fold` samples (measured on the demo: KL stuck near 4 nats/sample).
        envelope: scale the folded output by the level the mel gives (`EnvelopeScale`, a
            mel-adaptive prior; before the `HarmonicShift`), so silences start quiet.
        envelope_offset: the envelope's offset at initialisation.
        envelope_taps: with `envelope`, filter the unfolded output by the mel's spectral
            envelope instead of scaling it by its level (`SpectralEnvelope`, this many taps
            per frame; after the `HarmonicShift`, so the excitation is shaped too); needs
            fold <= hop. 0: the level only.
        features: the mel settings (needed for `envelope_taps`).
        harmonic_source: pulses at F0 where voiced, the couplings' noise quietened there
            (`HarmonicSource` on the folded output of the couplings; needs pitch).
        source_noise: with `harmonic_source`, the noise scale in voiced samples (fixed).

    References:
        Zhai et al., "SqueezeWave", arXiv:2001.05685.
    """

    takes_features: ClassVar[bool] = True  # for the spectral envelope (`envelope_taps`)

    PRESETS: ClassVar[dict[str, dict]] = {
        # tianrengao/SqueezeWave configs/config_a{fold}_c{channels}.json; "squeezewave" is
        # SqueezeWave-128L, the best-sounding of the four (MOS 4.07).
        "squeezewave": _published(fold=128, channels=256),
        "squeezewave_128l": _published(fold=128, channels=256),
        "squeezewave_64l": _published(fold=256, channels=256),
        "squeezewave_128s": _published(fold=128, channels=128),
        "squeezewave_64s": _published(fold=256, channels=128),
        # Small enough to train on a CPU (0.7 M parameters, 11 kFLOP per sample).
        "cpu": {
            "n_flows": 6,
            "fold": 128,
            "n_layers": 4,
            "channels": 64,
            "kernel_size": 3,
            "early_every": 2,
            "early_channels": 16,
        },
        # For the tests (T = 16 samples, hop 4).
        "tiny": {
            "n_flows": 4,
            "fold": 8,
            "n_layers": 2,
            "channels": 8,
            "kernel_size": 3,
            "dilation_base": 2,
            "early_every": 2,
            "early_channels": 2,
        },
    }

    def __init__(
        self,
        spec: ConditioningSpec,
        n_flows: int = 12,
        fold: int = 128,
        n_layers: int = 8,
        channels: int = 256,
        kernel_size: int = 3,
        dilation_base: int = 1,
        early_every: int = 2,
        early_channels: int = 16,
        lu: bool = False,
        log_scale_bound: float = LOG_SCALE_BOUND,
        init_log_scale: float = 0.0,
        envelope: bool = False,
        envelope_offset: float = -2.7,
        envelope_taps: int = 0,
        features: FeatureConfig | None = None,
        harmonic_source: bool = False,
        source_noise: float = 0.1,
    ) -> None:
        if envelope_taps and not (envelope and features is not None and fold <= spec.hop_length):
            raise ValueError(
                "envelope_taps needs envelope = true, the feature settings and fold <= hop"
            )
        if early_every < 1:
            raise ValueError(f"early_every must be >= 1, got {early_every}")
        last_channels = fold - early_channels * ((n_flows - 1) // early_every)
        if last_channels < 2:
            raise ValueError(
                f"fold={fold} leaves {last_channels} channels after the early outputs "
                f"(early_channels={early_channels} every {early_every} of {n_flows} flows); "
                "the last couplings need at least 2"
            )
        conditioner = FrameRateConditioner(spec, fold, envelope, harmonic_source)
        frame_channels = conditioner.frame_channels
        # Built from the last flow (x -> z numbering) to the first, i.e. in z -> x order; the
        # flows after an early output sit inside a FactorOut that leaves its channels alone.
        layers: list[Flow] = []
        for k in reversed(range(n_flows)):
            remaining = fold - early_channels * (k // early_every)
            half = remaining // 2
            net = DepthwiseWaveNet(
                half,
                2 * (remaining - half),
                frame_channels,
                n_layers,
                channels,
                kernel_size,
                dilation_base,
            )
            coupling = AffineCoupling(
                remaining, frame_channels, log_scale_bound=log_scale_bound, net=net
            )
            layers += [coupling, Invertible1x1Conv(remaining, lu=lu)]
            if k % early_every == 0 and k > 0 and early_channels:
                layers = [FactorOut(SequentialFlow(layers), early_channels, factored_first=True)]
        # z (B, 1, T) -> (B, fold, T // fold) -> flows -> x (B, 1, T); cond is already at
        # T // fold steps, so the folds leave it alone.
        if harmonic_source:
            # After the couplings, not before: their 1x1 convs mix the samples of a fold, which
            # would scatter each pulse over 128 samples (PESQ-wb 1.47 at initialisation on the
            # quality recipe's held-back speech against 2.09 for the IAF, whose steps start as
            # the identity). The couplings shape the noise; the pulses are added to it.
            layers.append(HarmonicSource(conditioner.source_channel, fold, source_noise))
        if envelope and not envelope_taps:  # the level channel ends the frame features
            layers.append(EnvelopeScale(frame_channels - 1, envelope_offset))
        if spec.n_harmonics:
            layers.append(HarmonicShift(fold, frame_channels, 2 * spec.n_harmonics))
        output_filter = (
            [SpectralEnvelope(features, envelope_taps, steps_per_frame=conditioner.repeats)]
            if envelope_taps
            else []
        )
        output_scale = [OutputScale(init_log_scale)] if init_log_scale else []
        flow = SequentialFlow(
            [
                Squeeze(fold, fold_cond=False),
                *layers,
                Inverse(Squeeze(fold, fold_cond=False)),
                *output_filter,
                *output_scale,
            ]
        )
        super().__init__(
            flow,
            StandardGaussian(),
            conditioner,
            time_multiple=fold,
            samples_per_cond_step=fold,
        )
        # The output filter reads envelope_taps - 1 samples back and half a hop ahead (its
        # crossfade), which no conv of the flow shows to `coupling_reach`.
        self.output_filter_reach = (
            max(envelope_taps - 1, spec.hop_length // 2) if envelope_taps else 0
        )
        add_weight_norm(self.flow)

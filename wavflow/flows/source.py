"""A harmonic-plus-noise source: a student's noise replaced by pulses at F0 where voiced.

White noise through the mel's spectral envelope (`SpectralEnvelope`) scores STOI 0.81 on the
quality recipe's held-back speech; a band-limited pulse train at the recording's F0 through the
same filter, with noise only where unvoiced, scores 0.94 (above Griffin-Lim's 0.93) with no
training at all. A student that must learn its pulses from white noise had reached 0.88-0.90
after 2,000 steps. `HarmonicSource` starts it from the classic vocoder's source instead:

    y_t = g p_t + sigma_t z_t,   sigma_t = exp(v_t log s),

p the unit-power pulses (`pulse_source`), v_t the voicing (1 voiced, 0 unvoiced), g learned
and s, the noise left in voiced samples, fixed (as the Neural Source-Filter models fix theirs):
learned, the spectral losses raise it (0.1 -> 0.23 in 2,000 SqueezeWave steps on the quality
recipe), which fills the harmonics' valleys and costs STOI (0.93 -> 0.905; setting it back to
0.1 in the trained model gave 0.929 back; BENCHMARKS.md, "Quality"). The output filter gives the
spectral envelope. The IAF places it first in the sampling direction, so that its steps (the
identity at initialisation) reshape the pulses and the noise; SqueezeWave after its couplings,
whose 1x1 convs would scatter each pulse over a fold, so that they shape the noise only. A
known shift and scale per sample: log|det dy/dz| = sum_t v_t log s, and a location-scale
student keeps its per-step form (loc_t = g p_t, log_scale_t = v_t log s).

References:
    Dudley, "Remaking Speech", JASA 11 (1939): the source-filter vocoder.
    Wang, Takaki & Yamagishi, "Neural Source-Filter Waveform Models", arXiv:1904.12088.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wavflow.config import FeatureConfig
from wavflow.flows.base import Flow
from wavflow.flows.spectral_envelope import CrossfadedFilter, minimum_phase
from wavflow.nn.conv import zero_gain_conv
from wavflow.nn.precision import at_least_float32, full_precision
from wavflow.nn.spectrum import band_interpolation


class PulseShaper(nn.Module):
    """A learned filter per frame on the pulses: the harmonic part's own spectral envelope.

    Without it pulses and noise share one filter, the mel's envelope (`SpectralEnvelope`),
    and a student whose flows act before the source (SqueezeWave) cannot correct the
    harmonics' spectrum: its log-mel distance stays 2 dB above the IAF's, whose steps reshape
    the pulses. Here frame j's pulses are filtered by

        h_j = minimum_phase(W d_j),    d_j = net(mel_{j-2..j+2}),

    d_j a log-magnitude correction on the mel bands (a conv of the log-mels, then a
    zero-gain conv: d = 0 and h_j = delta at initialisation, so a new shaper is the identity),
    W `band_interpolation`'s bands-to-bins weights; the filters crossfade between frames as
    `SpectralEnvelope`'s do. A minimum-phase correction keeps each pulse's energy at its
    onset, and the envelope's minimum-phase filter after it multiplies with it exactly (their
    log-magnitudes add). The pulses stay a function of the conditioning alone, so the
    source's shift does and the density stays exact. Cost per sample: one FFT convolution of
    `taps` and the net's two convs per frame (about 1% of the "cpu" SqueezeWave's FLOPs at
    256 taps).

    Args:
        features: the mel settings of the conditioning.
        taps: length of each frame's response (<= n_fft).
        steps_per_frame: r, the `cond` steps per frame; its first n_mels channels are the
            mel frames repeated r times (SqueezeWave's `FrameRateConditioner`, fold <= hop).
        hidden: channels of the net's hidden layer.
    """

    KERNEL_SIZE: int = 3  # frames each conv of the net reads; two convs: 2 frames each side

    def __init__(
        self, features: FeatureConfig, taps: int, steps_per_frame: int, hidden: int = 64
    ) -> None:
        super().__init__()
        if not 1 <= taps <= features.n_fft:
            raise ValueError(f"pulse_taps must be in [1, n_fft = {features.n_fft}], got {taps}")
        self.n_mels, self.n_fft, self.taps = features.n_mels, features.n_fft, taps
        self.steps_per_frame = steps_per_frame
        self.crossfade = CrossfadedFilter(features.hop_length, taps)
        weights, _ = band_interpolation(features)
        self.register_buffer("interpolation", torch.tensor(weights, dtype=torch.float32))
        padding = (self.KERNEL_SIZE - 1) // 2
        self.hidden = nn.Conv1d(features.n_mels, hidden, self.KERNEL_SIZE, padding=padding)
        self.correction = zero_gain_conv(hidden, features.n_mels, self.KERNEL_SIZE)

    @property
    def reach(self) -> int:
        """Samples of pulses and mel either side that one output sample depends on."""
        hop = self.crossfade.hop
        frames = self.KERNEL_SIZE - 1  # the two convs' context, in frames each side
        return max(self.taps - 1, hop // 2) + frames * hop

    def forward(self, pulses: Tensor, cond: Tensor) -> Tensor:
        """Folded pulses (B, G, S) and the frame-rate `cond` (B, C, S) -> the shaped pulses
        (B, G, S); the filters are made and applied in at least float32 (outside autocast)."""
        mels = cond[:, : self.n_mels, :: self.steps_per_frame]
        return full_precision(self._shape, pulses, mels).to(pulses.dtype)

    def responses(self, mels: Tensor) -> Tensor:
        """(B, n_mels, F) natural-log mels -> (B, F, taps) minimum-phase responses, in at
        least float32 (the FFTs have no bf16 kernels)."""
        weight = self.hidden.weight
        hidden = nn.functional.leaky_relu(self.hidden(mels.to(weight.dtype)), 0.2)
        correction = self.correction(hidden)
        dtype = at_least_float32(correction.dtype)
        log_magnitude = torch.einsum(
            "fb,nbj->njf", self.interpolation.to(dtype), correction.to(dtype)
        )
        return minimum_phase(log_magnitude, self.n_fft, self.taps)

    def _shape(self, pulses: Tensor, mels: Tensor) -> Tensor:
        responses = self.responses(mels)
        batch, fold, steps = pulses.shape
        audio = pulses.transpose(1, 2).reshape(batch, fold * steps).to(responses.dtype)
        shaped = self.crossfade(audio, responses[:, :, None])[:, 0]  # audio sample s G + i
        return shaped.reshape(batch, steps, fold).transpose(1, 2)


class HarmonicSource(Flow):
    """y = g p + exp(v log s) z on z of G channels (see module).

    `cond` (B, C, S) holds the pulses and the voicing folded like z (`fold` of `pulse_source`,
    2 G channels) from channel `channel` on: G channels of pulses, then G of voicing.

    Args:
        channel: index of the first pulse channel in `cond` (negative: from the end).
        channels: G, samples of z per step (1 at audio rate).
        noise: s, the noise scale in voiced samples (fixed).
        init_gain: g at initialisation.
        shaper: a learned filter of the pulses (`PulseShaper`); None: the pulses as they are.
    """

    def __init__(
        self,
        channel: int,
        channels: int = 1,
        noise: float = 0.1,
        init_gain: float = 1.0,
        shaper: PulseShaper | None = None,
    ) -> None:
        super().__init__()
        if not noise > 0:
            raise ValueError(f"source_noise must be > 0 (the voiced noise scale), got {noise}")
        if not init_gain > 0:
            raise ValueError(f"the source's init_gain must be > 0, got {init_gain}")
        self.channel, self.channels, self.log_noise = channel, channels, math.log(noise)
        self.log_gain = nn.Parameter(torch.tensor(math.log(init_gain)))
        self.shaper = shaper

    def location_scale(self, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, C, S) cond -> the shift g p and the log-scale v log s, each (B, G, S)."""
        if cond is None:
            raise ValueError("HarmonicSource needs cond (with its pulse and voicing channels)")
        first = self.channel % cond.shape[1]
        pulses = cond[:, first : first + self.channels]
        voiced = cond[:, first + self.channels : first + 2 * self.channels]
        if self.shaper is not None:
            pulses = self.shaper(pulses, cond)
        return torch.exp(self.log_gain) * pulses, voiced * self.log_noise

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.location_scale(cond)
        return loc + torch.exp(log_scale) * z, log_scale.sum(dim=(1, 2))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.location_scale(cond)
        return (x - loc) * torch.exp(-log_scale), -log_scale.sum(dim=(1, 2))

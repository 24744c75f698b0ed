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

from wavflow.flows.base import Flow


class HarmonicSource(Flow):
    """y = g p + exp(v log s) z on z of G channels (see module).

    `cond` (B, C, S) holds the pulses and the voicing folded like z (`fold` of `pulse_source`,
    2 G channels) from channel `channel` on: G channels of pulses, then G of voicing.

    Args:
        channel: index of the first pulse channel in `cond` (negative: from the end).
        channels: G, samples of z per step (1 at audio rate).
        noise: s, the noise scale in voiced samples (fixed).
        init_gain: g at initialisation.
    """

    def __init__(
        self, channel: int, channels: int = 1, noise: float = 0.1, init_gain: float = 1.0
    ) -> None:
        super().__init__()
        if not noise > 0:
            raise ValueError(f"source_noise must be > 0 (the voiced noise scale), got {noise}")
        if not init_gain > 0:
            raise ValueError(f"the source's init_gain must be > 0, got {init_gain}")
        self.channel, self.channels, self.log_noise = channel, channels, math.log(noise)
        self.log_gain = nn.Parameter(torch.tensor(math.log(init_gain)))

    def location_scale(self, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, C, S) cond -> the shift g p and the log-scale v log s, each (B, G, S)."""
        if cond is None:
            raise ValueError("HarmonicSource needs cond (with its pulse and voicing channels)")
        first = self.channel % cond.shape[1]
        pulses = cond[:, first : first + self.channels]
        voiced = cond[:, first + self.channels : first + 2 * self.channels]
        return torch.exp(self.log_gain) * pulses, voiced * self.log_noise

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.location_scale(cond)
        return loc + torch.exp(log_scale) * z, log_scale.sum(dim=(1, 2))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc, log_scale = self.location_scale(cond)
        return (x - loc) * torch.exp(-log_scale), -log_scale.sum(dim=(1, 2))

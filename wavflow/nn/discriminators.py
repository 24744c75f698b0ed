"""HiFi-GAN's multi-period and multi-scale discriminators, sized for CPU training.

Each sub-discriminator maps audio (B, 1, T) to a map of scores and the activations of every
layer (for the feature-matching loss). `Discriminators` runs them all:

- `PeriodDiscriminator(p)` folds the waveform into (T / p, p) and convolves along the first
  axis only, so it sees every p-th sample: periodic structure (pitch pulses) at period p.
- `ScaleDiscriminator(pool)` convolves the waveform average-pooled by `pool`, with wide grouped
  kernels: the smooth structure at that scale.

Widths are `channels` at the first layer, doubled per layer up to `max_channels`: HiFi-GAN's
(32 -> 1024 for the periods, 128 -> 1024 for the scales) cost as much per crop as the IAF
student itself on a CPU, so the recipes train narrower ones.

References:
    Kong et al., "HiFi-GAN", arXiv:2010.05646 (MPD, MSD, least-squares losses, feature
    matching).
    Kumar et al., "MelGAN", arXiv:1910.06711 (the multi-scale discriminator).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

LEAK = 0.1  # HiFi-GAN's leaky ReLU slope

# (scores, per-layer activations) of one sub-discriminator
Judgement = tuple[Tensor, list[Tensor]]


def judge(layers: nn.ModuleList, score: nn.Module, x: Tensor) -> Judgement:
    """Run `layers` (each followed by a leaky ReLU) then `score`, keeping every activation."""
    features = []
    for layer in layers:
        x = F.leaky_relu(layer(x), LEAK)
        features.append(x)
    scores = score(x)
    return scores, [*features, scores]


def layer_widths(n_layers: int, channels: int, max_channels: int) -> list[int]:
    """Output channels of each layer: `channels` doubled per layer, capped at `max_channels`."""
    return [min(channels * 2**i, max_channels) for i in range(n_layers)]


class PeriodDiscriminator(nn.Module):
    """Scores audio folded by `period`: (B, 1, T) -> scores (B, 1, T', period).

    Args:
        period: samples between the positions one column sees.
        channels: first layer's width; doubled per layer up to `max_channels`.
        max_channels: the widest layer.
    """

    def __init__(self, period: int, channels: int = 16, max_channels: int = 256) -> None:
        super().__init__()
        self.period = period
        widths = layer_widths(4, channels, max_channels)
        inputs = [1, *widths]
        # Kernel 5 with stride 3 along time, as HiFi-GAN; the last layer keeps the resolution.
        self.layers = nn.ModuleList(
            nn.Conv2d(c_in, c_out, (5, 1), (3, 1), padding=(2, 0))
            for c_in, c_out in zip(inputs[:-1], widths)
        )
        self.layers.append(nn.Conv2d(widths[-1], widths[-1], (5, 1), 1, padding=(2, 0)))
        self.score = nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0))

    def forward(self, audio: Tensor) -> Judgement:
        batch, _, length = audio.shape
        pad = -length % self.period
        if pad:  # reflect so the fold is whole without inventing a silence
            audio = F.pad(audio, (0, pad), mode="reflect")
        # (B, 1, T) -> (B, 1, T / p, p)
        return judge(self.layers, self.score, audio.view(batch, 1, -1, self.period))


class ScaleDiscriminator(nn.Module):
    """Scores audio average-pooled by `pool`: (B, 1, T) -> scores (B, 1, T').

    Args:
        pool: the pooling factor (1: raw audio; HiFi-GAN uses 1, 2, 4).
        channels: first layer's width; doubled per layer up to `max_channels`.
        max_channels: the widest layer.
    """

    def __init__(self, pool: int, channels: int = 16, max_channels: int = 256) -> None:
        super().__init__()
        self.pool = pool
        widths = layer_widths(5, channels, max_channels)
        self.layers = nn.ModuleList([nn.Conv1d(1, widths[0], 15, 1, padding=7)])
        # Wide grouped kernels downsample by 4 twice, then 2: cheap receptive field.
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], (4, 4, 2, 1)):
            groups = max(1, c_in // 4)
            self.layers.append(nn.Conv1d(c_in, c_out, 41, stride, padding=20, groups=groups))
        self.score = nn.Conv1d(widths[-1], 1, 3, 1, padding=1)

    def forward(self, audio: Tensor) -> Judgement:
        x = (
            F.avg_pool1d(audio, self.pool * 2, self.pool, padding=self.pool)
            if self.pool > 1
            else audio
        )
        return judge(self.layers, self.score, x)


class Discriminators(nn.Module):
    """All sub-discriminators: audio (B, 1, T) -> one `Judgement` per sub-discriminator.

    Args:
        periods: a `PeriodDiscriminator` per period (HiFi-GAN: 2, 3, 5, 7, 11).
        scales: a `ScaleDiscriminator` per pooling factor (HiFi-GAN: 1, 2, 4).
        channels: every sub-discriminator's first width.
        max_channels: their widest layer.
    """

    def __init__(
        self,
        periods: list[int],
        scales: list[int],
        channels: int = 16,
        max_channels: int = 256,
    ) -> None:
        super().__init__()
        self.judges = nn.ModuleList(
            [PeriodDiscriminator(p, channels, max_channels) for p in periods]
            + [ScaleDiscriminator(s, channels, max_channels) for s in scales]
        )

    def forward(self, audio: Tensor) -> list[Judgement]:
        return [judge(audio) for judge in self.judges]


def discriminator_loss(real: list[Judgement], fake: list[Judgement]) -> Tensor:
    """Least-squares loss of the discriminators: sum over them of mean (1 - D(real))^2 +
    mean D(fake)^2 (real scored 1, generated 0)."""
    total = 0.0
    for (real_scores, _), (fake_scores, _) in zip(real, fake):
        total = total + (1 - real_scores).square().mean() + fake_scores.square().mean()
    return total


def generator_loss(fake: list[Judgement]) -> Tensor:
    """Least-squares loss of the generator: sum over discriminators of mean (1 - D(fake))^2."""
    return sum((1 - scores).square().mean() for scores, _ in fake)


def feature_matching_loss(real: list[Judgement], fake: list[Judgement]) -> Tensor:
    """Sum over discriminators of the mean over their layers of mean |f(real) - f(fake)|
    (the real activations detached: this term trains the generator only)."""
    total = 0.0
    for (_, real_features), (_, fake_features) in zip(real, fake):
        layers = [(r.detach() - f).abs().mean() for r, f in zip(real_features, fake_features)]
        total = total + sum(layers) / len(layers)
    return total

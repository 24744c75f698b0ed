"""Conditioning: mel frames upsampled to audio rate, plus an optional speaker embedding."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def upsample_factors(hop_length: int, max_factor: int = 16) -> list[int]:
    """Split `hop_length` into factors of at most `max_factor` whose product is the hop.

    Example: 256 -> [16, 16]; 200 -> [10, 5, 4]. A prime above `max_factor` stays whole.
    """
    if hop_length < 1:
        raise ValueError(f"hop_length must be positive, got {hop_length}")
    primes, n, p = [], hop_length, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    factors: list[int] = []
    for prime in sorted(primes, reverse=True):
        if factors and factors[-1] * prime <= max_factor:
            factors[-1] *= prime
        else:
            factors.append(prime)
    return factors or [1]


class MelUpsampler(nn.Module):
    """Learned upsampling of mel frames to audio rate: repeat each frame, then smooth in time.

    Each stage repeats frames `s` times and applies a (1, 2s + 1) conv over time that starts as a
    moving average, so a new upsampler is a smoothed nearest-neighbour interpolation. The factors
    come from the hop (`upsample_factors`), never a fixed list.

    Args:
        hop_length: audio samples per mel frame.
    """

    def __init__(self, hop_length: int) -> None:
        super().__init__()
        self.hop_length = hop_length
        self.factors = upsample_factors(hop_length)
        self.stages = nn.ModuleList()
        for factor in self.factors:
            conv = nn.Conv2d(1, 1, (1, 2 * factor + 1), padding=(0, factor), bias=False)
            nn.init.constant_(conv.weight, 1.0 / (2 * factor + 1))
            self.stages.append(conv)

    def forward(self, feats: Tensor) -> Tensor:
        """(B, n_mels, frames) -> (B, n_mels, frames * hop_length)."""
        h = feats.unsqueeze(1)  # (B, n_mels, F) -> (B, 1, n_mels, F)
        for factor, conv in zip(self.factors, self.stages):
            h = conv(h.repeat_interleave(factor, dim=-1))
        return h.squeeze(1)


class Conditioner(nn.Module):
    """Builds the audio-rate conditioning `cond` (B, C, T) that every model's layers read.

    `cond` = upsampled mel, with a learned speaker embedding broadcast over time when the model
    has speakers (global conditioning).

    Args:
        n_mels: mel bands of `feats`.
        hop_length: audio samples per frame.
        n_speakers: number of speakers (0: no global conditioning).
        speaker_channels: embedding width.
    """

    def __init__(
        self, n_mels: int, hop_length: int, n_speakers: int = 0, speaker_channels: int = 16
    ) -> None:
        super().__init__()
        self.upsampler = MelUpsampler(hop_length)
        self.speaker = nn.Embedding(n_speakers, speaker_channels) if n_speakers else None
        self.out_channels = n_mels + (speaker_channels if n_speakers else 0)

    def forward(self, feats: Tensor, speaker: Tensor | None = None) -> Tensor:
        """(B, n_mels, F), speaker ids (B,) -> cond (B, out_channels, F * hop_length)."""
        cond = self.upsampler(feats)
        if self.speaker is None:
            return cond
        if speaker is None:
            raise ValueError("this model was trained with speakers: pass a speaker id per item")
        embedding = self.speaker(speaker)[:, :, None]  # (B, E) -> (B, E, 1)
        return torch.cat([cond, embedding.expand(-1, -1, cond.shape[-1])], dim=1)

"""Flow layers that only move values, with log-det 0: folding time into channels (Squeeze),
fixed channel permutations, and multi-scale factoring (FactorOut, whose log-det is its inner
flow's). Tensors are (B, C, T).

References:
    Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803.
    Kim et al., "FloWaveNet", arXiv:1811.02155.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from wavflow.flows.base import Flow


def zero_logdet(x: Tensor) -> Tensor:
    """The log-det (B,) of a volume-preserving layer: zeros in the dtype of `x` (B, ...)."""
    return x.new_zeros(x.shape[0])


def fold(x: Tensor, factor: int) -> Tensor:
    """(B, C, T) -> (B, C * factor, T // factor).

    Channel c * factor + i at step t holds x[c, t * factor + i] (WaveGlow's and FloWaveNet's
    layout for both audio and mel).
    """
    B, C, T = x.shape
    if T % factor:
        raise ValueError(f"Squeeze(factor={factor}) needs T divisible by {factor}, got T={T}")
    x = x.reshape(B, C, T // factor, factor)  # (B, C, T) -> (B, C, T // f, f)
    return x.transpose(2, 3).reshape(B, C * factor, T // factor)  # -> (B, C * f, T // f)


def unfold(x: Tensor, factor: int) -> Tensor:
    """(B, C * factor, T // factor) -> (B, C, T): the inverse of `fold`."""
    B, CF, TF = x.shape
    if CF % factor:
        raise ValueError(f"unsqueeze by {factor} needs channels divisible by {factor}, got {CF}")
    x = x.reshape(B, CF // factor, factor, TF)  # (B, C * f, T // f) -> (B, C, f, T // f)
    return x.transpose(2, 3).reshape(B, CF // factor, TF * factor)  # -> (B, C, T)


class Squeeze(Flow):
    """Folds groups of `factor` samples into channels: (B, C, T) -> (B, C * factor, T / factor).

    By default `cond` is folded the same way (`transform_cond`), so the layers after it see a
    `cond` aligned with their time steps, as WaveGlow and FloWaveNet fold the upsampled mel.
    With `fold_cond=False` the `cond` passes unchanged: for models whose `cond` is already at the
    folded rate (SqueezeWave's frame-rate conditioning). A permutation, so log-det 0. T must be
    divisible by `factor` (ValueError otherwise).

    Args:
        factor: samples per group.
        fold_cond: fold `cond` with the audio (True) or leave it as it is (False).
    """

    def __init__(self, factor: int, fold_cond: bool = True) -> None:
        super().__init__()
        self.factor = factor
        self.fold_cond = fold_cond

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return fold(z, self.factor), zero_logdet(z)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return unfold(x, self.factor), zero_logdet(x)

    def transform_cond(self, cond: Tensor | None, inverse: bool = False) -> Tensor | None:
        if cond is None or not self.fold_cond:
            return cond
        return unfold(cond, self.factor) if inverse else fold(cond, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}" + ("" if self.fold_cond else ", fold_cond=False")


class Permute(Flow):
    """A fixed change of channel order, x[:, c] = z[:, permutation[c]]; log-det 0.

    Args:
        permutation: a permutation of range(C).
    """

    def __init__(self, permutation: Sequence[int] | Tensor) -> None:
        super().__init__()
        permutation = torch.as_tensor(permutation, dtype=torch.long)
        if not torch.equal(permutation.sort().values, torch.arange(len(permutation))):
            raise ValueError(f"not a permutation of range({len(permutation)}): {permutation}")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z[:, self.permutation], zero_logdet(z)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.inverse_permutation], zero_logdet(x)


class Reverse(Permute):
    """Reverses the channel order (RealNVP / Glow's fixed reverse permutation)."""

    def __init__(self, channels: int) -> None:
        super().__init__(list(reversed(range(channels))))


class SwapHalves(Permute):
    """Swaps the two channel halves, [a, b] -> [b, a] (FloWaveNet's `change_order`)."""

    def __init__(self, channels: int) -> None:
        half = (channels + 1) // 2
        super().__init__(list(range(half, channels)) + list(range(half)))


class FactorOut(Flow):
    """Multi-scale factoring: `flow` runs on some channels, the other `n_factored` pass through.

    In the density direction (x -> z) this is the "early output" / split of WaveGlow and
    FloWaveNet: the factored channels are final noise and only the kept ones go deeper. In the
    sampling direction (z -> x) the factored channels are noise injected at this point beside
    what the deeper `flow` produced. log-det = the inner flow's.

    Args:
        flow: applied to the kept channels; must keep their shape.
        n_factored: channels passed straight through.
        factored_first: the factored channels are the first ones (WaveGlow) or the last
            (FloWaveNet).
    """

    def __init__(self, flow: Flow, n_factored: int, factored_first: bool = True) -> None:
        super().__init__()
        self.flow = flow
        self.n_factored = n_factored
        self.factored_first = factored_first

    def _split(self, h: Tensor) -> tuple[Tensor, Tensor]:
        n_kept = h.shape[1] - self.n_factored
        if self.factored_first:
            factored, kept = h.split([self.n_factored, n_kept], dim=1)
        else:
            kept, factored = h.split([n_kept, self.n_factored], dim=1)
        return factored, kept

    def _join(self, factored: Tensor, kept: Tensor) -> Tensor:
        return torch.cat([factored, kept] if self.factored_first else [kept, factored], dim=1)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        factored, kept = self._split(z)
        kept, logdet = self.flow(kept, cond)
        return self._join(factored, kept), logdet

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        factored, kept = self._split(x)
        kept, logdet = self.flow.inverse(kept, cond)
        return self._join(factored, kept), logdet

    def extra_repr(self) -> str:
        return f"n_factored={self.n_factored}, factored_first={self.factored_first}"

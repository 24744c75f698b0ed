"""The Flow interface, its composition, base distributions and the `FlowModel` every student is.

A flow maps noise `z` to audio `x` (the sampling direction, `forward`) and back (`inverse`),
returning the log-Jacobian determinant of the direction it ran, summed to (B,) nats:

    x, logdet_fwd = flow(z, cond)          logdet_fwd = log |det dx/dz|
    z, logdet_inv = flow.inverse(x, cond)  logdet_inv = log |det dz/dx| = -logdet_fwd

so the model density is log q(x) = log p(z) - logdet_fwd = log p(z) + logdet_inv.

References:
    Rezende & Mohamed, "Variational Inference with Normalizing Flows", arXiv:1505.05770.
    Papamakarios et al., "Normalizing Flows for Probabilistic Modeling and Inference",
    arXiv:1912.02762.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from wavflow.capabilities import Capabilities


class Flow(nn.Module):
    """An invertible map z -> x conditioned on `cond`, with its log-determinant.

    Subclasses implement both directions. `cond` is the conditioning aligned with the layer's z
    side (its `forward` input) and both directions take that same `cond`. Only layers that
    reshape time (`Squeeze`) change what the next layer sees; they say how in `transform_cond`,
    which `SequentialFlow` uses to hand every layer a `cond` aligned with it.
    """

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Sampling direction.

        Args:
            z: noise side (B, C, T).
            cond: conditioning (B, C_cond, T) aligned with `z`, or None for unconditioned layers.

        Returns:
            x (B, C', T') and log|det dx/dz| (B,) in nats.
        """
        raise NotImplementedError

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Density direction: the exact inverse of `forward`.

        Args:
            x: data side, shaped like `forward`'s output.
            cond: the same conditioning `forward` takes (aligned with the z side).

        Returns:
            z and log|det dz/dx| (B,) = minus the forward log-det.
        """
        raise NotImplementedError

    def transform_cond(self, cond: Tensor | None, inverse: bool = False) -> Tensor | None:
        """The `cond` aligned with this layer's x side (or, with `inverse`, its z side from x's).

        The identity for every layer that keeps time; `Squeeze` folds time into channels.
        """
        return cond


class SequentialFlow(Flow):
    """Composition z -> f_1 -> f_2 -> ... -> f_n -> x; log-dets add.

    `forward` runs the flows in order, `inverse` in reverse order; each layer gets the `cond`
    aligned with it (see `Flow.transform_cond`). This is the only place a flow is unrolled.

    Args:
        flows: the layers, in the sampling (z -> x) order.
    """

    def __init__(self, flows: Iterable[Flow]) -> None:
        super().__init__()
        self.flows = nn.ModuleList(flows)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for index, flow in enumerate(self.flows):
            z, step_logdet = flow(z, cond)
            if index < len(self.flows) - 1:  # the last layer's x-side cond is never read
                cond = flow.transform_cond(cond)
            logdet = logdet + step_logdet
        return z, logdet

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        conds = [cond]  # conds[i]: the cond layer i reads
        for flow in self.flows[:-1]:
            conds.append(flow.transform_cond(conds[-1]))
        logdet = x.new_zeros(x.shape[0])
        for flow, flow_cond in zip(reversed(self.flows), reversed(conds)):
            x, step_logdet = flow.inverse(x, flow_cond)
            logdet = logdet + step_logdet
        return x, logdet

    def transform_cond(self, cond: Tensor | None, inverse: bool = False) -> Tensor | None:
        for flow in reversed(self.flows) if inverse else self.flows:
            cond = flow.transform_cond(cond, inverse)
        return cond


class Inverse(Flow):
    """Swaps the directions of `flow`: forward = flow.inverse, inverse = flow.forward.

    The `cond` it takes is aligned with its own z side, which is `flow`'s x side.

    Args:
        flow: the flow to invert.
    """

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow.inverse(z, self.flow.transform_cond(cond, inverse=True))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow(x, self.flow.transform_cond(cond, inverse=True))

    def transform_cond(self, cond: Tensor | None, inverse: bool = False) -> Tensor | None:
        return self.flow.transform_cond(cond, not inverse)


class StandardGaussian:
    """Base density N(0, 1) per element: log p(z) = -z^2 / 2 - log(2 pi) / 2."""

    name = "gaussian"

    def sample(
        self,
        shape: Sequence[int],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draws `temperature` * eps, eps ~ N(0, 1), of `shape`; temperature 0 gives zeros."""
        return temperature * torch.randn(
            tuple(shape), generator=generator, device=device, dtype=dtype
        )

    def log_density(self, z: Tensor) -> Tensor:
        """Elementwise log p(z), shaped like `z`."""
        return -0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)

    def log_prob(self, z: Tensor) -> Tensor:
        """(B, ...) -> (B,): log p(z) summed over all but the batch dimension."""
        return self.log_density(z).flatten(1).sum(1)

    def __repr__(self) -> str:
        return "StandardGaussian()"


class StandardLogistic:
    """Base density Logistic(0, 1) per element: log p(z) = -z - 2 softplus(-z).

    Sampled by inverting the CDF: z = log u - log(1 - u), u ~ U(0, 1).
    """

    name = "logistic"

    def sample(
        self,
        shape: Sequence[int],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draws `temperature` * eps, eps ~ Logistic(0, 1), of `shape`; temperature 0: zeros."""
        u = torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)
        # Keep u off 0 and 1 so the logit stays finite.
        eps = torch.finfo(u.dtype).eps
        u = u.clamp(eps, 1 - eps)
        return temperature * (torch.log(u) - torch.log1p(-u))

    def log_density(self, z: Tensor) -> Tensor:
        """Elementwise log p(z), shaped like `z`."""
        return -z - 2 * nn.functional.softplus(-z)

    def log_prob(self, z: Tensor) -> Tensor:
        """(B, ...) -> (B,): log p(z) summed over all but the batch dimension."""
        return self.log_density(z).flatten(1).sum(1)

    def __repr__(self) -> str:
        return "StandardLogistic()"


BaseDistribution = StandardGaussian | StandardLogistic
BASES = {"gaussian": StandardGaussian, "logistic": StandardLogistic}


def make_base(name: str) -> BaseDistribution:
    """ "gaussian" or "logistic" -> the standard base distribution of that name."""
    if name not in BASES:
        raise ValueError(f"unknown base distribution {name!r}; valid: {', '.join(BASES)}")
    return BASES[name]()


class FlowModel(nn.Module):
    """A conditional flow x = f(z; cond), z ~ base, plus the module that builds `cond`.

    log q(x | cond) = log p(z) - log|det dx/dz|,  z = f^-1(x; cond).

    Args:
        flow: the z -> x flow, taking (B, 1, T) noise to (B, 1, T) audio.
        base: the base distribution of z.
        conditioner: maps (feats, speaker) to the `cond` the flow reads.
        time_multiple: T must be a multiple of this (the product of the flow's time folds).
        samples_per_cond_step: audio samples per time step of `cond`: 1 for an audio-rate
            `cond` (most students), the fold for one built at the folded rate (SqueezeWave).

    Students declare what they are (`capabilities`) with the class attributes below (a
    non-causal flow of unstated receptive field by default) and `receptive_field`.
    """

    causal: ClassVar[bool] = False
    chunk_seconds: ClassVar[float | None] = None
    location_scale: ClassVar[bool] = False  # offers `rsample_with_stats`
    takes_features: ClassVar[bool] = False  # its constructor takes the mel settings
    receptive_field: int | None = None
    # Audio samples either side that a layer without convs reads (an output filter), for
    # `coupling_reach`; the flow's convs it finds itself.
    output_filter_reach: int = 0

    def __init__(
        self,
        flow: Flow,
        base: BaseDistribution,
        conditioner: nn.Module,
        time_multiple: int = 1,
        samples_per_cond_step: int = 1,
    ) -> None:
        super().__init__()
        self.flow = flow
        self.base = base
        self.conditioner = conditioner
        self.time_multiple = time_multiple
        self.samples_per_cond_step = samples_per_cond_step

    @property
    def capabilities(self) -> Capabilities:
        """What this student is (see `Capabilities`): one parallel pass, never sequential."""
        return Capabilities(
            sequential=False,
            causal=self.causal,
            receptive_field=self.receptive_field,
            lookahead=self.conditioner.lookahead if self.causal else None,
            time_multiple=self.time_multiple,
            chunk_seconds=self.chunk_seconds,
            takes_pitch=bool(self.conditioner.n_harmonics),
            n_speakers=self.conditioner.n_speakers,
            location_scale=self.location_scale,
        )

    def condition(
        self, feats: Tensor, speaker: Tensor | None = None, f0: Tensor | None = None
    ) -> Tensor:
        """(B, n_mels, frames), speaker ids (B,) or None, F0 (B, frames) Hz or None -> cond
        (B, C, T // samples_per_cond_step) with T = frames * hop_length: what the flow reads."""
        return self.conditioner(feats, speaker, f0)

    def _check_length(self, length: int) -> None:
        if length % self.time_multiple:
            raise ValueError(
                f"{type(self).__name__} needs T divisible by {self.time_multiple} (its time "
                f"folds), got T={length}"
            )

    def sample_noise(
        self, cond: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """z (B, 1, T) from the base distribution, on cond's device and in cond's dtype.

        T = cond's length * `samples_per_cond_step`. The noise is drawn in at least float32 and
        then cast, so a bfloat16 model gets the same noise (rounded) as a float32 one.
        """
        length = cond.shape[-1] * self.samples_per_cond_step
        self._check_length(length)
        shape = (cond.shape[0], 1, length)
        if temperature == 0:
            return cond.new_zeros(shape)
        dtype = torch.promote_types(cond.dtype, torch.float32)
        z = self.base.sample(shape, temperature, generator, device=cond.device, dtype=dtype)
        return z.to(cond.dtype)

    def sample(
        self, cond: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Audio x = f(z; cond), z = temperature * eps. Temperature 0 gives the path of z = 0.

        Args:
            cond: from `condition`, (B, C, T // samples_per_cond_step).
            temperature: scale of the base noise.
            generator: RNG for the noise (on cond's device).

        Returns:
            x: (B, 1, T).
        """
        x, _ = self.flow(self.sample_noise(cond, temperature, generator), cond)
        return x

    def synthesize(
        self,
        cond: Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        state: None = None,
    ) -> tuple[Tensor, None]:
        """`Vocoder.synthesize`: one parallel pass, (B, 1, T). A student keeps no generation
        state (its chunks are exact from their context: `wavflow.streaming`), so `state` must
        be None."""
        if state is not None:
            raise ValueError(
                "a parallel student keeps no generation state: stream it with "
                "wavflow.streaming.stream, which gives each chunk its context"
            )
        return self.sample(cond, temperature, generator), None

    def log_prob(self, x: Tensor, cond: Tensor) -> Tensor:
        """log q(x | cond) = log p(f^-1(x)) + log|det dz/dx|, (B, 1, T) -> (B,) total nats."""
        self._check_length(x.shape[-1])
        z, logdet = self.flow.inverse(x, cond)
        return self.base.log_prob(z) + logdet

    def rsample_and_log_prob(
        self, cond: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One forward pass: x = f(z; cond) and log q(x) = log p(z) - log|det dx/dz|.

        Both are differentiable w.r.t. the parameters (reparametrised through z), as the
        distillation KL needs. `log_q` is the density of the model at temperature 1, at x.

        Args:
            cond: from `condition`, (B, C, T // samples_per_cond_step).
            temperature: scale of the base noise.
            generator: RNG for the noise.

        Returns:
            x (B, 1, T) and log_q (B,) in total nats.
        """
        z = self.sample_noise(cond, temperature, generator)
        x, logdet = self.flow(z, cond)
        return x, self.base.log_prob(z) - logdet

"""Per-timestep output distributions of the teacher: Gaussian and discretised logistic mixture.

Both heads read parameters `params` (B, P, T) and audio `x` (B, 1, T) in [-1, 1], and give
log-DENSITIES in nats per sample, so that the two heads, the students and a context-free
baseline are compared in the same units. The mixture is a discretised distribution over
`n_bins` levels; its log-probability mass is turned into a density by subtracting the log
of the bin width 2 / (n_bins - 1).

Sampling is driven by explicit noise (`draw_noise`) so that two generation paths given the same
noise produce the same samples.

References:
    Salimans et al., "PixelCNN++", arXiv:1701.05517 (discretised logistic mixture).
    van den Oord et al., "Parallel WaveNet", arXiv:1711.10433.
    Ping et al., "ClariNet", arXiv:1807.07281 (Gaussian output, log-scale floor).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class GaussianOutput:
    """x_t ~ N(mean_t, exp(log_scale_t)^2), log_scale floored at `log_scale_min`.

    `params` (B, 2, T) = [mean, raw log-scale].
    """

    def __init__(self, log_scale_min: float = -7.0) -> None:
        self.log_scale_min = log_scale_min
        self.n_params = 2
        self.noise_channels = 1

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 2, T) -> mean (B, 1, T), floored log-scale (B, 1, T)."""
        mean, log_scale = params.split(1, dim=1)
        return mean, log_scale.clamp_min(self.log_scale_min)

    def shift_location(self, params: Tensor, shift: Tensor) -> Tensor:
        """Parameters of the distribution moved by `shift` (B, 1, T): the mean."""
        return torch.cat([params[:, :1] + shift, params[:, 1:]], dim=1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-density of x (B, 1, T) in nats, per sample: (B, 1, T)."""
        mean, log_scale = self.split(params)
        return -0.5 * ((x - mean) * torch.exp(-log_scale)).square() - log_scale - HALF_LOG_TWO_PI

    def draw_noise(
        self,
        batch: int,
        length: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Standard normal noise (B, 1, T) for `sample`."""
        return torch.randn(batch, 1, length, generator=generator, device=device)

    def sample(self, params: Tensor, noise: Tensor, temperature: float = 1.0) -> Tensor:
        """x = mean + temperature * scale * noise, clipped to [-1, 1]; (B, 1, T)."""
        mean, log_scale = self.split(params)
        return (mean + temperature * torch.exp(log_scale) * noise).clamp(-1.0, 1.0)


class LogisticMixtureOutput:
    """Discretised mixture of `n_mixtures` logistics over `n_bins` levels in [-1, 1].

    `params` (B, 3K, T) = [mixture logits, means, raw log-scales], K components each.
    """

    def __init__(self, n_mixtures: int = 10, log_scale_min: float = -7.0, n_bins: int = 65536):
        self.n_mixtures, self.log_scale_min, self.n_bins = n_mixtures, log_scale_min, n_bins
        self.n_params = 3 * n_mixtures
        self.noise_channels = n_mixtures + 1
        self.half_bin = 1.0 / (n_bins - 1)

    def split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 3K, T) -> logits, means, floored log-scales, each (B, K, T)."""
        logits, means, log_scales = params.split(self.n_mixtures, dim=1)
        return logits, means, log_scales.clamp_min(self.log_scale_min)

    def shift_location(self, params: Tensor, shift: Tensor) -> Tensor:
        """Parameters of the distribution moved by `shift` (B, 1, T): every component's mean."""
        logits, means, log_scales = params.split(self.n_mixtures, dim=1)
        return torch.cat([logits, means + shift, log_scales], dim=1)

    def log_mass(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-probability of the bin holding x (B, 1, T): (B, 1, T) nats.

        The outermost bins take the tails: P(x = -1) = CDF(-1 + half bin), P(x = 1) = 1 - CDF.
        """
        logits, means, log_scales = self.split(params)
        centred = x - means
        inv_scale = torch.exp(-log_scales)
        upper = inv_scale * (centred + self.half_bin)
        lower = inv_scale * (centred - self.half_bin)
        log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper)
        log_one_minus_cdf_lower = -F.softplus(lower)  # log (1 - sigmoid(lower))
        mid = inv_scale * centred
        # log(sigmoid(upper) - sigmoid(lower)), stable form; when the bin is too narrow to resolve
        # in float, fall back to density * bin width at its centre.
        cdf_delta = torch.sigmoid(upper) - torch.sigmoid(lower)
        log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)
        log_inner = torch.where(
            cdf_delta > 1e-5,
            torch.log(cdf_delta.clamp_min(1e-12)),
            log_pdf_mid + math.log(2 * self.half_bin),
        )
        log_bin = torch.where(
            x < -1 + self.half_bin,
            log_cdf_upper,
            torch.where(x > 1 - self.half_bin, log_one_minus_cdf_lower, log_inner),
        )
        return torch.logsumexp(log_bin + F.log_softmax(logits, dim=1), dim=1, keepdim=True)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-density of x (B, 1, T): the bin's log mass minus log(bin width); (B, 1, T)."""
        return self.log_mass(params, x) - math.log(2 * self.half_bin)

    def draw_noise(
        self,
        batch: int,
        length: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Uniform noise (B, K + 1, T) in (1e-5, 1 - 1e-5): K for the choice, 1 for the draw."""
        shape = (batch, self.n_mixtures + 1, length)
        return torch.rand(shape, generator=generator, device=device) * (1 - 2e-5) + 1e-5

    def sample(self, params: Tensor, noise: Tensor, temperature: float = 1.0) -> Tensor:
        """Pick a component (Gumbel-max on its logits), draw from its logistic; (B, 1, T).

        Temperature scales the logistic's scale; 0 gives the chosen component's mean.
        """
        logits, means, log_scales = self.split(params)
        minus_gumbel, logistic = self.noise_terms(noise).split([self.n_mixtures, 1], dim=1)
        choice = (logits - minus_gumbel).argmax(dim=1, keepdim=True)
        mean = means.gather(1, choice)
        scale = torch.exp(log_scales.gather(1, choice))
        return (mean + temperature * scale * logistic).clamp(-1.0, 1.0)

    def noise_terms(self, noise: Tensor) -> Tensor:
        """Uniform noise (B, K + 1, T) -> [log(-log u) (B, K, T): minus Gumbel noise for the
        component choice; log(u) - log(1 - u) (B, 1, T): a standard logistic draw]."""
        u_choice, u_draw = noise.split([self.n_mixtures, 1], dim=1)
        logistic = torch.log(u_draw) - torch.log1p(-u_draw)
        return torch.cat([torch.log(-torch.log(u_choice)), logistic], dim=1)


def shift_by_excitation(
    head: GaussianOutput | LogisticMixtureOutput, stack_out: Tensor, excitation: Tensor
) -> Tensor:
    """Head parameters (B, P, T) from a stack output (B, P + E, T) whose last E channels are
    amplitudes a_e: the location moves by sum_e a_e(t) excitation_e(t), excitation (B, E, T)."""
    params, amplitudes = stack_out.split([head.n_params, excitation.shape[1]], dim=1)
    return head.shift_location(params, (amplitudes * excitation).sum(dim=1, keepdim=True))


def build_output(
    output: str, n_mixtures: int, log_scale_min: float
) -> GaussianOutput | LogisticMixtureOutput:
    """The head named by `[teacher] output`."""
    if output == "gaussian":
        return GaussianOutput(log_scale_min)
    if output == "mol":
        return LogisticMixtureOutput(n_mixtures, log_scale_min)
    raise ValueError(f"unknown teacher output '{output}': use 'gaussian' or 'mol'")

"""Per-timestep output distributions of the teacher: Gaussian and discretised logistic mixture.

Both heads read parameters `params` (B, P, T) and audio `x` (B, 1, T) in [-1, 1], and give
log-DENSITIES in nats per sample, so that the two heads, the students and a context-free
baseline are compared in the same units. The mixture is a discretised distribution over
`n_bins` levels; its log-probability mass is turned into a density by subtracting the log
of the bin width 2 / (n_bins - 1) (see `LogisticMixtureOutput` for the exact density, its
support and what happens beyond it).

Both heads compute in at least float32: bfloat16 or float16 parameters (a model run under
autocast) are cast up inside `log_prob`, `log_mass` and `sample`, so that a low log-scale floor
(1 / scale up to 1.2e6 at -14) does not meet an 8-bit mantissa; float64 stays float64.

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

from wavflow.nn.precision import at_least_float32

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 - exp(-d)) for d > 0, accurate at both ends (Maechler 2012's switch at log 2)."""
    d = d.clamp_min(torch.finfo(d.dtype).tiny)  # 1 / scale so large that d underflows to 0
    return torch.where(d < math.log(2), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


class GaussianOutput:
    """x_t ~ N(mean_t, exp(log_scale_t)^2), log_scale floored at `log_scale_min`.

    `params` (B, 2, T) = [mean, raw log-scale]. `log_prob` is the Gaussian density on the
    whole real line (a student's x beyond [-1, 1] is scored as it is); `sample` clips to [-1, 1].
    Floors down to about -14 (scale 8e-7) stay finite and accurate in float32.
    """

    name = "gaussian"  # its `[teacher] output` name, which consumers ask instead of its type

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

    def scale(self, params: Tensor, log_gain: Tensor) -> Tensor:
        """Parameters of the distribution of exp(log_gain) X, log_gain (B, 1, T): the mean times
        the gain, the raw log-scale plus log_gain (the floor in `split` applies afterwards)."""
        return torch.cat([params[:, :1] * torch.exp(log_gain), params[:, 1:] + log_gain], dim=1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-density of x (B, 1, T) in nats, per sample: (B, 1, T), in at least float32."""
        dtype = at_least_float32(params.dtype, x.dtype)
        mean, log_scale = self.split(params.to(dtype))
        standardised = (x.to(dtype) - mean) * torch.exp(-log_scale)
        return -0.5 * standardised.square() - log_scale - HALF_LOG_TWO_PI

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
        mean, log_scale = self.split(params.to(at_least_float32(params.dtype)))
        return (mean + temperature * torch.exp(log_scale) * noise).clamp(-1.0, 1.0)


class LogisticMixtureOutput:
    """Discretised mixture of `n_mixtures` logistics over `n_bins` levels in [-1, 1].

    `params` (B, 3K, T) = [mixture logits, means, raw log-scales], K components each. With
    h = 1 / (n_bins - 1), the levels are v_i = -1 + 2 h i and bin i is [v_i - h, v_i + h].

    The discrete distribution (PixelCNN++): with F the mixture's CDF, bin i has mass
    P_i = F(v_i + h) - F(v_i - h), and the outermost bins take the tails, P_0 = F(-1 + h),
    P_top = 1 - F(1 - h). These masses sum to 1; `log_mass` at a level is log P_i.

    The density `log_prob` scores is that of a continuous X whose bin masses these are, defined
    on the whole real line and integrating to exactly 1: draw Y from the mixture and clip it
    to [-1, 1], which leaves atoms A_top = 1 - F(1) at 1 and A_bottom = F(-1) at -1; add
    uniform noise on [-h, h] to a Y inside (-1, 1), and to an atom noise that is uniform on the
    half bin inside [-1, 1] with probability 1/2, else exponential with mean h outward. Then

        2 h p(x) = F(min(x + h, 1)) - F(max(x - h, -1))       (0 when the interval is empty)
                 + A_top e^(-max(x - 1, 0) / h) [x >= 1 - h] + (the mirror image at -1),

    which at a level v_i equals P_i, so p(v_i) = P_i / (2 h): teacher training on quantised
    audio maximises the discrete likelihood in density units. Between levels p is continuous
    and differentiable in x (it jumps only at +-(1 - h), where an atom's half bin starts), so a
    distilled student's continuous x gets a gradient everywhere. Beyond full scale (a flow's x
    is unbounded) the log-density falls by 1 nat per half bin, a gradient of -1 / h per unit of
    x pulling x back, and no mass is created there: a student's KL against it is a true KL.
    (Clamping x to the bins instead would score everything beyond the edge alike: no gradient,
    and infinite mass, so that spreading a student's draws far beyond it lowers the KL without
    bound.)

    Every log-mass is computed exactly in log space (no PixelCNN++ fallback to density times
    bin width), so that 1 / scale up to 1.2e6 (a log-scale floor of -14, r9y9/wavenet_vocoder's
    log(1e-14) for 16-bit audio) stays finite and accurate in float32. The inputs' own float32
    rounding remains: near +-1 it is 6e-8, 7% of a scale at that floor.
    """

    name = "mol"  # its `[teacher] output` name, which consumers ask instead of its type

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

    def scale(self, params: Tensor, log_gain: Tensor) -> Tensor:
        """Parameters of the mixture of exp(log_gain) X, log_gain (B, 1, T): every component's
        mean times the gain, its raw log-scale plus log_gain (the floor in `split` applies
        afterwards; the bins stay where they are, in the scaled variable's units)."""
        logits, means, log_scales = params.split(self.n_mixtures, dim=1)
        return torch.cat([logits, means * torch.exp(log_gain), log_scales + log_gain], dim=1)

    def log_mass(self, params: Tensor, x: Tensor) -> Tensor:
        """log(2 h p(x)) for x (B, 1, T) (see the class docstring): (B, 1, T) nats.

        At a level v_i this is log P_i, the bin's log-mass, the outermost bins holding the
        tails. Computed in at least float32.
        """
        dtype = at_least_float32(params.dtype, x.dtype)
        logits, means, log_scales = self.split(params.to(dtype))
        x = x.to(dtype)
        h = self.half_bin
        inv_scale = torch.exp(-log_scales)
        centred = x - means
        top, bottom = x >= 1 - h, x <= -1 + h  # [x - h, x + h] reaches past 1 or -1
        # Unclipped Y in [lo, hi] = [x - h, x + h] cut to [-1, 1]; hi - lo computed without
        # cancellation: exactly 2 h away from the edges.
        overlap = 2 * h - F.relu(x - (1 - h)) - F.relu(-(1 - h) - x)
        nonempty = overlap > 0
        upper = torch.where(top, 1 - means, centred + h) * inv_scale
        lower = torch.where(bottom, -1 - means, centred - h) * inv_scale
        # sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - exp(-(u - l))): exact in logs for
        # any u > l, with no cancellation when the bin spans many scales or lies far in a tail.
        # An empty interval takes a dummy width so that no gradient meets log(0) (where's NaN).
        width = torch.where(nonempty, overlap, 2 * h) * inv_scale
        log_inside = -F.softplus(-upper) - F.softplus(lower) + _log1mexp(width)
        log_inside = torch.where(nonempty, log_inside, -math.inf)
        # The atoms: log A + log(2 h * noise density), 0 on the inner half bin, -distance / h out.
        log_top = -F.softplus((1 - means) * inv_scale) - F.relu(x - 1) / h
        log_top = torch.where(top, log_top, -math.inf)
        log_bottom = -F.softplus((1 + means) * inv_scale) - F.relu(-1 - x) / h
        log_bottom = torch.where(bottom, log_bottom, -math.inf)
        log_weights = F.log_softmax(logits, dim=1)
        # (B, K, T) x 3 -> (B, 3K, T): every component's three parts, weighted, summed in logs
        terms = torch.cat([log_inside, log_top, log_bottom], dim=1) + log_weights.repeat(1, 3, 1)
        return torch.logsumexp(terms, dim=1, keepdim=True)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-density of x (B, 1, T) on the real line (class docstring): `log_mass` minus
        log(bin width 2 h); (B, 1, T)."""
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

        The draw is continuous, clipped to [-1, 1]: rounded to the nearest level it is a draw from
        the bin masses P_i. Temperature scales the logistic's scale; 0 gives the chosen
        component's mean.
        """
        logits, means, log_scales = self.split(params.to(at_least_float32(params.dtype)))
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

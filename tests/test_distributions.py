"""The output heads as distributions: masses, normalisation, edges, low log-scale floors."""

from __future__ import annotations

import math

import pytest
import torch
from factories import tiny_teacher

from wavflow.distributions import GaussianOutput, LogisticMixtureOutput, build_output
from wavflow.generation import IncrementalWaveNet, load_kernel

FLOORS = (-7.0, -14.0)


def mixture_params(k: int, t: int, floor: float, seed: int = 0) -> torch.Tensor:
    """(1, 3k, t) float64: means spread over [-1.1, 1.1] with some at and beyond the edges,
    raw log-scales from 2 below the floor (clamped) to 6 above it."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, k, t, generator=generator, dtype=torch.float64)
    means = torch.rand(1, k, t, generator=generator, dtype=torch.float64) * 2.2 - 1.1
    means[:, :4] = torch.tensor([0.99995, -0.99999, 1.00002, 0.3], dtype=torch.float64)[:, None]
    log_scales = floor - 2 + 8 * torch.rand(1, k, t, generator=generator, dtype=torch.float64)
    log_scales[:, :3] = floor - 1  # tiny scales right at the edges
    return torch.cat([logits, means, log_scales], dim=1)


@pytest.mark.parametrize("floor", FLOORS)
def test_mixture_bin_masses_sum_to_one(floor: float) -> None:
    n_bins = 65536
    head = LogisticMixtureOutput(n_mixtures=10, log_scale_min=floor, n_bins=n_bins)
    levels = torch.linspace(-1, 1, n_bins, dtype=torch.float64)[None, None]
    params = mixture_params(10, 4, floor)
    for t in range(params.shape[-1]):
        mass = head.log_mass(params[..., t : t + 1].expand(-1, -1, n_bins), levels).exp()
        assert abs(float(mass.sum()) - 1) < 1e-11, t
        # float32: the arithmetic matches float64 on the same (rounded) inputs; rounding the
        # levels and means near +-1 to float32 (3e-8) moves a mass by up to 4% of a bin at
        # scale 8e-7, so the sum itself is only good to ~1e-4 there.
        params32 = params[..., t : t + 1].expand(-1, -1, n_bins).float()
        mass32 = head.log_mass(params32, levels.float()).exp()
        rounded = head.log_mass(params32.double(), levels.float().double()).exp()
        assert mass32.dtype == torch.float32
        assert abs(float(mass32.double().sum() - rounded.sum())) < 1e-6, t
        assert abs(float(mass32.double().sum()) - 1) < 1e-4, t


@pytest.mark.parametrize("floor", FLOORS)
def test_mixture_mass_at_levels_is_the_pixelcnn_bin_mass(floor: float) -> None:
    head = LogisticMixtureOutput(n_mixtures=10, log_scale_min=floor)
    params = mixture_params(10, 1, floor, seed=3)
    logits, means, log_scales = head.split(params)
    weights = torch.softmax(logits, dim=1)[0, :, 0]
    means, scales = means[0, :, 0], log_scales[0, :, 0].exp()
    h = head.half_bin

    def cdf(value: float) -> torch.Tensor:
        return torch.sigmoid((value - means) / scales)

    for level in [-1.0, -1 + 2 * h, -0.2, 0.3, 1 - 2 * h, 1.0]:
        upper = torch.ones_like(means) if level == 1 else cdf(level + h)
        lower = torch.zeros_like(means) if level == -1 else cdf(level - h)
        direct = float((weights * (upper - lower)).sum())
        x = torch.full((1, 1, 1), level, dtype=torch.float64)
        got = float(head.log_mass(params, x).exp())
        # `direct` subtracts CDFs near 1: accurate to ~1e-16 absolute, not relative.
        assert math.isclose(got, direct, rel_tol=1e-9, abs_tol=1e-14), level
        if direct > 1e-6:
            assert math.isclose(float(head.log_prob(params, x)), math.log(direct / (2 * h)))


def _integration_grid(head: LogisticMixtureOutput, params: torch.Tensor) -> list[torch.Tensor]:
    """Pieces of the real line on which the density is continuous, out to 60 half bins beyond
    +-1 (the tail left out weighs at most e^-60), each a sorted grid, dense near every
    component's mu +- h, where a tiny-scale component's smoothed density changes."""
    h = head.half_bin
    _, means, log_scales = head.split(params)
    breaks = [-1 - 60 * h, -1 - h, -1, -1 + h, 1 - h, 1, 1 + h, 1 + 60 * h]
    pieces = []
    for a, b in zip(breaks[:-1], breaks[1:], strict=True):
        step = 1e-5 if a == -1 + h else min(1e-5, h / 300)  # atoms decay on the scale h
        points = [torch.linspace(a, b, max(2001, int((b - a) / step)), dtype=torch.float64)]
        for mean, scale in zip(means.flatten().tolist(), log_scales.exp().flatten().tolist()):
            for centre in (mean - h, mean + h):
                dense = torch.linspace(centre - 60 * scale, centre + 60 * scale, 4001)
                points.append(dense.double().clamp(a, b))
        grid = torch.cat(points).unique()  # sorted
        # The density jumps at +-(1 - h): take each piece's own one-sided limits there.
        grid[0], grid[-1] = grid[0].nextafter(grid[1]), grid[-1].nextafter(grid[-2])
        pieces.append(grid)
    return pieces


@pytest.mark.parametrize("n_bins", [256, 65536])
@pytest.mark.parametrize("floor", FLOORS)
def test_mixture_density_integrates_to_one(floor: float, n_bins: int) -> None:
    head = LogisticMixtureOutput(n_mixtures=6, log_scale_min=floor, n_bins=n_bins)
    params = mixture_params(6, 2, floor, seed=1)
    for t in range(params.shape[-1]):
        one = params[..., t : t + 1]
        total = 0.0
        for grid in _integration_grid(head, one):
            density = head.log_prob(one.expand(-1, -1, grid.numel()), grid[None, None]).exp()
            total += float(torch.trapezoid(density[0, 0], grid))
        assert abs(total - 1) < 1e-6, (t, total)


def test_mixture_beyond_full_scale() -> None:
    """Beyond +-(1 + h) only the atoms' exponential tails remain: the log-density falls by
    exactly distance / h, with gradient -+1 / h; inside, autograd matches finite differences."""
    head = LogisticMixtureOutput(n_mixtures=6, log_scale_min=-14.0)
    h = head.half_bin
    params = mixture_params(6, 1, -7.0, seed=2)
    for edge, sign in ((1 + h, 1.0), (-1 - h, -1.0)):
        distances = torch.tensor([0.0, h, 10 * h, 0.01, 0.5], dtype=torch.float64)
        x = (edge + sign * distances)[None, None].requires_grad_()
        log_p = head.log_prob(params.expand(-1, -1, 5), x)
        expected = log_p[0, 0, 0].detach() - distances / h
        torch.testing.assert_close(log_p[0, 0].detach(), expected, rtol=1e-12, atol=1e-8)
        (grad,) = torch.autograd.grad(log_p.sum(), x)
        torch.testing.assert_close(grad[0, 0, 1:], torch.full((4,), -sign / h, dtype=grad.dtype))
    # Inside the support, the edge bins included, autograd's gradient is the density's slope.
    x = [-1 - h / 2, -1 + h / 2, -0.3, 0.2 + h / 3, 1 - h / 2, 1 + h / 2]
    x = torch.tensor(x, dtype=torch.float64)[None, None].requires_grad_()
    wide = params.clone()
    wide[:, 12:] = -3.0  # scales of 0.05: smooth on the finite-difference step
    wide = wide.expand(-1, -1, 6)
    (grad,) = torch.autograd.grad(head.log_prob(wide, x).sum(), x)
    step = 1e-7 * h
    numeric = (head.log_prob(wide, x + step) - head.log_prob(wide, x - step)) / (2 * step)
    torch.testing.assert_close(grad, numeric.detach(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("floor", FLOORS)
def test_mixture_float32_and_bfloat16_at_low_floor(floor: float) -> None:
    head = LogisticMixtureOutput(n_mixtures=10, log_scale_min=floor)
    h = head.half_bin
    generator = torch.Generator().manual_seed(4)
    t = 4000
    x = torch.rand(2, 1, t, generator=generator, dtype=torch.float64) * 2 - 1
    x[0] = x[0] * 1e-3  # near silence, where a low floor matters
    x = torch.round((x + 1) / (2 * h)) * (2 * h) - 1  # on the 16-bit grid
    x[1, 0, :8] = torch.tensor([-1.0, 1.0, -1 - h, 1 + h, 1 - h, 1.5, -3.0, 1e-9])
    means = x + torch.randn(2, 10, t, generator=generator, dtype=torch.float64) * 1e-5
    log_scales = floor - 3 + 6 * torch.rand(2, 10, t, generator=generator, dtype=torch.float64)
    logits = torch.randn(2, 10, t, generator=generator, dtype=torch.float64)
    params = torch.cat([logits, means, log_scales], dim=1).float().requires_grad_()
    x32 = x.float().requires_grad_()
    log_p = head.log_prob(params, x32)
    assert log_p.dtype == torch.float32 and torch.isfinite(log_p).all()
    grads = torch.autograd.grad(log_p.sum(), (params, x32))
    assert all(torch.isfinite(g).all() for g in grads)
    # Against float64 arithmetic on the same float32 inputs.
    reference = head.log_prob(params.detach().double(), x32.detach().double())
    torch.testing.assert_close(log_p.detach().double(), reference, rtol=1e-6, atol=2e-5)
    # Under bfloat16 autocast the head still computes in float32 on the rounded params.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = params.detach().bfloat16()
        mixed = head.log_prob(rounded, x32.detach())
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, head.log_prob(rounded.float(), x32.detach()))


def test_gaussian_density_integrates_to_one_at_low_floor() -> None:
    head = GaussianOutput(log_scale_min=-11.0)
    for mean, raw_log_scale in [(0.0, -20.0), (0.4, -11.0), (-0.999, -8.0)]:
        scale = math.exp(max(raw_log_scale, -11.0))
        grid = torch.linspace(mean - 12 * scale, mean + 12 * scale, 200001, dtype=torch.float64)
        params = torch.tensor([mean, raw_log_scale], dtype=torch.float64)[None, :, None]
        density = head.log_prob(params.expand(-1, -1, grid.numel()), grid[None, None]).exp()
        assert abs(float(torch.trapezoid(density[0, 0], grid)) - 1) < 1e-9


@pytest.mark.parametrize("floor", [-11.0, -14.0])
def test_gaussian_float32_and_bfloat16_at_low_floor(floor: float) -> None:
    head = GaussianOutput(log_scale_min=floor)
    generator = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 1000, generator=generator) * 2 - 1
    x[0] = x[0] * 1e-3
    mean = x + torch.randn(2, 1, 1000, generator=generator) * 3 * math.exp(floor)
    mean[1, 0, :3] = torch.tensor([-1.0, 1.0, 0.0])  # x up to 1 away: (x - mean) / scale ~ 1e6
    params = torch.cat([mean, torch.full_like(mean, floor - 5)], dim=1).requires_grad_()
    x = x.requires_grad_()
    log_p = head.log_prob(params, x)
    assert log_p.dtype == torch.float32 and torch.isfinite(log_p).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(log_p.sum(), (params, x)))
    reference = head.log_prob(params.detach().double(), x.detach().double())
    torch.testing.assert_close(log_p.detach().double(), reference, rtol=1e-5, atol=1e-4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = params.detach().bfloat16()
        mixed = head.log_prob(rounded, x.detach())
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, head.log_prob(rounded.float(), x.detach()))


def test_sampling_at_low_floor_has_the_right_spread() -> None:
    n = 40000
    mixture = LogisticMixtureOutput(n_mixtures=3, log_scale_min=-14.0)
    params = torch.tensor([[-50.0, 50.0, -50.0], [0.5, 0.0123, -0.5], [-3.0, -30.0, -3.0]])
    params = params.reshape(1, 9, 1).expand(-1, -1, n).contiguous()  # component 1, at the floor
    noise = mixture.draw_noise(1, n, torch.Generator().manual_seed(6))
    x = mixture.sample(params, noise).double()
    scale = math.exp(-14.0)
    assert (x - 0.0123).abs().max() < 12 * scale  # logistic draws from u in (1e-5, 1 - 1e-5)
    assert abs(float(x.mean()) - 0.0123) < 4 * scale * math.pi / math.sqrt(3 * n)
    assert abs(float(x.std()) / (scale * math.pi / math.sqrt(3)) - 1) < 0.03
    # bfloat16 params give float32 samples of the rounded params.
    rounded = params.bfloat16()
    assert torch.equal(mixture.sample(rounded, noise), mixture.sample(rounded.float(), noise))

    gaussian = GaussianOutput(log_scale_min=-11.0)
    params = torch.tensor([-0.25, -40.0]).reshape(1, 2, 1).expand(-1, -1, n)
    x = gaussian.sample(params, gaussian.draw_noise(1, n, torch.Generator().manual_seed(7)))
    assert abs(float(x.double().mean()) + 0.25) < 4 * math.exp(-11.0) / math.sqrt(n)
    assert abs(float(x.double().std()) / math.exp(-11.0) - 1) < 0.03


@pytest.mark.parametrize("output", ["mol", "gaussian"])
def test_cpp_and_eager_sampling_agree_at_low_floor(output: str) -> None:
    """The kernel's head (its own C++ sampling) and `head.sample` on the eager path, with every
    log-scale at the floor -14."""
    if load_kernel() is None:
        pytest.skip("C++ kernel unavailable")
    teacher = tiny_teacher(output, torch.float32, log_scale_min=-14.0, n_cycles=1).eval()
    n_params = teacher.head.n_params
    with torch.no_grad():
        teacher.stack.head_out.weight.normal_(0.0, 0.5)
        teacher.stack.head_out.bias.normal_(0.0, 0.5)
        teacher.stack.head_out.bias[n_params - n_params // (3 if output == "mol" else 2) :] = -30
    generator = torch.Generator().manual_seed(1)
    cond = torch.randn(2, 8, 50, generator=generator)
    noise = teacher.head.draw_noise(2, 50, generator)
    samples = {
        backend: IncrementalWaveNet(teacher.stack, backend=backend).generate(
            cond, teacher.head, noise, return_params=True
        )
        for backend in ("eager", "cpp")
    }
    (x, params), (x_ref, _) = samples["cpp"], samples["eager"]
    torch.testing.assert_close(x, x_ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(x, teacher.head.sample(params, noise), rtol=0, atol=2e-5)


@pytest.mark.parametrize("output", ["gaussian", "mol"])
def test_a_head_is_named_by_its_teacher_output(output: str) -> None:
    """Consumers (the KL estimator's choice) ask a head's name, never its type."""
    assert build_output(output, n_mixtures=2, log_scale_min=-7.0).name == output

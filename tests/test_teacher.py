"""The WaveNet teacher: causality, output heads against references, naive generation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from factories import SMALLEST_WAVENET, tiny_teacher

from wavflow.audio import log_mel
from wavflow.config import FeatureConfig, RecipeError, load_recipe
from wavflow.distributions import GaussianOutput, LogisticMixtureOutput
from wavflow.nn.conditioning import upsample_factors
from wavflow.teacher import WaveNet


@pytest.mark.parametrize("output", ["gaussian", "mol"])
def test_teacher_is_causal(output):
    model = tiny_teacher(output)
    cond = model.condition(torch.randn(1, 8, 8, dtype=torch.float64))
    x = (torch.rand(1, 1, 32, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    params = model(x, cond)
    for t in [0, 5, 17, 31]:
        (grad,) = torch.autograd.grad(params[0, :, t].sum(), x, retain_graph=True)
        assert grad[0, 0, t:].abs().max() == 0, f"params at {t} see x at {t} or later"
        if t >= 1:
            assert grad[0, 0, t - 1].abs() > 0, "params at t must see x_{t-1}"


def test_receptive_field_is_exact():
    model = tiny_teacher("gaussian")
    cond = torch.zeros(1, model.conditioner.out_channels, 40, dtype=torch.float64)
    x = torch.rand(1, 1, 40, dtype=torch.float64).requires_grad_()
    t = 39
    (grad,) = torch.autograd.grad(model(x, cond)[0, :, t].sum(), x)
    seen = torch.nonzero(grad[0, 0]).flatten()
    assert t - int(seen.min()) == model.receptive_field


def test_gaussian_log_prob_matches_torch_distributions():
    head = GaussianOutput(log_scale_min=-7.0)
    params = torch.randn(2, 2, 50, dtype=torch.float64)
    params[:, 1] = params[:, 1] - 3.0
    params[0, 1, 0] = -20.0  # below the floor
    x = torch.rand(2, 1, 50, dtype=torch.float64) * 2 - 1
    mean, log_scale = params[:, :1], params[:, 1:].clamp_min(-7.0)
    reference = torch.distributions.Normal(mean, log_scale.exp()).log_prob(x)
    assert torch.allclose(head.log_prob(params, x), reference)


def _mixture_params(k: int = 4) -> torch.Tensor:
    torch.manual_seed(1)
    logits = torch.randn(1, k, 1, dtype=torch.float64)
    means = torch.tensor([-0.99, -0.2, 0.3, 0.995], dtype=torch.float64)[None, :k, None]
    log_scales = torch.tensor([-3.0, -6.0, -2.0, -4.0], dtype=torch.float64)[None, :k, None]
    return torch.cat([logits, means, log_scales], dim=1)


def test_mixture_bins_sum_to_one():
    head = LogisticMixtureOutput(n_mixtures=4, n_bins=65536)
    centres = torch.linspace(-1, 1, 65536, dtype=torch.float64)[None, None]
    mass = head.log_mass(_mixture_params().expand(-1, -1, 65536), centres).exp()
    assert abs(float(mass.sum()) - 1.0) < 1e-6


def test_mixture_mass_agrees_with_direct_computation():
    head = LogisticMixtureOutput(n_mixtures=4, n_bins=256)
    params = _mixture_params()
    logits, means, log_scales = params.split(4, dim=1)
    weights = torch.softmax(logits, dim=1)[0, :, 0]
    half = 1.0 / 255
    for value in [-1.0, -0.2, 0.3 + 1 / 255, 1.0]:

        def cdf(v):
            return torch.sigmoid((v - means[0, :, 0]) / log_scales[0, :, 0].exp())

        upper = torch.ones(4, dtype=torch.float64) if value >= 1 else cdf(value + half)
        lower = torch.zeros(4, dtype=torch.float64) if value <= -1 else cdf(value - half)
        direct = float((weights * (upper - lower)).sum())
        x = torch.full((1, 1, 1), value, dtype=torch.float64)
        assert math.isclose(float(head.log_mass(params, x).exp()), direct, rel_tol=1e-6)
        density = float(head.log_prob(params, x).exp())
        assert math.isclose(density, direct / (2 * half), rel_tol=1e-6)


@pytest.mark.parametrize("output", ["gaussian", "mol"])
def test_sampling_follows_noise_and_temperature(output):
    model = tiny_teacher(output)
    head = model.head
    params = torch.randn(2, head.n_params, 5, dtype=torch.float64)
    noise = head.draw_noise(2, 5, torch.Generator().manual_seed(0)).double()
    a, b = head.sample(params, noise, 1.0), head.sample(params, noise, 1.0)
    assert torch.equal(a, b) and a.shape == (2, 1, 5) and a.abs().max() <= 1
    cold = head.sample(params, noise, 0.0)
    # Temperature 0 ignores the draw's own noise (the last channel; the mixture's component
    # choice still follows its Gumbel channels), temperature 1 does not.
    other = noise.clone()
    other[:, -1:] = head.draw_noise(2, 5, torch.Generator().manual_seed(1)).double()[:, -1:]
    assert torch.equal(cold, head.sample(params, other, 0.0))
    assert not torch.equal(a, head.sample(params, other, 1.0))
    assert not torch.equal(cold, a)


def test_log_prob_is_total_over_steps():
    model = tiny_teacher("mol")
    cond = model.condition(torch.randn(2, 8, 6, dtype=torch.float64))
    x = torch.rand(2, 1, 24, dtype=torch.float64) * 2 - 1
    per_step = model.log_prob_per_step(x, cond)
    assert per_step.shape == (2, 24)
    assert torch.allclose(model.log_prob(x, cond), per_step.sum(-1))


def test_naive_generation_shapes_and_lengths():
    model = tiny_teacher("gaussian")
    cond = model.condition(torch.randn(2, 8, 5, dtype=torch.float64))
    x, state = model.generate(
        cond,
        method="naive",
        generator=torch.Generator().manual_seed(0),
        lengths=torch.tensor([20, 12]),
    )
    assert state is None  # the naive reference keeps no incremental state
    assert x.shape == (2, 1, 20)
    assert x[1, 0, 12:].abs().sum() == 0 and x[1, 0, :12].abs().sum() > 0
    with pytest.raises(ValueError, match="unknown generation method"):
        model.generate(cond, method="fast")


@pytest.mark.parametrize(("hop", "factors"), [(256, [16, 16]), (200, [5, 10, 4]), (64, [16, 4])])
def test_upsampling_factors_come_from_the_hop(hop, factors):
    assert upsample_factors(hop) == factors
    model = tiny_teacher("mol", torch.float32, hop_length=hop, **SMALLEST_WAVENET)
    assert model.condition(torch.randn(1, 8, 3)).shape[-1] == 3 * hop


def test_speaker_conditioning():
    model = tiny_teacher("mol", torch.float32, n_speakers=3, speaker_channels=5, **SMALLEST_WAVENET)
    feats = torch.randn(2, 8, 3)
    a = model.condition(feats, torch.tensor([0, 1]))
    assert a.shape == (2, 13, 12)
    assert not torch.equal(a, model.condition(feats, torch.tensor([2, 1])))
    with pytest.raises(ValueError, match="speaker"):
        model.condition(feats)


# The envelope: the stack models y = x exp(-l), l = log_envelope + c, from the mel.

ENVELOPE_CASES = [
    ("gaussian", False),
    ("mol", False),
    ("gaussian", True),
    ("mol", True),
]


def envelope_teacher(output: str, pitch: bool, **options) -> WaveNet:
    """A float64 envelope teacher (with pitch: 2 harmonics) whose offset is not the default;
    `options` go to `tiny_teacher`."""
    pitch_options = {"n_harmonics": 2, "sample_rate": 16000} if pitch else {}
    model = tiny_teacher(output, envelope=True, **pitch_options | options)
    with torch.no_grad():
        model.level_offset.fill_(-1.3)
    return model


def envelope_cond(model: WaveNet, feats: torch.Tensor) -> torch.Tensor:
    f0 = None
    if model.conditioner.n_harmonics:
        f0 = torch.linspace(120, 220, feats.shape[-1], dtype=feats.dtype).expand(len(feats), -1)
    return model.condition(feats, f0=f0)


@pytest.mark.parametrize("lpc", [False, True], ids=["level", "lpc"])
@pytest.mark.parametrize(("output", "pitch"), ENVELOPE_CASES)
def test_envelope_teacher_is_causal(output, pitch, lpc):
    model = lpc_teacher(output, pitch, head_std=0.5) if lpc else envelope_teacher(output, pitch)
    assert model.conditioner.has_envelope
    cond = envelope_cond(model, torch.randn(1, 8, 8, dtype=torch.float64) * 2 - 2)
    x = (torch.rand(1, 1, 32, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    params = model(x, cond)
    for t in [0, 5, 17, 31]:
        (grad,) = torch.autograd.grad(params[0, :, t].sum(), x, retain_graph=True)
        assert grad[0, 0, t:].abs().max() == 0, f"params at {t} see x at {t} or later"
        if t >= 1:
            assert grad[0, 0, t - 1].abs() > 0, "params at t must see x_{t-1}"
    (grad,) = torch.autograd.grad(model.log_prob(x, cond).sum(), model.level_offset)
    assert grad.abs() > 0, "the learned offset must reach the density"


@pytest.mark.parametrize("pitch", [False, True])
def test_envelope_density_is_a_change_of_variables(pitch):
    """log p(x) = sum_t [log N(y_t; m_t, s_t) - l_t], y_t = x_t exp(-l_t), with (m, log s) what
    the stack (plus the excitation shift) gives from y_<t: checked by hand."""
    model = envelope_teacher("gaussian", pitch, log_scale_min=-30.0)  # the floor never binds
    with torch.no_grad():
        model.stack.head_out.weight.normal_(0.0, 0.5)
        model.stack.head_out.bias.normal_(0.0, 0.5)
    feats = torch.randn(2, 8, 6, dtype=torch.float64) * 2 - 2
    cond = envelope_cond(model, feats)
    x = torch.rand(2, 1, 24, dtype=torch.float64) * 1.6 - 0.8
    channel = model.conditioner.envelope_channel % cond.shape[1]
    level = cond[:, channel : channel + 1] - 1.3  # (B, 1, T)
    assert level.std() > 0.5  # the level varies, so a missing or misplaced map would show
    y = x * torch.exp(-level)
    stack_out = model.stack(F.pad(y, (1, -1)), cond)
    mean, log_scale = stack_out[:, :1], stack_out[:, 1:2]
    if pitch:
        amplitudes, excitation = stack_out[:, 2:], model.conditioner.excitation(cond)
        mean = mean + (amplitudes * excitation).sum(1, keepdim=True)
    y_density = torch.distributions.Normal(mean, log_scale.exp()).log_prob(y)
    expected = (y_density - level).sum(dim=(1, 2))
    torch.testing.assert_close(model.log_prob(x, cond), expected, rtol=0, atol=1e-9)
    # The head's parameters are in x units: location m exp(l), log-scale log s + l.
    params = model(x, cond)
    torch.testing.assert_close(params[:, :1], mean * level.exp(), rtol=0, atol=1e-12)
    torch.testing.assert_close(params[:, 1:], log_scale + level, rtol=0, atol=1e-12)


@pytest.mark.parametrize("output", ["gaussian", "mol"])
def test_envelope_log_scale_floor_is_in_x_units(output):
    model = envelope_teacher(output, False)
    cond = envelope_cond(model, torch.full((1, 8, 4), -11.5, dtype=torch.float64))
    params = model(torch.zeros(1, 1, 16, dtype=torch.float64), cond)
    log_scales = model.head.split(params)[-1]
    assert (log_scales == model.head.log_scale_min).all()  # raw + l ~ -13 is floored at -7


@pytest.mark.parametrize("output", ["gaussian", "mol"])
def test_envelope_makes_silence_quiet_at_init(output):
    """In frames whose mel is at the floor (log 1e-5) the samples of a new teacher are tiny, at
    speech level where the mel is loud; without the envelope both are equally loud."""
    feats = torch.zeros(1, 8, 8, dtype=torch.float64)
    feats[:, :, 4:] = math.log(1e-5)
    quiet = slice(5 * 4, 7 * 4)  # frames 5-6, away from the interpolation at the edge
    loud = slice(0, 3 * 4)
    rms = {}
    for envelope in (True, False):
        model = tiny_teacher(output, envelope=envelope, log_scale_min=-14.0)
        cond = model.condition(feats)
        x, _ = model.generate(cond, method="naive", generator=torch.Generator().manual_seed(0))
        rms[envelope] = [float(x[0, 0, part].square().mean().sqrt()) for part in (quiet, loud)]
    assert rms[True][0] < 1e-4 and rms[True][1] > 0.05
    assert rms[False][0] > 0.1


def test_input_noise_only_in_training_and_the_density_stays_exact():
    model = tiny_teacher("gaussian", input_noise=0.5)
    quiet = tiny_teacher("gaussian")
    quiet.load_state_dict(model.state_dict())
    feats = torch.randn(2, 8, 8, dtype=torch.float64)
    x = 0.3 * torch.randn(2, 1, 8 * 4, dtype=torch.float64)
    cond = model.condition(feats)
    model.train()
    assert not torch.equal(model(x, cond), model(x, cond))  # noisy past in training
    model.eval()
    torch.testing.assert_close(model(x, cond), quiet.eval()(x, cond))  # exact in evaluation


# Linear prediction: x_t = pred_t + exp(l_t) w_t, pred from the mel's LPC and x_<t, l its gain.

LPC_FEATURES = FeatureConfig(sample_rate=16000, n_mels=8, hop_length=4, n_fft=16, win_length=16)


def lpc_teacher(output: str, pitch: bool, **options) -> WaveNet:
    return envelope_teacher(output, pitch, lpc_order=4, features=LPC_FEATURES, **options)


@pytest.mark.parametrize("pitch", [False, True])
def test_lpc_density_is_a_change_of_variables(pitch):
    """log p(x) = sum_t [log N(w_t; m_t, s_t) - l_t], w_t = (x_t - pred_t) exp(-l_t), pred_t =
    sum_k a_k x_{t-k} with the frame's coefficients, (m, log s) from the stack on w_<t."""
    model = lpc_teacher("gaussian", pitch, log_scale_min=-30.0, head_std=0.5)
    feats = torch.randn(2, 8, 6, dtype=torch.float64) * 2 - 2
    cond = envelope_cond(model, feats)
    x = torch.rand(2, 1, 24, dtype=torch.float64) * 1.6 - 0.8
    coefficients, log_gain = model.lpc.frames(feats)
    level = log_gain.repeat_interleave(4, dim=1)[:, None] - 1.3  # (B, 1, T)
    per_sample = coefficients.repeat_interleave(4, dim=1)  # (B, T, p)
    padded = F.pad(x[:, 0], (4, 0))
    prediction = torch.stack(
        [(per_sample[:, t] * padded[:, t : t + 4].flip(-1)).sum(-1) for t in range(24)], -1
    )[:, None]
    assert prediction.abs().max() > 0.05  # the prediction acts
    w = (x - prediction) * torch.exp(-level)
    stack_out = model.stack(F.pad(w, (1, -1)), model.stack_cond(cond))
    mean, log_scale = stack_out[:, :1], stack_out[:, 1:2]
    if pitch:
        amplitudes, excitation = stack_out[:, 2:], model.conditioner.excitation(cond)
        mean = mean + (amplitudes * excitation).sum(1, keepdim=True)
    w_density = torch.distributions.Normal(mean, log_scale.exp()).log_prob(w)
    expected = (w_density - level).sum(dim=(1, 2))
    torch.testing.assert_close(model.log_prob(x, cond), expected, rtol=0, atol=1e-9)
    params = model(x, cond)  # x units: location pred + m exp(l), log-scale log s + l
    torch.testing.assert_close(params[:, :1], prediction + mean * level.exp(), rtol=0, atol=1e-12)
    torch.testing.assert_close(params[:, 1:], log_scale + level, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("output", "pitch"), ENVELOPE_CASES)
def test_lpc_cached_equals_naive_and_teacher_forced(output, pitch):
    """The cached path (scaled excitations from the kernel, then the all-pole recursion) and the
    naive one (the prediction added at each step) give the same samples, and those are what the
    parallel pass's parameters sample to with the same noise."""
    model = lpc_teacher(output, pitch, head_std=0.3).eval()
    generator = torch.Generator().manual_seed(4)
    feats = torch.randn(3, 8, 10, generator=generator, dtype=torch.float64) - 12
    cond = envelope_cond(model, feats)
    noise = model.head.draw_noise(3, 40, generator).double()
    lengths = torch.tensor([40, 17, 29])
    common = dict(noise=noise, temperature=0.9, lengths=lengths)
    cached, state = model.generate(cond, method="cached", **common)
    naive, _ = model.generate(cond, method="naive", **common)
    alive = torch.arange(40)[None, None] < lengths[:, None, None]
    assert cached.abs().max() > 0.01 and (cached[~alive] == 0).all()
    assert cached.abs().max() < 0.99  # no sample clipped, so the comparison below is exact
    torch.testing.assert_close(naive, cached, rtol=0, atol=1e-10)
    resampled = model.head.sample(model(cached, cond), noise, 0.9) * alive
    torch.testing.assert_close(resampled, cached, rtol=0, atol=1e-10)
    torch.testing.assert_close(state.history[1], cached[1, 0, 13:17], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="whole frames"):
        model.generate(cond[..., :6], noise=noise[..., :6])


def test_lpc_shapes_a_new_teachers_noise_like_the_mel():
    """At initialisation the samples' log-mel follows a tilted mel's shape with the LPC, and not
    with the broadband level alone."""
    features = FeatureConfig(sample_rate=16000, n_mels=40, hop_length=64, n_fft=256, win_length=256)
    pole = 0.95 * np.exp(2j * np.pi * 800 / 16000)
    tilted = scipy.signal.lfilter(
        [0.01],
        np.poly([pole, pole.conjugate()]).real,
        np.random.default_rng(0).standard_normal(64 * 40),
    )
    feats = log_mel(torch.tensor(tilted, dtype=torch.float32)[None], features).double()
    distances = {}
    for order in (0, 12):
        options = {"lpc_order": order, "features": features} if order else {}
        model = tiny_teacher(
            "gaussian", n_mels=40, hop_length=64, envelope=True, log_scale_min=-14.0, **options
        ).eval()
        with torch.no_grad():
            model.level_offset.zero_() if order else None
        x, _ = model.generate(model.condition(feats), generator=torch.Generator().manual_seed(0))
        sampled = log_mel(x[:, 0].float(), features).double()
        distances[order] = float((sampled - feats)[..., 4:-4].abs().mean())
    assert distances[12] < 0.6 * distances[0], distances


def test_lpc_needs_the_envelope():
    with pytest.raises(ValueError, match="lpc_order needs envelope"):
        tiny_teacher("gaussian", lpc_order=4, features=LPC_FEATURES)
    with pytest.raises(RecipeError, match=r"\[teacher\] lpc_order needs envelope"):
        load_recipe(None, ["teacher.lpc_order=16"])


def test_lpc_teacher_trains_every_parameter():
    """A likelihood step reaches every parameter (the conditioning's upsampler included, whose
    output shares `cond` with the packed mel the fit reads), but the F0 predictor, which its own
    loss trains."""
    model = lpc_teacher("gaussian", True, head_std=0.1).train()
    feats = torch.randn(2, 8, 6, dtype=torch.float64) - 12
    x = 0.01 * torch.randn(2, 1, 24, dtype=torch.float64)
    (-model.log_prob(x, envelope_cond(model, feats)).sum()).backward()
    missing = [
        name
        for name, p in model.named_parameters()
        if p.grad is None and not name.startswith("conditioner.f0_predictor")
    ]
    assert not missing, missing

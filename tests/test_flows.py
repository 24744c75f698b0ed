"""The checks every flow layer and student passes (STYLE.md), in float64 on CPU at tiny sizes.

Each case builds its flow, makes the zero-initialised output convs non-zero (so no layer is the
identity and gradients flow past them) and runs it once, which initialises any ActNorm.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from wavflow.config import FeatureConfig
from wavflow.flows import (
    STUDENTS,
    ActNorm,
    AffineCoupling,
    DepthwiseWaveNet,
    EnvelopeScale,
    FactorOut,
    Flow,
    FloWaveNet,
    FlowModel,
    FrameRateConditioner,
    HarmonicShift,
    HarmonicSource,
    IAFFlow,
    IAFStudent,
    Inverse,
    Invertible1x1Conv,
    OutputScale,
    Permute,
    Reverse,
    SequentialFlow,
    SpectralEnvelope,
    Squeeze,
    SqueezeWave,
    StandardGaussian,
    StandardLogistic,
    SwapHalves,
    WaveGlow,
    build_student,
    student_sizes,
)
from wavflow.flows.squeezewave import gated_tanh
from wavflow.nn.conditioning import ConditioningSpec
from wavflow.nn.conv import ZeroConv1d

DTYPE = torch.float64
BATCH = 2
N_MELS, HOP, FRAMES = 3, 4, 4  # students: T = FRAMES * HOP = 16
COND_CHANNELS = 3  # layers' cond
# Mel settings of the spectral envelope's cases: N_MELS bands packed into hops of HOP samples.
# Unnormalised bands, so that the random log-mels of the cases (about 0) give samples of about
# 1 (slaney bands of a 16-point FFT would amplify them to 1e3, where float32 rounds at 1e-4).
FEATURES = FeatureConfig(
    sample_rate=16000,
    n_fft=16,
    hop_length=HOP,
    win_length=16,
    n_mels=N_MELS,
    fmin=0.0,
    fmax=8000.0,
    mel_norm="none",
)
# F0 of the pitch-conditioned students' cases, (BATCH, FRAMES) Hz at 16 kHz: periods of 5-8
# samples, so that their pulses show within T = 16; 0 = unvoiced.
PITCH = torch.tensor([[2000.0, 0.0, 2500.0, 3200.0], [0.0, 2000.0, 2000.0, 0.0]], dtype=DTYPE)
# What the students' cases condition on: the mels alone, with 2 speakers, or with 2 harmonics.
SPEC = ConditioningSpec(N_MELS, HOP)
SPEAKERS_SPEC = ConditioningSpec(N_MELS, HOP, n_speakers=2)
PITCH_SPEC = ConditioningSpec(N_MELS, HOP, sample_rate=16000, n_harmonics=2)


@dataclass
class Case:
    """How to build one flow under test and what it runs on.

    `build()` returns a Flow (layers) or a FlowModel (students). Layers run on noise of
    `z_shape` with a cond of COND_CHANNELS; students on (B, 1, T) noise and their own cond.
    """

    name: str
    build: Callable[[], nn.Module]
    z_shape: tuple[int, int] = (1, 16)  # (C, T) of z
    x_shape: tuple[int, int] | None = None  # (C, T) of x when it differs from z's
    reads_cond: bool = False
    has_identity_init: bool = False
    is_iaf: bool = False
    n_speakers: int = 0
    pitch: bool = False  # students: conditioned on F0 (`PITCH`)
    cond_channels: int = COND_CHANNELS  # layers' cond
    # Entries of a causal Jacobian's future allowed, relative to its largest: 0 but for an
    # FFT convolution, through which the future enters at round-off (1e-13 in float64).
    causal_round_off: float = 0.0

    @property
    def is_student(self) -> bool:
        return self.name.startswith("student_")


def coupling_sizes() -> dict:
    return {"n_layers": 2, "kernel_size": 3, "hidden_channels": 6}


def spectral_squeezewave(spec: ConditioningSpec = SPEC, **options: object) -> SqueezeWave:
    """A tiny SqueezeWave (fold 2, no early outputs) with the spectrally shaped prior."""
    return SqueezeWave(
        spec,
        n_flows=2,
        fold=2,
        n_layers=1,
        channels=4,
        early_channels=0,
        envelope=True,
        envelope_taps=8,
        features=FEATURES,
        **options,
    )


def depthwise_coupling(channels: int) -> AffineCoupling:
    """A SqueezeWave coupling: its transform is a depthwise-separable stack, dilations 1, 2."""
    half = channels // 2
    net = DepthwiseWaveNet(half, 2 * (channels - half), COND_CHANNELS, 2, 6, 3, dilation_base=2)
    return AffineCoupling(channels, COND_CHANNELS, net=net)


LAYER_CASES = [
    Case("actnorm", lambda: ActNorm(4), z_shape=(4, 8)),
    Case("output_scale", lambda: OutputScale(-1.5), z_shape=(2, 8)),
    Case(  # cond: 3 frame channels, then 2 excitation signals folded 4 per step
        "harmonic_shift",
        lambda: HarmonicShift(4, COND_CHANNELS, 2),
        z_shape=(4, 8),
        reads_cond=True,
        cond_channels=COND_CHANNELS + 2 * 4,
    ),
    Case(  # the log-level is the last cond channel, broadcast over z's channels
        "envelope_scale",
        lambda: EnvelopeScale(-1, init_offset=0.3),
        z_shape=(2, 8),
        reads_cond=True,
    ),
    Case(  # cond channels 1..4 (of 3 + 4) the pulses, 5..8 the voicing, folded 4 per step
        "harmonic_source",
        lambda: HarmonicSource(1, 4, noise=0.3, init_gain=0.7),
        z_shape=(4, 8),
        reads_cond=True,
        cond_channels=COND_CHANNELS + 2 * 4,
    ),
    Case(  # cond channel 0 read as packed log-mels: a minimum-phase filter per frame
        "spectral_envelope",
        lambda: SpectralEnvelope(FEATURES, taps=8, init_log_gain=0.2),
        z_shape=(1, 16),
        reads_cond=True,
    ),
    Case("invconv", lambda: Invertible1x1Conv(4), z_shape=(4, 8)),
    Case("invconv_lu", lambda: Invertible1x1Conv(4, lu=True), z_shape=(4, 8)),
    Case(
        "coupling",
        lambda: AffineCoupling(4, COND_CHANNELS, **coupling_sizes()),
        z_shape=(4, 8),
        reads_cond=True,
        has_identity_init=True,
    ),
    Case(
        "coupling_odd",
        lambda: AffineCoupling(3, COND_CHANNELS, **coupling_sizes()),
        z_shape=(3, 8),
        reads_cond=True,
        has_identity_init=True,
    ),
    Case(
        "depthwise_coupling",
        lambda: depthwise_coupling(4),
        z_shape=(4, 8),
        reads_cond=True,
        has_identity_init=True,
    ),
    Case(
        "depthwise_coupling_odd",
        lambda: depthwise_coupling(3),
        z_shape=(3, 8),
        reads_cond=True,
        has_identity_init=True,
    ),
    Case("squeeze", lambda: Squeeze(2), z_shape=(2, 8), x_shape=(4, 4)),
    Case("squeeze_keep_cond", lambda: Squeeze(2, fold_cond=False), z_shape=(2, 8), x_shape=(4, 4)),
    Case(
        "squeezed_coupling",  # cond must be folded with the audio to reach the coupling
        lambda: SequentialFlow(
            [
                Squeeze(2),
                AffineCoupling(4, 2 * COND_CHANNELS, **coupling_sizes()),
                Inverse(Squeeze(2)),
            ]
        ),
        z_shape=(2, 8),
        reads_cond=True,
        has_identity_init=True,
    ),
    Case("permute", lambda: Permute([2, 0, 3, 1]), z_shape=(4, 4)),
    Case("reverse", lambda: Reverse(4), z_shape=(4, 4)),
    Case("swap_halves", lambda: SwapHalves(3), z_shape=(3, 4)),
    Case(
        "factor_out",
        lambda: FactorOut(AffineCoupling(2, COND_CHANNELS, **coupling_sizes()), 2),
        z_shape=(4, 4),
        reads_cond=True,
        has_identity_init=True,
    ),
    Case(
        "iaf_flow",
        lambda: IAFFlow(COND_CHANNELS, n_layers=3, kernel_size=3, hidden_channels=6),
        z_shape=(1, 16),
        reads_cond=True,
        has_identity_init=True,
        is_iaf=True,
    ),
]

STUDENT_CASES = [
    Case(
        "student_iaf_logistic",
        lambda: IAFStudent(SPEC, **IAFStudent.PRESETS["tiny"]),
        reads_cond=True,
        has_identity_init=True,
        is_iaf=True,
    ),
    Case(
        "student_iaf_gaussian",
        lambda: IAFStudent(SPEAKERS_SPEC, **{**IAFStudent.PRESETS["tiny"], "base": "gaussian"}),
        reads_cond=True,
        has_identity_init=True,
        is_iaf=True,
        n_speakers=2,
    ),
    Case(  # output scaled by the mel's level (mel-adaptive prior)
        "student_iaf_envelope",
        lambda: IAFStudent(SPEC, **IAFStudent.PRESETS["tiny"], envelope=True),
        reads_cond=True,
        is_iaf=True,
    ),
    Case(  # output filtered by the mel's spectral envelope (spectrally shaped prior)
        "student_iaf_spectral_envelope",
        lambda: IAFStudent(
            SPEC,
            **IAFStudent.PRESETS["tiny"],
            envelope=True,
            envelope_taps=8,
            features=FEATURES,
        ),
        reads_cond=True,
        is_iaf=True,
        causal_round_off=1e-12,
    ),
    Case(  # pulses at F0 where voiced (harmonic-plus-noise source), then the spectral envelope
        "student_iaf_harmonic_source",
        lambda: IAFStudent(
            PITCH_SPEC,
            **IAFStudent.PRESETS["tiny"],
            envelope=True,
            envelope_taps=8,
            features=FEATURES,
            harmonic_source=True,
        ),
        reads_cond=True,
        is_iaf=True,
        pitch=True,
        causal_round_off=1e-12,
    ),
    Case(
        "student_waveglow",
        lambda: WaveGlow(SPEC, lu=True, **WaveGlow.PRESETS["tiny"]),
        reads_cond=True,
    ),
    Case(
        "student_flowavenet",
        lambda: FloWaveNet(SPEAKERS_SPEC, **FloWaveNet.PRESETS["tiny"]),
        reads_cond=True,
        n_speakers=2,
    ),
    Case(
        "student_flowavenet_split_every_2",
        lambda: FloWaveNet(SPEC, **{**FloWaveNet.PRESETS["tiny"], "blocks_per_split": 2}),
        reads_cond=True,
    ),
    Case(  # fold 8 > hop 4: two frames stacked per step
        "student_squeezewave",
        lambda: SqueezeWave(SPEC, **SqueezeWave.PRESETS["tiny"]),
        reads_cond=True,
    ),
    Case(  # fold 2 < hop 4: each frame repeated for two steps; no early outputs
        "student_squeezewave_fold_2_lu",
        lambda: SqueezeWave(
            SPEAKERS_SPEC, n_flows=3, fold=2, n_layers=2, channels=6, early_channels=0, lu=True
        ),
        reads_cond=True,
        n_speakers=2,
    ),
    Case(  # with a learned output scale that starts quiet
        "student_squeezewave_quiet",
        lambda: SqueezeWave(SPEC, **SqueezeWave.PRESETS["tiny"], init_log_scale=-0.5),
        reads_cond=True,
    ),
    Case(  # folded output scaled by the mel's level (mel-adaptive prior)
        "student_squeezewave_envelope",
        lambda: SqueezeWave(
            SPEAKERS_SPEC, **SqueezeWave.PRESETS["tiny"], envelope=True, envelope_offset=-1.0
        ),
        reads_cond=True,
        n_speakers=2,
    ),
    Case(  # the unfolded output filtered by the mel's spectral envelope
        "student_squeezewave_spectral_envelope",
        lambda: spectral_squeezewave(),
        reads_cond=True,
    ),
    Case(  # pulses at F0 added where voiced after the couplings, then the spectral envelope
        "student_squeezewave_harmonic_source",
        lambda: spectral_squeezewave(PITCH_SPEC, harmonic_source=True),
        reads_cond=True,
        pitch=True,
    ),
    Case(  # fold = hop: one frame per step; an early output after every flow
        "student_squeezewave_fold_hop",
        lambda: SqueezeWave(
            SPEC, n_flows=2, fold=4, n_layers=1, channels=4, early_every=1, early_channels=2
        ),
        reads_cond=True,
    ),
]

CASES = LAYER_CASES + STUDENT_CASES


def perturb(module: nn.Module, std: float = 0.3) -> None:
    """Makes every zero-initialised output conv (or weight-norm gain) non-zero, so no layer is
    the identity."""
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, ZeroConv1d):
                child.weight.normal_(0.0, std)
                child.bias.normal_(0.0, std)
            gains = getattr(getattr(child, "parametrizations", None), "weight", None)
            if gains is not None and not gains.original0.any():
                gains.original0.normal_(0.0, std)


@dataclass
class Built:
    module: nn.Module  # what the case built: a Flow, or a FlowModel
    flow: Flow  # the flow under test (the student's `flow`)
    z: Tensor
    cond: Tensor
    feats: Tensor | None = None
    speaker: Tensor | None = None
    f0: Tensor | None = None

    def condition(self, feats: Tensor | None = None) -> Tensor:
        """The student's cond of `feats` (default: the built ones) with the built speaker and F0."""
        feats = self.feats if feats is None else feats
        f0 = None if self.f0 is None else self.f0.to(feats.dtype)
        return self.module.condition(feats, self.speaker, f0)


def make_inputs(case: Case, seed: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Random (z or feats, speaker, layer cond) for a case."""
    gen = torch.Generator().manual_seed(seed)
    if case.is_student:
        feats = torch.randn(BATCH, N_MELS, FRAMES, generator=gen, dtype=DTYPE)
        speaker = torch.tensor([0, 1]) if case.n_speakers else None
        return feats, speaker, None
    z = torch.randn(BATCH, *case.z_shape, generator=gen, dtype=DTYPE)
    cond = torch.randn(BATCH, case.cond_channels, case.z_shape[1], generator=gen, dtype=DTYPE)
    return z, None, cond


def build(case: Case, seed: int = 0, perturbed: bool = True, warm: bool = True) -> Built:
    """Builds the case in float64 (seeded), perturbs it and runs it once (ActNorm init)."""
    torch.manual_seed(seed)
    module = case.build().to(DTYPE)
    if perturbed:
        perturb(module)
    first, speaker, cond = make_inputs(case, seed=100)
    if case.is_student:
        assert isinstance(module, FlowModel)
        feats = first
        f0 = PITCH if case.pitch else None
        z = torch.randn(BATCH, 1, FRAMES * HOP, dtype=DTYPE)
        built = Built(module, module.flow, z, None, feats, speaker, f0)
        with torch.no_grad():
            built.cond = built.condition()
    else:
        built = Built(module, module, first, cond)
    if warm:
        with torch.no_grad():
            built.flow(built.z, built.cond)
    return built


def fresh_z(built: Built, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(built.z.shape, generator=gen, dtype=DTYPE)


def jacobian(fn: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """d fn(inputs) / d inputs for one item, flattened: (C * T, C * T)."""
    flat = inputs.reshape(-1)
    return torch.autograd.functional.jacobian(
        lambda v: fn(v.reshape(inputs.shape)).reshape(-1), flat
    )


ids = [case.name for case in CASES]


# 1. Shapes and dtype kept; logdet is (B,); all finite.
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_shapes_dtype_and_finite(case: Case) -> None:
    built = build(case)
    x, logdet = built.flow(built.z, built.cond)
    assert x.dtype == DTYPE and logdet.dtype == DTYPE
    assert x.shape == (BATCH, *(case.x_shape or built.z.shape[1:]))
    assert logdet.shape == (BATCH,)
    assert torch.isfinite(x).all() and torch.isfinite(logdet).all()
    z, inverse_logdet = built.flow.inverse(x, built.cond)
    assert z.shape == built.z.shape and inverse_logdet.shape == (BATCH,)
    assert torch.isfinite(z).all() and torch.isfinite(inverse_logdet).all()


# 2. Round trip both ways; the two log-dets sum to 0.
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_round_trip_both_ways(case: Case) -> None:
    built = build(case)
    x, logdet = built.flow(built.z, built.cond)
    assert not torch.allclose(x.reshape(-1), built.z.reshape(-1))  # not a do-nothing layer
    z, inverse_logdet = built.flow.inverse(x, built.cond)
    torch.testing.assert_close(z, built.z, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(logdet + inverse_logdet, torch.zeros_like(logdet), atol=1e-8, rtol=0)

    x_data = fresh_z(built, seed=7).reshape(x.shape) * 0.5
    z, inverse_logdet = built.flow.inverse(x_data, built.cond)
    x_back, logdet = built.flow(z, built.cond)
    torch.testing.assert_close(x_back, x_data, atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(logdet + inverse_logdet, torch.zeros_like(logdet), atol=1e-8, rtol=0)


# 3. The log-det equals slogdet of the autograd Jacobian (T <= 16).
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_logdet_equals_jacobian_slogdet(case: Case) -> None:
    built = build(case)
    z, cond = built.z[:1], built.cond[:1]
    jac = jacobian(lambda v: built.flow(v, cond)[0], z)
    _, logdet = built.flow(z, cond)
    torch.testing.assert_close(torch.linalg.slogdet(jac).logabsdet, logdet[0])

    x, _ = built.flow(z, cond)
    inverse_jac = jacobian(lambda v: built.flow.inverse(v, cond)[0], x)
    _, inverse_logdet = built.flow.inverse(x, cond)
    torch.testing.assert_close(torch.linalg.slogdet(inverse_jac).logabsdet, inverse_logdet[0])


IAF_CASES = [case for case in CASES if case.is_iaf]


# 4. IAF is causal: the Jacobian dx/dz is lower-triangular in time.
@pytest.mark.parametrize("case", IAF_CASES, ids=[c.name for c in IAF_CASES])
def test_iaf_is_causal(case: Case) -> None:
    built = build(case)
    z, cond = built.z[:1], built.cond[:1]  # (1, 1, T): flattening gives time order
    jac = jacobian(lambda v: built.flow(v, cond)[0], z)
    assert torch.triu(jac, diagonal=1).abs().max() <= case.causal_round_off * jac.abs().max()
    assert torch.tril(jac, diagonal=-1).abs().max() > 1e-3  # x_t does read the past


IDENTITY_CASES = [case for case in CASES if case.has_identity_init]


# 5. Coupling and IAF layers are the identity at init.
@pytest.mark.parametrize("case", IDENTITY_CASES, ids=[c.name for c in IDENTITY_CASES])
def test_identity_at_init(case: Case) -> None:
    built = build(case, perturbed=False, warm=False)
    x, logdet = built.flow(built.z, built.cond)
    assert torch.equal(x, built.z)
    assert torch.equal(logdet, torch.zeros_like(logdet))
    perturb(built.module)
    x, logdet = built.flow(built.z, built.cond)
    assert not torch.allclose(x, built.z) and not torch.allclose(logdet, torch.zeros_like(logdet))


STUDENT_IDS = [case.name for case in STUDENT_CASES]


# 6. log_q from rsample_and_log_prob equals log_prob(x) for the same x (IAF: sequential inverse).
@pytest.mark.parametrize("case", STUDENT_CASES, ids=STUDENT_IDS)
def test_log_q_equals_log_prob(case: Case) -> None:
    built = build(case)
    model = built.module
    x, log_q = model.rsample_and_log_prob(built.cond, generator=torch.Generator().manual_seed(3))
    assert log_q.shape == (BATCH,)
    torch.testing.assert_close(model.log_prob(x, built.cond), log_q)
    # log_q is a density, not a constant: another draw gives other values.
    _, other_log_q = model.rsample_and_log_prob(built.cond, generator=torch.Generator())
    assert not torch.allclose(other_log_q, log_q)


IAF_STUDENTS = [case for case in STUDENT_CASES if case.is_iaf]


@pytest.mark.parametrize("case", IAF_STUDENTS, ids=[c.name for c in IAF_STUDENTS])
def test_iaf_stats_reproduce_x_and_log_q(case: Case) -> None:
    built = build(case)
    model = built.module
    x, log_q = model.rsample_and_log_prob(built.cond, generator=torch.Generator().manual_seed(3))
    x_stats, loc, log_scale, z = model.rsample_with_stats(
        built.cond, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(x_stats, x)
    torch.testing.assert_close(loc + torch.exp(log_scale) * z, x)
    log_base = model.base.log_density(z).sum(dim=(1, 2))
    torch.testing.assert_close(log_base - log_scale.sum(dim=(1, 2)), log_q)
    assert log_scale.abs().max() > 1e-3 and loc.abs().max() > 1e-3  # non-trivial stats

    # loc_t and log_scale_t see z_<t only: strictly lower-triangular Jacobians.
    z1, cond1 = z[:1], built.cond[:1]
    for index in (1, 2):
        jac = jacobian(lambda v, i=index: model.forward_with_stats(v, cond1)[i], z1)
        assert torch.triu(jac).abs().max() <= case.causal_round_off * jac.abs().max()
        assert torch.tril(jac, diagonal=-1).abs().max() > 1e-3


PARAM_CASES = [case for case in CASES if any(True for _ in case.build().parameters())]


# 7. The KL-like loss reaches every parameter, and changing cond changes x.
@pytest.mark.parametrize("case", PARAM_CASES, ids=[c.name for c in PARAM_CASES])
def test_loss_reaches_every_parameter(case: Case) -> None:
    built = build(case)
    module = built.module
    if case.is_student:
        cond = built.condition()
        x, log_q = module.rsample_and_log_prob(cond, generator=torch.Generator().manual_seed(0))
        loss = log_q.mean() + x.pow(2).mean()
    else:
        x, logdet = built.flow(built.z, built.cond)
        weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
        loss = (weights * x).sum() + x.pow(2).mean() - logdet.mean()
    loss.backward()
    for name, parameter in module.named_parameters():
        if name.startswith("conditioner.f0_predictor."):
            continue  # trained by its own loss (`F0Predictor.loss`), beside the flow's
        assert parameter.grad is not None, f"{name} gets no gradient"
        assert parameter.grad.abs().max() > 0, f"{name} gets a zero gradient"


COND_CASES = [case for case in CASES if case.reads_cond]


@pytest.mark.parametrize("case", COND_CASES, ids=[c.name for c in COND_CASES])
def test_changing_cond_changes_x(case: Case) -> None:
    built = build(case)
    with torch.no_grad():
        if case.is_student:
            model = built.module
            other_cond = built.condition(built.feats + 1.0)
            x = model.sample(built.cond, generator=torch.Generator().manual_seed(5))
            other_x = model.sample(other_cond, generator=torch.Generator().manual_seed(5))
        else:
            x, _ = built.flow(built.z, built.cond)
            other_x, _ = built.flow(built.z, built.cond + 1.0)
    assert (x - other_x).abs().max() > 1e-4


# 8. eval and train agree; save then load reproduces the outputs (ActNorm's init included).
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_eval_train_agree_and_state_dict_round_trip(case: Case) -> None:
    built = build(case)
    z = fresh_z(built, seed=11)  # not the warm-up batch, so a re-init would show
    with torch.no_grad():
        built.module.train()
        x_train, logdet_train = built.flow(z, built.cond)
        built.module.eval()
        x_eval, logdet_eval = built.flow(z, built.cond)
    assert torch.equal(x_train, x_eval) and torch.equal(logdet_train, logdet_eval)

    buffer = io.BytesIO()
    torch.save(built.module.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    loaded = build(case, seed=1, perturbed=True, warm=False).module  # other weights, no init
    loaded.load_state_dict(state, strict=True)
    loaded_flow = loaded.flow if case.is_student else loaded
    with torch.no_grad():
        x_loaded, logdet_loaded = loaded_flow(z, built.cond)
        z_loaded, _ = loaded_flow.inverse(x_eval, built.cond)
    torch.testing.assert_close(x_loaded, x_eval, atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet_loaded, logdet_eval, atol=1e-12, rtol=0)
    torch.testing.assert_close(z_loaded, z, atol=1e-8, rtol=0)


def test_actnorm_initialises_from_either_direction_and_saves_its_flag() -> None:
    data = torch.randn(3, 4, 10, dtype=DTYPE) * 5 + 2
    for direction in ("forward", "inverse"):
        layer = ActNorm(4).to(DTYPE)
        assert not layer.initialized
        out, _ = getattr(layer, direction)(data)
        assert layer.initialized
        torch.testing.assert_close(out.mean(dim=(0, 2)), torch.zeros(4, dtype=DTYPE))
        torch.testing.assert_close(out.std(dim=(0, 2), unbiased=False), torch.ones(4, dtype=DTYPE))
    assert layer.state_dict()["initialized"].item() is True


def test_squeeze_folds_cond_and_rejects_odd_lengths() -> None:
    z = torch.arange(12.0).reshape(1, 1, 12)
    layer = Squeeze(3)
    x, _ = layer(z)
    assert x.shape == (1, 3, 4)
    assert x[0, :, 1].tolist() == [3.0, 4.0, 5.0]  # one group of 3 samples per time step
    torch.testing.assert_close(layer.transform_cond(z), x)
    torch.testing.assert_close(layer.transform_cond(x, inverse=True), z)
    keep = Squeeze(3, fold_cond=False)  # cond already at the folded rate
    assert keep.transform_cond(x) is x and keep.transform_cond(x, inverse=True) is x
    with pytest.raises(ValueError, match="factor=5"):
        Squeeze(5)(z)
    model = WaveGlow(SPEC, **WaveGlow.PRESETS["tiny"])
    with pytest.raises(ValueError, match="divisible by 4"):
        model.sample(torch.randn(1, N_MELS, 14))


@pytest.mark.parametrize("case", STUDENT_CASES, ids=STUDENT_IDS)
def test_temperature_zero_is_the_mean_path(case: Case) -> None:
    built = build(case)
    model = built.module
    with torch.no_grad():
        x = model.sample(built.cond, temperature=0.0)
        expected, _ = model.flow(torch.zeros_like(built.z), built.cond)
        noisy = model.sample(built.cond, generator=torch.Generator().manual_seed(0))
    assert x.shape == (BATCH, 1, FRAMES * HOP)
    torch.testing.assert_close(x, expected)
    assert not torch.allclose(x, noisy)


def test_waveglow_early_outputs_leave_where_nvidia_does() -> None:
    model = WaveGlow(SPEC, n_flows=6, n_layers=2, channels=4, group=6, early_every=2)
    widths = [
        m.n_condition + m.n_transform for m in model.modules() if isinstance(m, AffineCoupling)
    ]
    # z -> x order: the last two flows (x -> z numbering) on 2 channels, then 4, then all 6.
    assert widths == [2, 2, 4, 4, 6, 6]
    factor_outs = [m for m in model.modules() if isinstance(m, FactorOut)]
    assert [m.n_factored for m in factor_outs] == [2, 2]


def test_flowavenet_blocks_and_splits() -> None:
    model = FloWaveNet(SPEC, n_blocks=4, flows_per_block=2, n_layers=1, channels=4)
    model_split = FloWaveNet(
        SPEC, n_blocks=4, flows_per_block=2, n_layers=1, channels=4, blocks_per_split=2
    )
    assert sum(isinstance(m, ActNorm) for m in model.modules()) == 4 * 2
    assert not any(isinstance(m, FactorOut) for m in model.modules())  # 4 blocks, split every 4
    # Split after block 2 of 4: one prior coupling more, and the last blocks are narrower.
    n_couplings = sum(isinstance(m, AffineCoupling) for m in model_split.modules())
    assert n_couplings == 4 * 2 + 1
    assert model_split.time_multiple == 16
    with torch.no_grad():
        x = model_split.sample(model_split.condition(torch.randn(1, N_MELS, 4)))
    assert x.shape == (1, 1, 16)


def test_base_distributions() -> None:
    z = torch.linspace(-4, 4, 9, dtype=DTYPE).reshape(1, 1, 9)
    gaussian = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    torch.testing.assert_close(StandardGaussian().log_prob(z), gaussian.reshape(1))
    logistic = (-z - 2 * torch.log1p(torch.exp(-z))).sum()
    torch.testing.assert_close(StandardLogistic().log_prob(z), logistic.reshape(1))
    for base in (StandardGaussian(), StandardLogistic()):
        one = base.sample((2, 1, 50), 1.0, torch.Generator().manual_seed(0), dtype=DTYPE)
        half = base.sample((2, 1, 50), 0.5, torch.Generator().manual_seed(0), dtype=DTYPE)
        torch.testing.assert_close(half, 0.5 * one)
        assert one.std() > 0.5


def test_build_student_validates_kind_and_sizes() -> None:
    for kind, cls in STUDENTS.items():
        model = build_student(kind, SPEC, **cls.PRESETS["tiny"])
        assert isinstance(model, cls)
        for preset in cls.PRESETS.values():
            assert set(preset) <= set(student_sizes(kind))
    with pytest.raises(ValueError, match="iaf, waveglow, flowavenet"):
        build_student("wavernn", SPEC)
    with pytest.raises(ValueError, match="'n_flow'"):
        build_student("waveglow", SPEC, n_flow=3)


# bf16 inference: every student samples in bfloat16, close to its float32 samples (same noise).
@pytest.mark.parametrize("case", STUDENT_CASES, ids=STUDENT_IDS)
def test_bf16_sample_stays_close_to_fp32(case: Case) -> None:
    # Output convs of std 0.05, not 0.3: the larger random log-scales make some tiny students
    # amplify any relative change of z or weights ~20x (fp32 included), which would test the
    # draw rather than bf16. Errors here are ~0.005 (bf16 keeps 8 bits: 0.4% per rounding).
    built = build(case, perturbed=False, warm=False)
    perturb(built.module, std=0.05)
    with torch.no_grad():
        built.flow(built.z, built.cond)  # ActNorm init in float64
    samples = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = copy.deepcopy(built.module).to(dtype).eval()
        with torch.inference_mode():
            cond = model.condition(built.feats.to(dtype), built.speaker, built.f0)
            samples[dtype] = model.sample(cond, generator=torch.Generator().manual_seed(5))
        assert samples[dtype].dtype == dtype and samples[dtype].shape == (BATCH, 1, FRAMES * HOP)
    reference, low = samples[torch.float32], samples[torch.bfloat16].float()
    assert torch.isfinite(low).all()
    relative = (low - reference).norm() / reference.norm()
    assert relative < 0.03, f"bf16 vs fp32 relative error {relative:.3f}"


def test_invertible_conv_cache_follows_the_weights() -> None:
    for lu in (False, True):
        layer = Invertible1x1Conv(4, lu=lu).to(DTYPE)
        z = torch.randn(2, 4, 5, dtype=DTYPE)
        with torch.no_grad():
            x, logdet = layer(z)
            assert layer._cache is not None  # no gradient needed: the matrices are kept
            x_again, _ = layer(z)
            assert torch.equal(x, x_again)
            for parameter in layer.parameters():  # an optimiser step, in place
                parameter.add_(0.1)
            x_new, logdet_new = layer(z)
        expected, expected_logdet = layer(z)  # with gradients: computed afresh, never cached
        torch.testing.assert_close(x_new, expected)
        torch.testing.assert_close(logdet_new, expected_logdet)
        assert not torch.allclose(x_new, x) and not torch.allclose(logdet_new, logdet)
        with torch.no_grad():
            z_back, _ = layer.inverse(x_new)
        torch.testing.assert_close(z_back, z)
        # A bf16 copy: W, log|det W| and W^-1 come from float32, then cast.
        low = copy.deepcopy(layer).to(torch.bfloat16)
        with torch.inference_mode():
            x_low, logdet_low = low(z.to(torch.bfloat16))
            z_low, _ = low.inverse(x_low)
        assert x_low.dtype == torch.bfloat16 and logdet_low.dtype == torch.bfloat16
        torch.testing.assert_close(z_low.double(), z, atol=0.1, rtol=0.05)


MELS_3_HOP_4 = ConditioningSpec(n_mels=3, hop_length=4)


def test_frame_rate_conditioner_repeats_or_stacks_frames() -> None:
    feats = torch.arange(2 * 3 * 4, dtype=DTYPE).reshape(2, 3, 4)
    repeated = FrameRateConditioner(MELS_3_HOP_4, fold=2)(feats)  # 2 steps per frame
    assert repeated.shape == (2, 3, 8)
    torch.testing.assert_close(repeated[..., ::2], feats)
    torch.testing.assert_close(repeated[..., 1::2], feats)
    stacked = FrameRateConditioner(MELS_3_HOP_4, fold=8)(feats)  # 2 frames per step
    assert stacked.shape == (2, 6, 2)
    torch.testing.assert_close(stacked[:, 0:2, 1], feats[:, 0, 2:4])  # mel 0, frames 2 and 3
    same = FrameRateConditioner(MELS_3_HOP_4, fold=4)(feats)
    torch.testing.assert_close(same, feats)
    with_speaker = FrameRateConditioner(
        ConditioningSpec(3, hop_length=4, n_speakers=3, speaker_channels=5), fold=2
    )
    assert with_speaker(feats, torch.tensor([0, 2])).shape == (2, 3 + 5, 8)
    with pytest.raises(ValueError, match="one must divide the other"):
        FrameRateConditioner(MELS_3_HOP_4, fold=6)
    with pytest.raises(ValueError, match="multiple of 2"):
        FrameRateConditioner(MELS_3_HOP_4, fold=8)(feats[..., :3])


def test_squeezewave_published_layout() -> None:
    """SqueezeWave-128L's flows (channels shrunk): 128 samples per step, 16 channels out every
    2 flows, cond at the folded rate, and T = fold * cond's length."""
    preset = {**SqueezeWave.PRESETS["squeezewave_128l"], "channels": 4, "n_layers": 1}
    model = SqueezeWave(ConditioningSpec(80, 256), **preset)
    widths = [
        m.n_condition + m.n_transform for m in model.modules() if isinstance(m, AffineCoupling)
    ]
    assert widths == [48, 48, 64, 64, 80, 80, 96, 96, 112, 112, 128, 128]
    assert [m.n_factored for m in model.modules() if isinstance(m, FactorOut)] == [16] * 5
    assert model.time_multiple == model.samples_per_cond_step == 128
    with torch.no_grad():
        cond = model.condition(torch.randn(1, 80, 3))
        assert cond.shape == (1, 80, 3 * 256 // 128)
        x = model.sample(cond)
    assert x.shape == (1, 1, 3 * 256)
    for name in ("squeezewave", "squeezewave_64l", "squeezewave_128s", "squeezewave_64s"):
        assert SqueezeWave.PRESETS[name]["fold"] in (128, 256)
    with pytest.raises(ValueError, match="at least 2"):
        SqueezeWave(ConditioningSpec(80, 256), n_flows=12, fold=64, early_channels=16)


def test_gated_tanh_is_tanh_times_sigmoid() -> None:
    filt, gate = torch.randn(2, 2, 3, 50, dtype=DTYPE).mul(4).unbind(0)
    expected = torch.tanh(filt) * torch.sigmoid(gate)
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(gated_tanh(filt, gate), expected, atol=1e-15, rtol=0)
    filt.requires_grad_(True)
    torch.testing.assert_close(gated_tanh(filt, gate), expected, atol=1e-15, rtol=0)
    assert torch.autograd.gradcheck(gated_tanh, (filt[:, :4], gate[:, :4]))

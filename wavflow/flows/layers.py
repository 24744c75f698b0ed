"""Flow layers shared by the coupling students: normalisation, mixing, coupling, reshapes and
conditional shifts (the F0 excitation of a folded flow).

Every layer is a `Flow`: `forward` is z -> x (sampling), `inverse` is x -> z, each returns its
log-det (B,). Tensors are (B, C, T).

References:
    Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803.
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
    arXiv:1807.03039.
    Prenger et al., "WaveGlow", arXiv:1811.00002.
    Kim et al., "FloWaveNet", arXiv:1811.02155.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wavflow.distributed import mean_over_ranks
from wavflow.flows.base import Flow
from wavflow.nn.conv import zero_gain_conv
from wavflow.nn.precision import at_least_float32, full_precision
from wavflow.nn.wavenet import WaveNetStack

LOG_SCALE_BOUND = 7.0
"""Default bound b of the soft-clamped log-scales: |s| < b, so exp(s) lies in (e^-7, e^7)."""


def soft_clamp(raw: Tensor, bound: float) -> Tensor:
    """s = b * tanh(raw / b): the identity near 0 (a new layer's gradients are unchanged) and
    bounded by b, so exp(+-s) cannot overflow in either direction, even in fp16."""
    return bound * torch.tanh(raw / bound)


def _zeros(x: Tensor) -> Tensor:
    return x.new_zeros(x.shape[0])


def channel_moments(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation per channel of (B, C, T) `inputs` over batch, time and, under
    DDP, every rank's batch (ranks hold equal batches): (1, C, 1) each."""
    mean = mean_over_ranks(inputs.mean(dim=(0, 2), keepdim=True))
    variance = mean_over_ranks((inputs - mean).square().mean(dim=(0, 2), keepdim=True))
    return mean, variance.sqrt()


class ActNorm(Flow):
    """Per-channel affine map x = z * exp(log_scale) + bias, with data-dependent init.

    On the first call in either direction the parameters are set so that the output of that
    call has zero mean and unit variance per channel (over batch and time). `initialized` is a
    persistent buffer: it is saved and loaded with the weights, so a loaded model is not
    re-initialised by its first batch.

    Under DDP the statistics are those of all ranks' batches together (`channel_moments`), so
    every rank starts from the same parameters: DDP broadcasts parameters only when it wraps
    the model, before this first call. Every rank must therefore make that first call (the
    first training step does).

    log|det dx/dz| = T * sum_c log_scale_c.

    Args:
        channels: C.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, inputs: Tensor, forward: bool) -> None:
        mean, std = channel_moments(inputs)
        # The floor keeps a constant channel (e.g. all-zero noise) from giving an infinite scale.
        std = std.clamp_min(1e-6)
        if forward:  # x = (z - mean) / std
            self.log_scale.copy_(-torch.log(std))
            self.bias.copy_(-mean / std)
        else:  # z = (x - bias) * exp(-log_scale) = (x - mean) / std
            self.log_scale.copy_(torch.log(std))
            self.bias.copy_(mean)
        self.initialized.fill_(True)

    def _logdet(self, inputs: Tensor) -> Tensor:
        return (inputs.shape[-1] * self.log_scale.sum()).expand(inputs.shape[0])

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            self._initialize(z, forward=True)
        return z * torch.exp(self.log_scale) + self.bias, self._logdet(z)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            self._initialize(x, forward=False)
        return (x - self.bias) * torch.exp(-self.log_scale), -self._logdet(x)


class Invertible1x1Conv(Flow):
    """Channel mixing x_t = W z_t at every time step, W starting as a random rotation.

    log|det dx/dz| = T * log|det W|. With `lu`, W = P L (U + diag(sign * exp(log_s))) with P
    fixed, L unit lower and U strictly upper triangular (Glow), so the log-det is
    T * sum(log_s) with no determinant to compute.

    W, log|det W| and W^-1 are computed in at least float32 (LU, `slogdet` and `inv` have no
    bfloat16 kernels, and a low-precision inverse would not be an inverse) and cast to the
    activations' dtype, so the layer runs when the module is cast to bfloat16. Under autocast
    the product W z runs in float32 too (`full_precision`), so that x -> z -> x round-trips
    while the couplings' stacks run in bfloat16. When no gradient
    is needed (`torch.no_grad`, `torch.inference_mode`, frozen weights) they are cached; the
    cache holds a copy of the parameters it was computed from and is used only while they are
    still equal (compared exactly, O(C^2) against the O(C^3) it saves), so training steps,
    `load_state_dict` and dtype or device casts all recompute it.

    Args:
        channels: C.
        lu: use the LU parametrisation.
    """

    def __init__(self, channels: int, lu: bool = False) -> None:
        super().__init__()
        weight = torch.linalg.qr(torch.randn(channels, channels))[0]
        if torch.linalg.det(weight) < 0:  # start as a rotation (det +1), as WaveGlow does
            weight[:, 0] = -weight[:, 0]
        self.lu = lu
        self._cache: tuple[list[Tensor], dict[str, Tensor]] | None = None
        if not lu:
            self.weight = nn.Parameter(weight)
            return
        permutation, lower, upper = torch.linalg.lu(weight)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", torch.sign(diagonal))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()))

    def _sources(self) -> list[Tensor]:
        """Every tensor W depends on."""
        if not self.lu:
            return [self.weight]
        return [self.lower, self.upper, self.log_s, self.sign, self.permutation]

    def _compute(self) -> tuple[Tensor, Tensor]:
        """W (C, C) and log|det W| in at least float32, differentiable."""
        if not self.lu:
            weight = self.weight.to(at_least_float32(self.weight.dtype))
            return weight, torch.linalg.slogdet(weight).logabsdet
        dtype = at_least_float32(self.log_s.dtype)
        lower, upper, log_s = (p.to(dtype) for p in (self.lower, self.upper, self.log_s))
        eye = torch.eye(log_s.shape[0], dtype=dtype, device=log_s.device)
        lower = torch.tril(lower, -1) + eye
        upper = torch.triu(upper, 1) + torch.diag(self.sign.to(dtype) * torch.exp(log_s))
        return self.permutation.to(dtype) @ lower @ upper, log_s.sum()

    def _cached(self) -> dict[str, Tensor] | None:
        """{"weight", "logabsdet", "inverse"} when no gradient is needed, else None."""
        sources = self._sources()
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in sources)
        if needs_grad or torch.jit.is_tracing():
            return None
        if self._cache is not None:
            saved, matrices = self._cache
            if all(
                s.dtype == p.dtype and s.device == p.device and torch.equal(s, p)
                for s, p in zip(saved, sources)
            ):
                return matrices
        with torch.no_grad():
            weight, logabsdet = self._compute()
            matrices = {
                "weight": weight,
                "logabsdet": logabsdet,
                "inverse": torch.linalg.inv(weight),
            }
            self._cache = ([p.detach().clone() for p in sources], matrices)
        return matrices

    def weight_and_logabsdet(self) -> tuple[Tensor, Tensor]:
        """W (C, C) and log|det W| (a scalar), in at least float32."""
        cached = self._cached()
        if cached is not None:
            return cached["weight"], cached["logabsdet"]
        return self._compute()

    def inverse_and_logabsdet(self) -> tuple[Tensor, Tensor]:
        """W^-1 (C, C) and log|det W| (a scalar), in at least float32."""
        cached = self._cached()
        if cached is not None:
            return cached["inverse"], cached["logabsdet"]
        weight, logabsdet = self._compute()
        return torch.linalg.inv(weight), logabsdet

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weight, logabsdet = self.weight_and_logabsdet()
        x = full_precision(torch.matmul, weight.to(z.dtype), z)  # (C, C) @ (B, C, T) -> (B, C, T)
        return x, (z.shape[-1] * logabsdet).to(z.dtype).expand(z.shape[0])

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        inverse_weight, logabsdet = self.inverse_and_logabsdet()
        z = full_precision(torch.matmul, inverse_weight.to(x.dtype), x)  # W^-1 x, over (B, T)
        return z, -(z.shape[-1] * logabsdet).to(x.dtype).expand(x.shape[0])


class AffineCoupling(Flow):
    """Affine coupling: half the channels, with `cond`, set a shift and scale for the other half.

        z = [z_a, z_b],  (shift, raw) = WaveNet(z_a, cond),  s = b * tanh(raw / b)
        x = [z_a, z_b * exp(s) + shift],   log|det dx/dz| = sum s

    The transform is a non-causal `WaveNetStack` whose output conv starts at zero, so a new
    layer is the identity, unless another `net` is given (SqueezeWave's depthwise-separable
    stack). The log-scale is soft-clamped (`soft_clamp`) so exp(s) stays finite in both
    directions during early training.

    Args:
        channels: C of z; the first C // 2 condition the remaining C - C // 2.
        cond_channels: channels of `cond` (0: unconditioned).
        n_layers: gated layers of the transform (dilations 1, 2, ..., 2^(n_layers - 1)).
        kernel_size: taps of its dilated convs (odd).
        hidden_channels: its residual and skip width.
        gate_channels: its gate width (default 2 * hidden_channels).
        log_scale_bound: b, the bound of |s|.
        net: a transform to use instead of the WaveNet (whose sizes are then unused):
            (B, C // 2, T), cond -> (B, 2 * (C - C // 2), T), shift first then raw log-scale,
            with an output that starts at zero.
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        n_layers: int = 8,
        kernel_size: int = 3,
        hidden_channels: int = 256,
        gate_channels: int | None = None,
        log_scale_bound: float = LOG_SCALE_BOUND,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        self.n_condition = channels // 2
        self.n_transform = channels - self.n_condition
        self.log_scale_bound = log_scale_bound
        if net is None:
            net = WaveNetStack(
                self.n_condition,
                2 * self.n_transform,
                n_layers,
                n_cycles=1,
                kernel_size=kernel_size,
                residual_channels=hidden_channels,
                gate_channels=gate_channels or 2 * hidden_channels,
                skip_channels=hidden_channels,
                cond_channels=cond_channels,
                causal=False,
                zero_output=True,
            )
        self.net = net

    def _shift_and_log_scale(self, half: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        # Under autocast a transform's output may come back in bfloat16; in that dtype exp(-s)
        # is not 1 / exp(s) and the sum of s (the log-det) is rounded by tens of nats.
        shift, raw = self.net(half, cond).to(half.dtype).chunk(2, dim=1)
        return shift, soft_clamp(raw, self.log_scale_bound)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a, z_b = z.split([self.n_condition, self.n_transform], dim=1)
        shift, log_scale = self._shift_and_log_scale(z_a, cond)
        x_b = z_b * torch.exp(log_scale) + shift
        return torch.cat([z_a, x_b], dim=1), log_scale.sum(dim=(1, 2))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x.split([self.n_condition, self.n_transform], dim=1)
        shift, log_scale = self._shift_and_log_scale(x_a, cond)
        z_b = (x_b - shift) * torch.exp(-log_scale)
        return torch.cat([x_a, z_b], dim=1), -log_scale.sum(dim=(1, 2))


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
        return fold(z, self.factor), _zeros(z)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return unfold(x, self.factor), _zeros(x)

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
        return z[:, self.permutation], _zeros(z)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x[:, self.inverse_permutation], _zeros(x)


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


class OutputScale(Flow):
    """x = exp(s) z with one learned log-scale s, log|det| = s * (elements per item).

    Placed last in the sampling direction, it lets a student start quiet (s = log 0.05 or
    lower) rather than at unit variance, which keeps a distillation KL against a teacher of
    quiet audio in a sane range from the first step.

    Args:
        init_log_scale: s at initialisation.
    """

    def __init__(self, init_log_scale: float = 0.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(float(init_log_scale)))

    def _scale(self, inputs: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        logdet = (log_scale * inputs[0].numel()).expand(inputs.shape[0])
        return inputs * torch.exp(log_scale), logdet

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(z, self.log_scale)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(x, -self.log_scale)


class EnvelopeScale(Flow):
    """x = exp(e + c) z: the output scaled by the level the mel gives, a mel-adaptive prior.

    e (B, 1, S) is channel `channel` of `cond` (`log_envelope`: the log RMS level of the audio
    estimated from its log-mel, known before any sampling); c is one learned offset. It
    multiplies every channel of z (B, G, S) at step s, so log|det| = G sum_s (e_s + c). Placed
    last in the sampling direction, it makes a student's noise as loud as the mel says from
    the first step: quiet in silences, at speech level in speech. The density stays exact,
    since e is a function of the conditioning only.

    Args:
        channel: index of e in `cond` (negative: counted from the end).
        init_offset: c at initialisation (about -2.7 for 1024-point slaney log-mels: see
            `log_envelope`).

    References:
        Lee et al., "PriorGrad", arXiv:2106.06406.
    """

    def __init__(self, channel: int, init_offset: float = 0.0) -> None:
        super().__init__()
        self.channel = channel
        self.offset = nn.Parameter(torch.tensor(float(init_offset)))

    def log_scale(self, cond: Tensor | None) -> Tensor:
        """(B, C, S) cond -> the log-scale e + c, (B, 1, S)."""
        if cond is None:
            raise ValueError("EnvelopeScale needs cond")
        index = self.channel % cond.shape[1]
        return cond[:, index : index + 1] + self.offset

    def _scale(self, inputs: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        logdet = (log_scale.sum(dim=(1, 2)) * inputs.shape[1]).to(inputs.dtype)
        return inputs * torch.exp(log_scale), logdet

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(z, self.log_scale(cond))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._scale(x, -self.log_scale(cond))


class HarmonicShift(Flow):
    """x = z + sum_k a_k e_k on folded audio: the F0 excitation, weighted from the mel, added.

    `cond` (B, C_frame + K * G, S) ends with an excitation of K channels folded like the audio
    (channel k * G + i at step s is e_k[s * G + i]); the first C_frame channels (mel, speaker)
    set the weights a_k per step through a centred, weight-normalised conv whose gains start
    at zero, so a new layer is the identity and a step of the optimiser moves a_k by an amount
    that does not grow with the scale of the log-mel. A shift only: log-det 0. This puts
    pitch in the signal path of a folded flow at the cost of K multiply-adds per sample.

    Args:
        channels: G, samples folded per step (C of z and x).
        frame_channels: C_frame, the leading channels of `cond` that set the weights.
        excitation_channels: K, excitation signals folded into the end of `cond`.
        kernel_size: taps of the conv over the frame channels (odd).
    """

    def __init__(
        self, channels: int, frame_channels: int, excitation_channels: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.channels, self.excitation_channels = channels, excitation_channels
        self.weights = zero_gain_conv(frame_channels, excitation_channels, kernel_size)

    def _shift(self, cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ValueError("HarmonicShift needs cond")
        batch, _, steps = cond.shape
        weights = self.weights(cond[:, : self.weights.in_channels])  # (B, K, S)
        excitation = cond[:, -self.excitation_channels * self.channels :]
        excitation = excitation.reshape(batch, self.excitation_channels, self.channels, steps)
        return torch.einsum("bks,bkgs->bgs", weights, excitation)  # (B, G, S)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z + self._shift(cond), _zeros(z)

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x - self._shift(cond), _zeros(x)

"""Linear flow layers on channels: ActNorm (per-channel affine, data-dependent init) and the
invertible 1x1 convolution (channel mixing, optionally LU-parametrised).

References:
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
    arXiv:1807.03039.
    Prenger et al., "WaveGlow", arXiv:1811.00002.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wavflow.distributed import mean_over_ranks
from wavflow.flows.base import Flow
from wavflow.nn.precision import at_least_float32, full_precision


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

"""The autoregressive WaveNet teacher: parallel log-density, sequential generation.

References:
    van den Oord et al., "WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499.
    Paine et al., "Fast Wavenet Generation Algorithm", arXiv:1611.09482 (cached generation).
    Ping et al., "ClariNet", arXiv:1807.07281 (Gaussian output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavflow.distributions import build_output, shift_by_excitation
from wavflow.nn.conditioning import Conditioner
from wavflow.nn.wavenet import WaveNetStack

GENERATION_METHODS = ("cached", "naive")


class WaveNet(nn.Module):
    """Mel-conditioned WaveNet: p(x) = prod_t p(x_t | x_<t, mel).

    The stack reads x shifted right by one sample (x_{t-1} at position t), so its output at t
    parameterises x_t given x_<t.

    Args:
        n_mels: mel bands of the conditioning features.
        hop_length: audio samples per mel frame (sets the upsampling factors).
        n_layers, n_cycles, kernel_size, residual_channels, gate_channels, skip_channels:
            the gated residual stack (see `WaveNetStack`).
        output: "gaussian" or "mol" (discretised mixture of logistics).
        n_mixtures: components of the "mol" head.
        log_scale_min: floor on predicted log-scales.
        n_speakers: speakers for global conditioning (0: none).
        speaker_channels: speaker embedding width.
        n_harmonics: harmonics of the F0 excitation (0: no pitch). With pitch, the stack also
            predicts an amplitude per excitation channel and sample, and the location of x_t
            moves by sum_k a_k(t) e_k(t); the excitation also enters the gates via `cond`.
        sample_rate: audio rate in Hz (for the excitation).
    """

    def __init__(
        self,
        n_mels: int,
        hop_length: int,
        n_layers: int = 24,
        n_cycles: int = 4,
        kernel_size: int = 3,
        residual_channels: int = 128,
        gate_channels: int = 256,
        skip_channels: int = 128,
        output: str = "mol",
        n_mixtures: int = 10,
        log_scale_min: float = -7.0,
        n_speakers: int = 0,
        speaker_channels: int = 16,
        n_harmonics: int = 0,
        sample_rate: int = 22050,
    ) -> None:
        super().__init__()
        self.head = build_output(output, n_mixtures, log_scale_min)
        self.conditioner = Conditioner(
            n_mels, hop_length, n_speakers, speaker_channels, n_harmonics, sample_rate
        )
        self.stack = WaveNetStack(
            in_channels=1,
            out_channels=self.head.n_params + self.conditioner.excitation_channels,
            n_layers=n_layers,
            n_cycles=n_cycles,
            kernel_size=kernel_size,
            residual_channels=residual_channels,
            gate_channels=gate_channels,
            skip_channels=skip_channels,
            cond_channels=self.conditioner.out_channels,
            causal=True,
            input_kernel_size=2,
        )

    @property
    def receptive_field(self) -> int:
        """Past samples x_{t-R}..x_{t-1} that the distribution of x_t depends on (R)."""
        return self.stack.receptive_field

    def condition(
        self, feats: Tensor, speaker: Tensor | None = None, f0: Tensor | None = None
    ) -> Tensor:
        """Mels (B, n_mels, F), speaker ids (B,), F0 (B, F) Hz -> cond (B, C, F * hop)."""
        return self.conditioner(feats, speaker, f0)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced distribution parameters of every x_t: (B, 1, T) -> (B, P, T)."""
        shifted = F.pad(x, (1, -1))  # x_{t-1} at position t; zero before the start
        return self.head_params(self.stack(shifted, cond), cond)

    def head_params(self, stack_out: Tensor, cond: Tensor) -> Tensor:
        """The head's parameters (B, P, T) from the stack's output (B, P + 2K, T): with pitch,
        the predicted amplitudes times the excitation move the location."""
        excitation = self.conditioner.excitation(cond)
        if excitation is None:
            return stack_out
        return shift_by_excitation(self.head, stack_out, excitation)

    def log_prob_per_step(self, x: Tensor, cond: Tensor) -> Tensor:
        """log p(x_t | x_<t, cond) in nats for every t, one parallel pass: (B, T)."""
        return self.head.log_prob(self(x, cond), x)[:, 0]

    def log_prob(self, x: Tensor, cond: Tensor) -> Tensor:
        """Total log-density of x (B, 1, T) in nats: (B,)."""
        return self.log_prob_per_step(x, cond).sum(dim=-1)

    @torch.no_grad()
    def generate(
        self,
        cond: Tensor,
        method: str = "cached",
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        lengths: Tensor | None = None,
        noise: Tensor | None = None,
        weight_dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Sample audio one step at a time.

        Args:
            cond: (B, C, T) conditioning from `condition`.
            method: "cached" (per-layer queues, O(layers) per step) or "naive" (the stack over the
                receptive-field window at every step, the textbook reference).
            temperature: scale of the sampling noise (0: the mode path of the chosen component).
            generator: RNG for the noise; the same seed gives the same samples for both methods.
            lengths: (B,) samples to generate per item (default T); later samples are 0.
            noise: pre-drawn noise (B, head.noise_channels, T) instead of `generator`.
            weight_dtype: storage dtype of the cached path's weights (e.g. torch.bfloat16 to
                halve their memory traffic; activations stay float32); None: the model's.

        Returns:
            (B, 1, T) float waveform in [-1, 1].
        """
        batch, _, length = cond.shape
        if noise is None:
            noise = self.head.draw_noise(batch, length, generator, cond.device)
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long)
        if method == "naive":
            x = self._generate_naive(cond, noise, temperature, lengths)
        elif method == "cached":
            from wavflow.nn.incremental import IncrementalWaveNet

            cached = IncrementalWaveNet(self.stack, dtype=weight_dtype)
            excitation = self.conditioner.excitation(cond)
            x = cached.generate(cond, self.head, noise, temperature, lengths, excitation=excitation)
        else:
            raise ValueError(
                f"unknown generation method '{method}': use one of {GENERATION_METHODS}"
            )
        return x

    def _generate_naive(
        self, cond: Tensor, noise: Tensor, temperature: float, lengths: Tensor
    ) -> Tensor:
        """At each step run the whole stack over the last `receptive_field` inputs."""
        batch, _, length = cond.shape
        window = self.receptive_field
        shifted = cond.new_zeros(batch, 1, length + 1)  # shifted[t] = x_{t-1}
        for t in range(int(lengths.max())):
            start = max(0, t + 1 - window)
            window_cond = cond[:, :, start : t + 1]
            stack_out = self.stack(shifted[:, :, start : t + 1], window_cond)
            params = self.head_params(stack_out, window_cond)
            params = params[..., -1:]
            x_t = self.head.sample(params, noise[:, :, t : t + 1], temperature)
            shifted[:, :, t + 1 : t + 2] = x_t
        x = shifted[:, :, 1:]
        alive = (
            torch.arange(length, device=x.device)[None, None] < lengths.to(x.device)[:, None, None]
        )
        return x * alive

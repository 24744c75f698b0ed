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

from wavflow.capabilities import Capabilities
from wavflow.distributions import build_output, shift_by_excitation
from wavflow.generation import GenerationState, IncrementalWaveNet
from wavflow.nn.conditioning import Conditioner
from wavflow.nn.wavenet import WaveNetStack

GENERATION_METHODS = ("cached", "naive")


class WaveNet(nn.Module):
    """Mel-conditioned WaveNet: p(x) = prod_t p(x_t | x_<t, mel).

    The stack reads x shifted right by one sample (x_{t-1} at position t), so its output at t
    parameterises x_t given x_<t.

    With `envelope`, the stack models the signal normalised by the level its mel gives: with
    l_t = e_t + c (e the `log_envelope` channel of `cond`, c a learned offset), it reads
    y_{t-1} = x_{t-1} exp(-l_{t-1}) and its location(s) m and raw log-scale(s) s, in y units,
    become x-space parameters m exp(l_t) and s + l_t before the log-scale floor (which stays in x
    units). `forward` returns x-space parameters, so every consumer scores x as before and the
    density of x stays exact, with no extra log-det term: for the Gaussian head, log p(x_t) is
    the y-space density of x_t exp(-l_t) minus l_t (a per-step affine change of variables with
    a Jacobian known from the mel); the mixture's bins, edges and floor stay in x units. Silences
    then start quiet instead of at the one noise level a stack must otherwise learn across
    80 dB of levels.

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
        envelope: model the envelope-normalised signal (above); `cond` gets the envelope
            channel.
        envelope_offset: c at initialisation (log RMS = e - 2.7 for 1024-point slaney log-mels,
            see `log_envelope`).
        align_phase: train with the excitation's phase aligned to the real audio's
            fundamental (`aligned_phase`, in the likelihood loss only), so that the excitation
            tells the teacher where the glottal pulses are.
        input_noise: standard deviation of Gaussian noise added to the stack's input (the
            past samples, in y units with the envelope) in training mode only, so the teacher
            learns to lean on the mel and the excitation rather than on an exact past, which its
            own samples never give it. Evaluation and the density stay exact (no noise).

    References:
        Lee et al., "PriorGrad", arXiv:2106.06406 (a data-dependent scale from the mel energy).
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
        envelope: bool = False,
        envelope_offset: float = -2.7,
        input_noise: float = 0.0,
        align_phase: bool = False,
    ) -> None:
        super().__init__()
        self.input_noise, self.align_phase = input_noise, align_phase
        self._incremental: tuple[tuple, IncrementalWaveNet] | None = None  # see `incremental`
        self.head = build_output(output, n_mixtures, log_scale_min)
        self.conditioner = Conditioner(
            n_mels, hop_length, n_speakers, speaker_channels, n_harmonics, sample_rate, envelope
        )
        # c of l_t = e_t + c; only with the envelope, so checkpoints without it keep their keys.
        self.level_offset = nn.Parameter(torch.tensor(float(envelope_offset))) if envelope else None
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

    @property
    def capabilities(self) -> Capabilities:
        """What this vocoder is (see `Capabilities`): sequential and causal."""
        return Capabilities(
            sequential=True,
            causal=True,
            receptive_field=self.receptive_field,
            lookahead=self.conditioner.lookahead,
            time_multiple=1,
            chunk_seconds=None,
            takes_pitch=bool(self.conditioner.n_harmonics),
            n_speakers=self.conditioner.n_speakers,
            location_scale=False,
        )

    def condition(
        self, feats: Tensor, speaker: Tensor | None = None, f0: Tensor | None = None
    ) -> Tensor:
        """Mels (B, n_mels, F), speaker ids (B,), F0 (B, F) Hz -> cond (B, C, F * hop)."""
        return self.conditioner(feats, speaker, f0)

    def log_level(self, cond: Tensor) -> Tensor | None:
        """l = e + c (B, 1, T), the log level the stack's signal is normalised by, from a `cond`
        this model built (None: no envelope)."""
        if self.level_offset is None:
            return None
        channel = self.conditioner.envelope_channel % cond.shape[1]
        return cond[:, channel : channel + 1] + self.level_offset

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced distribution parameters of every x_t: (B, 1, T) -> (B, P, T)."""
        level = self.log_level(cond)
        inputs = x if level is None else x * torch.exp(-level)  # y_t = x_t exp(-l_t)
        if self.training and self.input_noise:
            inputs = inputs + self.input_noise * torch.randn_like(inputs)
        shifted = F.pad(inputs, (1, -1))  # y_{t-1} at position t; zero before the start
        return self.head_params(self.stack(shifted, cond), cond)

    def head_params(self, stack_out: Tensor, cond: Tensor) -> Tensor:
        """The head's x-space parameters (B, P, T) from the stack's output (B, P + 2K, T): with
        pitch, the predicted amplitudes times the excitation move the location; with the
        envelope, the result (in y units) is scaled by exp(l_t) (`head.scale`)."""
        excitation = self.conditioner.excitation(cond)
        params = stack_out
        if excitation is not None:
            params = shift_by_excitation(self.head, stack_out, excitation)
        level = self.log_level(cond)
        return params if level is None else self.head.scale(params, level)

    def log_prob_per_step(self, x: Tensor, cond: Tensor) -> Tensor:
        """log p(x_t | x_<t, cond) in nats for every t, one parallel pass: (B, T)."""
        return self.head.log_prob(self(x, cond), x)[:, 0]

    def log_prob(self, x: Tensor, cond: Tensor) -> Tensor:
        """Total log-density of x (B, 1, T) in nats: (B,)."""
        return self.log_prob_per_step(x, cond).sum(dim=-1)

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> GenerationState:
        """The cached generation state before the first sample of B utterances (all zeros),
        in the compute dtype of this model's weights (float64 stays float64, else float32)."""
        (kernel_size,) = self.stack.blocks[0].dilated.kernel_size
        dtype = next(self.stack.parameters()).dtype
        return GenerationState.zeros(
            batch,
            [(kernel_size - 1) * d + 1 for d in self.stack.dilations],
            self.stack.input.out_channels,
            self.stack.input.kernel_size[0],
            device,
            torch.float64 if dtype == torch.float64 else torch.float32,
        )

    def incremental(self, weight_dtype: torch.dtype | None = None) -> IncrementalWaveNet:
        """The stack folded for cached generation, kept while its weights are unchanged.

        Folding and packing take about 80 ms at the paper size, so chunk-by-chunk generation
        reuses them. The key is each parameter's storage and version counter: an optimizer step
        or `load_state_dict` bumps the version, `to()` or removing weight norm moves the storage.
        """
        key = (weight_dtype, tuple((p.data_ptr(), p._version) for p in self.stack.parameters()))
        if self._incremental is None or self._incremental[0] != key:
            self._incremental = (key, IncrementalWaveNet(self.stack, dtype=weight_dtype))
        return self._incremental[1]

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
        state: GenerationState | None = None,
    ) -> tuple[Tensor, GenerationState | None]:
        """Sample audio one step at a time, continuing from `state`.

        Generating T1 samples and then, from the state returned, T2 more gives the samples of
        one call on T1 + T2 (for the same noise: pass `noise` in slices, since a `generator`
        draws each call's noise afresh).

        Args:
            cond: (B, C, T) conditioning from `condition` (its slice for this chunk).
            method: "cached" (per-layer queues, O(layers) per step) or "naive" (the stack over the
                receptive-field window at every step, the textbook reference; it keeps no state,
                so it starts every call afresh).
            temperature: scale of the sampling noise (0: the mode path of the chosen component).
            generator: RNG for the noise; the same seed gives the same samples for both methods.
            lengths: (B,) samples to generate per item (default T); later samples are 0.
            noise: pre-drawn noise (B, head.noise_channels, T) instead of `generator`.
            weight_dtype: storage dtype of the cached path's weights (e.g. torch.bfloat16 to
                halve their memory traffic; activations stay float32); None: the model's.
            state: where the cached path continues (`initial_state`, or the state a previous
                call returned); None: the start of the utterances.

        Returns:
            (B, 1, T) float waveform in [-1, 1], and the state after each row's length (None for
            the naive method).
        """
        batch, _, length = cond.shape
        if noise is None:
            noise = self.head.draw_noise(batch, length, generator, cond.device)
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long)
        if method == "naive":
            if state is not None:
                raise ValueError("the naive method keeps no state: use method='cached'")
            return self._generate_naive(cond, noise, temperature, lengths), None
        if method != "cached":
            raise ValueError(
                f"unknown generation method '{method}': use one of {GENERATION_METHODS}"
            )
        cached = self.incremental(weight_dtype)
        level = self.log_level(cond)
        chunk = cached.generate_chunk(
            cond,
            self.head,
            noise,
            state,
            temperature,
            lengths,
            excitation=self.conditioner.excitation(cond),
            log_level=None if level is None else level[:, 0],  # (B, 1, T) -> (B, T)
        )
        return chunk.x, chunk.state

    def _generate_naive(
        self, cond: Tensor, noise: Tensor, temperature: float, lengths: Tensor
    ) -> Tensor:
        """At each step run the whole stack over the last `receptive_field` inputs."""
        batch, _, length = cond.shape
        window = self.receptive_field
        level = self.log_level(cond)
        shifted = cond.new_zeros(batch, 1, length + 1)  # shifted[t] = y_{t-1} (x without level)
        x = cond.new_zeros(batch, 1, length)
        for t in range(int(lengths.max())):
            start = max(0, t + 1 - window)
            window_cond = cond[:, :, start : t + 1]
            stack_out = self.stack(shifted[:, :, start : t + 1], window_cond)
            params = self.head_params(stack_out, window_cond)
            params = params[..., -1:]
            x_t = self.head.sample(params, noise[:, :, t : t + 1], temperature)
            x[:, :, t : t + 1] = x_t
            if level is not None:
                x_t = x_t * torch.exp(-level[:, :, t : t + 1])  # the stack reads y_t
            shifted[:, :, t + 1 : t + 2] = x_t
        alive = (
            torch.arange(length, device=x.device)[None, None] < lengths.to(x.device)[:, None, None]
        )
        return x * alive

"""The autoregressive WaveNet teacher: parallel log-density, sequential generation.

References:
    van den Oord et al., "WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499.
    Paine et al., "Fast Wavenet Generation Algorithm", arXiv:1611.09482 (cached generation).
    Ping et al., "ClariNet", arXiv:1807.07281 (Gaussian output).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wavflow.capabilities import Capabilities
from wavflow.config import FeatureConfig
from wavflow.distributions import build_output, shift_by_excitation
from wavflow.generation import GenerationState, IncrementalWaveNet
from wavflow.nn.conditioning import Conditioner, ConditioningSpec, unpack_mels
from wavflow.nn.lpc import LinearPrediction
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

    With `lpc_order` p as well, the level follows the spectrum, not only the loudness: the mel's
    all-pole envelope (`LinearPrediction`: per frame, coefficients a and gain g) predicts x_t
    from its past, and the stack models the normalised excitation, as LPCNet's network does:

        x_t = pred_t + exp(l_t) w_t,  pred_t = sum_k a_k(t) x_{t-k},  l_t = log g(t) + c.

    The stack reads w_{t-1} and its parameters of w_t map to x units by the scale exp(l_t) and
    the shift pred_t, a per-step affine change of variables with a Jacobian known from the mel
    and x_<t: the density of x stays exact and `forward` stays x-space. Sampling draws
    exp(l_t) w_t with the cached or naive path and runs the all-pole recursion over it
    (`LinearPrediction.synthesize`). The teacher's noise is then shaped like the frame's
    spectrum from the first step; with the level alone it is white at the frame's loudness, far
    above the real spectrum in quiet bands.

    Args:
        spec: what the model is conditioned on (`ConditioningSpec`). With pitch (n_harmonics
            K > 0), the stack also predicts an amplitude per excitation channel and sample, and
            the location of x_t moves by sum_k a_k(t) e_k(t); the excitation also enters the
            gates via `cond`.
        n_layers, n_cycles, kernel_size, residual_channels, gate_channels, skip_channels:
            the gated residual stack (see `WaveNetStack`).
        output: "gaussian" or "mol" (discretised mixture of logistics).
        n_mixtures: components of the "mol" head.
        log_scale_min: floor on predicted log-scales.
        envelope: model the envelope-normalised signal (above); `cond` gets the envelope
            channel.
        envelope_offset: c at initialisation (log RMS = e - 2.7 for 1024-point slaney log-mels,
            see `log_envelope`).
        align_phase: train with the excitation's phase aligned to the real audio's
            fundamental (`aligned_phase`, in the likelihood loss only), so that the excitation
            tells the teacher where the glottal pulses are.
        lpc_order: taps of the mel's linear prediction in the location (0: none; needs
            `envelope` and `features`); c then starts at `envelope_offset` around the LPC gain,
            which is calibrated already (use 0).
        features: the mel settings (for `lpc_order`).
        input_noise: standard deviation of Gaussian noise added to the stack's input (the
            past samples, in y units with the envelope) in training mode only, so the teacher
            learns to lean on the mel and the excitation rather than on an exact past, which its
            own samples never give it. Evaluation and the density stay exact (no noise).

    References:
        Lee et al., "PriorGrad", arXiv:2106.06406 (a data-dependent scale from the mel energy).
    """

    def __init__(
        self,
        spec: ConditioningSpec,
        n_layers: int = 24,
        n_cycles: int = 4,
        kernel_size: int = 3,
        residual_channels: int = 128,
        gate_channels: int = 256,
        skip_channels: int = 128,
        output: str = "mol",
        n_mixtures: int = 10,
        log_scale_min: float = -7.0,
        envelope: bool = False,
        envelope_offset: float = -2.7,
        input_noise: float = 0.0,
        align_phase: bool = False,
        lpc_order: int = 0,
        features: FeatureConfig | None = None,
    ) -> None:
        super().__init__()
        if lpc_order and not (envelope and features is not None):
            raise ValueError("lpc_order needs envelope = true (and the mel settings)")
        self.input_noise, self.align_phase = input_noise, align_phase
        self._incremental: tuple[tuple, IncrementalWaveNet] | None = None  # see `incremental`
        self.head = build_output(output, n_mixtures, log_scale_min)
        self.conditioner = Conditioner(
            spec,
            envelope,
            packed_mel=bool(lpc_order),  # the LPC is fitted to the mel frames themselves
        )
        # None keeps checkpoints without it free of its (non-persistent) buffers' module.
        self.lpc = LinearPrediction(features, lpc_order) if lpc_order else None
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
            cond_channels=self.conditioner.out_channels - self.conditioner.leading_channels,
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
        this model built (None: no envelope); with `lpc_order`, e is the LPC's log gain."""
        return self.envelope_of(cond)[0]

    def envelope_of(self, cond: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The log level l (B, 1, T) or None, and the LPC coefficients per frame (B, F, p) or
        None (without `lpc_order`), of a `cond` this model built (whole frames)."""
        if self.level_offset is None:
            return None, None
        if self.lpc is None:
            channel = self.conditioner.envelope_channel % cond.shape[1]
            return cond[:, channel : channel + 1] + self.level_offset, None
        # The packed mel is data (no parameter feeds it): no gradient to carry through the fit.
        packed = cond[:, : self.conditioner.leading_channels].detach()
        mels = unpack_mels(packed, self.lpc.n_mels, self.lpc.hop)
        coefficients, log_gain = self.lpc.frames(mels)
        return self.lpc.per_sample(log_gain[..., None]) + self.level_offset, coefficients

    def stack_cond(self, cond: Tensor) -> Tensor:
        """The channels of `cond` the stack reads (all but the packed mel of `lpc_order`)."""
        return cond[:, self.conditioner.leading_channels :]

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """Teacher-forced distribution parameters of every x_t: (B, 1, T) -> (B, P, T)."""
        level, coefficients = self.envelope_of(cond)
        prediction = None
        if coefficients is not None:
            prediction = self.lpc.predict(x, self.lpc.per_sample(coefficients))
        residual = x if prediction is None else x - prediction
        inputs = residual if level is None else residual * torch.exp(-level)  # y = x exp(-l)
        if self.training and self.input_noise:
            inputs = inputs + self.input_noise * torch.randn_like(inputs)
        shifted = F.pad(inputs, (1, -1))  # y_{t-1} at position t; zero before the start
        stack_out = self.stack(shifted, self.stack_cond(cond))
        params = self._params(stack_out, self.conditioner.excitation(cond), level)
        return params if prediction is None else self.head.shift_location(params, prediction)

    def head_params(self, stack_out: Tensor, cond: Tensor) -> Tensor:
        """The head's x-space parameters (B, P, T) from the stack's output (B, P + 2K, T) and the
        `cond` (B, C, T) of the same steps, for a step-by-step caller (`IncrementalWaveNet.step`):
        with pitch, the predicted amplitudes times the excitation move the location; with the
        envelope, the result (in y units) is scaled by exp(l_t).

        Raises:
            ValueError: with `lpc_order`, whose level and prediction need whole frames and the
                past samples (`generate` handles both).
        """
        if self.lpc is not None:
            raise ValueError("a teacher with lpc_order maps whole frames: use generate")
        return self._params(stack_out, self.conditioner.excitation(cond), self.log_level(cond))

    def _params(self, stack_out: Tensor, excitation: Tensor | None, level: Tensor | None) -> Tensor:
        """`head_params` from the excitation (B, 2K, T) and level (B, 1, T) themselves; x units
        but for the LPC's prediction, which `forward` adds."""
        params = stack_out
        if excitation is not None:
            params = shift_by_excitation(self.head, stack_out, excitation)
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
        self._check_frames(cond, state)
        level, coefficients = self.envelope_of(cond)
        chunk = self.incremental(weight_dtype).generate_chunk(
            self.stack_cond(cond),
            self.head,
            noise,
            state,
            temperature,
            lengths,
            excitation=self.conditioner.excitation(cond),
            log_level=None if level is None else level[:, 0],  # (B, 1, T) -> (B, T)
        )
        if coefficients is None:
            return chunk.x, chunk.state
        # The kernel drew the scaled excitations x_t - pred_t; the recursion adds pred_t.
        history = None if state is None else state.history
        x, history = self.lpc.synthesize(chunk.x[:, 0], coefficients, history, lengths)
        return x[:, None].clamp(-1, 1), replace(chunk.state, history=history)

    def synthesize(
        self,
        cond: Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        state: GenerationState | None = None,
    ) -> tuple[Tensor, GenerationState]:
        """`Vocoder.synthesize`: the cached sequential path, continuing from `state`; audio
        (B, 1, T) and the state after it (see `generate` for the other options)."""
        x, state = self.generate(cond, "cached", temperature, generator, state=state)
        assert state is not None  # the cached method always returns one
        return x, state

    def _check_frames(self, cond: Tensor, state: GenerationState | None) -> None:
        """With `lpc_order`, generation reads whole frames: a chunk of cond must start on a
        frame boundary and hold whole frames."""
        hop = self.conditioner.hop_length
        if self.lpc is None:
            return
        if cond.shape[-1] % hop or (state is not None and int(state.position[0]) % hop):
            raise ValueError(
                f"a teacher with lpc_order generates whole frames: give cond in multiples of "
                f"the hop ({hop} samples), continuing from a state at a frame boundary"
            )

    def _generate_naive(
        self, cond: Tensor, noise: Tensor, temperature: float, lengths: Tensor
    ) -> Tensor:
        """At each step run the whole stack over the last `receptive_field` inputs; with
        `lpc_order`, add the prediction from the samples so far, one step at a time."""
        self._check_frames(cond, None)
        batch, _, length = cond.shape
        window = self.receptive_field
        level, coefficients = self.envelope_of(cond)
        excitation, stack_cond = self.conditioner.excitation(cond), self.stack_cond(cond)
        order = 0 if self.lpc is None else self.lpc.order
        predictors = None if coefficients is None else self.lpc.per_sample(coefficients)
        shifted = cond.new_zeros(batch, 1, length + 1)  # shifted[t] = y_{t-1} (x without level)
        x = cond.new_zeros(batch, 1, length + order)  # x_t at column t + order
        for t in range(int(lengths.max())):
            start = max(0, t + 1 - window)
            stack_out = self.stack(shifted[:, :, start : t + 1], stack_cond[:, :, start : t + 1])
            params = self._params(
                stack_out[..., -1:],
                None if excitation is None else excitation[:, :, t : t + 1],
                None if level is None else level[:, :, t : t + 1],
            )
            residual = self.head.sample(params, noise[:, :, t : t + 1], temperature)
            x_t = residual
            if predictors is not None:  # pred_t = sum_k a_k(t) x_{t-k}
                past = x[:, 0, t : t + order].flip(-1)  # x_{t-1} .. x_{t-p}
                x_t = residual + (predictors[:, :, t] * past).sum(-1)[:, None, None]
            x[:, :, t + order : t + order + 1] = x_t
            if level is not None:
                residual = residual * torch.exp(-level[:, :, t : t + 1])  # the stack reads y_t
            shifted[:, :, t + 1 : t + 2] = residual
        alive = (
            torch.arange(length, device=x.device)[None, None] < lengths.to(x.device)[:, None, None]
        )
        x = x[..., order:] * alive
        return x if predictors is None else x.clamp(-1, 1)

"""Fast WaveNet cached generation: per-layer queues, so one sample costs O(layers), not O(field).

`IncrementalWaveNet` reads a `WaveNetStack` once, folds its weights (`fold_stack`) and then
generates sample by sample on one of two backends that compute the same thing: "eager"
(`EagerStep`, PyTorch ops, any dtype and device: the reference) and "cpp" (the C++ kernel, the
whole loop in one call). Each layer keeps a ring buffer of its recent inputs, held in an explicit
`GenerationState`, so a step reads K taps per layer instead of re-running the receptive field,
and a later call continues where the last one stopped. The conditioning projections of all
layers are precomputed in time chunks (one matmul per chunk), so memory stays bounded for long
audio.

References:
    Paine et al., "Fast Wavenet Generation Algorithm", arXiv:1611.09482.
    van den Oord et al., "WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from wavflow.distributions import GaussianOutput, LogisticMixtureOutput
from wavflow.generation import kernel
from wavflow.generation.eager import (
    EagerStep,
    Head,
    Inputs,
    eager_weights,
    generate_eager,
    intra_op_threads,
    project_cond,
)
from wavflow.generation.folding import fold_stack
from wavflow.generation.state import GenerationState
from wavflow.nn.wavenet import WaveNetStack

BACKENDS = ("auto", "cpp", "eager")


class GeneratedChunk(NamedTuple):
    """One `generate_chunk` call's result (see there for shapes)."""

    x: Tensor
    params: Tensor | None
    state: GenerationState


class IncrementalWaveNet:
    """Cached ("Fast WaveNet") sequential sampling from a causal `WaveNetStack`.

    The stack's weights are read and folded once (see `FoldedStack`); the stack itself is never
    modified, so build a new `IncrementalWaveNet` after training it further.

    Cost per sample: per layer, one (B, K R) x (K R, G) and one (B, G / 2) x (G / 2, R) matmul,
    then one (B, L G / 2) x (L G / 2, S) skip matmul and the two head matmuls; the conditioning
    adds one (B, C) x (C, L G) matmul per sample, batched over time chunks.

    Args:
        stack: a causal stack with one input channel (the teacher's `stack`).
        dtype: storage dtype of the weight matrices: None (the stack's dtype), torch.float32,
            torch.float64 (eager only), torch.bfloat16 (float32 activations, matrices
            rounded to bfloat16; halves the weight traffic of the C++ kernel) or torch.int8
            (matrices quantised per row, `quantize_rows`; a quarter of the traffic, so the
            weights of a published-size teacher split over two cores fit a 2 MiB L2).
        backend: "cpp" (the compiled kernel; float32/bfloat16 on CPU), "eager" (PyTorch ops,
            any device), or "auto": "cpp" where it applies and builds, otherwise "eager".
        threads: threads of the C++ kernel (default: torch.get_num_threads() at each call).
            With B items and n threads it runs min(n, B) groups of items in parallel, each
            group split over n // groups threads by gate units (so batch 1 uses them all).
            PyTorch's own intra-op threads are set to 1 for the duration of the call.
    """

    def __init__(
        self,
        stack: WaveNetStack,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}': use one of {BACKENDS}")
        stack_dtype = next(stack.parameters()).dtype
        self.weight_dtype = dtype or stack_dtype
        if self.weight_dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.int8):
            raise ValueError(f"unsupported dtype {self.weight_dtype}")
        self.compute_dtype = torch.float64 if self.weight_dtype == torch.float64 else torch.float32
        self.backend, self.threads = backend, threads
        with torch.no_grad():
            self.folded = fold_stack(stack)
        n_layers, kernel_size, residual, *_ = self.folded.sizes
        self.kernel_size, self.residual_channels = kernel_size, residual
        self.input_kernel = self.folded.input_weight.shape[0]
        self.capacities = [(kernel_size - 1) * d + 1 for d in self.folded.dilations]
        self._packed: dict[tuple[str, torch.device], dict[str, Tensor]] = {}
        self._timers: Tensor | None = None
        self._steppers: dict[tuple[int, torch.device], EagerStep] = {}

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> GenerationState:
        """The state before the first sample of B utterances, in the compute dtype."""
        return GenerationState.zeros(
            batch,
            self.capacities,
            self.residual_channels,
            self.input_kernel,
            device,
            self.compute_dtype,
        )

    @torch.no_grad()
    def step(self, state: GenerationState, cond_t: Tensor) -> tuple[Tensor, GenerationState]:
        """One eager step at the state's position p, without sampling.

        The caller maps the outputs to the head's parameters (`WaveNet.head_params`), samples
        x_p and feeds it back with `state.push(x_p)` (y_p with the envelope). Use `generate`
        for whole chunks: it runs the same `EagerStep` (or the kernel) without this call's
        per-step projection of `cond`.

        Args:
            state: at position p for every row (updated in place and returned).
            cond_t: (B, C) the conditioning at step p.

        Returns:
            The stack's outputs (B, P + E): the head's parameters in y units, then the
            excitation amplitudes; and the state, whose rings now hold step p.
        """
        position = _common_position(state)
        batch = state.batch
        device = state.inputs.device
        weights = self._weights("eager", device)
        key = (batch, device)
        if key not in self._steppers:
            self._steppers[key] = EagerStep(self.folded, weights, batch)
        n_layers, _, _, gates, _, n_outputs = self.folded.sizes
        proj = project_cond(cond_t[:, :, None].to(self.compute_dtype), weights)
        out = state.inputs.new_zeros(batch, n_outputs)
        stepper = self._steppers[key]
        stepper(state.rings, position, state.inputs, proj[0].view(batch, n_layers, gates), out)
        return out, state

    def generate(
        self,
        cond: Tensor,
        head: GaussianOutput | LogisticMixtureOutput,
        noise: Tensor,
        temperature: float = 1.0,
        lengths: Tensor | None = None,
        return_params: bool = False,
        excitation: Tensor | None = None,
        log_level: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`generate_chunk` from the start of the utterances: x (B, 1, T) and, with
        `return_params`, params (B, P, T)."""
        chunk = self.generate_chunk(
            cond, head, noise, None, temperature, lengths, return_params, excitation, log_level
        )
        return (chunk.x, chunk.params) if return_params else chunk.x

    @torch.no_grad()
    def generate_chunk(
        self,
        cond: Tensor,
        head: GaussianOutput | LogisticMixtureOutput,
        noise: Tensor,
        state: GenerationState | None = None,
        temperature: float = 1.0,
        lengths: Tensor | None = None,
        return_params: bool = False,
        excitation: Tensor | None = None,
        log_level: Tensor | None = None,
    ) -> GeneratedChunk:
        """Sample x_t ~ head(params_t), params_t = stack(x_<t, cond_<=t), for t < lengths[b],
        continuing from `state`.

        Args:
            cond: (B, C, T) audio-rate conditioning.
            head: the output distribution (`GaussianOutput` or `LogisticMixtureOutput`; another
                head with the same `sample` interface runs on the eager backend).
            noise: (B, head.noise_channels, T) pre-drawn sampling noise.
            state: where to continue (every row at the same position; not modified); None:
                the start of the utterances (`initial_state`).
            temperature: scale of the sampling noise (0: the mode path).
            lengths: (B,) samples to generate per item (default T); later samples are 0.
            return_params: also return the distribution parameters used at every step.
            excitation: (B, E, T), required when the stack has E outputs beyond the head's P
                (a teacher with pitch): those are amplitudes a_e(t), and the head's location
                moves by sum_e a_e(t) excitation_e(t) (`head.shift_location`).
            log_level: (B, T) l_t of a teacher with the envelope (`teacher.log_level(cond)`):
                the stack reads y_{t-1} = x_{t-1} exp(-l_{t-1}), and its parameters (after the
                excitation's shift) are mapped to x units by `head.scale(params, l_t)` before
                x_t is sampled. None: the stack reads x.

        Returns:
            x (B, 1, T) in cond's dtype, params (B, P, T) in the compute dtype (0 past each
            length; None without `return_params`), and the state after each row's length, in
            the dtype and device of the state given.
        """
        batch, _, length = cond.shape
        lengths = self._check(cond, head, lengths, excitation, log_level, state)
        state = state if state is not None else self.initial_state(batch, cond.device)
        use_cpp = self._use_cpp(cond, head)
        threads = self.threads or torch.get_num_threads()
        groups = max(1, min(threads, batch)) if use_cpp else 1
        # Longest first, so each group's active items are a prefix that shrinks as they finish;
        # groups interleave the sorted items to balance their work.
        by_length = torch.argsort(lengths, descending=True, stable=True)
        order = torch.cat([by_length[g::groups] for g in range(groups)])
        group_sizes = [len(by_length[g::groups]) for g in range(groups)]
        device = cond.device if not use_cpp else torch.device("cpu")
        rows = order.to(cond.device)

        def rows_of(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.index_select(0, rows).to(device)

        # One PyTorch thread around the kernel: an OpenMP worker woken by a parallel op here
        # keeps spinning for tens of ms afterwards, on the core the kernel's second thread needs.
        with intra_op_threads(1 if use_cpp else None), torch.inference_mode():
            compute = self.compute_dtype
            inputs = Inputs(
                cond=rows_of(cond).to(compute),
                noise=rows_of(noise),  # keeps its dtype, as in `head.sample` on the naive path
                excitation=None if excitation is None else rows_of(excitation).to(compute),
                log_level=None if log_level is None else rows_of(log_level).to(compute),
                lengths=lengths[order],
                temperature=temperature,
                return_params=return_params,
                state=state.select(order).to(device, compute),
            )
            if use_cpp:
                packed = self._weights("cpp", torch.device("cpu"))
                x, params, after = kernel.generate_kernel(
                    self.folded,
                    packed,
                    self.weight_dtype,
                    inputs,
                    head,
                    group_sizes,
                    threads // groups,
                    self._timers,
                )
            else:
                x, params, after = generate_eager(
                    self.folded, self._weights("eager", device), inputs, head
                )
        # Outside inference mode: the results are ordinary tensors that autograd may read later.
        return self._unsort(x, params, after, order, cond, state)

    def _check(
        self,
        cond: Tensor,
        head: Head,
        lengths: Tensor | None,
        excitation: Tensor | None,
        log_level: Tensor | None,
        state: GenerationState | None,
    ) -> Tensor:
        """Validate `generate`'s inputs; returns lengths (B,) long on the CPU."""
        batch, _, length = cond.shape
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long)
        lengths = lengths.to("cpu", torch.long)
        if lengths.shape != (batch,) or bool((lengths < 0).any() | (lengths > length).any()):
            raise ValueError(f"lengths must be (B,) = ({batch},) within [0, {length}]")
        n_extra = self.folded.sizes[5] - head.n_params
        if n_extra and (excitation is None or excitation.shape != (batch, n_extra, length)):
            raise ValueError(
                f"the stack predicts {n_extra} excitation amplitudes: pass their "
                f"excitation (B, {n_extra}, T) = teacher.conditioner.excitation(cond)"
            )
        if not n_extra and excitation is not None:
            raise ValueError("excitation given, but the stack predicts no amplitudes for it")
        if log_level is not None and log_level.shape != (batch, length):
            raise ValueError(f"log_level must be (B, T) = ({batch}, {length})")
        if state is not None:
            if state.batch != batch:
                raise ValueError(f"the state holds {state.batch} rows, cond {batch}")
            _common_position(state)
        return lengths

    @staticmethod
    def _unsort(
        x: Tensor,
        params: Tensor | None,
        after: GenerationState,
        order: Tensor,
        cond: Tensor,
        before: GenerationState,
    ) -> GeneratedChunk:
        """Rows back to the caller's order: x (B, T) -> (B, 1, T) in cond's dtype and device;
        the state in the dtype and device of the one given."""
        inverse = torch.argsort(order)
        x = x[inverse.to(x.device)].unsqueeze(1).to(cond.device, cond.dtype)  # -> (B, 1, T)
        state = after.select(inverse).to(before.inputs.device, before.inputs.dtype)
        if params is not None:
            params = params[inverse.to(params.device)].to(cond.device)
        return GeneratedChunk(x, params, state)

    def profile_kernel(
        self,
        cond: Tensor,
        head: GaussianOutput | LogisticMixtureOutput,
        noise: Tensor,
        temperature: float = 1.0,
    ) -> dict[str, float]:
        """Run `generate` on the C++ kernel with a clock per section of the step.

        The clocks run in the first thread of the first group (~40 ns per reading, a few
        percent of a step). Returns seconds per section, in `KERNEL_SECTIONS` order.
        """
        if not self._use_cpp(cond, head):
            raise RuntimeError("profile_kernel needs the cpp backend")
        self._timers = torch.zeros(len(kernel.KERNEL_SECTIONS), dtype=torch.long)
        try:
            self.generate(cond, head, noise, temperature)
            nanoseconds = self._timers.tolist()
        finally:
            self._timers = None
        return {name: ns / 1e9 for name, ns in zip(kernel.KERNEL_SECTIONS, nanoseconds)}

    def resolved_backend(self, cond: Tensor, head: object) -> str:
        """The backend `generate` will use for these inputs: "cpp" or "eager"."""
        return "cpp" if self._use_cpp(cond, head) else "eager"

    def _use_cpp(self, cond: Tensor, head: object) -> bool:
        applies = (
            cond.device.type == "cpu"
            and self.compute_dtype == torch.float32
            and isinstance(head, GaussianOutput | LogisticMixtureOutput)
            and self.kernel_size <= 16
        )
        if self.backend == "eager" or (self.backend == "auto" and not applies):
            return False
        if not applies:
            raise ValueError(
                "the cpp backend needs a CPU float32/bfloat16/int8 model and a known head"
            )
        if kernel.load_kernel() is None:
            if self.backend == "cpp":
                raise RuntimeError(f"the C++ kernel is unavailable: {kernel.kernel_error()}")
            return False
        return True

    def _weights(self, backend: str, device: torch.device) -> dict[str, Tensor]:
        """The folded weights packed for a backend, built once per device."""
        key = (backend, device)
        if key not in self._packed:
            if backend == "cpp":
                self._packed[key] = kernel.pack_weights(self.folded, self.weight_dtype)
            else:
                self._packed[key] = eager_weights(self.folded, self.weight_dtype, device)
        return self._packed[key]


def _common_position(state: GenerationState) -> int:
    """The position shared by every row (rows stopped at different lengths cannot continue
    together: their ring slots differ)."""
    positions = state.position.unique()
    if positions.numel() > 1:
        raise ValueError(
            "the state's rows stopped at different positions "
            f"({sorted(positions.tolist())}); continue them separately"
        )
    return int(positions[0]) if positions.numel() else 0

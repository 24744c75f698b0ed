"""The eager cached step: a few PyTorch ops per layer on explicit `GenerationState` rings.

Per layer: index_select of the K taps from the ring, one addmm for the dilated conv with the
cond projection as its input, one in-place tanh on all gates, one addcmul, one addmm for the
residual with its bias carried by a constant-1 input; then all skip outputs go through one
matmul. Any dtype and device: the reference for the C++ kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from wavflow.distributions import GaussianOutput, LogisticMixtureOutput, shift_by_excitation
from wavflow.generation.folding import FoldedStack, stored_matrix
from wavflow.generation.state import GenerationState

Head = GaussianOutput | LogisticMixtureOutput
# Floats of precomputed cond projections held at once, for the whole batch; bounds memory for
# long audio.
COND_CHUNK_FLOATS = 8 * 2**20


@dataclass
class Inputs:
    """One `generate` call's inputs, rows in generation order (longest first per group)."""

    cond: Tensor  # (B, C, T), compute dtype
    noise: Tensor  # (B, N, T), dtype as given
    excitation: Tensor | None  # (B, E, T), compute dtype
    log_level: Tensor | None  # (B, T), compute dtype
    lengths: Tensor  # (B,) long, on the CPU
    temperature: float
    return_params: bool
    state: GenerationState  # at the start of the call, in the compute dtype; not modified


def eager_weights(folded: FoldedStack, weight_dtype: torch.dtype, device: torch.device) -> dict:
    """Folded weights for the eager step, in the compute dtype (float64 for float64 weights,
    else float32; matrices rounded to `weight_dtype` first, as the kernel stores them). The
    biases of the residual and skip matmuls are carried by a constant-1 input appended to each
    layer's z'."""
    compute = torch.float64 if weight_dtype == torch.float64 else torch.float32
    n_layers, _, _, gates, skip_channels, _ = folded.sizes
    half = gates // 2

    def matrix(weight: Tensor) -> Tensor:  # the storage dtype's rounding, in the compute dtype
        return stored_matrix(weight, weight_dtype, compute)

    residual = torch.cat(
        [matrix(folded.residual), folded.residual_bias.to(compute).unsqueeze(1)], 1
    )  # (L, H + 1, R)
    skip_bias = torch.zeros(n_layers, 1, skip_channels, dtype=compute)
    skip_bias[0, 0] = folded.skip_bias
    skip = torch.cat([matrix(folded.skip).view(n_layers, half, -1), skip_bias], 1)
    weights = {
        "input": folded.input_weight.to(compute),
        "input_bias": folded.input_bias.to(compute),
        "dilated": matrix(folded.dilated),
        "cond": matrix(folded.cond),
        "gate_bias": folded.gate_bias.to(compute),
        "residual": residual,
        "skip": skip.view(n_layers * (half + 1), -1),  # (L, H + 1, S) -> (L (H + 1), S)
        "hidden": matrix(folded.hidden),
        "hidden_bias": folded.hidden_bias.to(compute),
        "out": matrix(folded.out),
        "out_bias": folded.out_bias.to(compute),
    }
    return {name: t.to(device).contiguous() for name, t in weights.items()}


def project_cond(cond: Tensor, weights: dict) -> Tensor:
    """cond (B, C, Tc) -> gate inputs of every layer (Tc, B, L G), gate bias included."""
    batch, _, steps = cond.shape
    weight = weights["cond"]
    # (B, C, Tc) -> (Tc, B, C) -> (Tc * B, C)
    flat = cond[:, : weight.shape[0]].permute(2, 0, 1).reshape(steps * batch, -1)
    return torch.addmm(weights["gate_bias"], flat, weight).view(steps, batch, -1)


@contextmanager
def intra_op_threads(count: int | None) -> Iterator[None]:
    """Temporarily set PyTorch's intra-op thread count (None: leave it)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class EagerStep:
    """The stack's step on a state's rings: u_0(p) from the input window, each layer's gates
    from its K taps and the cond projection, the skip sum and the head, all into preallocated
    buffers (B rows at most).

    Args:
        folded: the stack's folded weights (for sizes and dilations).
        weights: `eager_weights` of it.
        batch: rows at most.
    """

    def __init__(self, folded: FoldedStack, weights: dict, batch: int) -> None:
        n_layers, kernel, residual, gates, skip, n_outputs = folded.sizes
        self.w, self.sizes = weights, folded.sizes
        self.caps = [(kernel - 1) * d + 1 for d in folded.dilations]
        like = weights["input"]

        def zeros(*shape: int) -> Tensor:
            return like.new_zeros(shape)

        self.taps, self.gates = zeros(batch, kernel, residual), zeros(batch, gates)
        self.z = zeros(batch, n_layers, gates // 2 + 1)
        self.z[:, :, -1] = 1.0  # the constant input that carries the residual and skip biases
        self.skip, self.hidden = zeros(batch, skip), zeros(batch, skip)
        # Ring slots of the K taps for each slot of the current step (a table, not arithmetic
        # per step: index tensors are reused).
        self.tap_index = [
            [
                torch.tensor([(p - (kernel - 1 - k) * d) % cap for k in range(kernel)]).to(
                    like.device
                )
                for p in range(cap)
            ]
            for d, cap in zip(folded.dilations, self.caps)
        ]
        self.bound: tuple[int, int] | None = None

    def _bind(self, rings: list[Tensor], active: int) -> None:
        """Views of the first `active` rows, rebuilt only when the rings or the count change."""
        n_layers, kernel, residual, gates, _, _ = self.sizes
        half = gates // 2
        self.bound = (id(rings[0]), active)
        self.ring = [r[:active] for r in rings]
        self.slots = [[r[:, p] for p in range(r.shape[1])] for r in self.ring]
        self.tap_view = self.taps[:active]
        self.tap_flat = self.tap_view.view(active, kernel * residual)
        self.gate_view = self.gates[:active]
        self.filt, self.gate = self.gate_view[:, :half], self.gate_view[:, half:]
        self.z_in, self.z_out = self.z[:active].unbind(1), self.z[:active, :, :half].unbind(1)
        self.z_flat = self.z[:active].view(active, -1)
        self.skip_view, self.hidden_view = self.skip[:active], self.hidden[:active]

    def __call__(
        self, rings: list[Tensor], step: int, inputs: Tensor, proj: Tensor, out: Tensor
    ) -> Tensor:
        """The stack's outputs at `step` for the first rows, writing u_l(step) into the rings.

        Args:
            rings: the state's rings (B, C_l, R), updated in place.
            step: the utterance's step p (it picks the ring slots).
            inputs: (A, K_in) the stack's inputs x_{p - K_in} .. x_{p - 1}, A active rows.
            proj: (A, L, G) the cond projection at p (`project_cond`).
            out: (A, P + E) where the outputs go.

        Returns:
            `out`: the head's parameters in y units, then the excitation amplitudes.
        """
        active = inputs.shape[0]
        if self.bound != (id(rings[0]), active):
            self._bind(rings, active)
        w, caps, n_layers = self.w, self.caps, self.sizes[0]
        proj_t = proj.unbind(1)
        torch.addmm(w["input_bias"], inputs, w["input"], out=self.slots[0][step % caps[0]])
        for layer in range(n_layers):
            pos = step % caps[layer]
            torch.index_select(self.ring[layer], 1, self.tap_index[layer][pos], out=self.tap_view)
            torch.addmm(proj_t[layer], self.tap_flat, w["dilated"][layer], out=self.gate_view)
            self.gate_view.tanh_()  # sigmoid(b) = (1 + tanh(b / 2)) / 2, halving folded
            torch.addcmul(self.filt, self.filt, self.gate, out=self.z_out[layer])
            if layer + 1 < n_layers:
                torch.addmm(
                    self.slots[layer][pos],
                    self.z_in[layer],
                    w["residual"][layer],
                    out=self.slots[layer + 1][step % caps[layer + 1]],
                )
        torch.mm(self.z_flat, w["skip"], out=self.skip_view)
        self.skip_view.relu_()
        torch.addmm(w["hidden_bias"], self.skip_view, w["hidden"], out=self.hidden_view)
        self.hidden_view.relu_()
        return torch.addmm(w["out_bias"], self.hidden_view, w["out"], out=out)


def head_params(
    head: Head, outputs: Tensor, excitation: Tensor | None, log_level: Tensor | None
) -> Tensor:
    """The head's x-space parameters (A, P) from the stack's outputs (A, P + E): the location
    moved by sum_e amplitude_e excitation_e (A, E), then, with a level (A,), mapped from y to x
    units (`head.scale`), as `WaveNet.head_params` does for a whole sequence."""
    params = outputs[:, :, None]  # (A, P + E) -> (A, P + E, 1): the heads' (B, channels, T)
    if excitation is not None:
        params = shift_by_excitation(head, params, excitation[:, :, None])
    if log_level is not None:
        params = head.scale(params, log_level[:, None, None])
    return params[..., 0]


def generate_eager(
    folded: FoldedStack, weights: dict, inputs: Inputs, head: Head
) -> tuple[Tensor, Tensor | None, GenerationState]:
    """The step loop in PyTorch ops; rows sorted by length, descending.

    Returns:
        x (B, T), params (B, P, T) or None, and the state after each row's length.
    """
    cond, lengths, temperature = inputs.cond, inputs.lengths, inputs.temperature
    batch, _, length = cond.shape
    n_layers, _, _, gates, _, n_outputs = folded.sizes
    n_params, input_kernel = head.n_params, weights["input"].shape[0]
    state = inputs.state.clone()
    start = int(state.position[0]) if batch else 0
    # The stack's inputs, the state's window first: x_t at column t + K_in (y_t with a level,
    # x then kept apart in `samples`).
    xs = torch.cat([state.inputs, cond.new_zeros(batch, length)], 1)
    samples = cond.new_zeros(batch, length) if inputs.log_level is not None else None
    params = cond.new_zeros(length if inputs.return_params else 1, batch, n_params)
    outputs = cond.new_zeros(batch, n_outputs)
    # Per step (T, B, ...) so that a step reads one contiguous slice.
    excitation = None
    if inputs.excitation is not None:
        excitation = inputs.excitation.permute(2, 0, 1).contiguous()  # -> (T, B, E)
    level = None if inputs.log_level is None else inputs.log_level.T.contiguous()
    noise = inputs.noise.permute(2, 0, 1).unsqueeze(-1).contiguous()  # -> (T, B, N, 1)
    plain = excitation is None and level is None
    step_fn = EagerStep(folded, weights, batch)
    steps = int(lengths.max()) if batch else 0
    active_counts = (lengths[None, :] > torch.arange(steps)[:, None]).sum(1).tolist()
    chunk = max(1, COND_CHUNK_FLOATS // max(1, batch * n_layers * gates))
    for t0 in range(0, steps, chunk):
        t1 = min(steps, t0 + chunk)
        proj = project_cond(cond[:, :, t0:t1], weights).view(t1 - t0, batch, n_layers, gates)
        # One thread: at these sizes PyTorch's intra-op threads cost more than they save
        # (tanh_ on 256 floats takes 50x longer with 2 threads on a busy machine).
        with intra_op_threads(1 if cond.device.type == "cpu" else None):
            for t in range(t0, t1):
                active = active_counts[t]
                step_params = params[t if inputs.return_params else 0, :active]
                out = step_params if plain else outputs[:active]
                out = step_fn(
                    state.rings,
                    start + t,
                    xs[:active, t : t + input_kernel],
                    proj[t - t0, :active],
                    out,
                )
                if not plain:
                    step_excitation = None if excitation is None else excitation[t, :active]
                    step_level = None if level is None else level[t, :active]
                    step_params.copy_(head_params(head, out, step_excitation, step_level))
                x_t = head.sample(step_params.unsqueeze(-1), noise[t, :active], temperature)
                x_t = x_t.view(active)
                if level is not None:
                    samples[:active, t] = x_t
                    x_t = x_t * torch.exp(-level[t, :active])  # the stack reads y_t
                xs[:active, t + input_kernel] = x_t
    # Each row's input window ends at its own length.
    window = lengths[:, None] + torch.arange(input_kernel)  # (B, K_in) columns of xs
    state.inputs = xs.gather(1, window.to(xs.device))
    state.position = state.position + lengths
    x = samples if samples is not None else xs[:, input_kernel:]
    return x, (params.permute(1, 2, 0) if inputs.return_params else None), state

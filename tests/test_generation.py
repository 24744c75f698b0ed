"""The generation package: explicit state (chunked = whole), the eager step API, the kernel's
ABI check and its source shipped as package data."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch
from factories import HOP, mel_and_f0, tiny_teacher

from wavflow.generation import GenerationState, IncrementalWaveNet, check_abi, kernel, load_kernel
from wavflow.teacher import WaveNet

FRAMES = 16
LENGTH = FRAMES * HOP
# Cuts that fall inside dilation blocks (d = 2, 4) and a one-sample chunk.
CUTS = [13, 14, 37, 38]


def teacher(output: str, dtype: torch.dtype, **options: object) -> WaveNet:
    """A tiny teacher with random weights, the zero-initialised output conv included."""
    model = tiny_teacher(output, torch.float32, head_std=0.5, n_layers=6, **options)
    with torch.no_grad():
        if model.level_offset is not None:
            model.level_offset.fill_(-1.3)
    return model.to(dtype).eval()


def inputs(model: WaveNet, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cond (B, C, T) (with voiced and unvoiced F0 for a pitch teacher) and noise (B, N, T)."""
    generator = torch.Generator().manual_seed(2)
    dtype = model.stack.input.weight.dtype
    feats, f0 = mel_and_f0(model, batch, FRAMES, generator, unvoiced=3)
    with torch.no_grad():
        cond = model.condition(feats, f0=f0)
    noise = model.head.draw_noise(batch, LENGTH, generator).to(dtype)
    return cond, noise


def chunked(model: WaveNet, cond: torch.Tensor, noise: torch.Tensor, **options: object):
    """Generate in the chunks that CUTS make, each continuing from the last one's state."""
    pieces, state = [], None
    bounds = [0, *CUTS, LENGTH]
    for start, stop in zip(bounds, bounds[1:]):
        piece, state = model.generate(
            cond[..., start:stop], noise=noise[..., start:stop], state=state, **options
        )
        pieces.append(piece)
    return torch.cat(pieces, -1), state


CASES = [
    ("mol", {}),
    ("gaussian", {}),
    ("gaussian", {"envelope": True, "n_harmonics": 2, "sample_rate": 16000}),
    ("mol", {"envelope": True}),
]


@pytest.mark.parametrize(("output", "options"), CASES)
def test_chunks_continue_exactly_on_the_eager_path(output: str, options: dict) -> None:
    """float64 runs the eager step: chunk after chunk gives the whole utterance's samples, and
    the state at the end is the same."""
    model = teacher(output, torch.float64, **options)
    cond, noise = inputs(model, 2)
    whole, state = model.generate(cond, noise=noise, temperature=0.9)
    assert whole.abs().max() > 0.01
    pieces, state_chunked = chunked(model, cond, noise, temperature=0.9)
    torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-12)
    for ring, ring_chunked in zip(state.rings, state_chunked.rings):
        torch.testing.assert_close(ring_chunked, ring, rtol=0, atol=1e-12)
    assert state.position.tolist() == [LENGTH, LENGTH]
    # A fresh state is not the same as continuing: the second half differs.
    second, _ = model.generate(cond[..., 37:], noise=noise[..., 37:], temperature=0.9)
    assert (second - whole[..., 37:]).abs().max() > 1e-3


@pytest.mark.parametrize(("output", "options"), CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_continue_on_the_kernel(output: str, options: dict, threads: int) -> None:
    if load_kernel() is None:
        pytest.skip(f"C++ kernel unavailable: {kernel.kernel_error()}")
    model = teacher(output, torch.float32, **options)
    cond, noise = inputs(model, 3)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole, _ = model.generate(cond, noise=noise)
        pieces, state = chunked(model, cond, noise)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(pieces, whole, rtol=0, atol=2e-5)
    # The kernel's state is the eager step's: continuing one with the other agrees.
    eager = IncrementalWaveNet(model.stack, backend="eager")
    cpp = IncrementalWaveNet(model.stack, backend="cpp")
    extra = dict(excitation=model.conditioner.excitation(cond))
    level = model.log_level(cond)
    extra["log_level"] = None if level is None else level[:, 0]
    half = {k: None if v is None else v[..., :37] for k, v in extra.items()}
    first = cpp.generate_chunk(cond[..., :37], model.head, noise[..., :37], **half)
    rest = {k: None if v is None else v[..., 37:] for k, v in extra.items()}
    tail = eager.generate_chunk(cond[..., 37:], model.head, noise[..., 37:], first.state, **rest)
    torch.testing.assert_close(tail.x, whole[..., 37:], rtol=0, atol=2e-5)


@pytest.mark.parametrize("solo_from", [-1, 10])
def test_chunks_continue_with_gate_units_split_over_threads(
    solo_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch 1 on two threads: each keeps its own rings, so each loads the state; the first
    writes it back (also after dropping to one thread at a block start 10 steps into a call)."""
    if load_kernel() is None:
        pytest.skip(f"C++ kernel unavailable: {kernel.kernel_error()}")
    monkeypatch.setattr(kernel, "_SOLO_FROM_STEP", solo_from)
    model = teacher("mol", torch.float32, residual_channels=64, gate_channels=128)
    cond, noise = inputs(model, 1)
    cpp = IncrementalWaveNet(model.stack, backend="cpp", threads=2)
    whole = cpp.generate(cond, model.head, noise)
    pieces, state = [], None
    bounds = [0, *CUTS, LENGTH]
    for start, stop in zip(bounds, bounds[1:]):
        piece = cpp.generate_chunk(cond[..., start:stop], model.head, noise[..., start:stop], state)
        pieces.append(piece.x)
        state = piece.state
    torch.testing.assert_close(torch.cat(pieces, -1), whole, rtol=0, atol=2e-5)
    eager = IncrementalWaveNet(model.stack, backend="eager").generate(cond, model.head, noise)
    torch.testing.assert_close(whole, eager, rtol=0, atol=2e-5)


def test_step_by_step_equals_generate() -> None:
    """The explicit step: outputs -> head params -> sample -> push, one sample at a time."""
    model = teacher("mol", torch.float64)
    cond, noise = inputs(model, 2)
    whole, _ = model.generate(cond, noise=noise, temperature=0.7)
    cached = IncrementalWaveNet(model.stack)
    state = cached.initial_state(2)
    samples = []
    for t in range(LENGTH):
        outputs, state = cached.step(state, cond[:, :, t])
        params = model.head_params(outputs[:, :, None], cond[:, :, t : t + 1])
        x_t = model.head.sample(params, noise[:, :, t : t + 1], 0.7)
        samples.append(x_t)
        state = state.push(x_t[:, 0, 0])
    torch.testing.assert_close(torch.cat(samples, -1), whole, rtol=0, atol=1e-12)
    assert state.position.tolist() == [LENGTH, LENGTH]


def test_state_is_not_modified_and_rows_must_align() -> None:
    model = teacher("gaussian", torch.float64)
    cond, noise = inputs(model, 2)
    _, state = model.generate(cond[..., :20], noise=noise[..., :20])
    before = state.clone()
    model.generate(cond[..., 20:], noise=noise[..., 20:], state=state)
    assert all(torch.equal(a, b) for a, b in zip(state.rings, before.rings))
    assert torch.equal(state.inputs, before.inputs)
    _, uneven = model.generate(cond, noise=noise, lengths=torch.tensor([LENGTH, 30]))
    assert uneven.position.tolist() == [LENGTH, 30]
    with pytest.raises(ValueError, match="different positions"):
        model.generate(cond, noise=noise, state=uneven)
    with pytest.raises(ValueError, match="no state"):
        model.generate(cond, method="naive", noise=noise, state=state)
    with pytest.raises(ValueError, match="rows"):
        model.generate(cond[:1], noise=noise[:1], state=state)


def test_initial_state_matches_the_cached_model() -> None:
    model = teacher("mol", torch.float32)
    state = model.initial_state(3)
    reference = IncrementalWaveNet(model.stack).initial_state(3)
    assert [r.shape for r in state.rings] == [r.shape for r in reference.rings]
    assert state.inputs.shape == reference.inputs.shape == (3, 2)
    assert isinstance(state, GenerationState) and state.rings[0].dtype == torch.float32


class _FakeLibrary:
    """A stand-in for a ctypes library whose `wavflow_abi` reports the given values."""

    def __init__(self, values: list[int] | None) -> None:
        if values is not None:
            self.wavflow_abi = self._report(values)

    @staticmethod
    def _report(values: list[int]):
        def report(out: object) -> None:
            for index, value in enumerate(values):
                out[index] = value

        return report


def test_abi_mismatch_is_refused() -> None:
    sizes = [ctypes.sizeof(s) for s in (kernel._Net, kernel._Head, kernel._Job)]
    check_abi(_FakeLibrary([kernel.ABI_VERSION, *sizes]))  # agrees: accepted
    with pytest.raises(RuntimeError, match=r"sizeof\(Job\) 8 \(expected"):
        check_abi(_FakeLibrary([kernel.ABI_VERSION, sizes[0], sizes[1], 8]))
    with pytest.raises(RuntimeError, match="version 1 "):
        check_abi(_FakeLibrary([1, *sizes]))
    with pytest.raises(RuntimeError, match="reports no ABI"):
        check_abi(_FakeLibrary(None))


def test_the_built_kernel_reports_the_expected_abi() -> None:
    library = load_kernel()
    if library is None:
        pytest.skip(f"C++ kernel unavailable: {kernel.kernel_error()}")
    check_abi(library)


def test_no_cpp_inside_python_and_the_source_ships() -> None:
    package = Path(kernel.__file__).resolve().parents[1]
    assert "wavflow_run" in kernel.kernel_source()
    offenders = [path.name for path in package.rglob("*.py") if "#include <" in path.read_text()]
    assert offenders == []


def test_the_folded_stack_is_reused_until_the_weights_change() -> None:
    model = teacher("gaussian", torch.float32)
    cond, noise = inputs(model, 1)
    folded = model.incremental()
    assert model.incremental() is folded
    before, _ = model.generate(cond, noise=noise)
    with torch.no_grad():
        model.stack.head_out.bias.add_(0.1)  # as an optimizer step does: in place
    assert model.incremental() is not folded
    after, _ = model.generate(cond, noise=noise)
    assert (after - before).abs().max() > 1e-3
    naive, _ = model.generate(cond, method="naive", noise=noise)
    torch.testing.assert_close(after, naive, rtol=0, atol=2e-5)
    model.double()  # new storage
    assert model.incremental().compute_dtype == torch.float64


@pytest.mark.parametrize("backend", ["eager", "cpp"])
def test_a_row_that_stopped_early_continues_alone(backend: str) -> None:
    """Each row's state is taken at its own length: row 1, stopped at 30 of 64 samples,
    continues alone to the samples of a whole run."""
    if backend == "cpp" and load_kernel() is None:
        pytest.skip(f"C++ kernel unavailable: {kernel.kernel_error()}")
    model = teacher("mol", torch.float32 if backend == "cpp" else torch.float64, envelope=True)
    cond, noise = inputs(model, 2)
    level = model.log_level(cond)[:, 0]
    cached = IncrementalWaveNet(model.stack, backend=backend)
    whole = cached.generate_chunk(cond, model.head, noise, log_level=level)
    early = cached.generate_chunk(
        cond, model.head, noise, lengths=torch.tensor([LENGTH, 30]), log_level=level
    )
    assert early.state.position.tolist() == [LENGTH, 30]
    row = torch.tensor([1])
    rest = cached.generate_chunk(
        cond[1:, :, 30:],
        model.head,
        noise[1:, :, 30:],
        early.state.select(row),
        log_level=level[1:, 30:],
    )
    tolerance = 2e-5 if backend == "cpp" else 1e-12
    torch.testing.assert_close(rest.x, whole.x[1:, :, 30:], rtol=0, atol=tolerance)

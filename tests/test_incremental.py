"""Cached ("Fast WaveNet") generation against the naive loop and the teacher-forced pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from factories import N_MELS, mel_and_f0, tiny_teacher

from wavflow.generation import IncrementalWaveNet, eager, kernel, load_kernel
from wavflow.generation.folding import fold_stack, quantize_rows
from wavflow.nn.conv import add_weight_norm, remove_weight_norm
from wavflow.teacher import WaveNet

HEADS = ("mol", "gaussian")
LENGTH = 40


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy machine they cost a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_teacher(
    output: str, dtype: torch.dtype = torch.float64, seed: int = 0, **sizes: int
) -> WaveNet:
    """A tiny teacher with random weights everywhere, the zero-free output conv included."""
    return tiny_teacher(output, dtype, head_std=0.5, seed=seed, **sizes).eval()


def make_inputs(
    teacher: WaveNet, batch: int, length: int = LENGTH, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """cond (B, C, T) and pre-drawn noise (B, N, T) in the teacher's dtype."""
    generator = torch.Generator().manual_seed(seed)
    dtype = teacher.stack.input.weight.dtype
    cond = torch.randn(batch, N_MELS, length, generator=generator, dtype=dtype)
    noise = teacher.head.draw_noise(batch, length, generator).to(dtype)
    return cond, noise


def require_kernel() -> None:
    if load_kernel() is None:
        pytest.skip(f"C++ kernel unavailable: {kernel.kernel_error()}")


def alive_mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
    """(B, 1, T): True where t < lengths[b]."""
    return torch.arange(length)[None, None] < lengths[:, None, None]


@pytest.mark.parametrize("output", HEADS)
def test_cached_equals_naive(output: str) -> None:
    teacher = make_teacher(output)
    cond, _ = make_inputs(teacher, 2)
    x = {
        method: teacher.generate(
            cond, method=method, generator=torch.Generator().manual_seed(5), temperature=0.8
        )[0]
        for method in ("cached", "naive")
    }
    assert x["cached"].shape == (2, 1, LENGTH)
    assert x["cached"].abs().max() > 0.01  # not a trivial all-zero output
    torch.testing.assert_close(x["cached"], x["naive"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("output", HEADS)
@pytest.mark.parametrize(
    "sizes",
    [{}, {"n_cycles": 1}, {"n_cycles": 1, "kernel_size": 2}, {"n_layers": 6, "n_cycles": 3}],
)
def test_params_equal_teacher_forced(output: str, sizes: dict[str, int]) -> None:
    teacher = make_teacher(output, **sizes)
    cond, noise = make_inputs(teacher, 3)
    x, params = IncrementalWaveNet(teacher.stack).generate(
        cond, teacher.head, noise, return_params=True
    )
    assert params.shape == (3, teacher.head.n_params, LENGTH)
    torch.testing.assert_close(params, teacher(x, cond), rtol=0, atol=1e-10)
    torch.testing.assert_close(x, teacher.head.sample(params, noise, 1.0), rtol=0, atol=1e-12)
    assert not x.is_inference() and not params.is_inference()  # usable in a later autograd pass


@pytest.mark.parametrize("output", HEADS)
def test_lengths_match_items_alone(output: str) -> None:
    teacher = make_teacher(output)
    cond, noise = make_inputs(teacher, 4)
    lengths = torch.tensor([17, LENGTH, 0, 29])
    model = IncrementalWaveNet(teacher.stack)
    x, params = model.generate(cond, teacher.head, noise, 1.0, lengths, return_params=True)
    alive = alive_mask(lengths, LENGTH)
    assert (x[~alive] == 0).all() and (params.masked_select(~alive) == 0).all()
    for item, n in enumerate(lengths.tolist()):
        alone = model.generate(
            cond[item : item + 1, :, :n], teacher.head, noise[item : item + 1, :, :n]
        )
        torch.testing.assert_close(x[item : item + 1, :, :n], alone, rtol=0, atol=1e-12)
    naive = teacher.generate(cond, method="naive", noise=noise, lengths=lengths)[0]
    torch.testing.assert_close(x, naive, rtol=0, atol=1e-10)


@pytest.mark.parametrize("output", HEADS)
def test_temperature_zero_is_deterministic(output: str) -> None:
    teacher = make_teacher(output)
    cond, noise = make_inputs(teacher, 2)
    model = IncrementalWaveNet(teacher.stack)
    x, params = model.generate(cond, teacher.head, noise, 0.0, return_params=True)
    again = model.generate(cond, teacher.head, noise, 0.0)
    assert torch.equal(x, again)
    torch.testing.assert_close(x, teacher.head.sample(params, noise, 0.0), rtol=0, atol=1e-12)
    if output == "gaussian":  # the mean path: no noise enters at all
        other = model.generate(cond, teacher.head, torch.randn_like(noise), 0.0)
        assert torch.equal(x, other)
        torch.testing.assert_close(x, params[:, :1].clamp(-1, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("output", HEADS)
def test_weight_norm_folded_and_stack_untouched(output: str) -> None:
    teacher = add_weight_norm(make_teacher(output))
    assert hasattr(teacher.stack.blocks[0].dilated, "parametrizations")
    cond, noise = make_inputs(teacher, 2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cached = teacher.generate(cond, method="cached", noise=noise)[0]
    naive = teacher.generate(cond, method="naive", noise=noise)[0]
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-10)
    after = teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    remove_weight_norm(teacher)
    torch.testing.assert_close(
        teacher.generate(cond, method="cached", noise=noise)[0], cached, rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("output", HEADS)
def test_chunked_cond_projection(output: str, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = make_teacher(output, n_cycles=1)
    cond, noise = make_inputs(teacher, 2)
    model = IncrementalWaveNet(teacher.stack, backend="eager")
    whole = model.generate(cond, teacher.head, noise, return_params=True)
    # A few steps per chunk: chunk edges fall inside the sequence.
    monkeypatch.setattr(eager, "COND_CHUNK_FLOATS", 2 * 5 * 4 * 16)
    chunked = model.generate(cond, teacher.head, noise, return_params=True)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def pitch_inputs(teacher: WaveNet, batch: int, frames: int = 10) -> tuple[torch.Tensor, ...]:
    """cond with a harmonic excitation (some frames unvoiced), its excitation, and noise."""
    generator = torch.Generator().manual_seed(3)
    dtype = teacher.stack.input.weight.dtype
    feats = torch.randn(batch, N_MELS, frames, generator=generator, dtype=dtype)
    f0 = torch.rand(batch, frames, generator=generator, dtype=dtype) * 200 + 100
    f0[:, 1] = 0.0
    cond = teacher.condition(feats, f0=f0)
    noise = teacher.head.draw_noise(batch, cond.shape[-1], generator).to(dtype)
    return cond, teacher.conditioner.excitation(cond), noise


@pytest.mark.parametrize("output", HEADS)
@pytest.mark.parametrize("backend", ["eager", "cpp"])
def test_pitch_excitation_moves_the_location(output: str, backend: str) -> None:
    """With pitch the stack also predicts amplitudes of the excitation; the cached step moves
    the head's location as the teacher-forced pass does, and refuses to run without it."""
    if backend == "cpp":
        require_kernel()
    dtype = torch.float64 if backend == "eager" else torch.float32
    teacher = make_teacher(output, dtype, n_harmonics=3, sample_rate=16000)
    cond, excitation, noise = pitch_inputs(teacher, 2)
    model = IncrementalWaveNet(teacher.stack, backend=backend)
    x, params = model.generate(
        cond, teacher.head, noise, 0.9, return_params=True, excitation=excitation
    )
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(params, teacher(x, cond), rtol=0, atol=tolerance)
    naive = teacher.generate(cond, method="naive", noise=noise, temperature=0.9)[0]
    torch.testing.assert_close(x, naive, rtol=0, atol=tolerance)
    with pytest.raises(ValueError, match="excitation"):
        model.generate(cond, teacher.head, noise)


def test_rejects_bad_inputs() -> None:
    teacher = make_teacher("mol")
    cond, noise = make_inputs(teacher, 2)
    model = IncrementalWaveNet(teacher.stack)
    with pytest.raises(ValueError, match="lengths"):
        model.generate(cond, teacher.head, noise, lengths=torch.tensor([LENGTH + 1, 3]))
    with pytest.raises(ValueError, match="backend"):
        IncrementalWaveNet(teacher.stack, backend="fast")


# The C++ kernel (float32 activations): against the eager path at the same precision.


@pytest.mark.parametrize("output", HEADS)
@pytest.mark.parametrize("batch,threads", [(1, 1), (1, 2), (5, 2), (5, 3), (2, 4)])
def test_cpp_matches_eager(output: str, batch: int, threads: int) -> None:
    require_kernel()
    teacher = make_teacher(output, torch.float32, n_cycles=1)
    cond, noise = make_inputs(teacher, batch)
    lengths = torch.tensor([LENGTH, 13, 31, 0, 40][:batch])
    results = {
        backend: IncrementalWaveNet(teacher.stack, backend=backend, threads=threads).generate(
            cond, teacher.head, noise, 0.9, lengths, return_params=True
        )
        for backend in ("eager", "cpp")
    }
    (x, params), (x_ref, params_ref) = results["cpp"], results["eager"]
    torch.testing.assert_close(x, x_ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(params, params_ref, rtol=0, atol=2e-5)
    assert (x[~alive_mask(lengths, LENGTH)] == 0).all()
    # Whatever path the samples took, the params must be the teacher-forced ones.
    forced = teacher(x, cond) * alive_mask(lengths, LENGTH)
    torch.testing.assert_close(params, forced, rtol=0, atol=2e-5)


@pytest.mark.parametrize("output", HEADS)
def test_cpp_teacher_generate_and_chunks(output: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require_kernel()
    teacher = make_teacher(output, torch.float32, n_cycles=1)
    cond, noise = make_inputs(teacher, 3, length=70)
    cached = teacher.generate(cond, method="cached", noise=noise)[0]  # "auto" picks the kernel
    naive = teacher.generate(cond, method="naive", noise=noise)[0]
    torch.testing.assert_close(cached, naive, rtol=0, atol=2e-5)
    monkeypatch.setattr(kernel, "KERNEL_CHUNK_FLOATS", 2 * 5 * 4 * 64)  # 5-step chunks
    model = IncrementalWaveNet(teacher.stack, backend="cpp", threads=2)
    torch.testing.assert_close(model.generate(cond, teacher.head, noise), cached, rtol=0, atol=2e-5)


@pytest.mark.parametrize("solo_from", [0, 19])
def test_cpp_threads_drop_to_one(solo_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a group's threads wait too long for each other, the first carries on alone from a
    block start (forced here at step 16 or 32, inside a cond projection chunk)."""
    require_kernel()
    teacher = make_teacher(
        "mol",
        torch.float32,
        n_layers=5,
        n_cycles=1,
        residual_channels=64,
        gate_channels=128,
        skip_channels=64,
    )
    cond, noise = make_inputs(teacher, 1, length=60)
    monkeypatch.setattr(kernel, "_SOLO_FROM_STEP", solo_from)
    model = IncrementalWaveNet(teacher.stack, backend="cpp", threads=2)
    x, params = model.generate(cond, teacher.head, noise, return_params=True)
    torch.testing.assert_close(params, teacher(x, cond), rtol=0, atol=2e-5)
    eager = IncrementalWaveNet(teacher.stack, backend="eager").generate(cond, teacher.head, noise)
    torch.testing.assert_close(x, eager, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", ["eager", "cpp"])
@pytest.mark.parametrize(
    ("dtype", "lowest", "highest"),
    # bfloat16 rounds to 8 bits of mantissa; int8 quantises each row to 1/254 of its largest
    # weight (one scale per row, `quantize_rows`).
    [(torch.bfloat16, 1e-5, 0.05), (torch.int8, 1e-4, 0.2)],
)
def test_stored_weights(backend: str, dtype: torch.dtype, lowest: float, highest: float) -> None:
    """Matrices stored in `dtype`, float32 activations: both backends multiply the same stored
    weights, and the params move by about the storage precision, not more."""
    if backend == "cpp":
        require_kernel()
    teacher = make_teacher("mol", torch.float32, n_cycles=1)
    cond, noise = make_inputs(teacher, 2)
    x, params = IncrementalWaveNet(teacher.stack, dtype, backend).generate(
        cond, teacher.head, noise, return_params=True
    )
    error = (params - teacher(x, cond)).abs().max()
    assert lowest < error < highest
    if backend == "cpp":
        eager = IncrementalWaveNet(teacher.stack, dtype, "eager")
        x_ref, params_ref = eager.generate(cond, teacher.head, noise, return_params=True)
        torch.testing.assert_close(x, x_ref, rtol=0, atol=2e-5)
        torch.testing.assert_close(params, params_ref, rtol=0, atol=2e-5)


def test_quantize_rows_round_trip() -> None:
    """Each row's largest weight maps to +-127 and every weight is within half a step."""
    matrix = torch.randn(3, 5, 7)
    matrix[1, 2] = 0.0  # an all-zero row (padding) keeps scale 1
    q, scale = quantize_rows(matrix)
    assert q.dtype == torch.int8 and scale.shape == (3, 5)
    assert scale[1, 2] == 1 and not q[1, 2].any()
    assert (q.abs().amax(-1)[scale != 1] == 127).all()
    error = (q.float() * scale.unsqueeze(-1) - matrix).abs()
    assert (error <= scale.unsqueeze(-1) / 2 + 1e-7).all()


def test_profile_kernel_sections() -> None:
    require_kernel()
    teacher = make_teacher("gaussian", torch.float32)
    cond, noise = make_inputs(teacher, 2)
    model = IncrementalWaveNet(teacher.stack, backend="cpp")
    sections = model.profile_kernel(cond, teacher.head, noise)
    assert list(sections) == list(kernel.KERNEL_SECTIONS)
    assert all(value >= 0 for value in sections.values()) and sum(sections.values()) > 0


def test_falls_back_to_eager_without_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-wavflow")
    monkeypatch.setenv("WAVFLOW_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kernel, "_KERNEL", None)
    monkeypatch.setattr(kernel, "_KERNEL_ERROR", None)
    teacher = make_teacher("mol", torch.float32)
    cond, noise = make_inputs(teacher, 2)
    with pytest.warns(RuntimeWarning, match="using the eager path"):
        x = IncrementalWaveNet(teacher.stack).generate(cond, teacher.head, noise)
    eager = IncrementalWaveNet(teacher.stack, backend="eager").generate(cond, teacher.head, noise)
    assert torch.equal(x, eager)
    with pytest.raises(RuntimeError, match="unavailable"):
        IncrementalWaveNet(teacher.stack, backend="cpp").generate(cond, teacher.head, noise)


# The envelope: the stack reads y = x exp(-l) and its parameters are mapped to x units per step.

ENVELOPE_CASES = [("mol", False), ("gaussian", False), ("mol", True), ("gaussian", True)]


def envelope_teacher(output: str, pitch: bool, dtype: torch.dtype = torch.float64) -> WaveNet:
    pitch_sizes = {"n_harmonics": 2, "sample_rate": 16000} if pitch else {}
    teacher = make_teacher(output, dtype, n_cycles=1, envelope=True, **pitch_sizes)
    with torch.no_grad():
        teacher.level_offset.fill_(-1.3)
    return teacher


def envelope_inputs(teacher: WaveNet, batch: int, frames: int = 10) -> dict[str, torch.Tensor]:
    """cond (levels spread over about 4 nats, some frames unvoiced), its excitation (None
    without pitch) and log level (B, T), and noise."""
    generator = torch.Generator().manual_seed(4)
    dtype = teacher.stack.input.weight.dtype
    feats, f0 = mel_and_f0(teacher, batch, frames, generator, unvoiced=1)
    cond = teacher.condition(feats, f0=f0)
    level = teacher.log_level(cond)[:, 0]
    assert level.std() > 0.5
    noise = teacher.head.draw_noise(batch, cond.shape[-1], generator).to(dtype)
    excitation = teacher.conditioner.excitation(cond)
    return {"cond": cond, "excitation": excitation, "log_level": level, "noise": noise}


def envelope_generate(
    teacher: WaveNet, inputs: dict[str, torch.Tensor], backend: str, **options: object
) -> tuple[torch.Tensor, torch.Tensor]:
    model = IncrementalWaveNet(teacher.stack, backend=backend, **options)
    return model.generate(
        inputs["cond"],
        teacher.head,
        inputs["noise"],
        0.9,
        inputs.get("lengths"),
        return_params=True,
        excitation=inputs["excitation"],
        log_level=inputs["log_level"],
    )


@pytest.mark.parametrize(("output", "pitch"), ENVELOPE_CASES)
def test_envelope_cached_equals_naive_and_teacher_forced(output: str, pitch: bool) -> None:
    teacher = envelope_teacher(output, pitch)
    inputs = envelope_inputs(teacher, 3)
    length = inputs["cond"].shape[-1]
    inputs["lengths"] = torch.tensor([length, 17, 29])
    alive = alive_mask(inputs["lengths"], length)
    x, params = envelope_generate(teacher, inputs, "eager")
    assert x.abs().max() > 0.01 and (x[~alive] == 0).all()
    # The parallel pass of the teacher on the samples gives the params the step used.
    torch.testing.assert_close(params, teacher(x, inputs["cond"]) * alive, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        x, teacher.head.sample(params, inputs["noise"], 0.9) * alive, rtol=0, atol=1e-12
    )
    # The teacher's own paths: the naive loop, and the cached one that passes the level itself.
    common = dict(noise=inputs["noise"], temperature=0.9, lengths=inputs["lengths"])
    naive = teacher.generate(inputs["cond"], method="naive", **common)[0]
    torch.testing.assert_close(naive, x, rtol=0, atol=1e-10)
    cached = teacher.generate(inputs["cond"], method="cached", **common)[0]
    torch.testing.assert_close(cached, x, rtol=0, atol=1e-10)
    # Without the level the stack would read x instead of y: different samples.
    plain = IncrementalWaveNet(teacher.stack).generate(
        inputs["cond"], teacher.head, inputs["noise"], 0.9, excitation=inputs["excitation"]
    )
    assert (plain - x).abs().max() > 1e-3


@pytest.mark.parametrize(("output", "pitch"), ENVELOPE_CASES)
@pytest.mark.parametrize("batch,threads", [(1, 2), (3, 1), (3, 2)])
def test_envelope_cpp_matches_eager(output: str, pitch: bool, batch: int, threads: int) -> None:
    require_kernel()
    teacher = envelope_teacher(output, pitch, torch.float32)
    inputs = envelope_inputs(teacher, batch)
    length = inputs["cond"].shape[-1]
    inputs["lengths"] = torch.tensor([length, 13, 31][:batch])
    x, params = envelope_generate(teacher, inputs, "cpp", threads=threads)
    x_ref, params_ref = envelope_generate(teacher, inputs, "eager")
    torch.testing.assert_close(x, x_ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(params, params_ref, rtol=0, atol=2e-5)
    alive = alive_mask(inputs["lengths"], length)
    assert (x[~alive] == 0).all() and x.abs().max() > 0.01
    torch.testing.assert_close(params, teacher(x, inputs["cond"]) * alive, rtol=0, atol=2e-5)


def test_rejects_a_misshapen_log_level() -> None:
    teacher = envelope_teacher("mol", False)
    inputs = envelope_inputs(teacher, 2)
    with pytest.raises(ValueError, match="log_level"):
        IncrementalWaveNet(teacher.stack).generate(
            inputs["cond"], teacher.head, inputs["noise"], log_level=inputs["log_level"][:, 1:]
        )


def test_weight_traffic_shrinks_with_storage_and_threads() -> None:
    """int8 reads a quarter of float32's bytes (plus a scale per row), two threads split the
    gate-split sections but not the residual, and a step reads less than the working set."""
    teacher = make_teacher("mol", torch.float32)
    folded = fold_stack(teacher.stack)
    fp32, fp32_set = kernel.weight_traffic(folded, torch.float32, 1)
    int8, int8_set = kernel.weight_traffic(folded, torch.int8, 1)
    halves, _ = kernel.weight_traffic(folded, torch.float32, 2)
    assert fp32_set / 4 < int8_set < fp32_set / 3
    assert sum(fp32.values()) < fp32_set
    assert halves["current tap"] == fp32["current tap"] / 2
    assert halves["residual"] == fp32["residual"]

"""The C++ step kernel: build, load, ABI check, weight packing and one call per `generate`.

The source is `wavflow/csrc/wavenet_step.cpp` with the vector GEMM header it includes
(`vector_gemm.h`), shipped as package data. It is compiled on first use with the system C++
compiler ($CXX, default c++; ~4 s) into `kernel_cache_dir()` (~/.cache/wavflow/kernels, or
$WAVFLOW_CACHE_DIR) and loaded with ctypes, so it needs no PyTorch
headers. The library reports its ABI version and the sizes of its structs (`wavflow_abi`); a
library whose layout differs from the ctypes mirrors below is refused, since a mismatch would
corrupt memory silently. If the compiler is missing or the build, load or check fails,
`load_kernel` returns None (one warning) and generation falls back to the eager step.

The kernel runs the whole step loop in one call: float32 activations with float32, bfloat16
or int8 weights (one scale per matrix row, `quantize_rows`). Besides fusing everything, it
reads each layer's past-tap weights once per d steps, runs groups of items on separate threads
and, for small batches, splits a group's gate units over threads (dropping to one thread if
another process keeps a core busy).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from wavflow.distributions import LogisticMixtureOutput
from wavflow.generation.eager import Head, Inputs
from wavflow.generation.folding import FoldedStack, quantize_rows
from wavflow.generation.state import GenerationState

# Bump with WAVFLOW_ABI_VERSION in the source whenever Net, Head or Job change.
ABI_VERSION = 3
# Floats of precomputed cond projections per group of rows, few enough to stay in cache next
# to the weights.
KERNEL_CHUNK_FLOATS = 2**18
# The kernel stores weights in panels of 32 output channels; it zero-pads channels to that.
PANEL = 32
# Sections of the kernel's step, timed by `IncrementalWaveNet.profile_kernel` (`enum Section`).
KERNEL_SECTIONS = (
    "cond projection",
    "input conv",
    "past taps (every d steps)",
    "current tap + cond",
    "gate tanh",
    "barrier wait",
    "residual 1x1",
    "skip 1x1",
    "head 1x1 x2",
    "sample",
)

_INT = ctypes.c_int64
_PTR = ctypes.c_void_p
_NET_POINTERS = (
    "dilations dilated cond_w gate_b residual_w residual_b skip_w skip_b hidden_w hidden_b"
    " out_w out_b input_w input_b"
)
# int8 weights' row scales, one array per matrix (null pointers for float weights).
_SCALE_POINTERS = "dilated_s cond_s residual_s skip_s hidden_s out_s"
WEIGHT_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}


def _fields(*groups: tuple[type, str]) -> list[tuple[str, type]]:
    """ctypes fields from (type, "space-separated names") groups, in order."""
    return [(name, kind) for kind, names in groups for name in names.split()]


class _Net(ctypes.Structure):
    """Mirrors `struct Net`: padded sizes, then weight pointers."""

    _fields_ = _fields(
        (_INT, "n_layers kernel residual gates skip params input_kernel cond weight_kind"),
        (_PTR, _NET_POINTERS),
        (_PTR, _SCALE_POINTERS),
    )


class _Head(ctypes.Structure):
    """Mirrors `struct Head`."""

    _fields_ = _fields((_INT, "kind n_mixtures"), (ctypes.c_float, "log_scale_min temperature"))


class _Job(ctypes.Structure):
    """Mirrors `struct Job`."""

    _fields_ = _fields(
        (_INT, "length groups threads_per_group params_real chunk_floats solo_from n_excitation"),
        (_PTR, "lengths group_start cond noise x params_out excitation log_level timers"),
        (_INT, "start"),
        (_PTR, "rings_in rings_out inputs_in inputs_out"),
    )


# Test hook: threads sharing a group drop to one at this step (-1: only when they wait too long).
_SOLO_FROM_STEP = -1
_KERNEL: ctypes.CDLL | None = None
_KERNEL_ERROR: str | None = None


KERNEL_FILES = ("wavenet_step.cpp", "vector_gemm.h")  # the translation unit, then its header


def kernel_source() -> str:
    """The C++ step loop shipped in the package (wavflow/csrc/wavenet_step.cpp)."""
    return kernel_sources()["wavenet_step.cpp"]


def kernel_sources() -> dict[str, str]:
    """Every file of the kernel shipped in wavflow/csrc, by name: the step loop and the vector
    GEMM header it includes."""
    folder = resources.files("wavflow").joinpath("csrc")
    return {name: folder.joinpath(name).read_text() for name in KERNEL_FILES}


def kernel_cache_dir() -> Path:
    """Where the compiled kernel lives: $WAVFLOW_CACHE_DIR, else ~/.cache/wavflow/kernels."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wavflow"
    return Path(os.environ.get("WAVFLOW_CACHE_DIR", default / "kernels"))


def load_kernel() -> ctypes.CDLL | None:
    """Compile (once per source, compiler flags and CPU), load and check the C++ step kernel.

    Returns:
        The loaded library, or None (after one warning) when no compiler is found, the build or
        load fails, or the library's ABI differs; the reason is kept in `kernel_error()`.
    """
    global _KERNEL, _KERNEL_ERROR
    if _KERNEL is not None or _KERNEL_ERROR is not None:
        return _KERNEL
    try:
        library = _build_and_load()
        check_abi(library)
        _bind(library)
        _KERNEL = library
    except Exception as error:  # any failure means "use the eager path", never a crash
        _KERNEL, _KERNEL_ERROR = None, f"{type(error).__name__}: {error}".splitlines()[0]
        warnings.warn(
            f"wavflow: C++ generation kernel unavailable ({_KERNEL_ERROR}); using the eager path",
            RuntimeWarning,
            stacklevel=3,
        )
    return _KERNEL


def kernel_error() -> str | None:
    """Why the C++ kernel could not be loaded (None if it loaded or was never tried)."""
    return _KERNEL_ERROR


def check_abi(library: ctypes.CDLL) -> None:
    """Refuse a library whose ABI version or struct sizes differ from the ctypes mirrors.

    Raises:
        RuntimeError: naming what differs (the library was built from another source).
    """
    try:
        report = library.wavflow_abi
    except AttributeError as error:
        raise RuntimeError("the kernel library reports no ABI (wavflow_abi missing)") from error
    report.argtypes, report.restype = [ctypes.POINTER(_INT)], None
    values = (_INT * 4)()
    report(values)
    expected = (ABI_VERSION, ctypes.sizeof(_Net), ctypes.sizeof(_Head), ctypes.sizeof(_Job))
    if tuple(values) != expected:
        names = ("version", "sizeof(Net)", "sizeof(Head)", "sizeof(Job)")
        differ = ", ".join(
            f"{name} {got} (expected {want})"
            for name, got, want in zip(names, values, expected)
            if got != want
        )
        raise RuntimeError(f"kernel ABI mismatch: {differ}; rebuild it from wavflow/csrc")


def _cpu_signature() -> str:
    """Identifies the instruction set, since the kernel is built with -march=native."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_and_load() -> ctypes.CDLL:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler '{compiler}' on PATH")
    sources = kernel_sources()
    flag_sets = (["-march=native"], [])  # the second for compilers/CPUs without -march=native
    common = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno"]
    errors = []
    for arch in flag_sets:
        flags = common + arch
        key = hashlib.sha256(
            "\n".join([*sources.values(), compiler, *flags, _cpu_signature()]).encode()
        ).hexdigest()[:16]
        library = kernel_cache_dir() / f"wavflow_step_{key}.so"
        if not library.exists():
            library.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=library.parent) as build:
                for name, text in sources.items():  # the header beside the source it includes
                    (Path(build) / name).write_text(text)
                source = Path(build) / KERNEL_FILES[0]
                built = Path(build) / library.name
                result = subprocess.run(
                    [compiler, *flags, str(source), "-o", str(built)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if result.returncode != 0:
                    lines = result.stderr.splitlines()
                    errors.append(next((s for s in lines if "error" in s), "failed").strip())
                    continue
                os.replace(built, library)  # atomic, so concurrent builders never see half a file
        return ctypes.CDLL(str(library))
    raise RuntimeError(f"compilation failed: {errors[-1]}")


def _bind(library: ctypes.CDLL) -> None:
    library.wavflow_run.argtypes = [
        ctypes.POINTER(_Net),
        ctypes.POINTER(_Head),
        ctypes.POINTER(_Job),
    ]
    library.wavflow_run.restype = ctypes.c_int


def _pad_to(size: int, multiple: int = PANEL) -> int:
    return -(-size // multiple) * multiple


def _pad(tensor: Tensor, dims: dict[int, int]) -> Tensor:
    """Zero-pad the given dims of `tensor` (at their end) to the given sizes."""
    shape = list(tensor.shape)
    for dim, size in dims.items():
        shape[dim] = size
    padded = tensor.new_zeros(shape)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return padded


def pack_weights(folded: FoldedStack, weight_dtype: torch.dtype) -> dict[str, Tensor]:
    """Weights for the kernel: channels zero-padded to multiples of 32 (padded residual, gate and
    skip channels stay 0: zero weights and biases, tanh(0) = 0), matrices stored as
    (N / 32, K, 32) panels so that each 32-column slice streams contiguously."""
    n_layers, kernel, residual, gates, skip, n_params = folded.sizes
    half = gates // 2
    r_pad, h_pad, s_pad, p_pad = (_pad_to(n) for n in (residual, half, skip, n_params))

    def gate_columns(t: Tensor) -> Tensor:  # (..., G) -> (..., 2 H_pad)
        filt, gate = t[..., :half], t[..., half:]
        last = t.dim() - 1
        return torch.cat([_pad(filt, {last: h_pad}), _pad(gate, {last: h_pad})], -1)

    def panels(matrix: Tensor) -> Tensor:  # (..., K, N) -> (..., N / 32, K, 32)
        *lead, rows, cols = matrix.shape
        split = matrix.reshape(*lead, rows, cols // PANEL, PANEL)
        return split.transpose(-3, -2).to(weight_dtype).contiguous()

    def stored(name: str, matrix: Tensor) -> dict[str, Tensor]:  # panels, and int8 row scales
        if weight_dtype != torch.int8:
            return {name: panels(matrix)}
        q, scale = quantize_rows(matrix.to(torch.float32))
        return {name: panels(q), name.removesuffix("_w") + "_s": scale.flatten().contiguous()}

    dilated = gate_columns(folded.dilated.view(n_layers, kernel, residual, gates))
    cond = gate_columns(folded.cond.view(-1, n_layers, gates)).flatten(1)
    matrices = {
        "dilated": _pad(dilated, {2: r_pad}).flatten(1, 2),
        "cond_w": cond,
        "residual_w": _pad(folded.residual, {1: h_pad, 2: r_pad}),
        "skip_w": _pad(folded.skip.view(n_layers, half, skip), {1: h_pad, 2: s_pad}).flatten(0, 1),
        "hidden_w": _pad(folded.hidden, {0: s_pad, 1: s_pad}),
        "out_w": _pad(folded.out, {0: s_pad, 1: p_pad}),
    }
    packed = {}
    for name, matrix in matrices.items():
        packed |= stored(name, matrix)
    vectors = {
        "gate_b": gate_columns(folded.gate_bias.view(n_layers, gates)).flatten(),
        "residual_b": _pad(folded.residual_bias, {1: r_pad}),
        "skip_b": _pad(folded.skip_bias, {0: s_pad}),
        "hidden_b": _pad(folded.hidden_bias, {0: s_pad}),
        "out_b": _pad(folded.out_bias, {0: p_pad}),
        "input_w": _pad(folded.input_weight, {1: r_pad}),
        "input_b": _pad(folded.input_bias, {0: r_pad}),
    }
    packed |= {name: v.to(torch.float32).contiguous() for name, v in vectors.items()}
    packed["dilations"] = torch.tensor(folded.dilations, dtype=torch.long)
    return packed


def weight_traffic(
    folded: FoldedStack, weight_dtype: torch.dtype, threads: int
) -> tuple[dict[str, float], float]:
    """Bytes of weights one of `threads` threads reads per step at batch 1, by kernel section,
    and its working set: the bytes of all the matrix parts it touches.

    The gate units (the current tap, past taps, cond projection) and the skip channels are
    split over the threads; each thread computes the whole residual and head. Past taps cost
    (K - 1) R G / d per step (read once per block of d steps; every step where d = 1), the
    cond projection its matrix once per chunk of steps. A working set larger than a cache means
    the weights come back from the level beyond it (every block of the longest dilation). int8
    adds a float32 scale per matrix row.
    """
    n_layers, kernel_size, residual, gates, skip, n_params = folded.sizes
    size = torch.empty(0, dtype=weight_dtype).element_size()
    row = 4 if weight_dtype == torch.int8 else 0  # the row scales
    half, share = gates // 2, 1 / threads
    split_row = gates * size * share + row  # one row of a gate-split matrix
    cond_rows = folded.cond.shape[0]
    steps_per_chunk = max(1, min(1024, KERNEL_CHUNK_FLOATS // (n_layers * gates)))
    whole = {
        "current tap": n_layers * residual * split_row,
        "past taps": n_layers * (kernel_size - 1) * residual * split_row,
        "cond projection": cond_rows * (n_layers * gates * size * share + row),
        "residual": (n_layers - 1) * half * (residual * size + row),
        "skip": n_layers * half * (skip * size * share + row),
        "head": skip * ((skip + n_params) * size + 2 * row),
    }
    per_step = dict(whole)
    past_per_step = sum((kernel_size - 1) / d for d in folded.dilations) * residual * split_row
    per_step["past taps"] = past_per_step
    per_step["cond projection"] = whole["cond projection"] / steps_per_chunk
    return per_step, sum(whole.values())


def _net(folded: FoldedStack, packed: dict[str, Tensor], weight_dtype: torch.dtype) -> _Net:
    n_layers, kernel, *_ = folded.sizes
    return _Net(
        n_layers=n_layers,
        kernel=kernel,
        residual=packed["input_b"].numel(),
        gates=packed["gate_b"].numel() // n_layers,
        skip=packed["skip_b"].numel(),
        params=packed["out_b"].numel(),
        input_kernel=packed["input_w"].shape[0],
        cond=folded.cond.shape[0],
        weight_kind=WEIGHT_KINDS[weight_dtype],
        **{name: packed[name].data_ptr() for name in _NET_POINTERS.split()},
        **{
            name: packed[name].data_ptr() if name in packed else None
            for name in _SCALE_POINTERS.split()
        },
    )


def _rings_to_kernel(state: GenerationState, residual_padded: int) -> Tensor:
    """The state's rings as the kernel reads them: (B, sum_l C_l, R_pad) float32."""
    rings = [_pad(ring.float(), {2: residual_padded}) for ring in state.rings]
    return torch.cat(rings, 1).contiguous()


def _rings_from_kernel(flat: Tensor, like: GenerationState) -> list[Tensor]:
    """(B, sum_l C_l, R_pad) -> per-layer rings (B, C_l, R) as in `like`."""
    sizes = [ring.shape[1] for ring in like.rings]
    residual = like.rings[0].shape[2]
    return [part[:, :, :residual].contiguous() for part in flat.split(sizes, 1)]


def generate_kernel(
    folded: FoldedStack,
    packed: dict[str, Tensor],
    weight_dtype: torch.dtype,
    inputs: Inputs,
    head: Head,
    group_sizes: list[int],
    threads_per_group: int,
    timers: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, GenerationState]:
    """The whole step loop in one kernel call. Rows come in groups, each sorted by length,
    descending, and run by `threads_per_group` threads.

    Returns:
        x (B, T), params (B, P, T) or None, and the state after each row's length.
    """
    library = load_kernel()
    assert library is not None
    net = _net(folded, packed, weight_dtype)
    batch, _, length = inputs.cond.shape
    n_params, noise, temperature = head.n_params, inputs.noise, inputs.temperature
    cond = inputs.cond[:, : net.cond].transpose(1, 2).contiguous()  # (B, C, T) -> (B, T, C)
    excitation, log_level = inputs.excitation, inputs.log_level  # float32, contiguous
    if isinstance(head, LogisticMixtureOutput):
        noise = head.noise_terms(noise)  # the kernel takes them as `head.sample` uses them
        head_args = (1, head.n_mixtures)
    else:
        head_args = (0, 1)
    head_struct = _Head(*head_args, head.log_scale_min, temperature)
    noise = noise.to(torch.float32).contiguous()
    x = torch.zeros(batch, length + net.input_kernel)
    params = torch.zeros(batch, n_params, length) if inputs.return_params else None
    starts = torch.tensor([0, *torch.tensor(group_sizes).cumsum(0).tolist()])
    lengths = inputs.lengths  # lengths[order]: contiguous
    state = inputs.state
    start = int(state.position[0]) if batch else 0
    fresh = start == 0  # every ring is still zero: the kernel need not read them
    rings_in = None if fresh else _rings_to_kernel(state, net.residual)
    rings_out = _rings_to_kernel(state, net.residual) if rings_in is None else rings_in.clone()
    inputs_in = state.inputs.float().contiguous()
    inputs_out = torch.empty_like(inputs_in)
    job = _Job(
        length=length,
        groups=len(group_sizes),
        threads_per_group=max(1, threads_per_group),
        params_real=n_params,
        chunk_floats=KERNEL_CHUNK_FLOATS,
        solo_from=_SOLO_FROM_STEP,
        n_excitation=0 if excitation is None else excitation.shape[1],
        lengths=lengths.data_ptr(),
        group_start=starts.data_ptr(),
        cond=cond.data_ptr(),
        noise=noise.data_ptr(),
        x=x.data_ptr(),
        params_out=params.data_ptr() if params is not None else None,
        excitation=excitation.data_ptr() if excitation is not None else None,
        log_level=log_level.data_ptr() if log_level is not None else None,
        timers=timers.data_ptr() if timers is not None else None,
        start=start,
        rings_in=None if rings_in is None else rings_in.data_ptr(),
        rings_out=rings_out.data_ptr(),
        inputs_in=inputs_in.data_ptr(),
        inputs_out=inputs_out.data_ptr(),
    )
    with torch.profiler.record_function("wavflow::cpp_generate"):
        if library.wavflow_run(ctypes.byref(net), ctypes.byref(head_struct), ctypes.byref(job)):
            raise RuntimeError("the C++ kernel rejected the model")
    after = GenerationState(
        rings=_rings_from_kernel(rings_out, state),
        inputs=inputs_out.to(state.inputs.dtype),
        position=state.position + lengths,
    )
    return x[:, net.input_kernel :], params, after

"""`wavflow bench`: sequential teacher against parallel students, same mels, one process.

Every model runs with random weights at its recipe (published) size, weight norm folded, in
`torch.inference_mode`. Each (method, length, batch, dtype) is warmed up once, then timed
`repeats` times; the median is reported with samples/s, real-time factor (seconds of compute per
second of audio), speed-ups over the teacher's naive and cached paths measured in the same run,
FLOPs per sample (counted with `torch.utils.flop_counter` on the parallel pass), achieved FLOP/s
against this machine's ceiling (a matmul and a convolution probe), and peak memory.

The naive teacher costs a whole receptive-field pass per sample. Its first R steps (R the
receptive field) see shorter windows and cost less, so it is timed in steady state: one call of
R + N steps, of which the N after the window has filled are timed step by step
(`time_naive_steps`, N = `naive_fields` receptive fields), and its rate (constant per sample
from then on) is extrapolated to each length; such rows say "extrapolated". It runs at batch 1
only: a batch of B costs B receptive-field passes per step, minutes at the published size.

The timing primitives are in `wavflow.timing`, the table and plots in `wavflow.bench_report`.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from wavflow.bench_report import markdown_table, plot_benchmark
from wavflow.config import FeatureConfig, OptionError, TeacherConfig
from wavflow.flows import STUDENTS, build_student
from wavflow.metrics import log_mel_distance
from wavflow.nn.conditioning import ConditioningSpec
from wavflow.nn.conv import remove_weight_norm
from wavflow.synthesis import DTYPES, STUDENT_DTYPES
from wavflow.teacher import WaveNet
from wavflow.timing import (
    NaiveSteps,
    PeakMemory,
    cpu_caches,
    cpu_name,
    machine_ceiling,
    time_call,
    time_naive_steps,
)

# onnxruntime rows: students only, CPU, fp32 and dynamic int8 (its CPU bf16 kernels cover few
# of the students' ops).
RUNTIMES = ("pytorch", "onnxruntime")
BENCH_FEATURES = FeatureConfig(sample_rate=22050, n_fft=1024, hop_length=256, win_length=1024)
STUDENT_PRESETS = {
    "iaf": "parallel_wavenet",
    "waveglow": "waveglow",
    "flowavenet": "flowavenet",
    "squeezewave": "squeezewave",
}


@dataclass
class BenchRow:
    """One measured (or extrapolated) configuration."""

    method: str
    seconds_of_audio: float
    batch: int
    dtype: str
    median_s: float
    samples_per_s: float
    real_time_factor: float
    flops_per_sample: float
    achieved_gflops: float
    peak_memory_mb: float
    extrapolated: bool = False
    speedup_vs_naive: float | None = None
    speedup_vs_cached: float | None = None
    quality_log_mel_db_vs_fp32: float | None = None
    runtime: str = "pytorch"
    # teacher-naive: the shortest stack input among the timed steps (samples), which is the
    # receptive field when every timed step was a steady-state one.
    naive_min_window: int | None = None


def bench_models(settings: BenchSettings) -> dict[str, nn.Module]:
    """Random-weight models: the teacher at `TeacherConfig` defaults (24 layers, 4 cycles,
    128/256/128, mixture of logistics) updated by `teacher_sizes`, and each student at its
    preset (the published sizes by default), all conditioned on the mels of `BENCH_FEATURES`
    alone (80 bands, hop 256 at 22,050 Hz; no speakers, no pitch)."""
    spec = ConditioningSpec(
        BENCH_FEATURES.n_mels, BENCH_FEATURES.hop_length, BENCH_FEATURES.sample_rate
    )
    models: dict[str, nn.Module] = {}
    torch.manual_seed(0)
    if any(m.startswith("teacher") for m in settings.methods):
        sizes = asdict(TeacherConfig()) | settings.teacher_sizes
        del sizes["speaker_channels"]  # the width of a speaker embedding, which `spec` has not
        models["teacher"] = WaveNet(spec, **sizes)
    for name in settings.methods:
        if name in STUDENTS:
            preset = STUDENTS[name].PRESETS[settings.student_presets[name]]
            models[name] = build_student(name, spec, **preset)
    for model in models.values():
        _randomise_zero_layers(model)
        remove_weight_norm(model.eval())
    return models


def _randomise_zero_layers(model: nn.Module) -> None:
    """Zero-initialised output convs make a new flow the identity; give them small random
    weights so timings exercise the real arithmetic (and no layer is skipped as trivial)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.abs().sum():
                parameter.normal_(0.0, 0.01)


def _runner(method: str, model: nn.Module, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """A function from mels (B, n_mels, F) to audio for `method` in `dtype`."""
    if method.startswith("teacher"):
        generation = method.split("-", 1)[1]
        weights = dtype if generation == "cached" else None

        def teacher(feats: Tensor) -> Tensor:
            cond = model.condition(feats)
            generator = torch.Generator().manual_seed(0)
            x, _ = model.generate(cond, generation, generator=generator, weight_dtype=weights)
            return x

        return teacher
    from wavflow.synthesis import SynthesisOptions, vocode

    model = model.to(dtype)
    options = SynthesisOptions(dtype="bf16" if dtype == torch.bfloat16 else "fp32")

    def student(feats: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(0)
        return vocode(model, feats.to(dtype), BENCH_FEATURES, options, generator)[:, None]

    return student


def _onnx_runners(model: nn.Module, folder: Path) -> dict[str, Callable[[Tensor], Tensor]]:
    """Per ONNX dtype ("fp32"; "int8": Conv and MatMul weights quantised to int8, activations
    per call, by onnxruntime's dynamic quantisation): mels (B, n_mels, F) -> audio (B, 1, T) by
    the student exported to ONNX, in onnxruntime on the CPU with torch's thread count. The noise
    is drawn as the PyTorch runner draws it, so the audio is comparable."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from wavflow.export import write_student

    with torch.inference_mode():  # data-dependent initialisations (ActNorm) happen first
        model.sample(model.condition(torch.randn(2, BENCH_FEATURES.n_mels, 8)))
    paths = {"fp32": write_student(model, BENCH_FEATURES, folder / "fp32.onnx", "onnx", 0.05)}
    paths["int8"] = folder / "int8.onnx"
    quantize_dynamic(
        paths["fp32"],
        paths["int8"],
        nodes_to_quantize=_constant_weight_nodes(paths["fp32"]),
        weight_type=QuantType.QInt8,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()

    def runner(path: Path) -> Callable[[Tensor], Tensor]:
        session = onnxruntime.InferenceSession(str(path), options, ["CPUExecutionProvider"])

        def student(feats: Tensor) -> Tensor:
            shape = (feats.shape[0], 1, feats.shape[-1] * BENCH_FEATURES.hop_length)
            z = model.base.sample(shape, 1.0, torch.Generator().manual_seed(0))
            audio = session.run(None, {"feats": feats.float().numpy(), "z": z.numpy()})[0]
            return torch.from_numpy(audio)[:, None]

        return student

    return {name: runner(path) for name, path in paths.items()}


def flops_per_sample(method: str, model: nn.Module, feats: Tensor) -> float:
    """FLOPs of generating one sample, counted on the parallel pass (for the teacher: one
    teacher-forced pass, the same arithmetic the cached path does per step; the naive path does
    a receptive field's worth of it per sample)."""
    counter = FlopCounterMode(display=False)
    feats = feats.to(next(model.parameters()).dtype)
    samples = feats.shape[0] * feats.shape[-1] * BENCH_FEATURES.hop_length
    # Not inference mode (even when the caller is in it): there the stacks take their fused
    # path, whose in-place products the counter does not count; the batched path does the same
    # arithmetic.
    with counter, torch.inference_mode(False), torch.no_grad():
        if method.startswith("teacher"):
            cond = model.condition(feats)
            model(cond.new_zeros(feats.shape[0], 1, cond.shape[-1]), cond)
        else:
            model.sample(model.condition(feats))
    flops = counter.get_total_flops() / samples
    if method == "teacher-naive":
        flops *= model.receptive_field
    return flops


@dataclass
class BenchSettings:
    """What `wavflow bench` measures."""

    lengths: list[float]
    batches: list[int]
    dtypes: list[str]
    methods: list[str]
    repeats: int = 3
    # Steady-state naive steps timed, in receptive fields (after one receptive field of warm-up).
    naive_fields: float = 3.0
    device: str = "cpu"
    threads: int = 0
    teacher_sizes: dict = field(default_factory=dict)
    student_presets: dict = field(default_factory=lambda: dict(STUDENT_PRESETS))
    runtimes: list[str] = field(default_factory=lambda: ["pytorch"])

    def __post_init__(self) -> None:
        known = ["teacher-naive", "teacher-cached", *STUDENTS]
        for method in self.methods:
            if method not in known:
                raise OptionError(f"unknown bench method '{method}': use {', '.join(known)}")
        for dtype in self.dtypes:
            if dtype not in DTYPES:
                raise OptionError(f"unknown dtype '{dtype}': use {', '.join(DTYPES)}")
        if not self.lengths or not self.batches or min(self.lengths) <= 0:
            raise OptionError("bench lengths and batch sizes must be positive")
        for runtime in self.runtimes:
            if runtime not in RUNTIMES:
                raise OptionError(f"unknown runtime '{runtime}': use {', '.join(RUNTIMES)}")
        if "onnxruntime" in self.runtimes and self.device != "cpu":
            raise OptionError("the onnxruntime rows run on the CPU: use --device cpu")


QUICK = BenchSettings(
    lengths=[0.1, 0.25],
    batches=[1],
    dtypes=["fp32"],
    methods=["teacher-naive", "teacher-cached", "iaf", "waveglow", "flowavenet", "squeezewave"],
    repeats=2,
    naive_fields=0.2,
)
DEFAULT = BenchSettings(
    lengths=[0.25, 1.0, 4.0],
    batches=[1, 8],
    dtypes=["fp32", "bf16", "int8"],
    methods=["teacher-naive", "teacher-cached", "iaf", "waveglow", "flowavenet", "squeezewave"],
)


def run_benchmark(settings: BenchSettings, out_dir: Path, progress: bool = True) -> dict:
    """Measure every configuration; write bench.json, bench.md and bench.png to `out_dir`."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    methods = settings.methods
    models = {k: v.to(device) for k, v in bench_models(settings).items()}
    rows: list[BenchRow] = []
    reference: dict[tuple[float, int], Tensor] = {}
    for dtype_name in settings.dtypes:
        dtype = DTYPES[dtype_name]
        for method in methods:
            if method == "teacher-naive" and dtype_name != "fp32":
                continue
            # int8 is the cached teacher's weights only; the others compute in floats.
            if method != "teacher-cached" and dtype_name not in STUDENT_DTYPES:
                continue
            model = models["teacher" if method.startswith("teacher") else method]
            run = _runner(method, model, dtype)
            batches = [1] if method == "teacher-naive" else settings.batches
            for batch in batches:
                rows += _measure_lengths(
                    method, model, run, batch, dtype_name, settings, device, reference, progress
                )
            if not method.startswith("teacher"):
                model.to(torch.float32)
    if "onnxruntime" in settings.runtimes:
        rows += _onnxruntime_rows(models, settings, device, reference, progress)
    _add_speedups(rows)
    result = {
        "torch": torch.__version__,
        "device": _device_name(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "ceiling": {
            name: machine_ceiling(DTYPES[name], device)
            for name in settings.dtypes
            if name in STUDENT_DTYPES
        },
        "settings": asdict(settings),
        "rows": [asdict(row) for row in rows],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    (out_dir / "bench.md").write_text(markdown_table(result))
    plot_benchmark(result, out_dir / "bench.png")
    return result


def _constant_weight_nodes(path: Path) -> list[str]:
    """Conv and MatMul nodes whose weights are stored constants: the ones dynamic quantisation
    can take (a weight computed in the graph, such as a 1x1 convolution's W from its LU
    factors, stays float)."""
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {initializer.name for initializer in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type in ("Conv", "MatMul") and node.input[1] in constants
    ]


def _onnxruntime_rows(models, settings, device, reference, progress) -> list[BenchRow]:
    """fp32 and int8 rows of every student in onnxruntime, beside PyTorch's, with the log-mel
    distance of their audio from PyTorch's fp32 audio for the same noise."""
    import tempfile

    rows = []
    for method in (m for m in settings.methods if not m.startswith("teacher")):
        with tempfile.TemporaryDirectory() as folder:
            for dtype_name, run in _onnx_runners(models[method], Path(folder)).items():
                for batch in settings.batches:
                    rows += _measure_lengths(
                        method,
                        models[method],
                        run,
                        batch,
                        dtype_name,
                        settings,
                        device,
                        reference,
                        progress,
                        runtime="onnxruntime",
                    )
    return rows


def _measure_lengths(
    method, model, run, batch, dtype_name, settings, device, reference, progress, runtime="pytorch"
):
    rows = []
    flops = None
    naive = None
    for seconds in settings.lengths:
        frames = max(1, round(seconds * BENCH_FEATURES.sample_rate / BENCH_FEATURES.hop_length))
        feats = torch.randn(
            batch, BENCH_FEATURES.n_mels, frames, generator=torch.Generator().manual_seed(1)
        ).to(device)
        samples = batch * frames * BENCH_FEATURES.hop_length
        if flops is None:
            flops = flops_per_sample(method, model, feats[:1, :, : min(frames, 8)].float())
        if method == "teacher-naive":
            if naive is None:
                naive, memory = _steady_naive(model, batch, settings, device)
            median = samples * statistics.median(naive.seconds) / batch
            extrapolated = True
        else:
            times, output, memory = time_call(lambda f=feats: run(f), settings.repeats, device)
            median, extrapolated = statistics.median(times), False
        row = BenchRow(
            method=method,
            seconds_of_audio=frames * BENCH_FEATURES.hop_length / BENCH_FEATURES.sample_rate,
            batch=batch,
            dtype=dtype_name,
            median_s=median,
            samples_per_s=samples / median,
            real_time_factor=median / (samples / BENCH_FEATURES.sample_rate),
            flops_per_sample=flops,
            achieved_gflops=flops * samples / median / 1e9,
            peak_memory_mb=memory,
            extrapolated=extrapolated,
            runtime=runtime,
            naive_min_window=min(naive.windows) if naive else None,
        )
        if not extrapolated and not method.startswith("teacher"):
            key = (method, seconds, batch)
            if dtype_name == "fp32" and runtime == "pytorch":
                reference[key] = output.float()
            elif key in reference:
                row.quality_log_mel_db_vs_fp32 = log_mel_distance(
                    output.float(), reference[key], BENCH_FEATURES
                )
        if progress:
            print(
                f"  {method:16s} {runtime:11s} {dtype_name} batch {batch:2d} "
                f"{row.seconds_of_audio:5.2f} s: "
                f"RTF {row.real_time_factor:8.3f}  {row.samples_per_s:10.0f} samples/s"
                + ("  (extrapolated)" if extrapolated else ""),
                flush=True,
            )
        rows.append(row)
    return rows


def _steady_naive(
    model: WaveNet, batch: int, settings: BenchSettings, device: torch.device
) -> tuple[NaiveSteps, float]:
    """The naive teacher's steady-state step times at `batch` (`time_naive_steps`, over
    `naive_fields` receptive fields) and the peak memory growth (MB) of that call."""
    steps = max(1, round(settings.naive_fields * model.receptive_field))
    samples = model.receptive_field + steps
    frames = -(-samples // BENCH_FEATURES.hop_length)  # ceil: cond covers every step
    feats = torch.randn(
        batch, BENCH_FEATURES.n_mels, frames, generator=torch.Generator().manual_seed(1)
    ).to(device)
    with PeakMemory(device) as memory:
        naive = time_naive_steps(model, feats, steps)
    return naive, memory.peak_mb


def _add_speedups(rows: list[BenchRow]) -> None:
    """Speed-up of every row over the fp32 teacher rows of the same length and batch."""

    def rate(method: str, row: BenchRow) -> float | None:
        for other in rows:
            if (other.method, other.dtype, other.batch) == (method, "fp32", row.batch) and abs(
                other.seconds_of_audio - row.seconds_of_audio
            ) < 1e-6:
                return other.samples_per_s
        return None

    for row in rows:
        naive, cached = rate("teacher-naive", row), rate("teacher-cached", row)
        row.speedup_vs_naive = row.samples_per_s / naive if naive else None
        row.speedup_vs_cached = row.samples_per_s / cached if cached else None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    caches = cpu_caches()
    return f"cpu ({cpu_name()}{'; ' + caches if caches else ''})"

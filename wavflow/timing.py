"""Timing for the benchmarks: warm-up then timed repeats, peak memory, the naive teacher's
steady-state steps, and the machine's FLOP/s ceiling.

Every timed call runs under `torch.inference_mode`, synchronising on CUDA before and after.
"""

from __future__ import annotations

import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from wavflow.teacher import WaveNet


class PeakMemory:
    """Peak resident memory growth (MB) during a block: CUDA allocator or /proc VmRSS sampling."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = _rss_mb()
        self._peak = self._start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_mb())

    def __exit__(self, *_: object) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_mb = (peak - self._start) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self._peak, _rss_mb()) - self._start


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def time_call(
    function: Callable[[], Tensor], repeats: int, device: torch.device
) -> tuple[list[float], Tensor, float]:
    """Warm up once, then time `repeats` calls under `torch.inference_mode` (synchronising on
    CUDA).

    Returns:
        (seconds per call, the last output, peak memory growth in MB over the timed calls).
    """
    times = []
    with torch.inference_mode():
        output = function()
        with PeakMemory(device) as memory:
            for _ in range(repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                output = function()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
    return times, output, memory.peak_mb


@dataclass
class NaiveSteps:
    """Wall seconds of the naive teacher's steady-state steps, and the windows they ran on."""

    seconds: list[float]
    windows: list[int]


def time_naive_steps(model: WaveNet, feats: Tensor, steps: int) -> NaiveSteps:
    """Time `steps` naive-generation steps that each run the stack over a full receptive field.

    The naive method restarts at t = 0 on every call and its step t runs the stack on the last
    min(t + 1, R) inputs, so a short call (as earlier versions timed: one 256-sample frame
    against R = 506) is cheaper per sample than generation in steady state. One call of
    R + `steps` samples is made; a forward pre-hook on the stack stamps the start of every step
    and records its window, and the gaps between consecutive stamps from step R - 1 on (the
    first full window) are the step times. The first R steps are the warm-up.

    Args:
        model: the teacher, in eval mode.
        feats: (B, n_mels, F) mels with F * hop >= R + `steps`.
        steps: steady-state steps to time (>= 1).

    Returns:
        the `steps` step times (seconds; each generates B samples) and the windows (samples)
        of the steps they time.
    """
    field_samples = model.receptive_field
    length = field_samples + steps
    stamps: list[float] = []
    windows: list[int] = []

    def stamp(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        if inputs[0].is_cuda:
            torch.cuda.synchronize(inputs[0].device)
        stamps.append(time.perf_counter())
        windows.append(inputs[0].shape[-1])

    handle = model.stack.register_forward_pre_hook(stamp)
    try:
        with torch.inference_mode():
            cond = model.condition(feats)[:, :, :length]
            model.generate(cond, "naive", generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    # The call made exactly one stack pass per step; the last step has no stamp after it.
    timed = stamps[field_samples - 1 :]
    return NaiveSteps(
        seconds=[after - before for before, after in zip(timed, timed[1:])],
        windows=windows[field_samples - 1 : -1],
    )


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what `platform` knows where that is missing."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_caches() -> str:
    """The first CPU's data caches from sysfs, e.g. "L1d 48 KiB, L2 2048 KiB, L3 491520 KiB
    shared by CPUs 0-1"; "" where sysfs does not say (not Linux)."""
    parts = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size, shared = (
                (index / name).read_text().strip()
                for name in ("level", "type", "size", "shared_cpu_list")
            )
        except OSError:
            continue
        if kind == "Instruction":
            continue
        name = f"L{level}{'d' if kind == 'Data' else ''}"
        sharing = f" shared by CPUs {shared}" if "-" in shared or "," in shared else ""
        parts.append(f"{name} {size.removesuffix('K')} KiB{sharing}")
    return ", ".join(parts)


def machine_ceiling(dtype: torch.dtype, device: torch.device) -> dict[str, float]:
    """GFLOP/s of a large matmul and of a wide 1-D convolution in `dtype`."""
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    x = torch.randn(1, 256, 16384, device=device, dtype=dtype)
    w = torch.randn(512, 256, 3, device=device, dtype=dtype)
    matmul, _, _ = time_call(lambda: a @ a, 5, device)
    conv, _, _ = time_call(lambda: torch.nn.functional.conv1d(x, w, padding=1), 5, device)
    return {
        "matmul_gflops": 2 * 1024**3 / statistics.median(matmul) / 1e9,
        "conv_gflops": 2 * 512 * 256 * 3 * 16384 / statistics.median(conv) / 1e9,
    }

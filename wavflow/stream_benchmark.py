"""`wavflow bench --stream`: first-chunk latency and streaming real-time factor per chunk size.

The models are `wavflow bench`'s (random weights at recipe sizes, weight norm folded). Each
(method, dtype, batch, length, chunk size) pushes the same mels chunk by chunk through
`wavflow.streaming` as fast as the machine allows, warmed up once, then timed `repeats` times;
medians are reported:

- first chunk: compute seconds from the first push until the first audio comes out (a stream
  whose chunks are shorter than the look-ahead needs several pushes before it);
- look-ahead: audio time the model holds back (`stream_plan`), a latency no compute removes;
- RTF: compute seconds per second of audio over the whole stream, and per chunk (the median
  compute of a push that returned audio over the chunk's duration: below 1, a live stream
  keeps up; a stream shorter than the look-ahead has only its flush).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from wavflow.benchmark import BENCH_FEATURES, DTYPES, BenchSettings, bench_models
from wavflow.streaming import StreamSession, chunk_frames, model_noise, stream


@dataclass
class StreamRow:
    """One streamed configuration (medians over the timed repeats)."""

    method: str
    dtype: str
    batch: int
    seconds_of_audio: float
    chunk_frames: int
    chunk_ms: float
    lookahead_ms: float
    first_chunk_s: float
    real_time_factor: float
    chunk_real_time_factor: float


def run_stream_benchmark(
    settings: BenchSettings, chunks: list[str], out_dir: Path, progress: bool = True
) -> dict:
    """Stream every configuration; write stream.json and stream.md to `out_dir`.

    Args:
        settings: models, lengths, batches, dtypes, repeats, device, threads (the teacher's
            naive method keeps no state and is left out).
        chunks: chunk sizes, frames ("10") or seconds ("0.05s").
    """
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    sizes = [chunk_frames(chunk, BENCH_FEATURES) for chunk in chunks]
    models = {k: v.to(device) for k, v in bench_models(settings).items()}
    rows = []
    for dtype_name in settings.dtypes:
        for method in settings.methods:
            if method == "teacher-naive":
                continue
            model = models["teacher" if method.startswith("teacher") else method]
            rows += _measure(method, model, dtype_name, sizes, settings, device, progress)
    result = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "settings": asdict(settings) | {"chunks": chunks},
        "rows": [asdict(row) for row in rows],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stream.json").write_text(json.dumps(result, indent=2))
    (out_dir / "stream.md").write_text(stream_table(result))
    return result


def _measure(
    method: str,
    model: nn.Module,
    dtype_name: str,
    sizes: list[int],
    settings: BenchSettings,
    device: torch.device,
    progress: bool,
) -> list[StreamRow]:
    """The rows of one model in one dtype: every batch, length and chunk size."""
    dtype, sequential = DTYPES[dtype_name], model.capabilities.sequential
    model = model if sequential else model.to(dtype)
    weights = dtype if sequential and dtype_name != "fp32" else None
    hop, rate = BENCH_FEATURES.hop_length, BENCH_FEATURES.sample_rate
    rows = []
    for batch in settings.batches:
        noise = model_noise(model, batch, device=device)
        session = StreamSession.start(model, BENCH_FEATURES, noise, weight_dtype=weights)
        for seconds in settings.lengths:
            frames = max(1, round(seconds * rate / hop))
            generator = torch.Generator().manual_seed(1)
            feats = torch.randn(batch, BENCH_FEATURES.n_mels, frames, generator=generator)
            for size in sizes:
                first, total, per_chunk = _time_stream(
                    session, feats.to(device), size, settings.repeats, device
                )
                row = StreamRow(
                    method=method,
                    dtype=dtype_name,
                    batch=batch,
                    seconds_of_audio=frames * hop / rate,
                    chunk_frames=size,
                    chunk_ms=size * hop / rate * 1e3,
                    lookahead_ms=session.plan.ahead * hop / rate * 1e3,
                    first_chunk_s=first,
                    real_time_factor=total / (frames * hop / rate),
                    chunk_real_time_factor=per_chunk / (size * hop / rate),
                )
                if progress:
                    print(
                        f"  {method:16s} {dtype_name} batch {batch:2d} {row.seconds_of_audio:5.2f}"
                        f" s, chunks of {size:3d} frames: first audio after "
                        f"{row.first_chunk_s * 1e3:8.1f} ms, RTF {row.real_time_factor:8.3f}",
                        flush=True,
                    )
                rows.append(row)
    if not sequential:
        model.to(torch.float32)
    return rows


def _time_stream(
    session: StreamSession, feats: Tensor, size: int, repeats: int, device: torch.device
) -> tuple[float, float, float]:
    """Warm up once, then stream `repeats` times: median compute seconds until the first
    audio, for the whole stream, and per pushed chunk that returned audio (median over every
    such chunk timed)."""
    chunks = [feats[..., i : i + size] for i in range(0, feats.shape[-1], size)]
    firsts, totals, per_chunk = [], [], []
    for repeat in range(repeats + 1):
        first, chunk_times = None, []
        start = last = time.perf_counter()
        for audio in stream(session, chunks):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            if first is None and audio.shape[-1]:
                first = now - start
            if audio.shape[-1]:  # pushes that only fill the look-ahead cost next to nothing
                chunk_times.append(now - last)
            last = now
        if repeat:  # the first pass warms up
            firsts.append(first or 0.0)
            totals.append(last - start)
            # The flush is no pushed chunk, unless the whole stream fit in the look-ahead.
            per_chunk += chunk_times[:-1] or chunk_times
    return statistics.median(firsts), statistics.median(totals), statistics.median(per_chunk)


def stream_table(result: dict) -> str:
    """stream.md: one row per streamed configuration."""
    lines = [
        f"torch {result['torch']}, {result['device']}, {result['threads']} threads; medians of "
        f"{result['settings']['repeats']} repeats",
        "",
        "| method | dtype | batch | audio (s) | chunk (frames) | chunk (ms) | look-ahead (ms) "
        "| first audio (ms of compute) | RTF | RTF per chunk |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['method']} | {row['dtype']} | {row['batch']} "
            f"| {row['seconds_of_audio']:.2f} | {row['chunk_frames']} | {row['chunk_ms']:.1f} "
            f"| {row['lookahead_ms']:.1f} | {row['first_chunk_s'] * 1e3:.1f} "
            f"| {row['real_time_factor']:.3f} | {row['chunk_real_time_factor']:.3f} |"
        )
    return "\n".join(lines) + "\n"

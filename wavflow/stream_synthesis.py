"""`wavflow synthesize --stream`: each input file's frames pushed through a stream chunk by
chunk, as a TTS model would hand them over, one wav written per input, with the compute time
to its first audio and its real-time factor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from wavflow.audio import AudioError, save_audio
from wavflow.checkpoint import load_model
from wavflow.distributed import pick_device
from wavflow.streaming import StreamSession, chunk_frames, model_noise, stream
from wavflow.synthesis import (
    DTYPES,
    SynthesisOptions,
    collect_inputs,
    features_of,
    has_pitch,
    predict_f0,
    prepare_for_inference,
    speaker_id,
)


@dataclass
class StreamReport:
    """Files streamed, inputs that failed with the reason, and per file the compute seconds
    until its first audio and its real-time factor (compute seconds per second of audio)."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    first_audio_s: list[float] = field(default_factory=list)
    real_time_factor: list[float] = field(default_factory=list)


def stream_files(
    checkpoint: Path, inputs: list[Path], out_dir: Path, options: SynthesisOptions, chunk: str
) -> StreamReport:
    """Synthesise every input as a stream of `chunk` (frames or seconds, `chunk_frames`) and
    write one wav each; failures are reported, not fatal.

    Each file's frames are pushed chunk by chunk, as a TTS model would hand them over, with
    noise `model_noise(seed)`; its F0 (pyin for audio, `<name>.f0.npy`, else predicted from
    the whole mel) goes with its frames.
    """
    model, recipe, state = load_model(checkpoint, use_ema=options.use_ema)
    device = pick_device(options.device)
    model = prepare_for_inference(model, options.dtype, device)
    if model.capabilities.sequential and options.method != "cached":
        raise ValueError("--stream generates with the teacher's state: use --method cached")
    speaker = speaker_id(model, state.get("speakers", []), options.speaker)
    speakers = None if speaker is None else torch.tensor([speaker], device=device)
    features = recipe.features
    frames = chunk_frames(chunk, features)
    weights = DTYPES[options.dtype] if options.dtype != "fp32" else None
    report = StreamReport()
    for path, name in collect_inputs(inputs):
        try:
            mel, f0 = features_of(path, features, has_pitch(model), options.normalized)
        except AudioError as error:
            report.failed.append((str(path), str(error)))
            continue
        feats = torch.from_numpy(mel)[None].to(device)
        pitch = None if f0 is None else torch.from_numpy(f0)[None].to(device)
        if has_pitch(model) and pitch is None:
            pitch = predict_f0(model, feats)
        noise = model_noise(model, 1, options.seed, options.temperature, device)
        session = StreamSession.start(
            model, features, noise, speakers, options.temperature, weights
        )
        spans = [slice(i, i + frames) for i in range(0, feats.shape[-1], frames)]
        chunks = [(feats[..., s], None if pitch is None else pitch[..., s]) for s in spans]
        audio, first, total = _timed_stream(session, chunks, device)
        path_out = (out_dir / name).with_suffix(".wav")
        save_audio(path_out, audio[0].float().cpu(), features.sample_rate)
        report.written.append(path_out)
        report.first_audio_s.append(first)
        report.real_time_factor.append(total * features.sample_rate / audio.shape[-1])
    return report


def _timed_stream(
    session: StreamSession, chunks: list, device: torch.device
) -> tuple[Tensor, float, float]:
    """The stream's audio (B, T), the compute seconds until its first samples, and in all."""
    pieces, first = [], None
    start = time.perf_counter()
    for piece in stream(session, chunks):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if first is None and piece.shape[-1]:
            first = time.perf_counter() - start
        pieces.append(piece)
    return torch.cat(pieces, dim=-1), first or 0.0, time.perf_counter() - start

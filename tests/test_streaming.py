"""Streaming synthesis: streamed audio equals the whole-utterance pass for the same noise."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from factories import HOP, N_MELS, perturbed, student_checkpoint, tiny_student, tiny_teacher

from wavflow.audio import from_convention_mel
from wavflow.benchmark import BenchSettings
from wavflow.cli import main
from wavflow.config import FeatureConfig
from wavflow.stream_benchmark import run_stream_benchmark
from wavflow.streaming import (
    PositionalNoise,
    StreamSession,
    model_noise,
    stream,
    stream_plan,
)
from wavflow.teacher import WaveNet

FRAMES, BATCH = 64, 2
FEATURES = FeatureConfig(sample_rate=16000, n_mels=N_MELS, hop_length=HOP, n_fft=16, win_length=16)
# Chunk sizes in frames that do not divide 64; 3 is shorter than every look-ahead but the
# IAF's (2 frames), and chunks of 1 frame are streamed in `test_chunks_shorter_than...`.
CHUNKS = (3, 7)


@pytest.fixture(autouse=True)
def _one_thread():
    """Windows of a few hundred samples: a second thread only adds synchronisation, which on
    a busy machine costs more than the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    """Random weights everywhere: an identity flow streams exactly whatever its context."""
    return perturbed(model, 0.1).eval()


def _teacher(**options: object) -> WaveNet:
    return _perturbed(tiny_teacher("mol", torch.float32, **{"sample_rate": 16000} | options))


def _student(kind: str, **options: object):
    model = tiny_student(kind, dtype=torch.float32, **{"sample_rate": 16000} | options)
    feats, f0 = _inputs(bool(model.conditioner.n_harmonics))
    with torch.inference_mode():  # data-dependent initialisation (ActNorm), as training does
        model.sample(model.condition(feats, None, f0))
    return _perturbed(model)


def _inputs(pitch: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mels (B, n_mels, F) and, for pitch, F0 (B, F): unvoiced first frames, then 100-300 Hz
    with an unvoiced gap."""
    generator = torch.Generator().manual_seed(1)
    feats = torch.randn(BATCH, N_MELS, FRAMES, generator=generator) - 4
    if not pitch:
        return feats, None
    f0 = torch.linspace(100, 300, FRAMES).expand(BATCH, -1).clone()
    f0[:, :5] = 0
    f0[:, 30:34] = 0
    return feats, f0


def _chunks(feats: torch.Tensor, f0: torch.Tensor | None, size: int) -> list:
    spans = [slice(i, i + size) for i in range(0, feats.shape[-1], size)]
    return [(feats[..., s], None if f0 is None else f0[..., s]) for s in spans]


def _streamed(session: StreamSession, feats, f0, size: int) -> tuple[torch.Tensor, list[int]]:
    pieces = list(stream(session, _chunks(feats, f0, size)))
    return torch.cat(pieces, dim=-1), [piece.shape[-1] for piece in pieces]


@pytest.mark.parametrize(
    "options, atol",
    [
        ({}, 0.0),
        ({"n_harmonics": 2}, 0.0),
        ({"n_harmonics": 2, "envelope": True}, 1e-6),
        ({"n_harmonics": 2, "envelope": True, "lpc_order": 4, "features": FEATURES}, 1e-6),
    ],
    ids=["mel", "f0", "f0-envelope", "f0-lpc"],
)
def test_the_teacher_streams_exactly_its_whole_utterance_samples(options, atol) -> None:
    """Bit for bit; with the envelope within 1e-6, as the log-envelope's logsumexp over a
    window rounds (by an ulp) unlike over the whole utterance; with the LPC the recursion's
    history crosses each chunk's edge in float64, and its filter memory is rebuilt from it."""
    teacher = _teacher(**options)
    feats, f0 = _inputs("n_harmonics" in options)
    noise = model_noise(teacher, BATCH, seed=3)
    with torch.inference_mode():
        cond = teacher.condition(feats, None, f0)
        whole, _ = teacher.generate(cond, noise=noise(0, FRAMES * HOP))
    session = StreamSession.start(teacher, FEATURES, noise)
    for size in CHUNKS:
        streamed, _ = _streamed(session, feats, f0, size)
        torch.testing.assert_close(streamed, whole[:, 0], rtol=0, atol=atol, msg=str(size))


@pytest.mark.parametrize(
    "kind, options",
    [
        ("iaf", {}),
        ("iaf", {"n_harmonics": 2, "envelope": True}),
        ("waveglow", {}),
        ("flowavenet", {}),
        ("squeezewave", {"n_harmonics": 2}),
    ],
    ids=["iaf", "iaf-f0", "waveglow", "flowavenet", "squeezewave-f0"],
)
def test_students_stream_their_whole_utterance_samples(kind, options) -> None:
    student = _student(kind, **options)
    feats, f0 = _inputs("n_harmonics" in options)
    noise = model_noise(student, BATCH, seed=4)
    with torch.inference_mode():
        whole, _ = student.flow(noise(0, FRAMES * HOP), student.condition(feats, None, f0))
    session = StreamSession.start(student, FEATURES, noise)
    assert session.plan.ahead < FRAMES // 2  # the windows are shorter than the utterance
    for size in CHUNKS:
        streamed, _ = _streamed(session, feats, f0, size)
        torch.testing.assert_close(streamed, whole[:, 0], rtol=0, atol=1e-5, msg=str(size))


def test_the_spectral_envelope_iaf_streams_its_whole_utterance_samples() -> None:
    """The output filter's taps reach back `envelope_taps` samples (in the receptive field)
    and its crossfade half a hop ahead (within the look-ahead). Relative to the output's
    scale: the filter's gain from these mels makes samples of about 1e3, where float32 rounds
    at 1e-4."""
    student = _student("iaf", envelope=True, envelope_taps=16, features=FEATURES)
    feats, _ = _inputs(False)
    noise = model_noise(student, BATCH, seed=4)
    with torch.inference_mode():
        whole, _ = student.flow(noise(0, FRAMES * HOP), student.condition(feats))
    session = StreamSession.start(student, FEATURES, noise)
    scale = whole.abs().max().item()
    for size in CHUNKS:
        streamed, _ = _streamed(session, feats, None, size)
        torch.testing.assert_close(streamed, whole[:, 0], rtol=0, atol=1e-7 * scale, msg=str(size))


def _assert_streams_whole_utterance_to_scale(student) -> None:
    """Streamed (pitch-conditioned) output equals the whole utterance's within 1e-7 of its
    peak, for every chunk size."""
    feats, f0 = _inputs(True)
    noise = model_noise(student, BATCH, seed=4)
    with torch.inference_mode():
        whole, _ = student.flow(noise(0, FRAMES * HOP), student.condition(feats, None, f0))
    session = StreamSession.start(student, FEATURES, noise)
    scale = whole.abs().max().item()
    for size in CHUNKS:
        streamed, _ = _streamed(session, feats, f0, size)
        torch.testing.assert_close(streamed, whole[:, 0], rtol=0, atol=1e-7 * scale, msg=str(size))


@pytest.mark.parametrize("kind, options", [("iaf", {}), ("squeezewave", {"fold": 4})])
def test_a_harmonic_source_streams_its_whole_utterance_pulses(kind, options) -> None:
    """The pulses follow the whole utterance's phase in every chunk (`pulse_source` of the
    passed phase), so streamed pulses land where the whole utterance puts them."""
    student = _student(
        kind,
        **options,
        envelope=True,
        envelope_taps=16,
        features=FEATURES,
        n_harmonics=2,
        harmonic_source=True,
    )
    _assert_streams_whole_utterance_to_scale(student)


def test_the_spectral_envelope_squeezewave_streams_its_whole_utterance_samples() -> None:
    """A coupling student's output filter reaches taps - 1 samples back and half a hop ahead
    without a conv: `output_filter_reach` puts that in the plan."""
    student = _student(
        "squeezewave", fold=4, envelope=True, envelope_taps=16, features=FEATURES, n_harmonics=2
    )
    _assert_streams_whole_utterance_to_scale(student)


@pytest.mark.parametrize("kind", ["teacher", "iaf", "waveglow"])
def test_chunks_shorter_than_the_lookahead_wait_for_it_then_flush(kind) -> None:
    model = _teacher() if kind == "teacher" else _student(kind)
    noise = model_noise(model, BATCH, seed=6)
    session = StreamSession.start(model, FEATURES, noise)
    feats, _ = _inputs(False)
    with torch.inference_mode():
        cond = model.condition(feats)
        whole = (
            model.generate(cond, noise=noise(0, FRAMES * HOP))[0]
            if kind == "teacher"
            else (model.flow(noise(0, FRAMES * HOP), cond)[0])
        )
    streamed, lengths = _streamed(session, feats, None, 1)
    torch.testing.assert_close(streamed, whole[:, 0], rtol=0, atol=1e-5)
    ahead = session.plan.ahead
    assert lengths[:ahead] == [0] * ahead  # the first chunks only fill the look-ahead
    assert lengths[ahead:-1] == [HOP] * (FRAMES - ahead)  # then one frame out per frame in
    assert lengths[-1] == ahead * HOP  # and the flush returns what was held back


@pytest.mark.parametrize(
    "kind, short, frames", [("iaf", "ahead", 0), ("iaf", "past", 0), ("waveglow", "ahead", 0)]
)
def test_less_context_than_planned_changes_the_samples(kind, short, frames) -> None:
    """The plan's context is needed (it bounds the reach from above, with some slack): with
    much less of it the stream departs from the whole utterance."""
    student = _student(kind, n_harmonics=2) if kind == "iaf" else _student(kind)
    feats, f0 = _inputs(kind == "iaf")
    noise = model_noise(student, BATCH, seed=4)
    with torch.inference_mode():
        whole, _ = student.flow(noise(0, FRAMES * HOP), student.condition(feats, None, f0))
    plan = stream_plan(student, FEATURES)
    session = StreamSession(student, FEATURES, dataclasses.replace(plan, **{short: frames}), noise)
    streamed, _ = _streamed(session, feats, f0, 3)
    assert (streamed - whole[:, 0]).abs().max() > 1e-4


def test_positional_noise_is_a_function_of_position() -> None:
    noise = PositionalNoise(lambda n, g: torch.randn(2, 1, n, generator=g), seed=7, block=16)
    whole = noise(0, 100)
    pieces = torch.cat([noise(a, min(a + 7, 100)) for a in range(0, 100, 7)], dim=-1)
    assert torch.equal(pieces, whole) and whole.shape == (2, 1, 100)
    other = PositionalNoise(lambda n, g: torch.randn(2, 1, n, generator=g), seed=8, block=16)
    assert not torch.equal(other(0, 100), whole)
    assert noise(40, 40).shape == (2, 1, 0)


def test_a_pitch_model_needs_f0_with_its_frames() -> None:
    student = _student("iaf", n_harmonics=2)
    session = StreamSession.start(student, FEATURES, model_noise(student, BATCH))
    feats, _ = _inputs(False)
    with pytest.raises(ValueError, match="needs F0"):
        list(stream(session, [feats]))


def test_synthesize_stream_writes_the_streamed_audio(tmp_path, capsys) -> None:
    recipe, student, checkpoint = student_checkpoint("iaf", tmp_path, std=0.1)
    student.eval()
    mel = np.random.default_rng(0).normal(-6, 1, (20, 13)).astype(np.float32)
    np.save(tmp_path / "mel.npy", mel)
    out = tmp_path / "out"
    argv = ["synthesize", str(tmp_path / "mel.npy"), "--checkpoint", checkpoint, "--out", str(out)]
    assert main([*argv, "--stream", "--stream-chunk", "3", "--seed", "2", "--quiet"]) == 0
    assert "first audio after" in capsys.readouterr().out
    written, rate = sf.read(out / "mel.wav", dtype="float32")
    assert rate == recipe.features.sample_rate
    noise = model_noise(student, 1, seed=2)
    feats = from_convention_mel(mel, recipe.features, False)
    with torch.inference_mode():
        cond = student.condition(torch.from_numpy(feats)[None])
        whole, _ = student.flow(noise(0, 13 * 64), cond)
    np.testing.assert_allclose(written, whole[0, 0].clamp(-1, 1).numpy(), atol=1 / 2**15)
    with pytest.raises(SystemExit):  # argparse refuses it
        main([*argv, "--stream", "--stream-chunk", "0s"])
    assert main([*argv, "--stream", "--method", "naive"]) == 2


def test_bench_stream_reports_latency_and_rtf_per_chunk_size(tmp_path) -> None:
    settings = BenchSettings(
        lengths=[0.03],
        batches=[1],
        dtypes=["fp32"],
        methods=["teacher-naive", "teacher-cached", "iaf", "squeezewave"],
        repeats=1,
        teacher_sizes={"n_layers": 4, "n_cycles": 2, "residual_channels": 8},
        student_presets={"iaf": "tiny", "squeezewave": "tiny"},
    )
    result = run_stream_benchmark(settings, ["1", "0.02s"], tmp_path, progress=False)
    rows = result["rows"]
    assert [(r["method"], r["chunk_frames"]) for r in rows] == [
        (method, size) for method in ("teacher-cached", "iaf", "squeezewave") for size in (1, 2)
    ]
    for row in rows:
        assert row["first_chunk_s"] > 0 and row["real_time_factor"] > 0
        assert row["chunk_real_time_factor"] > 0 and row["lookahead_ms"] > 0
    assert json.loads((tmp_path / "stream.json").read_text())["rows"] == rows
    assert "| squeezewave | fp32 |" in (tmp_path / "stream.md").read_text()

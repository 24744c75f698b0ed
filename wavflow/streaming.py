"""Streaming synthesis: mel frames in as they arrive, audio out as soon as it is final.

A stream holds its state explicitly, as EnCodec's streaming modules do: `push` takes the state
and a chunk of frames and returns the audio that chunk made final with the new state; `finish`
flushes what the look-ahead held back. `stream` wraps both in a generator:

    session = StreamSession.start(model, features, noise=model_noise(model, 1, seed=0))
    for audio in stream(session, chunks):  # chunks: (feats (B, n_mels, n), F0 (B, n) or None)
        play(audio)                         # (B, samples); empty while the look-ahead fills

- The teacher generates every new sample once, continuing its `GenerationState` exactly.
- Parallel students run a window over the frames still needed: the causal IAF needs its
  receptive field of past noise and the conditioner's look-ahead; a coupling student (WaveGlow,
  FloWaveNet, SqueezeWave) needs the reach of its stack of centred convs on both sides, so it
  holds back that many frames (`stream_plan`), and windows start on its fold grid.

The noise is a function of the sample position (`PositionalNoise`), so any chunking reads the
same noise, and the whole-utterance pass on `noise(0, T)` gives the samples the stream yields
(the teacher bit for bit, the students up to float rounding). A student's window costs
(past + chunk + ahead) / chunk times its share of a one-pass synthesis: the price of exact
chunk edges without per-layer caches.

`wavflow.stream_synthesis` streams files (`wavflow synthesize --stream`) and
`wavflow.stream_benchmark` times streams.

References:
    Défossez et al., "High Fidelity Neural Audio Compression", arXiv:2210.13438 (EnCodec).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from wavflow.config import FeatureConfig
from wavflow.generation import GenerationState
from wavflow.nn.conditioning import excitation_phase

# Both conditioners read mel frames, F0 and the mel's level at most 2 hops either side of a
# sample: the audio-rate one states it (`Conditioner.lookahead`; its upsampler's smoothing is
# centred, so it reaches as far back), the frame-rate one (SqueezeWave) repeats frames and
# interpolates F0 and the level between frame centres (1 hop).
CONDITIONING_REACH_HOPS = 2


class PositionalNoise:
    """Noise that is a function of the sample position: block k (samples [k L, (k + 1) L)) is
    drawn by a generator seeded with a hash of (seed, k), so reading [a, b) then [b, c) gives
    [a, c).

    Args:
        draw: (length, generator) -> noise (B, C, length), e.g. from `model_noise`.
        seed: any integer.
        device: where the generator draws.
        block: L, samples per seeded block.
    """

    def __init__(
        self,
        draw: Callable[[int, torch.Generator], Tensor],
        seed: int = 0,
        device: torch.device | str = "cpu",
        block: int = 4096,
    ) -> None:
        self.draw, self.seed, self.device, self.block = draw, seed, torch.device(device), block
        self._last: tuple[int, Tensor] | None = None  # consecutive reads share a block

    def _seed_of(self, index: int) -> int:
        """A 32-bit seed for block `index`: the CPU generator keeps only the low 32 bits of a
        seed, so (seed << 32) + index would repeat across seeds; a hash spreads the pairs."""
        digest = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=4).digest()
        return int.from_bytes(digest, "little")

    def _block(self, index: int) -> Tensor:
        if self._last is None or self._last[0] != index:
            generator = torch.Generator(device=self.device).manual_seed(self._seed_of(index))
            self._last = (index, self.draw(self.block, generator))
        return self._last[1]

    def __call__(self, start: int, stop: int) -> Tensor:
        """The noise of samples [start, stop): (B, C, stop - start)."""
        first, last = start // self.block, max(start, stop - 1) // self.block
        blocks = torch.cat([self._block(k) for k in range(first, last + 1)], dim=-1)
        offset = first * self.block
        return blocks[..., start - offset : stop - offset]


def model_noise(
    model: nn.Module,
    batch: int,
    seed: int = 0,
    temperature: float = 1.0,
    device: torch.device | str = "cpu",
) -> PositionalNoise:
    """The noise `model` samples from, for B rows, as a function of position (float32).

    Teacher: its head's noise (the temperature is applied by `generate`); student: its base
    distribution at `temperature`.
    """
    if model.capabilities.sequential:

        def draw(length: int, generator: torch.Generator) -> Tensor:
            return model.head.draw_noise(batch, length, generator, device)

    else:

        def draw(length: int, generator: torch.Generator) -> Tensor:
            shape = (batch, 1, length)
            return model.base.sample(shape, temperature, generator, device=device)

    return PositionalNoise(draw, seed, device)


@dataclass(frozen=True)
class StreamPlan:
    """How a model streams, in mel frames.

    Attributes:
        past: frames before the first new sample that a window must hold (its samples then
            equal the whole utterance's).
        ahead: frames held back after the last sample emitted (the look-ahead).
        align: window starts are multiples of this (the fold grid of a coupling student).
    """

    past: int
    ahead: int
    align: int


def stream_plan(model: nn.Module, features: FeatureConfig) -> StreamPlan:
    """The context and look-ahead that make `model`'s streamed samples exact.

    Teacher: the conditioner's reach both ways (its own past lives in the generation state).
    IAF: its receptive field of noise and conditioning before, the conditioner's look-ahead
    after. Coupling students: `coupling_reach` plus the conditioner's reach on both sides.
    """
    capabilities, hop = model.capabilities, features.hop_length
    reach = CONDITIONING_REACH_HOPS * hop
    align = math.lcm(hop, capabilities.time_multiple) // hop
    if capabilities.sequential:
        return StreamPlan(past=_frames(reach, hop), ahead=_frames(reach, hop), align=1)
    if capabilities.causal:
        past = _frames(capabilities.receptive_field + reach, hop)
        return StreamPlan(past=past, ahead=_frames(capabilities.lookahead, hop), align=align)
    both = _frames(coupling_reach(model, features) + reach, hop)
    return StreamPlan(past=both, ahead=both, align=align)


def _frames(samples: int, hop: int) -> int:
    return math.ceil(samples / hop)


def coupling_reach(model: nn.Module, features: FeatureConfig) -> int:
    """Audio samples on either side of a sample that a coupling student's output there reads
    of its noise and `cond`: an upper bound, sum_c (K_c - 1) d_c / 2 * S_c over its convs c
    (K taps, dilation d, S audio samples per time step where the conv runs), plus the fold
    (`time_multiple`: a sample's group of folded steps) and the reach of an output filter
    (`output_filter_reach`).

    A conv's S is found by running a copy of the flow once on a short input and recording the
    length of time each flow layer sees, so every fold (`Squeeze`, nested blocks) is counted as
    built. The copy keeps the model's data-dependent initialisation (ActNorm) untouched.
    """
    multiple = math.lcm(features.hop_length, model.capabilities.time_multiple)
    lengths: dict[str, int] = {}
    with torch.inference_mode():
        flow = copy.deepcopy(model.flow)
        names = {module: name for name, module in flow.named_modules()}

        def record(module: nn.Module, inputs: tuple) -> None:
            if inputs:  # weight-norm parametrisations are called without any
                lengths[names[module]] = inputs[0].shape[-1]

        for module in names:
            module.register_forward_pre_hook(record)
        parameter = next(model.parameters())
        frames = multiple // features.hop_length
        feats = parameter.new_zeros(1, features.n_mels, frames)
        f0 = parameter.new_full((1, frames), 100.0) if model.capabilities.takes_pitch else None
        cond = model.condition(feats, None, f0)
        flow(cond.new_zeros(1, 1, multiple), cond)
    reach = model.capabilities.time_multiple + model.output_filter_reach
    for name, module in flow.named_modules():
        if isinstance(module, nn.Conv1d) and module.kernel_size[0] > 1:
            owner = max((n for n in lengths if _within(name, n)), key=len)
            steps = (module.kernel_size[0] - 1) * module.dilation[0] // 2
            reach += steps * multiple // lengths[owner]
    return reach


def _within(name: str, ancestor: str) -> bool:
    """Whether module `name` is `ancestor` or inside it (dotted module names)."""
    return not ancestor or name == ancestor or name.startswith(ancestor + ".")


@dataclass(frozen=True)
class StreamSession:
    """What stays fixed during a stream: the model (eval mode, on its device), its features,
    plan and noise, and the speaker ids.

    Attributes:
        temperature: the teacher's sampling temperature (a student's is in its noise).
        weight_dtype: the teacher's cached-path weight dtype (None: the model's).
    """

    model: nn.Module
    features: FeatureConfig
    plan: StreamPlan
    noise: PositionalNoise
    speaker: Tensor | None = None
    temperature: float = 1.0
    weight_dtype: torch.dtype | None = None

    @classmethod
    def start(
        cls,
        model: nn.Module,
        features: FeatureConfig,
        noise: PositionalNoise,
        speaker: Tensor | None = None,
        temperature: float = 1.0,
        weight_dtype: torch.dtype | None = None,
    ) -> StreamSession:
        """A session with the plan `stream_plan` gives."""
        plan = stream_plan(model, features)
        return cls(model, features, plan, noise, speaker, temperature, weight_dtype)


@dataclass(frozen=True)
class StreamState:
    """Where a stream stands.

    Attributes:
        feats: (B, n_mels, received - offset) the frames still needed, from frame `offset`.
        noise: students: (B, 1, (received - offset) * hop) their noise; None for the teacher.
        f0: (B, received) every F0 frame so far (the excitation's phase accumulates from the
            start), or None for a model without pitch.
        offset: index of the first frame in `feats`.
        emitted: frames whose audio has been returned.
        generation: the teacher's generation state after the samples emitted.
    """

    feats: Tensor
    noise: Tensor | None
    f0: Tensor | None
    offset: int
    emitted: int
    generation: GenerationState | None

    @property
    def received(self) -> int:
        """Frames pushed so far."""
        return self.offset + self.feats.shape[-1]


def initial_state(session: StreamSession, batch: int) -> StreamState:
    """The state before the first frame of B utterances."""
    model, features = session.model, session.features
    device = next(model.parameters()).device
    feats = torch.empty(batch, features.n_mels, 0, device=device)
    f0 = torch.empty(batch, 0, device=device) if model.capabilities.takes_pitch else None
    if model.capabilities.sequential:
        return StreamState(feats, None, f0, 0, 0, model.initial_state(batch, device))
    noise = torch.empty(batch, 1, 0, device=device)
    return StreamState(feats, noise, f0, 0, 0, None)


@torch.inference_mode()
def push(
    session: StreamSession, state: StreamState, feats: Tensor, f0: Tensor | None = None
) -> tuple[Tensor, StreamState]:
    """Take frames (B, n_mels, n) (with F0 (B, n) Hz for a pitch model) and return the audio
    (B, samples) that became final, a multiple of the hop (0 while the look-ahead fills), and
    the new state.

    Raises:
        ValueError: F0 missing for a pitch model, or given to a model without pitch.
    """
    state = _append(session, state, feats, f0)
    return _emit(session, state, state.received - session.plan.ahead)


@torch.inference_mode()
def finish(session: StreamSession, state: StreamState) -> Tensor:
    """The audio (B, samples) of the frames the look-ahead held back, after the last `push`."""
    audio, _ = _emit(session, state, state.received)
    return audio


def stream(
    session: StreamSession, chunks: Iterable[Tensor | tuple[Tensor, Tensor | None]]
) -> Iterator[Tensor]:
    """Yield the audio (B, samples) of each chunk of frames as it arrives, then the rest.

    Args:
        session: from `StreamSession.start`.
        chunks: mels (B, n_mels, n) or (mels, F0 (B, n) Hz) pairs; n may differ per chunk.

    Yields:
        One (B, samples) tensor per chunk (empty while the look-ahead fills), then the flush.
    """
    state = None
    for chunk in chunks:
        feats, f0 = chunk if isinstance(chunk, tuple) else (chunk, None)
        if state is None:
            state = initial_state(session, feats.shape[0])
        audio, state = push(session, state, feats, f0)
        yield audio
    if state is not None:
        yield finish(session, state)


def _append(
    session: StreamSession, state: StreamState, feats: Tensor, f0: Tensor | None
) -> StreamState:
    """The state with new frames (and their F0 and noise) appended."""
    if (f0 is None) != (state.f0 is None):
        needs = "needs F0 with its frames" if f0 is None else "takes no F0"
        raise ValueError(f"this model {needs}")
    hop = session.features.hop_length
    dtype = next(session.model.parameters()).dtype
    merged = torch.cat([state.feats, feats.to(state.feats)], dim=-1)
    changes: dict = {"feats": merged}
    if f0 is not None:
        changes["f0"] = torch.cat([state.f0, f0.to(state.f0)], dim=-1)
    if state.noise is not None:
        start = state.received * hop
        new = session.noise(start, start + feats.shape[-1] * hop).to(dtype)
        changes["noise"] = torch.cat([state.noise.to(dtype), new], dim=-1)
    return replace(state, **changes)


def _emit(session: StreamSession, state: StreamState, stop: int) -> tuple[Tensor, StreamState]:
    """Audio of frames [emitted, stop) and the state after it."""
    batch, hop = state.feats.shape[0], session.features.hop_length
    if stop <= state.emitted:
        return state.feats.new_zeros(batch, 0), state
    if session.model.capabilities.sequential:
        audio, generation = _teacher_audio(session, state, stop)
        state = replace(state, generation=generation)
    else:
        audio = _student_audio(session, state, stop)
    plan = session.plan
    keep = max(0, (stop - plan.past) // plan.align * plan.align)  # next window's first frame
    cut = keep - state.offset
    noise = None if state.noise is None else state.noise[..., cut * hop :]
    state = replace(state, feats=state.feats[..., cut:], noise=noise, offset=keep, emitted=stop)
    return audio, state


def _window_cond(session: StreamSession, state: StreamState, pad: int) -> Tensor:
    """`cond` of every frame in the state, with `pad` frames repeated at the end (fold
    alignment); the excitation's phase is the whole stream's, so it continues across chunks."""
    model, features, hop = session.model, session.features, session.features.hop_length
    window = state.feats.to(next(model.parameters()).dtype)
    window = nn.functional.pad(window, (0, pad), mode="replicate") if pad else window
    if state.f0 is None:
        return model.conditioner(window, session.speaker)
    phase = excitation_phase(state.f0, hop, features.sample_rate)[..., state.offset * hop :]
    f0 = nn.functional.pad(state.f0[..., state.offset :], (0, pad))
    phase = nn.functional.pad(phase, (0, pad * hop))
    return model.conditioner(window, session.speaker, f0, phase)


def _teacher_audio(
    session: StreamSession, state: StreamState, stop: int
) -> tuple[Tensor, GenerationState]:
    """Generate frames [emitted, stop) from the teacher's state: each sample once."""
    hop = session.features.hop_length
    cond = _window_cond(session, state, pad=0)
    start = (state.emitted - state.offset) * hop
    cond = cond[..., start : (stop - state.offset) * hop]
    noise = session.noise(state.emitted * hop, stop * hop).to(cond.device)
    x, generation = session.model.generate(
        cond,
        "cached",
        session.temperature,
        noise=noise,
        weight_dtype=session.weight_dtype,
        state=state.generation,
    )
    return x[:, 0], generation


def _student_audio(session: StreamSession, state: StreamState, stop: int) -> Tensor:
    """Run the student over every frame held (padded to its fold grid: mel edge, zero noise)
    and keep frames [emitted, stop)."""
    model, hop = session.model, session.features.hop_length
    frames = state.feats.shape[-1]
    pad = (-frames) % session.plan.align
    cond = _window_cond(session, state, pad)
    noise = nn.functional.pad(state.noise, (0, pad * hop))
    x, _ = model.flow(noise, cond)
    return x[:, 0, (state.emitted - state.offset) * hop : (stop - state.offset) * hop]


def chunk_frames(text: str, features: FeatureConfig) -> int:
    """A chunk size given as frames ("10") or seconds ("0.05s") -> frames (at least 1).

    Raises:
        ValueError: not a positive number of frames or seconds.
    """
    try:
        value = float(text[:-1]) if text.endswith("s") else int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"chunk size {text!r}: give frames (10) or seconds (0.05s), above 0")
    if text.endswith("s"):
        return max(1, round(value * features.sample_rate / features.hop_length))
    return int(value)

"""Conditioning: mel frames upsampled to audio rate, an optional speaker embedding, and an
optional harmonic excitation built from frame-rate F0."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ConditioningSpec:
    """What a model is conditioned on: the one description every model's conditioner is built
    from, the same for the teacher and the four students. Each model takes it as its first
    argument `spec` (beside its own architecture arguments) and keeps it as
    `model.conditioner.spec`; a checkpoint's recipe and speakers rebuild it
    (`wavflow.checkpoint.spec_and_sizes`).

    `n_mels`, `hop_length` and `sample_rate` describe the input that a teacher and the student
    it teaches must share (`INPUT_SETTINGS`); the speakers and harmonics are each model's own
    (a teacher with pitch can teach a student without).

    Attributes:
        n_mels: mel bands of `feats` (B, n_mels, frames).
        hop_length: audio samples per mel frame (the upsampling factor).
        sample_rate: audio rate in Hz (the phase of the F0 excitation and pulse source).
        n_speakers: speakers of the embedding (0: no global conditioning; ids in [0, n)).
        speaker_channels: width of the speaker embedding (channels of `cond` with speakers).
        n_harmonics: harmonics K of the F0 excitation (0: no pitch conditioning).

    Raises:
        ValueError: a setting out of range, naming it and its value.
    """

    n_mels: int
    hop_length: int
    sample_rate: int = 22050
    n_speakers: int = 0
    speaker_channels: int = 16
    n_harmonics: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {bound}, got {getattr(self, name)!r}"
            for name, bound, ok in (
                ("n_mels", ">= 1", self.n_mels >= 1),
                ("hop_length", ">= 1", self.hop_length >= 1),
                ("sample_rate", "a positive rate in Hz", self.sample_rate > 0),
                ("n_speakers", ">= 0", self.n_speakers >= 0),
                ("speaker_channels", ">= 1", self.speaker_channels >= 1),
                ("n_harmonics", ">= 0", self.n_harmonics >= 0),
            )
            if not ok
        ]
        if problems:
            raise ValueError("conditioning: " + "; ".join(problems))

    def input_differences(self, other: ConditioningSpec) -> list[tuple[str, int, int]]:
        """(name, this value, `other`'s value) for each of `INPUT_SETTINGS` where they differ."""
        return [
            (name, getattr(self, name), getattr(other, name))
            for name in INPUT_SETTINGS
            if getattr(self, name) != getattr(other, name)
        ]


# The settings of the input itself: two models that read the same batch must agree on them.
INPUT_SETTINGS = ("n_mels", "hop_length", "sample_rate")


def upsample_factors(hop_length: int, max_factor: int = 16) -> list[int]:
    """Split `hop_length` into factors of at most `max_factor` whose product is the hop.

    Example: 256 -> [16, 16]; 200 -> [10, 5, 4]. A prime above `max_factor` stays whole.
    """
    if hop_length < 1:
        raise ValueError(f"hop_length must be positive, got {hop_length}")
    primes, n, p = [], hop_length, 2
    while n > 1:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    factors: list[int] = []
    for prime in sorted(primes, reverse=True):
        if factors and factors[-1] * prime <= max_factor:
            factors[-1] *= prime
        else:
            factors.append(prime)
    return factors or [1]


class MelUpsampler(nn.Module):
    """Learned upsampling of mel frames to audio rate: repeat each frame, then smooth in time.

    Each stage repeats frames `s` times and applies a (1, 2s + 1) conv over time that starts as a
    moving average, so a new upsampler is a smoothed nearest-neighbour interpolation. The factors
    come from the hop (`upsample_factors`), never a fixed list.

    Args:
        hop_length: audio samples per mel frame.
    """

    def __init__(self, hop_length: int) -> None:
        super().__init__()
        self.hop_length = hop_length
        self.factors = upsample_factors(hop_length)
        self.stages = nn.ModuleList()
        for factor in self.factors:
            conv = nn.Conv2d(1, 1, (1, 2 * factor + 1), padding=(0, factor), bias=False)
            nn.init.constant_(conv.weight, 1.0 / (2 * factor + 1))
            self.stages.append(conv)

    def forward(self, feats: Tensor) -> Tensor:
        """(B, n_mels, frames) -> (B, n_mels, frames * hop_length)."""
        h = feats.unsqueeze(1)  # (B, n_mels, F) -> (B, 1, n_mels, F)
        for factor, conv in zip(self.factors, self.stages):
            h = conv(h.repeat_interleave(factor, dim=-1))
        return h.squeeze(1)


def f0_at_audio_rate(f0: Tensor, hop_length: int) -> tuple[Tensor, Tensor]:
    """Frame-rate F0 (B, F) -> (F0 (B, T) float64 Hz, voiced (B, T) bool), T = F * hop.

    F0 is interpolated between frame centres (j hop + hop / 2) through unvoiced gaps, so the
    phase stays continuous; voicing follows the nearest frame.
    """
    frames = f0.shape[-1]
    voiced = f0 > 0
    f0_audio = interpolate_frames(_fill_unvoiced(f0.double(), voiced), hop_length)
    nearest = torch.arange(frames * hop_length, device=f0.device) // hop_length
    return f0_audio, voiced[:, nearest]


def log_envelope(feats: Tensor, hop_length: int) -> Tensor:
    """A fixed estimate of the log RMS level of the audio from its log-mel, at audio rate.

        e_j = 1/2 log sum_b exp(2 mel_{b,j})   (frame j; nats, up to a constant offset)

    interpolated linearly between frame centres (j hop + hop / 2). The level of the loudest bands
    tracks the frame's RMS closely (on the built-in corpus with 1024-point slaney mels, log RMS
    = e_j - 2.7 +- 0.1 on speech frames), and it is a known function of the mel, so a flow that
    scales its output by exp(e) keeps an exact density. Silence is then quiet from the start.

    Args:
        feats: (B, n_mels, F) natural-log mels.
        hop_length: audio samples per frame.

    Returns:
        (B, F * hop_length) in the dtype of `feats`.

    References:
        Lee et al., "PriorGrad", arXiv:2106.06406 (a data-dependent prior from the mel energy).
    """
    level = 0.5 * torch.logsumexp(2 * feats.float(), dim=1)  # (B, F)
    return interpolate_frames(level, hop_length).to(feats.dtype)


def interpolate_frames(values: Tensor, hop_length: int) -> Tensor:
    """Frame values (B, F) -> (B, F * hop), linear between frame centres (j hop + hop / 2),
    held at the edges; computed in the dtype of `values`."""
    frames = values.shape[-1]
    centres = torch.arange(frames * hop_length, device=values.device, dtype=values.dtype) + 0.5
    position = (centres / hop_length - 0.5).clamp(0, frames - 1)  # in frames
    low = position.floor().long()
    high = (low + 1).clamp(max=frames - 1)
    weight = position - low
    return values[:, low] * (1 - weight) + values[:, high] * weight


def packed_channels(n_mels: int, hop_length: int) -> int:
    """Audio-rate channels `pack_mels` needs: ceil(n_mels / hop)."""
    return -(-n_mels // hop_length)


def pack_mels(feats: Tensor, hop_length: int) -> Tensor:
    """(B, n_mels, F) mels -> (B, P, F * hop), P = `packed_channels`: frame j's bands laid
    along samples j hop .. (j + 1) hop - 1 of channel 0, then channel 1, ... (zero-padded)."""
    batch, n_mels, frames = feats.shape
    channels = packed_channels(n_mels, hop_length)
    packed = nn.functional.pad(feats.transpose(1, 2), (0, channels * hop_length - n_mels))
    packed = packed.reshape(batch, frames, channels, hop_length).transpose(1, 2)
    return packed.reshape(batch, channels, frames * hop_length)


def unpack_mels(packed: Tensor, n_mels: int, hop_length: int) -> Tensor:
    """The inverse of `pack_mels`: (B, P, F * hop) -> (B, n_mels, F)."""
    batch, channels, length = packed.shape
    frames = packed.reshape(batch, channels, length // hop_length, hop_length).transpose(1, 2)
    return frames.reshape(batch, length // hop_length, -1)[..., :n_mels].transpose(1, 2)


def excitation_phase(f0: Tensor, hop_length: int, sample_rate: int) -> Tensor:
    """phi_t = 2 pi sum_{s<=t} f0_s / sr for frame-rate F0 (B, F): (B, F * hop) float64."""
    f0_audio, _ = f0_at_audio_rate(f0, hop_length)
    return 2 * math.pi * torch.cumsum(f0_audio / sample_rate, dim=-1)


def aligned_phase(
    audio: Tensor, f0: Tensor, hop_length: int, sample_rate: int, window: int | None = None
) -> Tensor:
    """The excitation phase of `excitation_phase`, moved onto the audio's own fundamental.

    phi_t accumulates F0 from the start of the clip, so its offset from the recording's glottal
    cycle is arbitrary: a likelihood model cannot time pulses by it and learns to ignore it.
    Demodulating the audio by exp(-i phi) and low-passing gives the fundamental's phase offset
    theta_t = arg sum_s w_{t-s} x_s exp(-i phi_s) (x_t ~ A cos(phi_t + theta_t)), so the
    excitation of phi + theta is in phase with the audio's fundamental. Training a teacher with
    it teaches it to put pulses where the excitation says; at synthesis any phi works.

    Args:
        audio: (B, T) real audio, T = F * hop.
        f0: (B, F) Hz at the frame rate, 0 = unvoiced.
        hop_length, sample_rate: frame hop and rate.
        window: Hann low-pass length in samples (default 2 hops: it rejects the 2 phi term,
            2 F0 >= 120 Hz, while following a moving offset).

    Returns:
        (B, T) float64 phase in radians.
    """
    phase = excitation_phase(f0, hop_length, sample_rate)
    length = window or 2 * hop_length
    kernel = torch.hann_window(length, dtype=torch.float64, device=audio.device)[None, None]
    carrier = torch.stack([torch.cos(phase), -torch.sin(phase)], dim=1)  # exp(-i phi), (B, 2, T)
    demodulated = carrier * audio.double()[:, None]
    smooth = torch.nn.functional.conv1d(
        demodulated.reshape(-1, 1, demodulated.shape[-1]), kernel, padding=length // 2
    )[..., : demodulated.shape[-1]].reshape(demodulated.shape)  # (B, 2, T): real, imaginary
    return phase + torch.atan2(smooth[:, 1], smooth[:, 0])


def harmonic_excitation(
    f0: Tensor, hop_length: int, sample_rate: int, n_harmonics: int, phase: Tensor | None = None
) -> Tensor:
    """Sines and cosines of the first harmonics of F0, at audio rate, zero where unvoiced.

    e_{2k-2}(t) = sin(k phi_t), e_{2k-1}(t) = cos(k phi_t), phi from `excitation_phase`, for
    k = 1..K; harmonic k is zero where k f0 >= sr / 2 (no aliasing).

    Args:
        f0: (B, F) Hz at the frame rate, 0 = unvoiced.
        hop_length, sample_rate: frame hop and rate of the audio.
        n_harmonics: K.
        phase: (B, F * hop) phase to use instead of the one accumulated from the start of `f0`
            (synthesis in chunks passes the slice of the whole utterance's phase, so the
            excitation is continuous across chunks).

    Returns:
        (B, 2K, F * hop_length) in the dtype of `f0`.
    """
    batch = f0.shape[0]
    f0_audio, voiced = f0_at_audio_rate(f0, hop_length)
    if phase is None:
        phase = 2 * math.pi * torch.cumsum(f0_audio / sample_rate, dim=-1)
    k = torch.arange(1, n_harmonics + 1, device=f0.device, dtype=torch.float64)[None, :, None]
    angles = k * phase.double()[:, None]  # (B, K, T)
    keep = voiced[:, None] & (k * f0_audio[:, None] < sample_rate / 2)
    waves = torch.stack([torch.sin(angles), torch.cos(angles)], dim=2) * keep[:, :, None]
    return waves.reshape(batch, 2 * n_harmonics, -1).to(f0.dtype)  # (B, K, 2, T) -> (B, 2K, T)


def pulse_source(
    f0: Tensor, hop_length: int, sample_rate: int, phase: Tensor | None = None
) -> Tensor:
    """A band-limited pulse train at F0 and the voicing, at audio rate: (B, 2, F * hop).

        p_t = sqrt(2 / K_t) sum_{k=1..K_t} cos(k phi_t)   (voiced; 0 where unvoiced)
        K_t = the harmonics below sr / 2,  v_t = 1 where voiced, else 0

    Every harmonic below Nyquist, each at the same amplitude: a pulse per period with a flat
    spectrum and unit power, the classic vocoder's voiced source. The sum is written in closed
    form (the Dirichlet kernel sin((K + 1/2) phi) / (2 sin(phi / 2)) - 1/2, its limit K at the
    pulses), so it costs the same for any F0. Through `SpectralEnvelope`'s filter it already
    scores STOI 0.94 on the quality recipe's held-back speech with no training at all
    (BENCHMARKS.md, "Quality"); `HarmonicSource` starts a student from it.

    Args:
        f0: (B, F) Hz at the frame rate, 0 = unvoiced.
        hop_length, sample_rate: frame hop and rate of the audio.
        phase: (B, F * hop) phase to use instead of the one accumulated from the start of `f0`
            (as `harmonic_excitation`'s, so chunks continue the whole utterance's pulses).

    Returns:
        (B, 2, F * hop_length) in the dtype of `f0`: channel 0 the pulses, channel 1 v_t.
    """
    f0_audio, voiced = f0_at_audio_rate(f0, hop_length)
    if phase is None:
        phase = 2 * math.pi * torch.cumsum(f0_audio / sample_rate, dim=-1)
    # k f0 < sr / 2 strictly, as in `harmonic_excitation`: a harmonic at Nyquist would alias.
    harmonics = (torch.ceil(sample_rate / (2 * f0_audio)) - 1).clamp_min(1.0)
    # Wrapped to (-pi, pi], so that the pulse at phi = 0 (mod 2 pi) is where sin(phi / 2) = 0.
    wrapped = torch.remainder(phase.double() + math.pi, 2 * math.pi) - math.pi
    half = torch.sin(wrapped / 2)
    at_pulse = half.abs() < 1e-6
    kernel = torch.sin((harmonics + 0.5) * wrapped) / (2 * torch.where(at_pulse, 1.0, half)) - 0.5
    pulses = torch.where(at_pulse, harmonics, kernel) * torch.sqrt(2 / harmonics) * voiced
    return torch.stack([pulses, voiced.double()], dim=1).to(f0.dtype)


def _fill_unvoiced(f0: Tensor, voiced: Tensor) -> Tensor:
    """F0 with unvoiced frames replaced by the previous voiced value (the next one at the start;
    100 Hz when a row has no voiced frame), so interpolation never glides through 0."""
    frames = f0.shape[-1]
    index = torch.arange(frames, device=f0.device).expand_as(f0)
    last = torch.where(voiced, index, torch.full_like(index, -1)).cummax(dim=-1).values
    first_voiced = torch.where(voiced, index, torch.full_like(index, frames)).min(-1).values
    source = torch.where(last >= 0, last, first_voiced[:, None]).clamp(max=frames - 1)
    filled = f0.gather(-1, source)
    return torch.where(filled > 0, filled, torch.full_like(filled, 100.0))


def broadcast_speaker(embedding: nn.Embedding, speaker: Tensor | None, length: int) -> Tensor:
    """Speaker ids (B,) -> their embeddings repeated over time, (B, E, length).

    Raises:
        ValueError: no ids for a model trained with speakers.
    """
    if speaker is None:
        raise ValueError("this model was trained with speakers: pass a speaker id per item")
    return embedding(speaker)[:, :, None].expand(-1, -1, length)  # (B, E) -> (B, E, length)


def required_excitation(
    f0: Tensor | None, hop_length: int, sample_rate: int, n_harmonics: int, phase: Tensor | None
) -> Tensor:
    """`harmonic_excitation` for a pitch-conditioned model, (B, 2K, F * hop).

    Raises:
        ValueError: no F0 given.
    """
    if f0 is None:
        raise ValueError("this model is conditioned on pitch: pass F0 (B, frames) in Hz")
    return harmonic_excitation(f0, hop_length, sample_rate, n_harmonics, phase)


class F0Predictor(nn.Module):
    """A small frame-rate network that predicts F0 and voicing from mels, for synthesis from
    mel arrays that come without F0. Trained beside the model it belongs to (`loss`).

    Output channel 0 is log(F0 / 100 Hz), channel 1 the voicing logit.
    """

    def __init__(self, n_mels: int, channels: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(n_mels, channels, 5, padding=2),
            nn.LeakyReLU(0.1),
            nn.Conv1d(channels, channels, 5, padding=2),
            nn.LeakyReLU(0.1),
            nn.Conv1d(channels, 2, 1),
        )

    def forward(self, feats: Tensor) -> Tensor:
        """(B, n_mels, F) -> F0 (B, F) in Hz, 0 where predicted unvoiced."""
        log_f0, voicing = self.net(feats).unbind(dim=1)
        return torch.where(voicing > 0, 100.0 * torch.exp(log_f0), torch.zeros_like(log_f0))

    def loss(self, feats: Tensor, f0: Tensor) -> Tensor:
        """Voicing cross-entropy plus L1 of log F0 on voiced frames (nats; scalar)."""
        log_f0, voicing = self.net(feats).unbind(dim=1)
        voiced = f0 > 0
        voicing_loss = nn.functional.binary_cross_entropy_with_logits(voicing, voiced.float())
        target = torch.log(f0.clamp_min(1.0) / 100.0)
        pitch_loss = ((log_f0 - target).abs() * voiced).sum() / voiced.sum().clamp_min(1)
        return voicing_loss + pitch_loss


class ConditionerBase(nn.Module):
    """What every model's conditioner shares: its `ConditioningSpec` (`spec`), the speaker
    embedding, the pitch settings with their `F0Predictor`, and the envelope flag.
    `Conditioner` (audio rate) and SqueezeWave's `FrameRateConditioner` (folded rate) build
    `cond` from these.
    """

    def _add_speaker_and_pitch(
        self, spec: ConditioningSpec, envelope: bool, source: bool = False
    ) -> None:
        """Set up the shared parts (called after a subclass's own modules, so that parameters
        keep their order in checkpoints' optimizer state). Arguments as in `Conditioner`."""
        if source and not spec.n_harmonics:
            raise ValueError(
                'harmonic_source needs pitch conditioning: set [conditioning] pitch = "harmonic"'
            )
        self.spec = spec
        self.hop_length, self.n_speakers = spec.hop_length, spec.n_speakers
        self.n_harmonics, self.sample_rate = spec.n_harmonics, spec.sample_rate
        self.speaker = (
            nn.Embedding(spec.n_speakers, spec.speaker_channels) if spec.n_speakers else None
        )
        self.speaker_channels = spec.speaker_channels if spec.n_speakers else 0  # in `cond`
        self.excitation_channels = 2 * spec.n_harmonics
        self.has_envelope, self.has_source = envelope, source
        self.f0_predictor = F0Predictor(spec.n_mels) if spec.n_harmonics else None

    def speaker_part(self, speaker: Tensor | None, length: int) -> list[Tensor]:
        """[the speaker embeddings (B, E, length)], or [] for a model without speakers."""
        return [] if self.speaker is None else [broadcast_speaker(self.speaker, speaker, length)]

    def excitation_of(self, f0: Tensor | None, phase: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The harmonic excitation (B, 2K, F * hop) at audio rate, in `dtype`."""
        return required_excitation(
            f0, self.hop_length, self.sample_rate, self.n_harmonics, phase
        ).to(dtype)

    def source_of(self, f0: Tensor | None, phase: Tensor | None, dtype: torch.dtype) -> Tensor:
        """The pulse source and voicing (B, 2, F * hop) at audio rate (`pulse_source`)."""
        if f0 is None:
            raise ValueError("this model has a harmonic source: pass F0 (B, frames) in Hz")
        return pulse_source(f0, self.hop_length, self.sample_rate, phase).to(dtype)


class Conditioner(ConditionerBase):
    """Builds the audio-rate conditioning `cond` (B, C, T) that every model's layers read.

    `cond` = [upsampled mel; speaker embedding broadcast over time when the model has speakers
    (global conditioning); with `source`, the pulse source and voicing (2 channels); with
    `envelope`, the log level (1); harmonic excitation (2 * n_harmonics channels, last) when
    the model is conditioned on pitch]. Models that put the excitation in their signal path
    read it back with `excitation(cond)`. With pitch, an `F0Predictor` gives F0 for mels that
    come without.

    Args:
        spec: the mel settings, speakers and harmonics (`ConditioningSpec`).
        envelope: also give the mel's log level (`log_envelope`, one channel before the
            excitation), for models that scale their output by it (`envelope(cond)`).
        packed_mel: also give the mel frames themselves (`pack_mels`, the first channels), for
            a layer that filters by the mel's spectral envelope (`SpectralEnvelope`); the
            networks that read `cond` skip it (`leading_channels`).
        source: also give `pulse_source`'s pulse train and voicing (needs pitch), for a
            student that starts from a harmonic-plus-noise source (`HarmonicSource`).
    """

    def __init__(
        self,
        spec: ConditioningSpec,
        envelope: bool = False,
        packed_mel: bool = False,
        source: bool = False,
    ) -> None:
        super().__init__()
        self.upsampler = MelUpsampler(spec.hop_length)
        self._add_speaker_and_pitch(spec, envelope, source)
        # Index of the log-envelope channel in `cond`, counted from the end (None: no envelope).
        self.envelope_channel = -1 - self.excitation_channels if envelope else None
        # Index of the pulse channel (the voicing follows it), from the end (None: no source).
        self.source_channel = -2 - int(envelope) - self.excitation_channels if source else None
        # Channels at the front of `cond` that only the output filter reads.
        self.leading_channels = packed_channels(spec.n_mels, spec.hop_length) if packed_mel else 0
        self.out_channels = (
            self.leading_channels
            + spec.n_mels
            + self.speaker_channels
            + 2 * int(source)
            + int(envelope)
            + self.excitation_channels
        )
        # Future audio samples one output reads: a frame spans one hop and the upsampler's
        # smoothing reaches sum_i s_i prod_{j>i} s_j < 2 hops (factors <= 16); the linear
        # interpolation of F0 and the envelope between frame centres one hop. 2 hops bound both.
        self.lookahead = 2 * spec.hop_length

    def forward(
        self,
        feats: Tensor,
        speaker: Tensor | None = None,
        f0: Tensor | None = None,
        phase: Tensor | None = None,
    ) -> Tensor:
        """(B, n_mels, F), speaker ids (B,), F0 (B, F) Hz -> cond (B, out_channels, F * hop).

        `phase` (B, F * hop): the excitation's phase when this is a chunk of a longer input.
        """
        mel = self.upsampler(feats)
        packed = [pack_mels(feats, self.hop_length)] if self.leading_channels else []
        parts = [*packed, mel, *self.speaker_part(speaker, mel.shape[-1])]
        if self.has_source:
            parts.append(self.source_of(f0, phase, feats.dtype))
        if self.has_envelope:
            parts.append(log_envelope(feats, self.hop_length)[:, None])
        if self.n_harmonics:
            parts.append(self.excitation_of(f0, phase, feats.dtype))
        return torch.cat(parts, dim=1) if len(parts) > 1 else mel

    def excitation(self, cond: Tensor) -> Tensor | None:
        """The excitation channels (B, 2K, T) of a `cond` this module built (None: no pitch)."""
        return cond[:, -self.excitation_channels :] if self.n_harmonics else None

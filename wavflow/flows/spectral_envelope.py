"""A spectrally shaped mel-adaptive prior: a student's output filtered by its mel's envelope.

`EnvelopeScale` scales a student's output by the mel's broadband level, so silences are quiet
from the first step; the spectral shape is still left to the flows to learn, and an IAF of the
quality recipe's size had not learnt it after 2,000 steps (log-mel distance 7 dB against
Griffin-Lim's 3). `SpectralEnvelope` gives the shape too: it filters the flows' output y with
the minimum-phase impulse response of the magnitude spectrum the mel implies, frame by frame,

    x_t = g * sum_j w_j(t) (h_j * y)_t,    h_j = minimum_phase(envelope(mel_j)),

with w_j the linear interpolation weights between frame centres (the filters crossfade, so
switching them every hop does not splatter energy into quiet bands) and g one learned gain.
Each h_j is causal with h_j[0] > 0, so x_t = a_t y_t + (terms in y_<t), a_t = g sum_j w_j(t)
h_j[0]: the Jacobian is triangular, log|det dx/dy| = sum_t log a_t, and a location-scale
student keeps its per-step form (`IAFStudent.forward_with_stats`). The filters are a known
function of the mel, so the density stays exact. White noise through it already scores STOI
0.80 on the quality recipe's held-back speech (BENCHMARKS.md, "Quality").

The layer needs the mel frames themselves, not the upsampled conditioning: the `Conditioner`
built with `packed_mel` lays frame j's n_mels values along the samples of hop j of its first
channel(s) (`pack_mels`), and the flows that share `cond` skip those channels.

References:
    Koizumi et al., "SpecGrad: Diffusion Probabilistic Model based Neural Vocoder with Adaptive
    Noise Spectral Shaping", arXiv:2203.16749.
    Oppenheim & Schafer, "Discrete-Time Signal Processing", ch. 13 (the real cepstrum and the
    minimum-phase reconstruction).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wavflow.config import FeatureConfig
from wavflow.flows.base import Flow
from wavflow.nn.conditioning import interpolate_frames, packed_channels, unpack_mels
from wavflow.nn.precision import at_least_float32, full_precision
from wavflow.nn.spectrum import band_interpolation, envelope_log_magnitude, noise_calibration


def minimum_phase(log_magnitude: Tensor, n_fft: int, taps: int) -> Tensor:
    """The first `taps` samples of the minimum-phase response of |H| = exp(log_magnitude).

    Folds the real cepstrum onto positive quefrencies (c_0, 2 c_1, ..., c_{N/2}), which keeps
    |H| and makes the phase minimum; the response is then causal and starts with h[0] =
    exp(c_0) > 0 (set so, should a coarse FFT alias the cepstrum), its energy packed as early
    as any filter of that magnitude allows.

    Args:
        log_magnitude: (..., n_fft // 2 + 1) natural-log magnitudes on the rfft bins.
        n_fft: the transform size.
        taps: samples of the response kept (<= n_fft).

    Returns:
        (..., taps) impulse responses.
    """
    cepstrum = torch.fft.irfft(log_magnitude, n=n_fft)
    fold = torch.zeros_like(cepstrum)
    half = n_fft // 2
    fold[..., 0] = cepstrum[..., 0]
    fold[..., 1:half] = 2 * cepstrum[..., 1:half]
    fold[..., half] = cepstrum[..., half]
    log_spectrum = torch.view_as_real(torch.fft.rfft(fold, n=n_fft))
    # exp of a complex tensor written out in real parts, which ONNX export can translate.
    magnitude, phase = torch.exp(log_spectrum[..., 0]), log_spectrum[..., 1]
    spectrum = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    response = torch.fft.irfft(spectrum, n=n_fft)[..., :taps]
    # h[0] = exp(c_0) exactly, as it is unless a coarse FFT aliases the cepstrum: the leading
    # tap must stay positive, since the flow's log-det is the sum of its logs.
    return torch.cat([torch.exp(cepstrum[..., :1]), response[..., 1:]], dim=-1)


class SpectralEnvelope(Flow):
    """x = g * (h_t * y): the minimum-phase filter of the mel's spectral envelope (see module).

    forward (sampling) is parallel: one FFT convolution per frame over two hops. inverse
    (density of given audio) is the sequential recursion y_t = (x_t - sum_k>0 h_t[k] y_{t-k})
    / h_t[0], O(T * taps): for tests and short clips.

    Args:
        features: the mel settings the conditioning mels were computed with.
        taps: length of each frame's impulse response (<= n_fft).
        packed_channel: the first `cond` channel holding `pack_mels` of the mel.
        init_log_gain: log g at initialisation.
        steps_per_frame: 0 for an audio-rate `cond` with the packed mel; r > 0 for a `cond`
            at r steps per frame whose first n_mels channels are the mel frames repeated
            (SqueezeWave's `FrameRateConditioner`, fold <= hop).
    """

    def __init__(
        self,
        features: FeatureConfig,
        taps: int,
        packed_channel: int = 0,
        init_log_gain: float = 0.0,
        steps_per_frame: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= taps <= features.n_fft:
            raise ValueError(f"taps must be in [1, n_fft = {features.n_fft}], got {taps}")
        if features.hop_length % 2:
            raise ValueError(f"SpectralEnvelope needs an even hop, got {features.hop_length}")
        weights, band_gain = band_interpolation(features)
        self.n_fft, self.taps, self.hop = features.n_fft, taps, features.hop_length
        self.n_mels, self.packed_channel = features.n_mels, packed_channel
        self.packed_channels = packed_channels(features.n_mels, features.hop_length)
        self.steps_per_frame = steps_per_frame
        self.fft_size = 1 << (2 * self.hop + taps - 2).bit_length()  # >= a frame's segment
        self.register_buffer("interpolation", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("band_gain", torch.tensor(band_gain, dtype=torch.float32))
        calibration = torch.tensor(noise_calibration(features), dtype=torch.float32)
        self.register_buffer("calibration", calibration)
        self.log_gain = nn.Parameter(torch.tensor(float(init_log_gain)))

    def filters(self, cond: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, C, F * hop) cond -> (B, F, taps) impulse responses in `dtype`, gain g included."""
        log_magnitude = envelope_log_magnitude(
            self._mels(cond).to(dtype), self.interpolation, self.band_gain, self.calibration
        )
        responses = minimum_phase(log_magnitude, self.n_fft, self.taps)
        return responses * torch.exp(self.log_gain.to(dtype))

    def _mels(self, cond: Tensor) -> Tensor:
        """The mel frames (B, n_mels, F) that `cond` carries."""
        if self.steps_per_frame:
            return cond[:, : self.n_mels, :: self.steps_per_frame]
        first = self.packed_channel % cond.shape[1]
        packed = cond[:, first : first + self.packed_channels]
        return unpack_mels(packed, self.n_mels, self.hop)

    def filter_with_log_tap(self, y: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, 1, T) -> x (B, 1, T) and log a_t (B, 1, T), the log coefficient of y_t in x_t;
        computed in at least float32 (outside autocast), returned in y's dtype."""
        x, log_tap = full_precision(self._filter_and_log_tap, y, cond)
        return x.to(y.dtype), log_tap.to(y.dtype)

    def _filter_and_log_tap(self, y: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        y = y.to(at_least_float32(y.dtype))  # a bf16 model filters in float32 too
        responses = self.filters(cond, y.dtype)
        return self._filter(y[:, 0], responses[:, :, None]), self._leading_log_tap(responses)

    def location_scale(
        self, x: Tensor, loc: Tensor, log_scale: Tensor, cond: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """This layer applied to a location-scale sample y = loc + exp(log_scale) z (each
        (B, 1, T)): x = filter(y) = a_t y_t + past_t, past_t the filter's taps k >= 1 on
        y_<t, so x's location at t is a_t loc_t + past_t and its log-scale log_scale_t + log a_t.
        """
        filtered, past, log_tap = full_precision(self._filter_and_past, x, cond)
        a = torch.exp(log_tap)
        return filtered.to(x.dtype), (past + a * loc).to(x.dtype), log_scale + log_tap.to(x.dtype)

    def _filter_and_past(self, y: Tensor, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The filtered y, the same without each response's first tap (exactly free of y_t,
        so that the location's Jacobian stays strictly triangular), and log a_t."""
        y = y.to(at_least_float32(y.dtype))
        responses = self.filters(cond, y.dtype)
        past_only = nn.functional.pad(responses[..., 1:], (1, 0))
        both = self._filter(y[:, 0], torch.stack([responses, past_only], dim=2))
        return both[:, :1], both[:, 1:], self._leading_log_tap(responses)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, log_tap = self.filter_with_log_tap(z, _required(cond))
        return x, log_tap.sum(dim=(1, 2))

    def inverse(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = full_precision(self._unfilter, x, _required(cond))
        return y.to(x.dtype), logdet.to(x.dtype)

    def _unfilter(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """The sequential inverse (see class) and its log-det, in at least float32."""
        signal = x[:, 0].to(at_least_float32(x.dtype))
        responses = self.filters(cond, signal.dtype)
        taps = self._taps_per_sample(responses)  # (B, T, L)
        y = torch.zeros_like(signal)
        for t in range(signal.shape[-1]):
            past = min(t, self.taps - 1)
            history = y[:, t - past : t].flip(-1)  # y_{t-1} .. y_{t-past}
            echo = (taps[:, t, 1 : past + 1] * history).sum(-1)
            y[:, t] = (signal[:, t] - echo) / taps[:, t, 0]
        return y[:, None], -self._leading_log_tap(responses).sum(dim=(1, 2))

    def _leading_log_tap(self, responses: Tensor) -> Tensor:
        """(B, F, L) -> log a_t (B, 1, F * hop); h_j[0] > 0 for a minimum-phase response."""
        leading = interpolate_frames(responses[..., 0], self.hop)
        return torch.log(leading.clamp_min(1e-30))[:, None]

    def _filter(self, y: Tensor, responses: Tensor) -> Tensor:
        """(B, T) through K sets of crossfaded per-frame filters (B, F, K, L) -> (B, K, T).

        Frame j's output is computed over its interpolation weight's support, the two hops
        [j hop - hop/2, j hop + 3 hop/2), weighted by the triangle w_j and overlap-added.
        """
        frames, length = responses.shape[1], self.taps
        hop, half = self.hop, self.hop // 2
        padded = nn.functional.pad(y, (length - 1 + half, half))
        segments = padded.unfold(-1, 2 * hop + length - 1, hop)  # (B, F, 2 hop + L - 1)
        # Per-frame convolution by FFT (cheaper than the direct 2 hop x L products, and free of
        # shape-dependent arguments, so it traces and exports): a circular convolution of size
        # >= the segment equals the linear one from index L - 1 on.
        size = self.fft_size
        spectra = _complex_product(
            torch.fft.rfft(segments, n=size), torch.fft.rfft(responses, n=size)
        )
        outputs = torch.fft.irfft(spectra, n=size)[..., length - 1 : length - 1 + 2 * hop]
        triangle = self._triangle(y)
        total = self._overlap_add(outputs * triangle)
        # The weights sum to 1 inside; at the ends only one frame reaches, as the held
        # interpolation (`interpolate_frames`) there has it.
        norm = self._overlap_add(triangle.expand(1, frames, 1, 2 * hop))
        return (total / norm)[..., half : half + frames * hop]

    def _triangle(self, like: Tensor) -> Tensor:
        """w_j over its support, (1, 1, 1, 2 hop): the interpolation weight of frame j."""
        offsets = torch.arange(2 * self.hop, device=like.device, dtype=like.dtype) + 0.5
        return (1 - (offsets - self.hop).abs() / self.hop)[None, None, None]

    def _overlap_add(self, blocks: Tensor) -> Tensor:
        """(B, F, K, 2 hop) -> (B, K, (F + 1) hop): block j added at j hop."""
        batch, frames, variants, _ = blocks.shape
        first, second = blocks.transpose(1, 2).split(self.hop, dim=-1)  # (B, K, F, hop) each
        out = blocks.new_zeros(batch, variants, (frames + 1) * self.hop)
        out[..., : frames * self.hop] += first.reshape(batch, variants, -1)
        out[..., self.hop :] += second.reshape(batch, variants, -1)
        return out

    def _taps_per_sample(self, responses: Tensor) -> Tensor:
        """(B, F, L) -> (B, F * hop, L): each sample's interpolated response."""
        batch, frames, length = responses.shape
        flat = responses.transpose(1, 2).reshape(batch * length, frames)
        return interpolate_frames(flat, self.hop).reshape(batch, length, -1).transpose(1, 2)


def _complex_product(signals: Tensor, filters: Tensor) -> Tensor:
    """(B, F, N) x (B, F, K, N) complex -> (B, F, K, N), in real arithmetic: ONNX export
    translates no complex op but the transforms."""
    a, b = torch.view_as_real(signals)[:, :, None], torch.view_as_real(filters)
    real = a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1]
    imag = a[..., 0] * b[..., 1] + a[..., 1] * b[..., 0]
    return torch.complex(real, imag)


def _required(cond: Tensor | None) -> Tensor:
    if cond is None:
        raise ValueError("SpectralEnvelope needs cond (with its packed mel channel)")
    return cond

"""Linear prediction from the mel: the all-pole spectral envelope of each frame.

A log-mel frame implies a power spectrum |H(f)|^2 (`wavflow.nn.spectrum`); its inverse FFT is
an autocorrelation, and the Levinson-Durbin recursion fits the all-pole model

    x_t = sum_{k=1..p} a_k x_{t-k} + g e_t,    e white with unit variance,

whose spectrum g^2 / |1 - sum_k a_k e^{-iwk}|^2 best matches it. LPCNet computes the same
predictor from its cepstral features, and its network models only the excitation e; a WaveNet
teacher with `lpc_order` does the same (`WaveNet`), so its noise is shaped like speech from the
first step instead of being white at the frame's level.

Coefficients are held over each frame's hop (frame j for samples j hop .. (j + 1) hop - 1, the
conditioning's own grid), so the teacher-forced prediction (`predict`, parallel) and the
sequential synthesis (`synthesize`, one recursion per hop) use exactly the same filter.

References:
    Valin & Skoglund, "LPCNet: Improving Neural Speech Synthesis Through Linear Prediction",
    arXiv:1810.11846.
    Makhoul, "Linear prediction: A tutorial review", Proc. IEEE 63(4), 1975 (Levinson-Durbin,
    the lag window and the white-noise correction).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.signal
import torch
from torch import Tensor, nn

from wavflow.config import FeatureConfig
from wavflow.nn.spectrum import band_interpolation, envelope_log_magnitude, noise_calibration


def levinson(autocorrelation: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """Levinson-Durbin: r (..., >= order + 1) -> predictor a (..., order), x_t ~ sum_k a_k
    x_{t-k} (a[..., k - 1] is lag k), and the prediction error power (...).

    For a positive-definite r every reflection coefficient is below 1 in magnitude, so the
    synthesis filter 1 / (1 - sum_k a_k z^-k) is stable.
    """
    error = autocorrelation[..., 0]
    coefficients = autocorrelation[..., :0]  # (..., 0), grown by one lag per order
    for i in range(order):
        lags = autocorrelation[..., 1 : i + 1].flip(-1)  # r_i .. r_1
        residual = autocorrelation[..., i + 1] - (coefficients * lags).sum(-1)
        reflection = residual / error
        # Out of place, so that gradients can flow to the autocorrelation.
        updated = coefficients - reflection[..., None] * coefficients.flip(-1)
        coefficients = torch.cat([updated, reflection[..., None]], dim=-1)
        error = error * (1 - reflection**2)
    return coefficients, error


class LinearPrediction(nn.Module):
    """Per-frame LPC of the envelope a mel implies, and the filters that use it (see module).

    Args:
        features: the mel settings of the conditioning mels.
        order: predictor taps p.
        lag_window_hz: width of the Gaussian lag window on the autocorrelation, which smooths
            the envelope so that no pole sits on a single harmonic (60 Hz, as speech codecs).
        noise_floor: white-noise correction, r_0 times 1 + floor (-40 dB): keeps the fit
            well-conditioned where the mel's spectrum spans more than the fit can follow.
    """

    def __init__(
        self,
        features: FeatureConfig,
        order: int,
        lag_window_hz: float = 60.0,
        noise_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        if not 1 <= order < features.n_fft // 2:
            raise ValueError(
                f"lpc_order must be in [1, n_fft / 2 = {features.n_fft // 2}), got {order}"
            )
        self.order, self.n_fft, self.hop = order, features.n_fft, features.hop_length
        self.n_mels = features.n_mels
        weights, band_gain = band_interpolation(features)
        lags = np.arange(order + 1)
        window = np.exp(-0.5 * (2 * math.pi * lag_window_hz * lags / features.sample_rate) ** 2)
        window[0] = 1 + noise_floor
        # Derived from the mel settings alone, so they stay out of checkpoints.
        self.register_buffer("interpolation", torch.tensor(weights), persistent=False)
        self.register_buffer("band_gain", torch.tensor(band_gain), persistent=False)
        calibration = torch.tensor(noise_calibration(features))
        self.register_buffer("calibration", calibration, persistent=False)
        self.register_buffer("lag_window", torch.tensor(window), persistent=False)

    def frames(self, mels: Tensor) -> tuple[Tensor, Tensor]:
        """Natural-log mels (B, n_mels, F) -> coefficients (B, F, p) and log g (B, F), fitted in
        float64 (the recursion loses digits fast in float32), returned in the mels' dtype."""
        log_magnitude = envelope_log_magnitude(
            mels.double(), self.interpolation, self.band_gain, self.calibration
        )
        power = torch.exp(2 * log_magnitude)  # |H|^2: the per-sample power spectrum
        autocorrelation = torch.fft.irfft(power, n=self.n_fft)[..., : self.order + 1]
        coefficients, error = levinson(autocorrelation * self.lag_window, self.order)
        log_gain = 0.5 * torch.log(error.clamp_min(1e-30))
        return coefficients.to(mels.dtype), log_gain.to(mels.dtype)

    def per_sample(self, values: Tensor) -> Tensor:
        """Frame values (B, F, K) -> (B, K, F * hop), each held over its frame's hop."""
        return values.transpose(1, 2).repeat_interleave(self.hop, dim=-1)

    def predict(self, x: Tensor, coefficients: Tensor) -> Tensor:
        """The prediction sum_k a_k(t) x_{t-k} of every sample from its past (zero before the
        start): x (B, 1, T), per-sample coefficients (B, p, T) -> (B, 1, T). Parallel."""
        length = x.shape[-1]
        padded = nn.functional.pad(x[:, 0], (self.order, 0))
        # (B, T + p) -> (B, T, p): window t holds x_{t-p} .. x_{t-1}; flipped: lags 1 .. p.
        past = padded.unfold(-1, self.order, 1)[:, :length].flip(-1)
        return (past * coefficients.transpose(1, 2)).sum(-1, keepdim=True).transpose(1, 2)

    def synthesize(
        self,
        excitation: Tensor,
        coefficients: Tensor,
        history: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The all-pole recursion x_t = excitation_t + sum_k a_k(t) x_{t-k}, the inverse of
        `excitation - predict`, continuing from `history`. Runs on the CPU in float64, one
        `scipy.signal.lfilter` per hop.

        Args:
            excitation: (B, T), T a whole number of hops, starting on a frame boundary.
            coefficients: (B, F, p) per frame, F = T / hop.
            history: (B, p) the last p samples before the chunk, oldest first (None: zeros).
            lengths: (B,) samples to run per row (default T); x is 0 after them, and each
                row's history ends at its length.

        Returns:
            x (B, T) in excitation's dtype and device, and the new history (B, p) float64.
        """
        batch, length = excitation.shape
        signal = excitation.detach().cpu().double().numpy()
        frames = coefficients.detach().cpu().double().numpy()
        past = np.zeros((batch, self.order))
        if history is not None:
            past = history.detach().cpu().double().numpy().copy()
        ends = [length] * batch if lengths is None else lengths.tolist()
        out = np.zeros_like(signal)
        for row in range(batch):
            tail = past[row]
            for frame, start in enumerate(range(0, ends[row], self.hop)):
                stop = min(start + self.hop, ends[row])
                denominator = np.concatenate([[1.0], -frames[row, frame]])
                # The filter's memory in its transposed direct form, from the past outputs.
                memory = scipy.signal.lfiltic([1.0], denominator, tail[::-1])
                segment, _ = scipy.signal.lfilter(
                    [1.0], denominator, signal[row, start:stop], zi=memory
                )
                out[row, start:stop] = segment
                tail = np.concatenate([tail, segment])[-self.order :]
            past[row] = tail
        x = torch.from_numpy(out).to(excitation.device, excitation.dtype)
        return x, torch.from_numpy(past).to(excitation.device)

"""Distillation losses: Monte Carlo KL(student || teacher), spectral losses, contrastive term.

`DistillLoss(batch)` returns a dict of named per-sample losses; the recipe's
`[distill.weights]` turn them into the training objective. Terms:

- "kl": KL(q || p) per sample between the student q and the frozen teacher p, estimated from
  student samples scored by ONE teacher-forced pass. Three estimators:
  * "per_step" (IAF students; Parallel WaveNet's low-variance form): with
    q(x_t | z_<t) = loc_t + exp(log_scale_t) * base, KL = sum_t [H(q_t, p_t) - H(q_t)], the
    entropy H(q_t) in closed form and the cross-entropy H(q_t, p_t) averaged over
    `kl_samples` draws from q_t, all against the teacher's distribution at t given x_<t;
  * "closed_form" (Gaussian IAF student, Gaussian teacher; ClariNet): KL(q_t || p_t) exactly,
    log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1/2;
  * "sample" (any student with an exact log-density): mean of log q(x) - log p(x).
  Per-step estimators leave out the teacher's first receptive-field steps, whose context
  is the zero padding before the clip.
- "log_scale": ClariNet's regulariser (log s_q - log s_p)^2 (Gaussian/Gaussian only).
- "stft": multi-resolution STFT loss against the real audio: spectral convergence plus L1
  log-magnitude per resolution, averaged.
- "mel": HiFi-GAN's mel loss, mean |log-mel(x) - log-mel(real)| with the recipe's own
  feature settings (nats): the spectrum the student is conditioned on, and on which the
  silence floor and log-mel distance are measured.
- "power": Parallel WaveNet's power loss, on log average power per frequency (scale-free).
- "adversarial", "feature_matching", "discriminator": HiFi-GAN's least-squares GAN terms with
  its multi-period and multi-scale discriminators (`wavflow.nn.discriminators`), owned here
  as `critic`: the generator's loss and the L1 distance of the discriminators' activations
  on the student's sample to those on the real audio train the student (through frozen
  copies of the discriminators' weights), the discriminators' own loss on the detached sample
  trains them, so one backward pass and one optimiser step serve both.
- "contrastive": minus the KL against the teacher conditioned on another utterance's mel
  (the batch rolled by one), so the student is pushed to use its conditioning.

References:
    van den Oord et al., "Parallel WaveNet", arXiv:1711.10433.
    Ping et al., "ClariNet", arXiv:1807.07281.
    Yamamoto et al., "Parallel WaveGAN", arXiv:1910.11480 (multi-resolution STFT loss).
    Kong et al., "HiFi-GAN", arXiv:2010.05646 (mel L1 loss, discriminators).
    Yamamoto et al., "Probability density distillation with generative adversarial networks
    for high-quality parallel waveform generation", arXiv:1904.04472.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from wavflow.audio import log_mel, stft_magnitude
from wavflow.config import DistillConfig, FeatureConfig, RecipeError
from wavflow.nn.discriminators import (
    Discriminators,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
)
from wavflow.teacher import WaveNet

HALF_LOG_TWO_PI_E = 0.5 * math.log(2 * math.pi * math.e)
# The weighted terms that score the student's sample by the teacher.
TEACHER_TERMS = ("kl", "log_scale", "contrastive")


def base_entropy(base: str, log_scale: Tensor) -> Tensor:
    """Entropy (nats) of loc + exp(log_scale) * eps, eps ~ base ("gaussian" or "logistic")."""
    return log_scale + (HALF_LOG_TWO_PI_E if base == "gaussian" else 2.0)


def gaussian_kl(mean_q: Tensor, log_scale_q: Tensor, mean_p: Tensor, log_scale_p: Tensor) -> Tensor:
    """Elementwise KL(N(mean_q, s_q^2) || N(mean_p, s_p^2)) in nats."""
    variance_ratio = torch.exp(2 * (log_scale_q - log_scale_p))
    mean_term = (mean_q - mean_p).square() * torch.exp(-2 * log_scale_p)
    return log_scale_p - log_scale_q + 0.5 * (variance_ratio + mean_term - 1)


def per_step_kl(
    teacher_head: Any,
    teacher_params: Tensor,
    base: Any,
    loc: Tensor,
    log_scale: Tensor,
    n_samples: int,
) -> Tensor:
    """Parallel WaveNet's estimator of KL(q_t || p_t) for every step: (B, T).

    H(q_t, p_t) is averaged over `n_samples` reparameterised draws x'_t = loc_t +
    exp(log_scale_t) eps from the student's step distribution, scored by the teacher's
    distribution at t (which depends on the student's own x_<t only).
    """
    cross_entropy = 0.0
    for _ in range(n_samples):
        eps = base.sample(loc.shape, device=loc.device, dtype=loc.dtype)
        draw = loc + torch.exp(log_scale) * eps
        cross_entropy = cross_entropy - teacher_head.log_prob(teacher_params, draw)
    cross_entropy = cross_entropy / n_samples
    return (cross_entropy - base_entropy(base.name, log_scale))[:, 0]


def multi_resolution_stft_loss(fake: Tensor, real: Tensor, resolutions: list[list[int]]) -> Tensor:
    """Mean over resolutions of spectral convergence + mean |log S_fake - log S_real|."""
    total = 0.0
    for n_fft, hop, win in resolutions:
        fake_mag = stft_magnitude(fake, n_fft, hop, win)
        real_mag = stft_magnitude(real, n_fft, hop, win)
        convergence = torch.linalg.norm(real_mag - fake_mag) / torch.linalg.norm(real_mag)
        log_distance = torch.log(fake_mag.clamp_min(1e-5)) - torch.log(real_mag.clamp_min(1e-5))
        total = total + convergence + log_distance.abs().mean()
    return total / len(resolutions)


def mel_loss(fake: Tensor, real: Tensor, features: FeatureConfig) -> Tensor:
    """Mean |log-mel(fake) - log-mel(real)| in nats over bands and frames (HiFi-GAN's term)."""
    return (log_mel(fake, features) - log_mel(real, features)).abs().mean()


def power_loss(fake: Tensor, real: Tensor, n_fft: int, hop: int, win: int) -> Tensor:
    """Squared difference of log average power per frequency bin (averaged over frames)."""
    fake_power = stft_magnitude(fake, n_fft, hop, win).square().mean(dim=-1)
    real_power = stft_magnitude(real, n_fft, hop, win).square().mean(dim=-1)
    return (torch.log(fake_power + 1e-7) - torch.log(real_power + 1e-7)).square().mean()


class DistillLoss(nn.Module):
    """Named distillation losses of a student against a frozen teacher (see module docstring).

    Args:
        student: a `FlowModel` (IAF students also offer `rsample_with_stats`).
        teacher: a trained `WaveNet`; frozen here (no gradients, eval mode).
        cfg: the `[distill]` settings.
        features: the mel settings, which the "mel" loss needs.

    Attributes:
        critic: the discriminators when the adversarial terms are weighted, else None; the
            training loop optimises and saves them beside the student.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: WaveNet,
        cfg: DistillConfig,
        features: FeatureConfig | None = None,
    ) -> None:
        super().__init__()
        if cfg.weights.get("mel", 0) and features is None:
            raise ValueError("the distill 'mel' loss needs the feature settings")
        self.student, self.teacher, self.cfg = student, teacher.eval(), cfg
        self.features = features
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.estimator = choose_estimator(student, teacher, cfg.kl_estimator)
        self.scoring_head = floored_head(teacher.head, cfg.teacher_log_scale_min)
        self.critic = (
            Discriminators(
                cfg.discriminator_periods,
                cfg.discriminator_scales,
                cfg.discriminator_channels,
                cfg.discriminator_max_channels,
            )
            if cfg.adversarial
            else None
        )

    def train(self, mode: bool = True) -> DistillLoss:
        """Only the student (and critic) change mode; the teacher stays in eval mode."""
        self.student.train(mode)
        if self.critic is not None:
            self.critic.train(mode)
        return self

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """batch: audio (B, 1, T), feats (B, n_mels, F), speaker (B,) -> {name: scalar}."""
        weights = self.cfg.weights
        feats, speaker, real, f0 = batch["feats"], batch["speaker"], batch["audio"], batch.get("f0")
        student_cond = self.student.condition(feats, speaker, f0)
        if not any(weights.get(name, 0) for name in TEACHER_TERMS):
            # Spectral losses only: the teacher's pass would be computed for nothing.
            x = self.student.rsample_and_log_prob(student_cond)[0]
            return self._spectral_terms(x, real)
        with torch.no_grad():
            teacher_cond = self.teacher.condition(feats, speaker, f0)
        losses, x, mean_log_q = self._kl_terms(student_cond, teacher_cond)
        losses |= self._spectral_terms(x, real)
        if weights.get("contrastive", 0) and x.shape[0] > 1:
            other = teacher_cond.roll(1, dims=0)
            log_p_other = self.teacher.log_prob_per_step(x, other)[
                :, self._first_step(x.shape[-1]) :
            ]
            losses["contrastive"] = log_p_other.mean() - mean_log_q  # = -KL(q || p_other)
        return losses

    def _spectral_terms(self, x: Tensor, real: Tensor) -> dict[str, Tensor]:
        """The weighted losses of the student sample x (B, 1, T) against the real audio."""
        weights, losses = self.cfg.weights, {}
        if weights.get("stft", 0):
            losses["stft"] = multi_resolution_stft_loss(x, real, self.cfg.stft_resolutions)
        if weights.get("mel", 0):
            losses["mel"] = mel_loss(x, real, self.features)
        if weights.get("power", 0):
            losses["power"] = power_loss(x, real, *self.cfg.stft_resolutions[0])
        if self.critic is not None:
            losses |= self._adversarial_terms(x, real)
        return losses

    def _adversarial_terms(self, x: Tensor, real: Tensor) -> dict[str, Tensor]:
        """The GAN terms of the student sample x (B, 1, T) against the real audio.

        The student's terms score x with detached copies of the discriminators' weights, so
        their gradient reaches the student only; the discriminators' term scores x detached,
        so its gradient reaches the discriminators only.
        """
        judged_real = self.critic(real)
        judged_detached = self.critic(x.detach())
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        judged_fake = functional_call(self.critic, frozen, (x,))
        return {
            "adversarial": generator_loss(judged_fake),
            "feature_matching": feature_matching_loss(judged_real, judged_fake),
            "discriminator": discriminator_loss(judged_real, judged_detached),
        }

    def _first_step(self, length: int) -> int:
        """The first step the KL counts, for crops of `length` samples.

        Raises:
            ValueError: the skipped receptive field leaves no step of the crop.
        """
        first = self.teacher.receptive_field if self.cfg.skip_receptive_field else 0
        if first >= length:
            raise RecipeError(
                f"distill.skip_receptive_field leaves out the teacher's first {first} steps, but "
                f"the crops are {length} samples (data.segment_length): make the crops longer, "
                "or set distill.skip_receptive_field = false"
            )
        return first

    def _kl_terms(
        self, student_cond: Tensor, teacher_cond: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The KL (and log-scale regulariser) for this estimator, the student sample x, and
        the student's mean log-density per step, E[log q_t] (minus its entropy rate)."""
        if self.estimator == "sample":
            x, log_q = self.student.rsample_and_log_prob(student_cond)
            log_p = self.scoring_head.log_prob(self.teacher(x, teacher_cond), x).sum(dim=(1, 2))
            mean_log_q = (log_q / x.shape[-1]).mean()
            return {"kl": mean_log_q - (log_p / x.shape[-1]).mean()}, x, mean_log_q
        x, loc, log_scale, _ = self.student.rsample_with_stats(student_cond)
        log_scale = log_scale.clamp_min(self.cfg.log_scale_min)
        params = self.teacher(x, teacher_cond)
        start = self._first_step(x.shape[-1])
        if self.estimator == "closed_form":
            mean_p, log_scale_p = self.scoring_head.split(params)
            kl = gaussian_kl(loc, log_scale, mean_p, log_scale_p)[:, 0]
            regulariser = (log_scale - log_scale_p).square()[:, 0]
            losses = {"kl": kl[:, start:].mean(), "log_scale": regulariser[:, start:].mean()}
        else:
            kl = per_step_kl(
                self.scoring_head, params, self.student.base, loc, log_scale, self.cfg.kl_samples
            )
            losses = {"kl": kl[:, start:].mean()}
        entropy = base_entropy(self.student.base.name, log_scale)[:, 0, start:].mean()
        return losses, x, -entropy


def floored_head(head: Any, log_scale_min: float) -> Any:
    """The teacher's output head with its log-scale floor raised to `log_scale_min` (a copy;
    the head itself, and so the teacher, is unchanged); `head` if that floor is not higher."""
    if log_scale_min <= head.log_scale_min:
        return head
    floored = copy.copy(head)
    floored.log_scale_min = log_scale_min
    return floored


def choose_estimator(student: nn.Module, teacher: WaveNet, requested: str) -> str:
    """Resolve "auto" and check that the requested estimator fits the pair.

    Raises:
        ValueError: naming the estimator and why it does not apply.
    """
    is_iaf = student.capabilities.location_scale
    gaussian_pair = is_iaf and student.base.name == "gaussian" and teacher.head.name == "gaussian"
    if requested == "auto":
        return "closed_form" if gaussian_pair else "per_step" if is_iaf else "sample"
    if requested == "closed_form" and not gaussian_pair:
        raise RecipeError(
            "distill.kl_estimator 'closed_form' needs a Gaussian IAF student and a Gaussian teacher"
        )
    if requested == "per_step" and not is_iaf:
        raise RecipeError("distill.kl_estimator 'per_step' needs an IAF student")
    return requested

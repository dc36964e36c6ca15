"""The judge's training objective: soft-label cross-entropy on the very digit readout the scorer uses.

The scorer (:mod:`..engines.lvlm_scorer`) asks one question, appends an answer prefix
(``"Valence: "`` / ``"Arousal: "``) and reads the expected value of the next-token distribution
restricted to the digits ``1``…``9``. Training goes through the *same* code path
(:meth:`LVLMScorer._answer_logits`, the same prompt, prefixes and digit ids), so what is trained
is exactly what is read at scoring time (train == read).

The target at each prefix is a discretised Gaussian over the nine digits centred on the label
(the DeQA-Score recipe): a label of ``V = 0.75`` is digit 6 on the 1..9 scale, so the target puts
most mass on 6 and some on 5 and 7. Cross-entropy against it makes the *expected* digit match the
label while keeping the distribution unimodal; one-hot targets on rounded labels would discard the
fraction. An optional small term ``-log(digit mass)`` keeps the model answering with a digit at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...engines.emotion_space import VA_MAX, VA_MIN, VA_SPAN
from ...engines.judge.lvlm_scorer import SCALE_DIGITS

N_DIGITS = len(SCALE_DIGITS)
_DIGIT_LO, _DIGIT_HI = 1.0, float(N_DIGITS)


def va_to_digit(value: torch.Tensor) -> torch.Tensor:
    """[-3, 3] → the scorer's 1..9 digit scale (the inverse of its read-out mapping)."""
    return _DIGIT_LO + (value.clamp(VA_MIN, VA_MAX) - VA_MIN) * (_DIGIT_HI - _DIGIT_LO) / VA_SPAN


def digit_to_va(digit: torch.Tensor) -> torch.Tensor:
    """The scorer's mapping from an expected digit in [1, 9] to [-3, 3]."""
    return VA_MIN + (digit - _DIGIT_LO) * VA_SPAN / (_DIGIT_HI - _DIGIT_LO)


def soft_digit_targets(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """Discretised Gaussian over digits 1..9 centred on each label (``[...]`` in [-3, 3] → ``[..., 9]``).

    Each digit k gets the Gaussian mass of ``[k - 0.5, k + 0.5]``; the two end digits also take the
    tails, so a label at the scale's end is a near one-hot on 1 or 9. ``sigma`` is in digit units.
    """
    if sigma <= 0:
        raise ValueError(f"soft-label sigma must be > 0 (digit units), got {sigma}")
    mu = va_to_digit(values.float())[..., None]
    digits = torch.arange(_DIGIT_LO, _DIGIT_HI + 1.0, device=mu.device)
    lower = torch.special.ndtr((digits - 0.5 - mu) / sigma)
    upper = torch.special.ndtr((digits + 0.5 - mu) / sigma)
    lower[..., 0] = 0.0
    upper[..., -1] = 1.0
    mass = (upper - lower).clamp_min(1e-12)
    return mass / mass.sum(dim=-1, keepdim=True)


@dataclass
class ReadoutLogits:
    """Digit logits at both answer prefixes: ``digits[B, 2, 9]`` (axis 0 = valence, 1 = arousal) and
    ``log_mass[B, 2]``, the log-probability the full vocabulary puts on any digit there."""

    digits: torch.Tensor
    log_mass: torch.Tensor

    def expected_va(self) -> torch.Tensor:
        """``[B, 2]`` valence/arousal in [-3, 3], exactly as the scorer reads them."""
        probs = torch.softmax(self.digits, dim=-1)
        scale = torch.arange(_DIGIT_LO, _DIGIT_HI + 1.0, device=probs.device)
        return digit_to_va((probs * scale).sum(dim=-1))


def readout_logits(scorer: Any, images: Sequence[Any]) -> ReadoutLogits:
    """Run the scorer's own prompt/prefix/forward path on PIL ``images`` (gradients follow autograd mode)."""
    prompts = scorer.prompts
    prompt = scorer._chat(prompts.question)
    suffixes = [prompts.valence_prefix, prompts.arousal_prefix]
    logits = scorer._answer_logits(prompt, suffixes, list(images)).float()
    logits = logits.reshape(len(images), len(suffixes), -1)
    digits = logits[..., scorer.digit_ids]
    log_mass = torch.logsumexp(digits, dim=-1) - torch.logsumexp(logits, dim=-1)
    return ReadoutLogits(digits=digits, log_mass=log_mass)


@dataclass
class SoftLabelLoss:
    """Result of :func:`soft_label_loss`: the scalar to back-propagate and its parts for logging."""

    loss: torch.Tensor
    cross_entropy: float
    mass_nll: float
    mae: float


def soft_label_loss(readout: ReadoutLogits, labels: torch.Tensor, sigma: float, mass_weight: float = 0.0) -> SoftLabelLoss:
    """Cross-entropy between the digit distribution and the soft label, mean over images and axes.

    ``labels[B, 2]`` are (valence, arousal) in [-3, 3]. ``mass_weight`` adds ``-log(digit mass)``.
    """
    labels = labels.to(readout.digits.device).float()
    target = soft_digit_targets(labels, sigma)
    log_probs = torch.log_softmax(readout.digits, dim=-1)
    ce = -(target * log_probs).sum(dim=-1).mean()
    mass_nll = -readout.log_mass.mean()
    loss = ce + mass_weight * mass_nll if mass_weight > 0 else ce
    with torch.no_grad():
        mae = (readout.expected_va() - labels).abs().mean()
    return SoftLabelLoss(loss=loss, cross_entropy=float(ce.detach()), mass_nll=float(mass_nll.detach()), mae=float(mae))


def minimum_cross_entropy(labels: torch.Tensor, sigma: float) -> float:
    """Entropy of the soft targets: the floor the cross-entropy can reach (for logging a gap)."""
    target = soft_digit_targets(labels.float(), sigma)
    return float(-(target * torch.log(target)).sum(dim=-1).mean())


__all__ = [
    "N_DIGITS",
    "ReadoutLogits",
    "SoftLabelLoss",
    "digit_to_va",
    "minimum_cross_entropy",
    "readout_logits",
    "soft_digit_targets",
    "soft_label_loss",
    "va_to_digit",
]

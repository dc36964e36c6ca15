"""The judge's training objective: soft-label cross-entropy on the very digit readout the scorer uses.

The scorer (:mod:`..engines.lvlm_scorer`) asks one question, appends an answer prefix
(``"Valence: "`` / ``"Arousal: "``) and reads the expected value of the next-token distribution
restricted to the digits ``1``…``9``. Training goes through the *same* code path
(:meth:`LVLMScorer._answer_logits`, the same prompt, prefixes and digit ids), so what is trained
is exactly what is read at scoring time (train == read).

The target at each prefix is a discretised Gaussian over the nine digits around the label whose
expected digit is exactly the label (:func:`soft_digit_targets`; DeQA-Score's soft labels, with the
mean correction made exact): a label of ``V = 0.75`` is digit 6 on the 1..9 scale, so the target
puts most mass on 6 and some on 5 and 7; a label of 3 is digit 9 and the target is one-hot on it.
Cross-entropy against it makes the *expected* digit match the label while keeping the distribution
unimodal; one-hot targets on rounded labels would discard the fraction. An optional small term
``-log(digit mass)`` keeps the model answering with a digit at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

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
    """Soft labels over digits 1..9 whose expected digit *is* each label (``[...]`` in [-3, 3] → ``[..., 9]``).

    A discretised Gaussian: digit k gets the mass of ``[k - 0.5, k + 0.5]`` of ``N(centre, sigma)``
    (``sigma`` in digit units), normalised over 1..9. Centred on the label, its mean is pulled
    toward the middle of the scale near the ends (the tails beyond 1 and 9 are cut; lumping them
    into the end digits, as this function once did, still reads a label of ±3 as ±2.81 with
    sigma = 0.7 and ±2.71 with sigma = 1). DeQA-Score corrects that bias by rescaling the
    distribution affinely; its script then clips negative masses (mean errors up to 0.1 accepted)
    and at the exact centre its formula is 0/0 (it returns a uniform distribution). Here the same
    Gaussian is instead re-centred: ``centre`` is solved (bisection) so that the mean is the label.
    The mean is exact, every mass stays positive, the targets change smoothly with the label and
    keep the Gaussian's shape; in the middle of the scale the centre moves by less than 1e-4 digit.
    Where no Gaussian fits (a label at 1 or 9, where only a one-hot has that mean), the label is
    split between its two nearest digits.
    """
    if sigma <= 0:
        raise ValueError(f"soft-label sigma must be > 0 (digit units), got {sigma}")
    mu = va_to_digit(values.double())[..., None]  # float64: exact means, no underflow far from the centre
    digits = torch.arange(_DIGIT_LO, _DIGIT_HI + 1.0, dtype=torch.float64, device=mu.device)
    reach = 40.0 * sigma + 1.0  # beyond this the end digit holds all but ~e^-800 of the mass
    low, high = torch.full_like(mu, _DIGIT_LO - reach), torch.full_like(mu, _DIGIT_HI + reach)
    for _ in range(_BISECTION_STEPS):  # the mean rises strictly with the centre (log-concave family)
        middle = 0.5 * (low + high)
        above = _gaussian_digits(middle, sigma, digits) @ digits >= mu[..., 0]
        high = torch.where(above[..., None], middle, high)
        low = torch.where(above[..., None], low, middle)
    target = _gaussian_digits(0.5 * (low + high), sigma, digits)
    fits = ((target @ digits)[..., None] - mu).abs() <= 1e-9
    target = torch.where(fits, target, _two_nearest_digits(mu, digits))
    return target.to(values.dtype if values.is_floating_point() else torch.float32)


_BISECTION_STEPS = 64  # halves a bracket of 10 + 80·sigma digits to far below float64's step at 9


def _gaussian_digits(centre: torch.Tensor, sigma: float, digits: torch.Tensor) -> torch.Tensor:
    """``[..., 1]`` centres → the normalised masses of ``N(centre, sigma)`` on ``[k - 0.5, k + 0.5]``, k = 1..9.

    Computed in log space from the nearer tail, so a centre far outside 1..9 still gives finite masses.
    """
    upper, lower = (digits + 0.5 - centre) / sigma, (digits - 0.5 - centre) / sigma
    flip = lower > 0  # right of the centre use the upper tail: Φ(u) - Φ(l) = Φ(-l) - Φ(-u)
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    log_mass = log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp_max(1.0 - 1e-16))
    return torch.softmax(log_mass, dim=-1)


def _two_nearest_digits(mu: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """``[..., 1]`` digit positions → the label split linearly between its two nearest digits (mean = label)."""
    low = mu.floor().clamp(_DIGIT_LO, _DIGIT_HI - 1.0)
    frac = mu - low
    return (digits == low) * (1.0 - frac) + (digits == low + 1.0) * frac


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


def soft_label_loss(readout: ReadoutLogits, labels: torch.Tensor, sigma: float, mass_weight: float = 0.0,
                    target: Optional[torch.Tensor] = None) -> SoftLabelLoss:
    """Cross-entropy between the digit distribution and the soft label, mean over images and axes.

    ``labels[B, 2]`` are (valence, arousal) in [-3, 3]. ``mass_weight`` adds ``-log(digit mass)``.
    ``target``: ``soft_digit_targets(labels, sigma)`` computed beforehand (a trainer does it once per row).
    """
    labels = labels.to(readout.digits.device).float()
    target = (soft_digit_targets(labels, sigma) if target is None else target).to(readout.digits.device).float()
    log_probs = torch.log_softmax(readout.digits, dim=-1)
    ce = -(target * log_probs).sum(dim=-1).mean()
    mass_nll = -readout.log_mass.mean()
    loss = ce + mass_weight * mass_nll if mass_weight > 0 else ce
    with torch.no_grad():
        mae = (readout.expected_va() - labels).abs().mean()
    return SoftLabelLoss(loss=loss, cross_entropy=float(ce.detach()), mass_nll=float(mass_nll.detach()), mae=float(mae))


__all__ = [
    "N_DIGITS",
    "ReadoutLogits",
    "SoftLabelLoss",
    "digit_to_va",
    "readout_logits",
    "soft_digit_targets",
    "soft_label_loss",
    "va_to_digit",
]

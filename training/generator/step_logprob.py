"""Stochastic sampler steps with exact Gaussian log-probs, and the KL between two such steps.

Two step rules, both small pure functions tested against ``torch.distributions.Normal``:

* SD1.5 / SDXL (UNet, epsilon- or v-prediction): DDIM with ``eta > 0`` (eta = 1 is DDPM-like). The
  next latent is ``N(mean, std²)`` with ``std = eta * sqrt((1-ᾱ_prev)/(1-ᾱ_t) * (1-ᾱ_t/ᾱ_prev))``.
* SD3.x (rectified flow, velocity prediction): the Flow-GRPO SDE with ``σ_t = a*sqrt(t/(1-t))``
  (at t = 1 the denominator uses the schedule's second sigma), ``mean = x + [v + σ_t²/(2t) (x +
  (1-t) v)] Δt`` and noise ``σ_t sqrt(-Δt)``.

The log-prob is the Gaussian log-density **averaged** over C×H×W, in fp32, with the sampled next
latent treated as data (detached).

The KL to the reference model (:func:`step_kl`) is on Flow-GRPO's scale: ``mean((μ − μ_ref)²) /
(2·σ_t²)`` with ``σ_t`` the SDE's noise level, not the step's whole variance ``σ_t²·|Δt|`` — the exact
Gaussian KL of the step times ``|Δt|`` (a Riemann sum of the path KL's rate, so its size does not
depend on the step count, and the near-deterministic last steps are not weighted ~1/|Δt| more).
DDIM has no separate ``Δt`` in its step (its ``β̃_t`` already is the step's variance), so its KL
divides by the step variance ``η²·β̃_t``: the exact step KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    """One stochastic sampler step: the next latent, its log-prob under the policy, and the Gaussian."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor  # [B], mean over non-batch dims
    mean: torch.Tensor
    std: torch.Tensor  # broadcastable to mean
    kl_std: torch.Tensor  # the std the KL divides by (flow: σ_t without √|Δt|; DDIM: std)


def gaussian_log_prob_mean(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²) averaged over every dim but the batch, in fp32 (``x`` is detached)."""
    x = x.detach().float()
    mean = mean.float()
    std = std.float()
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample [B] value shaped to broadcast against ``like`` [B, ...] (fp32)."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def ddim_step_with_logprob(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    alpha_prod_prev: torch.Tensor | float,
    *,
    eta: float = 1.0,
    prediction_type: str = "epsilon",
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
) -> StepOutput:
    """One DDIM step x_t → x_prev with log-prob. Give ``prev_sample`` to score a stored step, else ``noise``."""
    if eta <= 0:
        raise ValueError("DDIM eta must be > 0 for a log-prob (eta=0 is deterministic)")
    x = sample.float()
    out = model_output.float()
    a_t = _per_sample(alpha_prod_t, x)
    a_prev = _per_sample(alpha_prod_prev, x)
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - b_t.sqrt() * eps) / a_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - b_t.sqrt() * out
        eps = a_t.sqrt() * out + b_t.sqrt() * x
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported (epsilon or v_prediction)")
    variance = (1 - a_prev) / b_t * (1 - a_t / a_prev)
    std = eta * variance.clamp(min=0).sqrt()
    std = torch.clamp(std, min=1e-12)
    direction = (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    mean = a_prev.sqrt() * x0 + direction
    if prev_sample is None:
        if noise is None:
            raise ValueError("give prev_sample (to score a stored step) or noise (to sample one)")
        prev_sample = mean + std * noise.float()
    return StepOutput(prev_sample.detach(), gaussian_log_prob_mean(prev_sample, mean, std), mean, std, std)


def flow_sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    *,
    noise_level: float = 0.7,
    sigma_max: Optional[torch.Tensor | float] = None,
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
) -> StepOutput:
    """One Flow-GRPO SDE step for rectified flow (x_t = (1-t) x0 + t ε, v = ε - x0), with log-prob.

    ``σ_t = a·sqrt(t / (1 - t'))`` with ``t' = t`` except at t = 1 (the first step), where ``1 - t``
    is 0 and ``t' = sigma_max``: the schedule's second sigma, as Flow-GRPO does. Only the
    denominator is capped; the numerator keeps the true t. ``sigma_max=None`` uses ``sigma_next``,
    which *is* the second sigma on the first step — so a stored step row is self-contained.
    """
    if noise_level <= 0:
        raise ValueError("noise_level must be > 0 for a log-prob")
    x = sample.float()
    v = velocity.float()
    t = _per_sample(sigma, x)
    t_next = _per_sample(sigma_next, x)
    dt = t_next - t  # negative
    cap = t_next if sigma_max is None else _per_sample(sigma_max, x)
    t_den = torch.where(t >= 1.0, cap, t)
    std_t = noise_level * torch.sqrt(t / (1 - t_den))
    mean = x + (v + std_t**2 / (2 * t) * (x + (1 - t) * v)) * dt
    std = std_t * torch.sqrt(-dt)
    if prev_sample is None:
        if noise is None:
            raise ValueError("give prev_sample (to score a stored step) or noise (to sample one)")
        prev_sample = mean + std * noise.float()
    return StepOutput(prev_sample.detach(), gaussian_log_prob_mean(prev_sample, mean, std), mean, std, std_t)


def gaussian_kl_mean(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(ref_mean, σ²)) per element, averaged over non-batch dims (same σ for both)."""
    kl = (mean.float() - ref_mean.float()) ** 2 / (2 * std.float() ** 2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


def step_kl(step: StepOutput, ref: StepOutput) -> torch.Tensor:
    """KL of a policy step to the reference's step [B], on Flow-GRPO's scale (see the module docstring)."""
    return gaussian_kl_mean(step.mean, ref.mean, step.kl_std)

"""Guards against reward hacking in the GRPO update: GRPO-Guard's ratio normalisation.

Why: with the per-step Gaussian policy ``x_prev ~ N(μ, s²)`` the log importance ratio of a stored
step is ``Δ = [(x−μ_old)² − (x−μ_θ)²] / (2s²)``. Writing ``x = μ_old + s·ε`` gives
``Δ = (μ_θ−μ_old)·ε / s − (μ_θ−μ_old)² / (2s²)``: its mean is ``−b`` with
``b = ‖μ_θ−μ_old‖² / (2s²)`` — always below 0, so the ratio's mean sits below 1 — and its spread
grows as ``1/s``, largest at the low-noise steps. PPO clipping then stops constraining positive-
advantage samples there (GRPO-Guard, arXiv 2510.22319). GRPO-Guard's RatioNorm adds ``b`` back and
multiplies by ``s``:

    log ρ = (log p_θ − log p_old + b) · s

so ``log ρ = mean((μ_θ−μ_old)·ε)``: zero mean and a spread independent of the step's noise. It also
reweights each step's loss by ``1/|Δt|`` (flow models) so every noise level gets a comparable
gradient. Before the first update ``μ_θ = μ_old`` and the ratio is exactly 1, as without the guard.

Everything here is averaged over the latent's C×H×W like the policy's log-probs.
"""

from __future__ import annotations

from typing import Optional

import torch

from .families import family_for


def _per_sample(std: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The step's std (a scalar, or [B, 1, ...] constant over C×H×W) as one value per sample [B]."""
    s = torch.as_tensor(std, dtype=torch.float32, device=like.device)
    if s.ndim == 0:
        return s.expand(like.shape[0])
    return s.reshape(s.shape[0], -1)[:, 0]


def ratio_mean_bias(mean: torch.Tensor, old_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``b = mean_{CHW}((μ_θ − μ_old)²) / (2 s²)`` per sample [B] (the expected shortfall of the log ratio)."""
    diff2 = (mean.float() - old_mean.float().detach()) ** 2
    s = _per_sample(std, mean)
    return diff2.mean(dim=tuple(range(1, diff2.ndim))) / (2 * s**2)


def grpo_guard_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor,
                         old_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's normalised log ratio ``(log p_θ − log p_old + b) · s`` per sample [B]."""
    s = _per_sample(std, mean)
    return (log_prob - old_log_prob.detach() + ratio_mean_bias(mean, old_mean, std)) * s


def guarded_log_probs(mode: str, arch: str, res, traj, j: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The (log_prob, old_log_prob, loss weight) to feed ``ppo_clip_loss`` for step ``j`` of ``traj``.

    ``mode='none'`` passes the policy's log-probs through (weight 1). ``'grpo_guard'`` returns
    ``old + normalised log ratio`` so ``exp(new − old)`` is the guarded ratio, and the weight
    ``1/|Δt|`` for flow-matching steps (1 for DDIM, whose steps have no Δt).
    """
    old = traj.log_probs[:, j]
    if mode == "none":
        return res.log_prob, old, 1.0
    if mode != "grpo_guard":
        raise ValueError(f"ratio_norm {mode!r}: use 'none' or 'grpo_guard'")
    old_means: Optional[torch.Tensor] = getattr(traj, "means", None)
    if old_means is None:
        raise ValueError("grpo_guard needs the rollout's step means (rollout(..., keep_means=True))")
    old_mean = old_means[:, j].to(res.mean.device)
    log_ratio = grpo_guard_log_ratio(res.log_prob, old, res.mean, old_mean, res.std)
    weight = 1.0
    if family_for(arch).flow:
        dt = float(traj.params[j][0] - traj.params[j][1])
        weight = 1.0 / max(abs(dt), 1e-6)
    return old.detach() + log_ratio, old, weight

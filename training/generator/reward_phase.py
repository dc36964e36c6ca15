"""The reward phase of a GRPO step: gather every process's reward parts, combine them, group advantages.

Rewards from all processes are gathered before the advantages (a group's statistics need all its
members; the global std needs every sample); each process then keeps the advantages of its own
samples. A NaN/inf reward stops the run naming the reward. Metrics: the raw term means, each term's
share of the advantage variance, zero-spread groups, the reward per V-A quadrant, and how many samples
each reward flagged (``reward_flags/<reward>/<flag>``, e.g. judge readings with low digit mass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..checkpoint import NonFiniteError
from ..grpo import group_advantages
from .data import quadrant


@dataclass
class ScoredStep:
    """A step's rewards (all processes) and this process's advantages, with the step's reward metrics."""

    rewards: torch.Tensor
    advantages: torch.Tensor  # this process's samples, on the training device
    keep: torch.Tensor  # False for samples of zero-spread groups (no signal)
    metrics: dict[str, float]
    shares: dict[str, float]


class RewardPhase:
    """Reward gathering and advantages for one :class:`~.trainer.GRPOTrainer` (see the module docstring)."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def score(self, parts: dict[str, torch.Tensor], batch: Any, step: int) -> ScoredStep:
        t = self.trainer
        c, acc = t.config, t.accelerator
        n_local = len(batch.prompts)
        gids = torch.as_tensor(batch.group_ids, device=t.device)
        all_parts = {k: acc.gather(v.to(t.device)).cpu() for k, v in parts.items()}
        all_gids = acc.gather(gids).cpu()
        rewards = t.reward.combine(all_parts, all_gids)
        check_finite_rewards(all_parts, rewards, step)
        shares = t.reward.advantage_shares(all_parts, all_gids)
        adv_all, info = group_advantages(rewards, all_gids, global_std=c.grpo.global_std, clip=c.grpo.adv_clip)
        me = acc.process_index
        adv = adv_all[me * n_local:(me + 1) * n_local].to(t.device)
        keep = info.keep[me * n_local:(me + 1) * n_local].to(t.device)
        if c.grpo.shuffle_advantages:  # control runs only: break the sample-advantage link
            perm = torch.from_numpy(np.random.default_rng([c.seed, step, 99]).permutation(n_local)).to(t.device)
            adv, keep = adv[perm], keep[perm]
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std(unbiased=False)),
            "grpo/zero_std_ratio": info.zero_std_ratio,
            "grpo/zero_std_groups": float(info.zero_std_groups),
        }
        for name, value in all_parts.items():
            if name in t.reward.names:
                metrics[f"reward/{name}"] = float(value.mean())
            else:  # a reward's flags (e.g. judge readings with low digit mass): how many this step
                metrics[f"reward_flags/{name}"] = float(value.sum())
        for name, share in shares.items():  # which term sets the advantages (within-group variance)
            metrics[f"reward_share/{name}"] = share
        metrics.update(getattr(t.reward, "pop_stats", dict)())  # e.g. the reasoning judge's unparsable answers and spread
        all_targets = acc.gather(torch.from_numpy(batch.targets).to(t.device)).cpu()
        regions: dict[str, list[float]] = {}
        for (v, a), r in zip(all_targets.tolist(), rewards.tolist()):
            regions.setdefault(quadrant(v, a), []).append(r)
        for region, values in regions.items():
            metrics[f"reward_by_region/{region}"] = float(np.mean(values))
        return ScoredStep(rewards, adv, keep, metrics, shares)


def check_finite_rewards(parts: dict[str, torch.Tensor], rewards: torch.Tensor, step: int) -> None:
    """A NaN/inf reward stops the run with the reward's name (it would poison every advantage)."""
    if bool(torch.isfinite(rewards).all()):
        return
    bad = [name for name, value in parts.items() if not bool(torch.isfinite(value).all())] or ["total"]
    raise NonFiniteError(f"step {step}: reward {bad[0]!r} returned NaN/inf, so the run stopped before "
                         "this step was used or saved; check that reward model, then continue with --resume")

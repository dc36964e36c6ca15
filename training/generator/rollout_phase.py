"""The rollout phase of a GRPO step, and the deterministic evaluation sampler.

:meth:`RolloutPhase.sample` draws this process's groups, samples them in micro-batches of
``grpo.batch_size`` with the stochastic sampler (storing latents and log-probs) and hands the
decoded images to the reward runner — per micro-batch while the next one is sampled, or once for the
whole step (``reward_schedule = "step"``). It reads the trainer's config, policy, network, sampler
and reward runner.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch

from .policies import Trajectory, rollout


class RolloutPhase:
    """Sampling for one :class:`~.trainer.GRPOTrainer` (see the module docstring)."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def chunks(self, n: int) -> list[slice]:
        """``n`` samples in micro-batches of ``grpo.batch_size`` (rollout and update use the same split)."""
        b = self.trainer.config.grpo.batch_size
        return [slice(i, i + b) for i in range(0, n, b)]

    def sample(self, step: int) -> tuple[list[Trajectory], dict[str, torch.Tensor], Any]:
        """Roll out this process's groups for ``step``; rewards are scored on the worker while sampling continues."""
        t = self.trainer
        c = t.config
        acc = t.accelerator
        batch = t.sampler.sample(step, c.grpo.groups_per_step, c.grpo.group_size, acc.process_index,
                                 acc.num_processes)
        cfg = t.train_guidance != 1.0
        per_step = c.reward_schedule == "step"
        trajs = []
        t.raw_net.eval()
        for sl in self.chunks(len(batch.prompts)):
            cond = t.policy.encode(batch.prompts[sl], c.sampling.negative_prompt, cfg)
            va = torch.from_numpy(batch.targets[sl]).to(t.device)
            traj = rollout(t.policy, t.raw_net, cond, va, batch.seeds[sl], c.sampling.steps,
                           t.train_guidance, c.sampling.adapter_strength,
                           keep_means=c.grpo.ratio_norm == "grpo_guard")
            if not per_step:
                t.runner.submit(traj.images, batch.prompts[sl], va)
            trajs.append(traj)
        if per_step:  # one reward call for the whole step: the judge is swapped in at most once
            t.runner.submit(torch.cat([tr.images for tr in trajs]), batch.prompts, torch.from_numpy(batch.targets))
        return trajs, t.runner.collect(), batch

    @torch.no_grad()
    def deterministic(self, prompts: Sequence[str], targets: torch.Tensor, seeds: Sequence[int], steps: int,
                      guidance: float, strength: float) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        """(slice, targets on the device, images) per micro-batch of the deterministic sampler at ``guidance``
        and adapter ``strength``: same seeds, same images (evaluation and the held-out check)."""
        t = self.trainer
        c = t.config
        t.raw_net.eval()
        for sl in self.chunks(len(prompts)):
            cond = t.policy.encode(list(prompts[sl]), c.sampling.negative_prompt, guidance != 1.0)
            va = targets[sl].to(t.device).float()
            traj = rollout(t.policy, t.raw_net, cond, va, list(seeds[sl]), steps, guidance, strength,
                           stochastic=False)
            yield sl, va, traj.images

    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str], targets: torch.Tensor, seeds: Sequence[int],
                 steps: Optional[int] = None, use_ema: bool = False,
                 guidance_scale: Optional[float] = None) -> dict[str, torch.Tensor]:
        """Reward parts of images from the deterministic sampler (same seeds → same images).

        ``guidance_scale`` defaults to the guidance the policy is trained at: 1 under CFG-free training,
        so the policy that is optimised is the one judged; pass ``sampling.guidance_scale`` for the guided one.
        """
        t = self.trainer
        c = t.config
        steps = steps or c.sampling.eval_steps
        guidance = t.train_guidance if guidance_scale is None else float(guidance_scale)
        swap = use_ema and t.ema is not None
        if swap:
            t.ema.swap()
        try:
            parts: list[dict[str, torch.Tensor]] = []
            for sl, va, images in self.deterministic(prompts, targets, seeds, steps, guidance,
                                                     c.sampling.adapter_strength):
                parts.append(t.reward.score_parts(images, list(prompts[sl]), va.cpu()))
        finally:
            if swap:
                t.ema.swap()
        reward = t.reward
        merged = {k: torch.cat([p[k] for p in parts]) for k in reward.names}
        merged["total"] = sum(w * merged[n] for n, w in zip(reward.names, reward.weights))
        return merged

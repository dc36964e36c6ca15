"""The update phase of a GRPO step: PPO-clip + β·KL on the stored rollouts, one backward per timestep.

For the *same* micro-batches the rollout made (same batch size, dtype and order inside a batch, so the
first ratio is exactly 1): for each trained timestep, recompute the log-prob with gradients, add the
PPO-clip loss and β·KL to the base model (peft ``disable_adapters``), and ``backward`` right away —
memory stays flat in T; DDP gradient sync happens only on the last backward before each update.

With fp16 mixed precision accelerate's grad scaler skips an update whose gradients overflow and lowers
its scale (``optimizer.step_was_skipped``): that is not divergence. A skipped update leaves the weights,
the AdamW moments and the EMA as they were, its (infinite) gradient norm stays out of ``train/grad_norm``,
and it is counted in ``train/skipped_updates``; only ``optim.max_skipped_updates_in_a_row`` skips in a
row stop the run (:meth:`UpdatePhase.check_skips`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import numpy as np
import torch

from ..checkpoint import NonFiniteError
from ..grpo import ppo_clip_loss
from .config import train_window
from .guards import guarded_log_probs
from .policies import Trajectory
from .policy_net import adapters_disabled
from .step_logprob import step_kl


class UpdatePhase:
    """Optimizer updates for one :class:`~.trainer.GRPOTrainer` (see the module docstring).

    ``updates`` counts the optimizer updates applied over the run (restored at resume), ``skipped``
    those the grad scaler skipped and ``skipped_in_a_row`` the current streak;
    ``ratio_dev_before_first_update`` is the largest |ratio − 1| seen before the first one (must be 0).
    """

    def __init__(self, trainer: Any):
        self.trainer = trainer
        self.updates = 0
        self.skipped = 0
        self.skipped_in_a_row = 0
        self.ratio_dev_before_first_update = 0.0

    def train_indices(self, rng: np.random.Generator) -> list[int]:
        """The sampling-step indices one sample trains on: a random subset of the window."""
        t = self.trainer
        start, end = train_window(t.config)
        pool = list(range(start, end))
        k = t.derived.trained_timesteps
        if k >= len(pool):
            return pool
        return sorted(rng.choice(pool, size=k, replace=False).tolist())

    def run(self, trajs: list[Trajectory], adv: torch.Tensor, keep: torch.Tensor, step: int) -> dict[str, float]:
        """All of a step's updates; returns the ``train/*`` metrics."""
        t = self.trainer
        c, acc = t.config, t.accelerator
        g = c.grpo
        rng = np.random.default_rng([c.seed, step, 1])
        per_update = t.derived.micro_batches_per_update
        sums = {"loss": 0.0, "kl": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "grad_norm": 0.0}
        counts = {"pass": 0, "update": 0, "kept": 0, "applied": 0, "skipped": 0}
        kl_by_step: dict[int, list[float]] = {}
        bsz = g.batch_size
        t.raw_net.train()
        for _epoch in range(g.inner_epochs):
            order = rng.permutation(len(trajs)).tolist()
            for u in range(g.updates_per_step):
                chunk_ids = order[u * per_update:(u + 1) * per_update]
                plan = [(ci, j) for ci in chunk_ids for j in self.train_indices(rng)]
                # Every kept (sample, timestep) term of the update weighs the same, wherever the kept
                # samples fall: the policy loss is summed and divided by the update's kept-term count
                # (over all processes; DDP averages gradients, hence the division by their number).
                kept_terms = sum(int(keep[ci * bsz:(ci + 1) * bsz].sum()) for ci, _ in plan)
                kept_terms = float(acc.gather(torch.tensor([kept_terms], device=t.device)).sum()) / acc.num_processes
                for k, (ci, j) in enumerate(plan):
                    a = adv[ci * bsz:(ci + 1) * bsz]
                    m = keep[ci * bsz:(ci + 1) * bsz]
                    last = k == len(plan) - 1
                    sync = contextlib.nullcontext() if last else acc.no_sync(t.net)
                    with sync:
                        loss, parts = self.timestep_loss(trajs[ci], j, a, m, kept_terms=kept_terms, terms=len(plan))
                        acc.backward(loss)  # accelerate owns loss scaling (fp16) and gradient sync
                    sums["kl"] += parts["kl"]
                    kl_by_step.setdefault(j, []).append(parts["kl"])
                    sums["clipfrac"] += parts["clipfrac"] * parts["kept"]
                    sums["approx_kl"] += parts["approx_kl"] * parts["kept"]
                    sums["loss"] += float(loss.detach())
                    counts["pass"] += 1
                    counts["kept"] += parts["kept"]
                    if self.updates == 0:
                        self.ratio_dev_before_first_update = max(self.ratio_dev_before_first_update, parts["ratio_dev"])
                norm = self.clip_gradients()
                t.optimizer.step()  # accelerate's optimizer: steps through its scaler when there is one
                t.optimizer.zero_grad(set_to_none=True)
                counts["update"] += 1
                if getattr(t.optimizer, "step_was_skipped", False):  # fp16 overflow: the scaler skipped it
                    self.skipped += 1
                    self.skipped_in_a_row += 1
                    counts["skipped"] += 1
                    continue
                self.skipped_in_a_row = 0
                if t.ema is not None:
                    t.ema.update()
                self.updates += 1
                sums["grad_norm"] += float(norm)
                counts["applied"] += 1
        t.raw_net.eval()
        n, kept = max(1, counts["pass"]), max(1, counts["kept"])
        metrics = {
            "train/loss": sums["loss"] / max(1, counts["update"]),
            "train/kl": sums["kl"] / n,
            "train/clipfrac": sums["clipfrac"] / kept,
            "train/approx_kl": sums["approx_kl"] / kept,
            "train/kept_fraction": counts["kept"] / max(1, counts["pass"] * bsz),
            # the norm of applied updates only: a skipped update's is inf by definition
            "train/grad_norm": sums["grad_norm"] / counts["applied"] if counts["applied"] else float("nan"),
            "train/skipped_updates": float(counts["skipped"]),
            "train/applied_updates": float(counts["applied"]),
        }
        for j, values in sorted(kl_by_step.items()):  # which timesteps the KL anchors hardest
            metrics[f"train/kl_by_step/{j:02d}"] = sum(values) / len(values)
        return metrics

    def check_skips(self, step: int) -> None:
        """Stop after ``optim.max_skipped_updates_in_a_row`` skipped updates in a row (a lone skip is normal)."""
        t = self.trainer
        limit = t.config.optim.max_skipped_updates_in_a_row
        if self.skipped_in_a_row < limit:
            return
        scale = t.scaler.get_scale() if t.scaler.is_enabled() else float("nan")
        raise NonFiniteError(
            f"step {step}: the fp16 grad scaler skipped {self.skipped_in_a_row} optimizer updates in a row "
            f"(limit optim.max_skipped_updates_in_a_row={limit}; scale now {scale:g}): the gradients are non-finite "
            "at every scale, so the run stopped before saving; 'latest' still names the last good checkpoint. "
            f"Lower optim.lr (now {t.config.optim.lr}) or train in bfloat16 (model.dtype), then continue with --resume")

    def clip_gradients(self) -> torch.Tensor:
        """Total gradient norm before clipping, of the *unscaled* gradients (accelerate unscales fp16 first)."""
        t = self.trainer
        params = [p for _, p in t.trainable]
        if t.config.optim.max_grad_norm > 0:
            return t.accelerator.clip_grad_norm_(params, t.config.optim.max_grad_norm)
        t.accelerator.unscale_gradients()
        grads = [p.grad.float() for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def timestep_loss(self, traj: Trajectory, j: int, adv: torch.Tensor, keep: torch.Tensor,
                      kept_terms: Optional[float] = None, terms: int = 1):
        """One trained timestep of one micro-batch: PPO-clip over kept samples / ``kept_terms`` + β·KL / ``terms``."""
        t = self.trainer
        c = t.config
        x = traj.latents[:, j]
        prev = traj.latents[:, j + 1]
        ts = traj.timesteps[j].to(t.device)
        out = t.net(x, ts, traj.cond, traj.va, t.train_guidance, c.sampling.adapter_strength)
        res = t.policy.step(out, x, traj.params[j], prev_sample=prev)
        log_prob, old_log_prob, weight = guarded_log_probs(c.grpo.ratio_norm, t.arch, res, traj, j)
        loss, info = ppo_clip_loss(log_prob, old_log_prob, adv, c.grpo.clip_range, mask=keep,
                                   normalizer=kept_terms)
        loss = loss * weight
        kl_value = 0.0
        if c.grpo.kl_beta > 0:
            with torch.no_grad(), adapters_disabled(t.raw_net):
                ref_out = t.raw_net(x, ts, traj.cond, traj.va, t.train_guidance, 0.0)
                ref = t.policy.step(ref_out, x, traj.params[j], prev_sample=prev)
            kl = step_kl(res, ref).mean()  # Flow-GRPO's scale: divided by sigma_t^2, not the step variance
            loss = loss + c.grpo.kl_beta * kl / terms  # the KL anchors every sample: mean over the update
            kl_value = float(kl.detach())
        return loss, {"kl": kl_value, "clipfrac": info.clipfrac, "approx_kl": info.approx_kl,
                      "ratio_dev": info.ratio_max_dev, "kept": info.kept}

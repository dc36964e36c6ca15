"""GRPO arithmetic: group-relative advantages, the PPO-clip loss, and an EMA of trainable weights.

Pure tensor functions, kept apart from the trainer so each formula has its own test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch


@dataclass
class AdvantageInfo:
    """What happened to the groups: zero-variance ones carry no signal and are dropped."""

    keep: torch.Tensor  # [N] bool: sample belongs to a group with non-zero reward spread
    zero_std_groups: int
    num_groups: int
    std_used: float

    @property
    def zero_std_ratio(self) -> float:
        return self.zero_std_groups / max(1, self.num_groups)


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    global_std: bool = True,
    clip: float = 5.0,
    eps: float = 1e-6,
    zero_std_tol: float = 1e-8,
) -> tuple[torch.Tensor, AdvantageInfo]:
    """``(r - group mean) / (std + eps)`` clipped to ±clip; zero-spread groups get 0 and ``keep=False``.

    ``global_std=True`` divides by the std of all rewards (Flow-GRPO's choice: easy prompts do not get
    their tiny differences blown up); otherwise by each group's own std. Never NaN.
    """
    rewards = rewards.detach().float().flatten()
    group_ids = group_ids.flatten().to(rewards.device)
    if rewards.shape != group_ids.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} differ")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN/inf: check the reward functions")
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    n_groups = len(uniq)
    counts = torch.zeros(n_groups).index_add_(0, inverse, torch.ones_like(rewards))
    means = torch.zeros(n_groups).index_add_(0, inverse, rewards) / counts
    centred = rewards - means[inverse]
    group_var = torch.zeros(n_groups).index_add_(0, inverse, centred**2) / counts
    group_std = group_var.sqrt()
    zero = group_std <= zero_std_tol
    keep = ~zero[inverse]
    if global_std:
        std = rewards.std(unbiased=False) if rewards.numel() > 1 else torch.tensor(0.0)
        denom = std.expand_as(rewards)
        std_used = float(std)
    else:
        denom = group_std[inverse]
        std_used = float(group_std[~zero].mean()) if (~zero).any() else 0.0
    adv = torch.where(keep, centred / (denom + eps), torch.zeros_like(centred))
    adv = adv.clamp(-clip, clip)
    return adv, AdvantageInfo(keep=keep, zero_std_groups=int(zero.sum()), num_groups=n_groups, std_used=std_used)


@dataclass
class LossInfo:
    """Diagnostics of one PPO-clip term; ``clipfrac``/``approx_kl`` are means over the kept samples."""

    clipfrac: float
    approx_kl: float
    ratio_max_dev: float  # over all samples: the ratio must be exactly 1 before the first update
    kept: int  # samples that entered the loss (weights for averaging clipfrac/approx_kl over an update)


def ppo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    mask: torch.Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[torch.Tensor, LossInfo]:
    """PPO-clip policy loss on the per-dimension-mean log-prob ratio, summed over kept samples / ``normalizer``.

    ``mask`` (bool [B]) leaves out samples of dropped zero-variance groups. ``normalizer`` is the
    number of kept (sample, timestep) terms of the *whole update*, so that every kept term weighs the
    same however the kept samples fall into micro-batches; ``None`` means this call's kept count
    (a masked mean). No kept sample gives a loss of 0.
    """
    ratio = torch.exp(log_prob - old_log_prob.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    per_sample = torch.maximum(unclipped, clipped)
    weight = torch.ones_like(per_sample) if mask is None else mask.to(per_sample.dtype)
    kept = int(weight.sum())
    denom = float(kept) if normalizer is None else float(normalizer)
    loss = (per_sample * weight).sum() / max(denom, 1.0)
    with torch.no_grad():
        k = max(kept, 1)
        clipped_any = ((ratio - 1.0).abs() > clip_range).float()
        info = LossInfo(
            clipfrac=float((clipped_any * weight).sum() / k),
            approx_kl=float((0.5 * (log_prob - old_log_prob) ** 2 * weight).sum() / k),
            ratio_max_dev=float((ratio - 1.0).abs().max()),
            kept=kept,
        )
    return loss, info


class EMA:
    """EMA of a list of parameters: diffusers' ``EMAModel`` with Flow-GRPO's warm-up.

    At the n-th update (n = 1, 2, ...) the decay is ``min((1 + n) / (10 + n), decay)`` (Flow-GRPO's
    ``EMAModuleWrapper``, n = its optimizer-step count at the call), so early on the average follows
    the weights instead of dragging the initial ones along. diffusers computes ``(1 + s) / (10 + s)``
    with ``s = optimization_step - update_after_step - 1`` (and decay 0 at ``s = 0``): with
    ``update_after_step = -1``, ``s`` is exactly n. The shadow copies stay fp32 on the parameters'
    device. Warmed up: the decay has reached ``decay`` (``n >= (10·decay - 1) / (1 - decay)``).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float):
        from diffusers.training_utils import EMAModel

        self.params = list(params)
        self.model = EMAModel([p.detach().float() for p in self.params], decay=float(decay), min_decay=0.0,
                              update_after_step=-1, use_ema_warmup=False)

    @property
    def decay(self) -> float:
        """The decay reached after the warm-up (``optim.ema_decay``)."""
        return float(self.model.decay)

    @decay.setter
    def decay(self, value: float) -> None:
        self.model.decay = float(value)

    @property
    def shadow(self) -> list[torch.Tensor]:
        return self.model.shadow_params

    @property
    def updates(self) -> int:
        return int(self.model.optimization_step)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return self.model.get_decay(self.model.optimization_step + 1)

    @property
    def warmup_updates(self) -> int:
        """Updates until the decay reaches ``decay``: the smallest n with (1 + n)/(10 + n) >= decay."""
        return ema_warmup_updates(self.decay)

    @property
    def warmed_up(self) -> bool:
        return ema_warmed_up(self.updates, self.decay)

    @torch.no_grad()
    def update(self) -> None:
        self.model.step(self.params)  # trainable (requires_grad) fp32 parameters: the averaged branch

    def state_dict(self) -> dict:
        state = dict(self.model.state_dict())
        state["shadow_params"] = [s.cpu() for s in state["shadow_params"]]
        return state

    def load_state_dict(self, state: dict, updates: int = 0) -> None:
        """Restore a :meth:`state_dict`; a checkpoint of the hand-written EMA before it (``decay`` and
        ``shadow``) continues as if its ``updates`` optimizer updates had been averaged with the warm-up."""
        state = upgrade_ema_state(state, updates)
        if len(state.get("shadow_params", ())) != len(self.shadow):
            raise ValueError("EMA state does not match the trainable parameters")
        devices = [s.device for s in self.shadow]
        self.model.load_state_dict({**state, "shadow_params": [t.clone() for t in state["shadow_params"]]})
        self.model.shadow_params = [t.to(d) for t, d in zip(self.model.shadow_params, devices)]

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange live and EMA weights (call twice to restore)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s.to(p.dtype))
            s.copy_(tmp.float())


def ema_warmup_updates(decay: float) -> int:
    """The smallest n with ``(1 + n) / (10 + n) >= decay`` (0 when ``decay`` <= 0.1)."""
    import math

    if decay <= 0.1:
        return 0
    n = math.ceil((10 * decay - 1) / (1 - decay) - 1e-9)
    while (1 + n) / (10 + n) < decay:  # guard the float rounding of the closed form
        n += 1
    return max(0, n)


def ema_warmed_up(updates: int, decay: float) -> bool:
    """Whether an EMA with ``decay`` has warmed up after ``updates`` optimizer updates (its decay reached)."""
    return updates >= ema_warmup_updates(decay)


def upgrade_ema_state(state: dict, updates: int) -> dict:
    """``state`` in diffusers ``EMAModel``'s layout. A checkpoint of the hand-written EMA before it (``decay``
    and ``shadow``) becomes one whose ``updates`` optimizer updates were averaged with the warm-up."""
    if "shadow" in state and "shadow_params" not in state:
        return {"decay": float(state["decay"]), "shadow_params": state["shadow"], "optimization_step": int(updates)}
    return state


def ema_export_choice(ema: "EMA | dict | None", wanted: bool = True) -> tuple[bool, str]:
    """Whether an export uses the EMA (kept, wanted and warmed up), and the sentence that says so. ``ema``: the
    :class:`EMA` itself or its saved state (only its update count and decay are read)."""
    if not ema:
        return False, "exporting the live weights (no EMA kept)"
    if isinstance(ema, EMA):
        updates, decay = ema.updates, ema.decay
    else:
        updates, decay = int(ema.get("optimization_step", 0)), float(ema.get("decay", 0.0))
    if not wanted:
        return False, "exporting the live weights (EMA not asked for)"
    if not ema_warmed_up(updates, decay):
        return False, (f"exporting the live weights: the EMA has not warmed up ({updates} of "
                       f"{ema_warmup_updates(decay)} updates before its decay reaches {decay:g})")
    return True, f"exporting the EMA weights (warmed up: {updates} updates, decay {decay:g})"

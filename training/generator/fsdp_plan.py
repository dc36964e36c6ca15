"""The memory plan per GPU when FSDP shards the policy over N processes (``bench train --plan --plan-fsdp N``).

Under FSDP (:mod:`.sharding`) each process holds 1/N of the denoiser's weights and of everything that
trains (LoRA + adapter weights, their gradients, AdamW states, the EMA copy). While a block runs its
full weights are gathered; with prefetching, two blocks' weights are live at once (the one running
and the next). What FSDP does not shard stays whole on every GPU: the text encoders while encoding,
the VAE, the reward models, the trajectories and the activations of this process's micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import replace

from torch import nn

from .memory_plan import Component, MemoryPlan

#: components FSDP shards (names as :func:`~.memory_plan.plan_training` writes them)
SHARDED = ("transformer", "unet", "lora+adapter weights (fp32)", "AdamW states (2 x fp32)", "gradients (fp32)",
           "EMA copy (fp32)")


def largest_unit_bytes(denoiser: nn.Module) -> tuple[int, str]:
    """(bytes, class name) of the largest FSDP unit: the denoiser's biggest ``_no_split_modules`` block."""
    blocks = set(getattr(denoiser, "_no_split_modules", None) or [])
    best, name = 0, "none"
    for module in denoiser.modules():
        if type(module).__name__ in blocks:
            size = sum(p.numel() * p.element_size() for p in module.parameters())
            if size > best:
                best, name = size, type(module).__name__
    return best, name


def shard_plan(plan: MemoryPlan, processes: int, denoiser: nn.Module) -> MemoryPlan:
    """``plan`` as each of ``processes`` GPUs sees it under FSDP."""
    if processes < 2:
        raise ValueError(f"FSDP needs at least 2 processes, got {processes}")
    out = []
    for c in plan.components:
        if c.name in SHARDED and c.device == plan.training_device:
            out.append(replace(c, bytes=math.ceil(c.bytes / processes),
                               detail=f"{c.detail}; 1/{processes} of it per GPU (FSDP)"))
        else:
            out.append(c)
    unit, name = largest_unit_bytes(denoiser)
    out.append(Component("FSDP gathered blocks", plan.training_device, 2 * unit, ("rollout", "update"),
                         f"2 x {name} ({unit / 2**30:.3f} GiB): the block running and the one prefetched"))
    notes = plan.notes + [f"per GPU of {processes} under FSDP (training/configs/accelerate_fsdp.yaml): the "
                          "denoiser and everything that trains sharded, the rest whole on every GPU"]
    return MemoryPlan(out, plan.phases, plan.training_device, notes)

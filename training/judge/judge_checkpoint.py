"""The judge run's checkpoints: the LoRA tensors plus optimizer, schedule and RNG state, atomic (:mod:`..checkpoint`).

A resumed run continues exactly where the uninterrupted one would have been: batches and GRPO
sampling seeds derive from ``(seed, step)``, and the RNG state travels with the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import JudgeTrainConfig, judge_config_to_dict

CHECKPOINT_KIND = "judge"


def lora_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors of a peft model (what a checkpoint and the adapter hold)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}


def save_judge_checkpoint(root: Path, step: int, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                          images_seen: int, config: JudgeTrainConfig, train_rows: int) -> Path:
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
             "images_seen": images_seen}
    meta = {"kind": CHECKPOINT_KIND, "config": judge_config_to_dict(config), "train_rows": train_rows}
    return save_checkpoint(root, step, lora_state(model), state, meta, config.keep_checkpoints)


def load_judge_checkpoint(path: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[int, int]:
    """Load the checkpoint at ``path`` into the model, optimizer and schedule; returns ``(step, images_seen)``."""
    from peft import set_peft_model_state_dict

    weights, state, meta = load_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is not a judge checkpoint (it was written by `emofeedback2 train`)")
    expected = set(lora_state(model))
    if set(weights) != expected:
        raise CheckpointError(f"checkpoint {path} holds other LoRA tensors than this run "
                              f"({len(weights)} vs {len(expected)}); was it written with another rank/targets/model?")
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"checkpoint {path} has tensors this model lacks: {result.unexpected_keys[:3]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(meta["step"]), int(state.get("images_seen", 0))

"""Saving and resuming a GRPO run: the trainable weights, optimizer, scaler, EMA and RNG in one atomic checkpoint.

The format is :mod:`training.checkpoint`'s (temp folder + fsync + rename, sha256 manifest, ``latest``
pointer). A resume must come from the same run (see :mod:`.resume_guard`): identity and
run-defining changes are refused, optimiser/EMA changes are applied and recorded.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..checkpoint import (CheckpointError, check_finite, latest_checkpoint, load_checkpoint, rng_state,
                          save_checkpoint, set_rng_state)
from ..grpo import EMA
from . import resume_guard, sharding
from .config import config_to_dict


def json_equal(a: Any, b: Any) -> Optional[bool]:
    """Compare a config as saved in JSON with one built now (tuples become lists); None if nothing saved."""
    if a is None:
        return None
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def save_run(trainer: Any) -> Optional[Path]:
    """Checkpoint ``trainer`` at its current step (main process; the others wait and return None)."""
    t = trainer
    acc = t.accelerator
    acc.wait_for_everyone()
    # every process gathers (collective under FSDP); only the main one writes
    weights = sharding.gather_full(acc, t.net, t.trainable)
    ema = sharding.ema_state(t.ema) if t.ema is not None else None
    optimizer = sharding.optimizer_state(acc, t.net, t.optimizer)
    if not acc.is_main_process:
        return None
    if ema is not None:
        weights.update({f"ema.{n}": s for (n, _), s in zip(t.trainable, ema["shadow_params"])})
    state = {
        "optimizer": optimizer,
        "scaler": t.scaler.state_dict(),
        "ema": ema,
        "rng": rng_state(),
        "updates": t.updates,
    }
    meta = {
        "config": config_to_dict(t.config),
        "arch": t.arch,
        "adapter_config": dataclasses.asdict(t.adapter.config) if t.adapter is not None else None,
        "derived": dataclasses.asdict(t.derived),
        "config_history": t.config_history,
    }
    return save_checkpoint(t.out / "checkpoints", t.step, weights, state, meta, t.config.keep_checkpoints)


def resume_run(trainer: Any, path: Optional[str | Path] = None, allow_change: Sequence[str] = ()) -> bool:
    """Load the latest (or given) checkpoint into ``trainer``; False when there is none."""
    t = trainer
    path = Path(path) if path else latest_checkpoint(t.out / "checkpoints")
    if path is None:
        return False
    weights, state, meta = load_checkpoint(path)
    if meta.get("arch") != t.arch:
        raise resume_guard.ResumeMismatchError(
            f"resume refused: checkpoint {path} is for {meta.get('arch')}, this run's model is {t.arch}")
    changes = resume_guard.compare(meta.get("config") or {}, t.config, allow_change)
    _check_same_tensors(t, path, weights, meta)
    resume_guard.check_step(int(meta["step"]), t.config, str(path))
    params = dict(t.trainable)
    sharding.load_full_parameters(t.accelerator, t.net, params, weights)  # shards under FSDP
    try:
        sharding.load_optimizer_state(t.accelerator, t.net, t.optimizer, state["optimizer"])
        t.scaler.load_state_dict(state["scaler"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the optimiser state in {path} does not fit this run: {exc}") from exc
    resume_guard.apply_optimizer_settings(t.optimizer, t.config)  # changed lr/betas/... take effect
    if t.ema is not None:
        if state.get("ema"):
            sharding.load_ema_state(t.ema, state["ema"], updates=int(state["updates"]))
            t.ema.decay = float(t.config.optim.ema_decay)
        else:  # EMA switched on at this resume: it starts from the resumed weights, not the initial ones
            t.ema = EMA([p for _, p in t.trainable], t.config.optim.ema_decay)
    set_rng_state(state["rng"])
    t.updates = int(state["updates"])
    t.step = int(meta["step"])
    t.config_history = resume_guard.config_history(meta, t.step, changes)
    if changes and t.accelerator.is_main_process:
        print(f"[train] resume at step {t.step} with changed settings: {resume_guard.describe(changes)}")
    return True


def _check_same_tensors(t: Any, path: Path, weights: dict[str, torch.Tensor], meta: dict) -> None:
    """Refuse a checkpoint of another adapter shape or set of trainable tensors, or with NaN/inf in it."""
    adapter_config = dataclasses.asdict(t.adapter.config) if t.adapter is not None else None
    if json_equal(meta.get("adapter_config"), adapter_config) is False:
        raise resume_guard.ResumeMismatchError(
            f"resume refused: the emotion adapter's shape differs from checkpoint {path} "
            f"({meta.get('adapter_config')} vs {adapter_config}); restore the adapter settings")
    params = dict(t.trainable)
    saved = {k for k in weights if not k.startswith("ema.")}
    missing, extra = sorted(set(params) - saved), sorted(saved - set(params))
    if missing or extra:
        example = (missing or extra)[0]
        raise resume_guard.ResumeMismatchError(
            f"resume refused: checkpoint {path} does not hold this model's trainable tensors "
            f"({len(missing)} missing, {len(extra)} extra, e.g. {example}); was it written with another "
            "LoRA rank/targets or adapter setting?")
    for name, p in params.items():
        if tuple(weights[name].shape) != tuple(p.shape):
            raise resume_guard.ResumeMismatchError(
                f"resume refused: {name} is {tuple(weights[name].shape)} in {path}, {tuple(p.shape)} now")
    check_finite(weights, f"checkpoint {path}")

"""What a resumed run may change, and what would silently mix two runs.

A checkpoint records the config it was trained with. On ``--resume`` every field of the new config is
compared with it and falls in one of four groups:

- **identity** (model, architecture, LoRA rank/targets, adapter shape): the saved tensors belong to
  another model; always refused.
- **run-defining** (seed, group size, rewards, data, sampling, the other GRPO and model settings):
  resuming would splice two different experiments into one curve; refused unless the user names the
  field in ``--allow-change`` (then recorded in the checkpoint's ``config_history``).
- **applied** (optimiser and EMA hyper-parameters): written into the optimiser's param groups / the
  EMA after the saved state is loaded, and recorded — never recorded and ignored.
- **free** (max_steps, logging, checkpoint cadence, devices, progress): bookkeeping only.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..checkpoint import META, CheckpointError, latest_checkpoint
from .config import ConfigError, RewardSpec, TrainConfig, config_to_dict

IDENTITY = ("model.pretrained", "model.arch", "model.lora_rank", "model.lora_targets", "model.train_adapter",
            "model.adapter_hidden", "model.adapter_init")
APPLIED = ("optim.lr", "optim.adapter_lr", "optim.weight_decay", "optim.betas", "optim.eps",
           "optim.max_grad_norm", "optim.ema", "optim.ema_decay")
FREE = ("output_dir", "max_steps", "save_every", "keep_checkpoints", "log_every", "image_log_every", "device",
        "reward_workers", "export_at_end", "progress", "model.gradient_checkpointing",
        "optim.max_skipped_updates_in_a_row")
# Where and with which attention kernel a reward model runs does not change what it returns.
REWARD_PLACEMENT = ("device", "offload", "attention")


class ResumeMismatchError(CheckpointError):
    """The checkpoint was written by a different run than the config now asks for."""


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.field}: {self.old!r} -> {self.new!r}"


def _flatten(config: dict) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if key == "rewards":
            flat["rewards"] = [{k: v for k, v in r.items() if k not in REWARD_PLACEMENT} for r in value]
        elif isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:
            flat[key] = value
    return flat


def known_fields() -> set[str]:
    return set(_flatten(config_to_dict(TrainConfig())))


def check_allow_list(allow: Iterable[str]) -> set[str]:
    allow = {a.strip() for a in allow if a.strip()}
    known = known_fields()
    unknown = sorted(allow - known)
    if unknown:
        raise ConfigError(f"--allow-change {unknown[0]!r} is not a config field; use names like grpo.group_size, "
                          "seed or rewards")
    fixed = sorted(allow & set(IDENTITY))
    if fixed:
        raise ConfigError(f"--allow-change {fixed[0]} cannot be allowed: the checkpoint's tensors belong to that "
                          "model; start a new run in another output_dir instead")
    return allow


def compare(saved: dict, current: TrainConfig, allow: Iterable[str] = ()) -> list[Change]:
    """Changes between the checkpoint's config and ``current`` that may go ahead; refuses the rest."""
    allow = check_allow_list(allow)
    old, new = _flatten(saved), _flatten(config_to_dict(current))
    if isinstance(old.get("rewards"), list):  # a reward field added since the checkpoint: its default then
        defaults = _flatten({"rewards": [dataclasses.asdict(RewardSpec())]})["rewards"][0]
        old["rewards"] = [{**defaults, **r} if isinstance(r, dict) else r for r in old["rewards"]]
    changes = [Change(k, old.get(k), new[k]) for k in sorted(new) if k in old and _differs(old[k], new[k])]
    for change in changes:
        if change.field in IDENTITY:
            raise ResumeMismatchError(
                f"resume refused: {change.field} was {change.old!r} in the checkpoint, now {change.new!r}; "
                "the saved weights belong to that setting — restore it, or start a new run in another output_dir")
    refused = [c for c in changes if c.field not in APPLIED and c.field not in FREE and c.field not in allow]
    if refused:
        c = refused[0]
        more = f" (and {len(refused) - 1} more: {', '.join(r.field for r in refused[1:])})" if len(refused) > 1 else ""
        raise ResumeMismatchError(
            f"resume refused: {c.field} was {c.old!r} in the checkpoint, now {c.new!r}{more}; restore it, or pass "
            f"--allow-change {c.field} if mixing the two settings in one run is what you mean")
    return [c for c in changes if c.field not in FREE]


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) != float(b)
    return a != b


def apply_optimizer_settings(optimizer: Any, config: TrainConfig) -> None:
    """Write the config's optimiser hyper-parameters into param groups restored from a checkpoint."""
    o = config.optim
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = o.lr if i == 0 or o.adapter_lr is None else o.adapter_lr
        group["betas"] = tuple(float(b) for b in o.betas)
        group["eps"] = o.eps
        group["weight_decay"] = o.weight_decay


def check_step(step: int, config: TrainConfig, where: str) -> None:
    if step > config.max_steps:
        raise CheckpointError(
            f"{where} is at step {step}, beyond max_steps={config.max_steps}; raise max_steps (--max-steps) above "
            f"{step} to train further, or write its weights with `emofeedback2 export --checkpoint {where}`")


def describe(changes: list[Change]) -> str:
    return "; ".join(str(c) for c in changes)


def config_history(meta: dict, step: int, changes: list[Change]) -> list[dict]:
    """The checkpoint's record of settings changed at resumes, with this resume appended."""
    history = list(meta.get("config_history") or [])
    if changes:
        history.append({"step": step, "changes": {c.field: [c.old, c.new] for c in changes}})
    return history


def precheck(config: TrainConfig, allow: Iterable[str] = ()) -> None:
    """Refuse a resume that :func:`compare` would refuse, from ``state.json`` alone: before the
    pipeline and reward models load (minutes with real models), not after. Nothing to resume is
    left to the trainer's own message."""
    path = latest_checkpoint(Path(config.output_dir) / "checkpoints")  # complete, inside this run
    if path is None:
        return
    # Only the recorded config is read here; the trainer verifies every file's hash when it loads them.
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path / META} cannot be read ({exc}); the checkpoint is damaged") from exc
    compare(meta.get("config") or {}, config, allow)

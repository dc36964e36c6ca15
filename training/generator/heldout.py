"""Held-out check against reward hacking: is the emotion reward rising while the images degrade?

Every ``heldout.every`` steps the trainer generates a fixed evaluation set (held-out prompts × fixed
V-A targets × fixed seeds) with the deterministic sampler, so two checks differ only by the weights.
The prompts are not training prompts: ``heldout.prompts_file``, by default the shipped
``training/data/heldout_prompts.txt`` (a file that overlaps the training prompts is named in a note).
The images are made at the guidance the policy is trained at (1 with ``cfg_free_training``: the
policy that is optimised) and, when that differs, also at ``sampling.guidance_scale`` (``…@guided``
figures). It logs, separately,

- ``heldout/emotion``: the mean emotion reward (unweighted mean over the rewards with role
  ``emotion``: the LVLM or colour reward),
- ``heldout/quality``: the mean quality score — of ``heldout.quality``, a judge that is not a training
  reward, when set; else of the training rewards with role ``quality`` (PickScore-style CLIP; a
  quality reward with weight 0 is monitored without being trained on),
- ``heldout/distance_to_base``: RMS pixel distance to the base model's images of the same set (made
  once, with the LoRA and the emotion adapter disabled),

and warns when the emotion reward rose while the quality fell since the previous check — the
signature of the proxy reward being gamed (Flow-GRPO / DanceGRPO users' most common report).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .data import load_prompts
from .policy_net import adapters_disabled

QUALITY_KINDS = ("clip_quality",)
HELDOUT_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "heldout_prompts.txt"


def heldout_prompts(config, train_prompts: Sequence[str] = ()) -> list[str]:
    """The held-out prompts: the first ``num_prompts`` of ``heldout.prompts_file`` (default: the shipped file)."""
    h = config.heldout
    if not h.every:
        return []
    return load_prompts(h.prompts_file or HELDOUT_PROMPTS, "heldout.prompts_file")[: h.num_prompts]


def hacking_warning(previous: dict[str, float], current: dict[str, float], tolerance: float = 0.0) -> Optional[str]:
    """A warning when emotion rose and quality fell (by more than ``tolerance``) between two checks."""
    if previous.get("quality") is None or current.get("quality") is None:
        return None
    d_emotion = current["emotion"] - previous["emotion"]
    d_quality = current["quality"] - previous["quality"]
    if d_emotion > tolerance and d_quality < -tolerance:
        return (f"held-out emotion reward rose by {d_emotion:+.4f} while quality fell by {d_quality:+.4f} "
                f"(distance to base images {current.get('distance_to_base', float('nan')):.4f}): possible reward "
                "hacking; inspect the held-out images, raise grpo.kl_beta or the quality weight, or try "
                "grpo.ratio_norm = 'grpo_guard'")
    return None


def reward_roles(reward, specs: Sequence) -> list[str]:
    """Role of each part of a CompositeReward: its own ``role`` attribute, the config's, or by kind."""
    roles = []
    for i, (name, part) in enumerate(zip(reward.names, reward.rewards)):
        role = getattr(part, "role", None)
        if role is None and len(specs) == len(reward.rewards) and specs[i].role != "auto":
            role = specs[i].role
        if role is None:
            role = "quality" if getattr(part, "name", name) in QUALITY_KINDS else "emotion"
        roles.append(role)
    return roles


@dataclass
class HeldoutSet:
    prompts: list[str]
    targets: torch.Tensor  # [N, 2]
    seeds: list[int]


def build_heldout_set(config, train_prompts: Sequence[str]) -> HeldoutSet:
    prompts, targets, seeds = [], [], []
    for i, prompt in enumerate(heldout_prompts(config, train_prompts)):
        for j, (v, a) in enumerate(config.heldout.targets):
            prompts.append(prompt)
            targets.append([float(v), float(a)])
            seeds.append(1_000_000_007 + 1000 * i + j)  # fixed, apart from the training seeds
    return HeldoutSet(prompts, torch.tensor(targets, dtype=torch.float32), seeds)


class HeldoutMonitor:
    """Runs the held-out check for a :class:`~.trainer.GRPOTrainer` (see the module docstring)."""

    def __init__(self, trainer):
        self.trainer = trainer
        c = trainer.config
        self.every = c.heldout.every
        self.tolerance = c.heldout.tolerance
        self.steps = c.heldout.steps or c.sampling.eval_steps
        self.set = build_heldout_set(c, trainer.sampler.prompts)
        self.roles = reward_roles(trainer.reward, c.rewards)
        self.quality = quality_judge(c, str(trainer.device))
        # the policy that is optimised first; the sampling guidance as well when CFG-free training differs from it
        self.guidances = list(dict.fromkeys([trainer.train_guidance, c.sampling.guidance_scale]))
        self.base_images: dict[float, torch.Tensor] = {}
        self.records: list[dict[str, float]] = []
        self.warnings: list[str] = []
        shared = sorted(set(self.set.prompts) & set(trainer.sampler.prompts))
        self.notes = [f"{len(shared)} held-out prompt(s) are training prompts too (e.g. {shared[0]!r}): the "
                      "check is not fully held out; point heldout.prompts_file at other prompts"] if shared else []
        if self.notes and trainer.accelerator.is_main_process:
            print(f"[train] note: {self.notes[0]}")

    @torch.no_grad()
    def _images(self, base: bool, guidance: Optional[float] = None) -> torch.Tensor:
        t = self.trainer
        s = self.set
        guidance = t.train_guidance if guidance is None else guidance
        strength = 0.0 if base else t.config.sampling.adapter_strength
        with adapters_disabled(t.raw_net) if base else contextlib.nullcontext():  # the base model: no LoRA, no adapter
            chunks = t.rollout_phase.deterministic(s.prompts, s.targets, s.seeds, self.steps, guidance, strength)
            return torch.cat([images for _, _, images in chunks])

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def _figures(self, guidance: float) -> dict[str, float]:
        """Emotion, quality and distance to base of the held-out images made at ``guidance``."""
        t = self.trainer
        if guidance not in self.base_images:
            self.base_images[guidance] = self._images(base=True, guidance=guidance)
        images = self._images(base=False, guidance=guidance)
        parts = t.reward.score_parts(images, self.set.prompts, self.set.targets)
        record: dict[str, float] = {}
        by_role: dict[str, list[float]] = {"emotion": [], "quality": []}
        for name, role in zip(t.reward.names, self.roles):
            value = float(parts[name].mean())
            record[f"heldout/{name}"] = value
            by_role[role].append(value)
        for name, value in parts.items():
            if name not in t.reward.names:  # flags, e.g. judge readings with low digit mass
                record[f"heldout/flags/{name}"] = float(value.sum())
        if self.quality is not None:  # a judge the policy never trains on
            judged = self.quality.score_parts(images, self.set.prompts, self.set.targets)
            name = self.quality.names[0]
            record[f"heldout/quality_judge/{name}"] = float(judged[name].mean())
            by_role["quality"] = [record[f"heldout/quality_judge/{name}"]]
        # unweighted means: a quality reward with weight 0 is monitored, not trained on
        record["emotion"] = sum(by_role["emotion"]) / len(by_role["emotion"]) if by_role["emotion"] else float("nan")
        record["quality"] = sum(by_role["quality"]) / len(by_role["quality"]) if by_role["quality"] else None
        record["distance_to_base"] = float(((images - self.base_images[guidance]) ** 2).mean().sqrt())
        return record

    def run(self, step: int) -> dict[str, float]:
        """Generate, score and log the held-out set now; returns the figures."""
        t = self.trainer
        record: dict[str, float] = {"step": float(step), "guidance": float(self.guidances[0])}
        record.update(self._figures(self.guidances[0]))
        for guidance in self.guidances[1:]:
            record.update({f"{k}@guided": v for k, v in self._figures(guidance).items()})
        warning = hacking_warning(self.records[-1], record, self.tolerance) if self.records else None
        record["hacking_warning"] = 1.0 if warning else 0.0
        self.records.append(record)
        if warning:
            self.warnings.append(warning)
            if t.accelerator.is_main_process:
                print(f"[train] WARNING step {step}: {warning}")
        writer = t.train_log.open_writer()
        if writer is not None:
            for key, value in record.items():
                if key not in ("step", "guidance") and value is not None:
                    writer.add_scalar(key if key.startswith("heldout/") else f"heldout/{key}", value, step)
            if warning:
                writer.add_text("heldout/warning", warning, step)
        return record

    def maybe_run(self, step: int) -> Optional[dict[str, float]]:
        return self.run(step) if self.due(step) else None


def quality_judge(config, device: str):
    """The ``heldout.quality`` judge as a one-term reward (None when not set)."""
    spec = config.heldout.quality
    if not spec:
        return None
    from .config_loading import quality_spec
    from .rewards import build_reward

    return build_reward([quality_spec(spec)], device)


def attach_heldout(trainer) -> Optional[HeldoutMonitor]:
    return HeldoutMonitor(trainer) if trainer.config.heldout.every else None

"""Fine-tune the LVLM judge with a peft LoRA: soft-label SFT on the scorer's own digit readout, or GRPO.

One step: draw ``batch_size`` manifest rows from ``(seed, step)`` (an epoch-wise permutation, so
a resumed run draws what the uninterrupted one would), run them through the scorer's prompt /
answer-prefix / digit path (:func:`.soft_label_objective.readout_logits`), take the soft-label
cross-entropy (:func:`.soft_label_objective.soft_label_loss`), clip, AdamW, warm-up + linear decay.

The output folder is what every judge consumer loads (:mod:`.adapter_card`): a peft adapter, a
model card ``README.md`` and ``judge_training.json``. Checkpoints (``checkpoints/``, atomic,
:mod:`.judge_checkpoint`) and TensorBoard logs (``tb/``) sit beside it.

``objective.kind = "grpo"`` swaps the loss for GRPO on the paper's format (:mod:`.grpo_objective`):
per image ``group_size`` sampled completions (short reasoning, then ``<answer>V, A</answer>``),
rewards for the format and for answers within ``epsilon`` of the label, group-relative
advantages, a clipped-ratio loss over the completion tokens and a KL to the base model (LoRA
disabled). Sampling is seeded from ``(seed, step)``, so checkpoints, resume and the exported adapter
work exactly as for the soft-label path. It is our own loop rather than trl's (reasons in :mod:`.grpo_objective`).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ...engines.judge.options import attention_setting
from ...engines.judge.lvlm_loading import processor_pixel_limits
from ...engines.judge.lvlm_scorer import LVLMConfig, LVLMScorer, load_lvlm
from ..checkpoint import latest_checkpoint
from ..config_fields import ConfigError
from .adapter_card import (  # noqa: F401  (TRAINING_RECORD, read_training_record: re-exported, their old home)
    TRAINING_RECORD, build_training_record, read_training_record, write_adapter_folder,
)
from .config import JudgeTrainConfig, effective_lr, format_lr, real_size_warnings, target_modules, validate_judge_config
from .data import JudgeSample, Manifest, ManifestError, load_images, read_manifest
from ..grpo import group_advantages
from .grpo_objective import attach_reference_logprobs, backward_rollout, sample_rollout
from .judge_checkpoint import load_judge_checkpoint, lora_state, save_judge_checkpoint
from .soft_label_objective import readout_logits, soft_digit_targets, soft_label_loss


def add_judge_lora(model: Any, config: JudgeTrainConfig) -> Any:
    """Wrap ``model`` in a peft LoRA on the language model (+ vision merger), targets read from its module tree;
    init from ``config.seed``."""
    from peft import LoraConfig, get_peft_model

    m = config.model
    lora = LoraConfig(r=m.lora_rank, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                      target_modules=target_modules(m, model), bias="none")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        try:
            peft_model = get_peft_model(model, lora)
        except ValueError as exc:  # no module matched: not a Qwen-VL layout
            raise ConfigError(f"LoRA targets {lora.target_modules!r} match no module of this model ({exc}); "
                                "set model.target_modules for this architecture") from exc
    for _, param in peft_model.named_parameters():
        if param.requires_grad:
            param.data = param.data.float()  # LoRA weights train in fp32 even on a bf16 base
    return peft_model


class JudgeTrainer:
    """LoRA fine-tuning of the judge (soft-label SFT or GRPO); see the module docstring."""

    def __init__(self, config: JudgeTrainConfig, *, manifest: Optional[Manifest] = None, log: bool = True,
                 base: Optional[LVLMScorer] = None):
        """``base``: an already loaded judge to wrap instead of loading ``model.pretrained`` (``bench gpu``
        builds the real-size architecture with random weights on the device; nothing is read from disk)."""
        validate_judge_config(config)
        self.config = config
        m = config.model
        self.manifest = manifest or read_manifest(config.data.manifest, skip_bad=config.data.skip_bad)
        self.train_rows: list[JudgeSample] = self.manifest.split(config.data.train_split)
        if not self.train_rows:
            raise ManifestError(f"{self.manifest.path} has no rows of split {config.data.train_split!r} "
                                f"(splits present: {sorted(self.manifest.splits)})")
        labels = torch.tensor([[s.valence, s.arousal] for s in self.train_rows], dtype=torch.float32)
        if config.data.shuffle_labels:  # control runs only: break the image-label link
            labels = labels[torch.from_numpy(np.random.default_rng([config.seed, 7]).permutation(len(labels)))]
        self.labels = labels
        if config.objective.kind == "soft_label":  # once per row, not per step
            self.soft_targets = soft_digit_targets(labels, config.objective.sigma)
        if base is None:
            base = load_lvlm(LVLMConfig(model=m.pretrained, dtype=m.dtype, device=m.device,
                                        max_pixels=m.max_pixels, min_pixels=m.min_pixels,
                                        attn_implementation=attention_setting(m.attention)))
        self.device, self.dtype = base.device, base.dtype
        if m.gradient_checkpointing:
            base.model.gradient_checkpointing_enable()
            base.model.enable_input_require_grads()
        self.base_parameters = sum(p.numel() for p in base.model.parameters())
        for message in real_size_warnings(config, self.base_parameters):
            warnings.warn(message, UserWarning, stacklevel=2)
        peft_model = add_judge_lora(base.model, config).to(self.device)
        # a fresh scorer around the LoRA-wrapped model: the same prompt/prefix/digit code path as scoring
        self.scorer = LVLMScorer(peft_model, base.processor, base.config, device=self.device, dtype=self.dtype)
        self.model = peft_model
        self.params = [p for p in peft_model.parameters() if p.requires_grad]
        o = config.optim
        self.lr = effective_lr(config)
        self.optimizer = torch.optim.AdamW(self.params, lr=self.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, float]] = []
        self.out = Path(config.output_dir)
        self.writer = None
        if log:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))

    # --- schedule and data ------------------------------------------------------------------------
    def _lr_factor(self, step: int) -> float:
        warm = self.config.optim.warmup_steps
        if warm and step < warm:
            return (step + 1) / warm
        total = max(1, self.config.max_steps - warm)
        return max(0.0, 1.0 - (step - warm) / total)

    def batch_indices(self, step: int) -> list[int]:
        """Rows of step ``step``: consecutive slices of per-epoch permutations drawn from (seed, epoch)."""
        n, bs = len(self.train_rows), self.config.optim.batch_size
        start = step * bs
        out: list[int] = []
        while len(out) < bs:
            epoch, offset = divmod(start + len(out), n)
            perm = np.random.default_rng([self.config.seed, epoch]).permutation(n)
            out.extend(perm[offset:offset + bs - len(out)].tolist())
        return out

    def print_summary(self) -> None:
        m = self.config.model
        n_lora = sum(p.numel() for p in self.params)
        print(f"[train-judge] base={m.pretrained} dtype={self.dtype} device={self.device} LoRA r={m.lora_rank} "
              f"alpha={m.lora_alpha} merger={'yes' if m.train_merger else 'no'} params={n_lora}")
        lr_source = "set" if self.config.optim.lr is not None else f"the {self.config.objective.kind} default"
        print(f"[train-judge] {len(self.train_rows)} training images (split {self.config.data.train_split!r}), "
              f"lr {format_lr(self.lr)} ({lr_source}), batch {self.config.optim.batch_size}, "
              f"{self.config.max_steps} steps = "
              f"{self.config.max_steps * self.config.optim.batch_size / len(self.train_rows):.1f} epochs"
              + (f"; {len(self.manifest.skipped)} bad rows skipped" if self.manifest.skipped else ""))
        obj = self.config.objective
        if obj.kind == "grpo":
            rows = self.config.optim.batch_size * obj.group_size
            per_pass = obj.rows_per_pass or rows
            print(f"[train-judge] GRPO: {obj.group_size} completions per image = {rows} per step "
                  f"({-(-rows // per_pass)} pass(es) of <= {per_pass} rows), <= {obj.max_new_tokens} new tokens each, "
                  f"temperature {obj.temperature}, epsilon {obj.epsilon}, format weight {obj.format_weight}, "
                  f"KL {obj.kl_coef}, clip {obj.clip_range}, {obj.inner_updates} update(s) per batch")

    # --- one step ---------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        c = self.config
        t0 = time.perf_counter()
        index = self.batch_indices(self.step)
        images = load_images([self.train_rows[i] for i in index])
        lr = self.optimizer.param_groups[0]["lr"]
        if c.objective.kind == "grpo":
            metrics = self._grpo_update(index, images)
        else:
            metrics = self._soft_label_update(index, images)
        self.scheduler.step()
        self.model.eval()
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        self.images_seen += len(index)
        self.step += 1
        metrics.update({"train/lr": lr, "time/images_per_s": len(index) / max(seconds, 1e-9)})
        self.history.append(metrics)
        if self.writer is not None and self.step % c.log_every == 0:
            for key, value in metrics.items():
                if math.isfinite(value):
                    self.writer.add_scalar(key, value, self.step)
        return metrics

    def _optimizer_step(self) -> float:
        """Clip (or just measure) the gradient norm, then one AdamW step; returns the norm."""
        if self.config.optim.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.max_grad_norm)
        else:
            norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in self.params if p.grad is not None))
        self.optimizer.step()
        return float(norm)

    def _soft_label_update(self, index: list[int], images: list) -> dict[str, float]:
        obj = self.config.objective
        self.model.train()
        readout = readout_logits(self.scorer, images)
        parts = soft_label_loss(readout, self.labels[index], obj.sigma, obj.digit_mass_weight, self.soft_targets[index])
        self.optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        norm = self._optimizer_step()
        return {"train/loss": float(parts.loss.detach()), "train/cross_entropy": parts.cross_entropy,
                "train/digit_mass_nll": parts.mass_nll, "train/mae": parts.mae, "train/grad_norm": norm}

    def sample_seed(self, step: int) -> int:
        """The sampling seed of step ``step``: from (seed, step) alone, so a resumed run samples the same."""
        return int(np.random.default_rng([self.config.seed, step, 13]).integers(2**62))

    def _grpo_update(self, index: list[int], images: list) -> dict[str, float]:
        obj = self.config.objective
        self.model.eval()
        rollout = sample_rollout(self.scorer, images, self.labels[index], obj, self.sample_seed(self.step))
        self.model.train()  # the old/reference passes run in the mode of the training pass
        attach_reference_logprobs(self.model, rollout, obj)
        advantages, info = group_advantages(rollout.rewards.reward, rollout.group_ids, global_std=False)
        first, norm = None, 0.0
        for _ in range(obj.inner_updates):
            self.optimizer.zero_grad(set_to_none=True)
            stats = backward_rollout(self.model, rollout, advantages, info.keep, obj)
            norm = self._optimizer_step()
            first = stats if first is None else first
        r = rollout.rewards
        n_rows = len(rollout.texts)
        return {"train/loss": first.loss, "train/policy_loss": first.policy_loss, "train/kl": first.kl,
                "train/reward": float(r.reward.mean()), "train/format_rate": float(r.format_ok.float().mean()),
                "train/accuracy": float(r.accuracy.mean()), "train/clipfrac": stats.clipfrac,
                "train/ratio_max_dev_first_update": first.ratio_max_dev, "train/zero_std_ratio": info.zero_std_ratio,
                "train/completion_tokens": rollout.completion_tokens / max(n_rows, 1), "train/grad_norm": norm,
                "train/refused_completions": float(rollout.refused)}

    def postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        """The progress bar's few numbers for this objective."""
        if self.config.objective.kind == "grpo":
            return {"reward": f"{metrics['train/reward']:.3f}", "fmt": f"{metrics['train/format_rate']:.2f}",
                    "acc": f"{metrics['train/accuracy']:.2f}", "kl": f"{metrics['train/kl']:.4f}"}
        return {"ce": f"{metrics['train/cross_entropy']:.3f}", "mae": f"{metrics['train/mae']:.2f}"}

    @property
    def images_per_second(self) -> float:
        return self.images_seen / max(self.train_seconds, 1e-9)

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoint_root(self) -> Path:
        return self.out / "checkpoints"

    def lora_state(self) -> dict[str, torch.Tensor]:
        return lora_state(self.model)

    def save(self) -> Path:
        return save_judge_checkpoint(self.checkpoint_root(), self.step, self.model, self.optimizer, self.scheduler,
                                     self.images_seen, self.config, len(self.train_rows))

    def resume(self, path: Optional[str | Path] = None) -> bool:
        """Load the latest (or given) checkpoint; False when there is none."""
        path = Path(path) if path else latest_checkpoint(self.checkpoint_root())
        if path is None:
            return False
        self.step, self.images_seen = load_judge_checkpoint(path, self.model, self.optimizer, self.scheduler)
        return True

    # --- the loop ---------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> list[dict[str, float]]:
        from tqdm.auto import tqdm

        c = self.config
        if resume and self.resume():
            print(f"[train-judge] resumed at step {self.step}")
        self.print_summary()
        bar = tqdm(total=c.max_steps, initial=self.step, disable=not c.progress, desc="judge")
        try:
            while self.step < c.max_steps:
                metrics = self.train_step()
                bar.update(1)
                bar.set_postfix(**self.postfix(metrics))
                if self.step % c.save_every == 0 or self.step == c.max_steps:
                    self.save()
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.flush()
        return self.history

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # --- the adapter folder ---------------------------------------------------------------------------
    def export_adapter(self, metrics: Optional[dict] = None) -> Path:
        """Write the adapter (+ model card + training record) into ``output_dir`` (files replaced atomically)."""
        return write_adapter_folder(self.model, self.out, self.training_record(metrics))

    def training_record(self, metrics: Optional[dict] = None) -> dict:
        return build_training_record(self.config, self.labels, len(self.train_rows), self.step, self.history,
                                     self.images_per_second, metrics, processor_pixel_limits(self.scorer.processor),
                                     lora_targets=self.model.peft_config["default"].target_modules)

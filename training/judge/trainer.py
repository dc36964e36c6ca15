"""Fine-tune the LVLM judge with a peft LoRA: soft-label SFT on the scorer's own digit readout, or GRPO.

One step: draw ``batch_size`` manifest rows from ``(seed, step)`` (an epoch-wise permutation, so
a resumed run draws what the uninterrupted one would), run them through the scorer's prompt /
answer-prefix / digit path (:func:`.judge_objective.readout_logits`), take the soft-label
cross-entropy (:func:`.judge_objective.soft_label_loss`), clip, AdamW, warm-up + linear decay.

The output folder is what every judge consumer loads: a peft adapter (``adapter_config.json`` +
``adapter_model.safetensors``), a model card ``README.md`` and ``judge_training.json`` (base
model, data, label means for the constant baseline, metrics). Checkpoints (``checkpoints/``,
atomic, :mod:`.checkpoint`) and TensorBoard logs (``tb/``) sit beside it.

``objective.kind = "grpo"`` swaps the loss for GRPO on the paper's format (:mod:`.judge_grpo`):
per image ``group_size`` sampled completions (short reasoning, then ``<answer>V, A</answer>``),
rewards for the format and for answers within ``epsilon`` of the label, group-relative
advantages, a clipped-ratio loss over the completion tokens and a KL to the base model (LoRA
disabled). Sampling is seeded from ``(seed, step)``, so checkpoints, resume and the exported adapter
work exactly as for the soft-label path. It is our own loop rather than trl's (reasons in :mod:`.judge_grpo`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ...engines.judge.options import attention_setting
from ...engines.judge.lvlm_scorer import LVLMConfig, LVLMScorer, load_lvlm
from ..checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config_fields import ConfigError
from .config import JudgeTrainConfig, judge_config_to_dict, target_modules, validate_judge_config
from .data import JudgeSample, Manifest, ManifestError, load_images, read_manifest
from ..grpo import group_advantages
from .grpo_objective import attach_reference_logprobs, backward_rollout, sample_rollout
from .soft_label_objective import readout_logits, soft_label_loss

TRAINING_RECORD = "judge_training.json"


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

    def __init__(self, config: JudgeTrainConfig, *, manifest: Optional[Manifest] = None, log: bool = True):
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
        base = load_lvlm(LVLMConfig(model=m.pretrained, dtype=m.dtype, device=m.device,
                                    max_pixels=m.max_pixels, min_pixels=m.min_pixels,
                                    attn_implementation=attention_setting(m.attention)))
        self.device, self.dtype = base.device, base.dtype
        if m.gradient_checkpointing:
            base.model.gradient_checkpointing_enable()
            base.model.enable_input_require_grads()
        peft_model = add_judge_lora(base.model, config).to(self.device)
        # a fresh scorer around the LoRA-wrapped model: the same prompt/prefix/digit code path as scoring
        self.scorer = LVLMScorer(peft_model, base.processor, base.config, device=self.device, dtype=self.dtype)
        self.model = peft_model
        self.params = [p for p in peft_model.parameters() if p.requires_grad]
        o = config.optim
        self.optimizer = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
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
        print(f"[train-judge] {len(self.train_rows)} training images (split {self.config.data.train_split!r}), "
              f"batch {self.config.optim.batch_size}, {self.config.max_steps} steps = "
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
        parts = soft_label_loss(readout, self.labels[index], obj.sigma, obj.digit_mass_weight)
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
                "train/completion_tokens": rollout.completion_tokens / max(n_rows, 1), "train/grad_norm": norm}

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
        from peft import get_peft_model_state_dict

        return {k: v.detach() for k, v in get_peft_model_state_dict(self.model).items()}

    def save(self) -> Path:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                 "images_seen": self.images_seen}
        meta = {"kind": "judge", "config": judge_config_to_dict(self.config), "train_rows": len(self.train_rows)}
        return save_checkpoint(self.checkpoint_root(), self.step, self.lora_state(), state, meta, self.config.keep_checkpoints)

    def resume(self, path: Optional[str | Path] = None) -> bool:
        """Load the latest (or given) checkpoint; False when there is none."""
        from peft import set_peft_model_state_dict

        path = Path(path) if path else latest_checkpoint(self.checkpoint_root())
        if path is None:
            return False
        weights, state, meta = load_checkpoint(path)
        if meta.get("kind") != "judge":
            raise CheckpointError(f"{path} is not a judge checkpoint (it was written by `emofeedback2 train`)")
        expected = set(self.lora_state())
        if set(weights) != expected:
            raise CheckpointError(f"checkpoint {path} holds other LoRA tensors than this run "
                                  f"({len(weights)} vs {len(expected)}); was it written with another rank/targets/model?")
        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", None):
            raise CheckpointError(f"checkpoint {path} has tensors this model lacks: {result.unexpected_keys[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.images_seen = int(state.get("images_seen", 0))
        self.step = int(meta["step"])
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

    # --- the adapter folder -----------------------------------------------------------------------
    def export_adapter(self, metrics: Optional[dict] = None) -> Path:
        """Write the adapter (+ model card + training record) into ``output_dir`` (files replaced atomically)."""
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".tmp-adapter-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(str(tmp), safe_serialization=True)
        record = self.training_record(metrics)
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
        for file in tmp.iterdir():
            os.replace(file, out / file.name)
        shutil.rmtree(tmp, ignore_errors=True)
        return out

    def training_record(self, metrics: Optional[dict] = None) -> dict:
        c = self.config
        mean_v, mean_a = (float(x) for x in self.labels.mean(dim=0))
        return {
            "base_model": c.model.pretrained,
            "objective": c.objective.kind,
            "sigma": c.objective.sigma,
            "objective_settings": objective_settings(c.objective),
            "manifest": str(Path(c.data.manifest).resolve()),
            "train_split": c.data.train_split,
            "train_images": len(self.train_rows),
            "shuffled_labels_control": c.data.shuffle_labels,
            "label_mean": {"valence": mean_v, "arousal": mean_a},
            "steps": self.step,
            "batch_size": c.optim.batch_size,
            "lora": {"rank": c.model.lora_rank, "alpha": c.model.lora_alpha,
                     "targets": self.model.peft_config["default"].target_modules},
            "train_images_per_s": self.images_per_second,
            "final_train_cross_entropy": self.history[-1].get("train/cross_entropy") if self.history else None,
            "final_train_reward": self.history[-1].get("train/reward") if self.history else None,
            "metrics": metrics or {},
        }


GRPO_FIELDS = ("group_size", "temperature", "max_new_tokens", "epsilon", "format_weight", "kl_coef", "clip_range",
               "inner_updates")


def objective_settings(objective: Any) -> dict:
    """The fields of ``objective`` that shaped this adapter (for the training record and model card)."""
    if objective.kind == "grpo":
        return {name: getattr(objective, name) for name in GRPO_FIELDS}
    return {"sigma": objective.sigma, "digit_mass_weight": objective.digit_mass_weight}


def _objective_lines(record: dict) -> list[str]:
    if record["objective"] == "grpo":
        s = record.get("objective_settings") or {}
        return [
            "with `emofeedback2 train-judge --set objective.kind=grpo`: GRPO on the paper's output format (a short",
            "reasoning in `<think></think>`, then `<answer>V, A</answer>`), rewarded for the format and for answers",
            f"within epsilon = {s.get('epsilon')} of the label. This trains the generate-then-parse (reasoning) mode;",
            "the digit readout the nodes score with is not trained directly (the held-out table below measures it).",
        ]
    return ["with `emofeedback2 train-judge` (soft-label cross-entropy on the scorer's digit readout after",
            "`Valence: ` / `Arousal: `)."]


def _objective_summary(record: dict) -> str:
    if record["objective"] == "grpo":
        s = record.get("objective_settings") or {}
        return (f"grpo (G={s.get('group_size')}, epsilon {s.get('epsilon')}, format weight {s.get('format_weight')}, "
                f"KL {s.get('kl_coef')}, final train reward {_fmt(record.get('final_train_reward'))})")
    return f"{record['objective']} (sigma {record['sigma']} digits)"


def model_card(record: dict) -> str:
    """A short model card for the adapter folder: base model, data, objective and metrics."""
    lines = [
        "# EmoFeedback² judge adapter",
        "",
        "A peft LoRA for a vision-language model that reads valence and arousal of an image in [-3, 3], trained",
        *_objective_lines(record),
        "",
        f"- Base model: `{record['base_model']}`",
        f"- Data: `{record['manifest']}` (split `{record['train_split']}`, {record['train_images']} images"
        + (", labels SHUFFLED: a control run" if record["shuffled_labels_control"] else "") + ")",
        f"- Objective: {_objective_summary(record)}, {record['steps']} steps of "
        f"{record['batch_size']} images; LoRA r={record['lora']['rank']}, alpha={record['lora']['alpha']}",
        f"- Training label mean (the constant baseline): V {record['label_mean']['valence']:+.3f}, "
        f"A {record['label_mean']['arousal']:+.3f}",
        "",
        "Load it with `emofeedback2 score --lvlm <base> --adapter <this folder>`, the LVLM loader node's adapter",
        "option (put the folder under `ComfyUI/models/LLM/<name>`), or `LVLMConfig(adapter=...)`.",
    ]
    metrics = record.get("metrics") or {}
    if metrics:
        lines += ["", f"## Held-out metrics ({metrics.get('split', 'eval')} split, n={metrics.get('n')})", "",
                  "| model | axis | MAE | PLCC | SRCC | MAE constant |", "|---|---|---|---|---|---|"]
        for name in ("base", "trained"):
            block = metrics.get(name) or {}
            for axis in ("valence", "arousal"):
                m = block.get(axis)
                if m:
                    lines.append(f"| {name} | {axis} | {_fmt(m['mae'])} | {_fmt(m['plcc'])} | {_fmt(m['srcc'])} | "
                                 f"{_fmt(m['mae_constant'])} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def read_training_record(adapter: str | Path) -> Optional[dict]:
    """The ``judge_training.json`` of an adapter folder, or None (adapters from elsewhere)."""
    path = Path(adapter) / TRAINING_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None

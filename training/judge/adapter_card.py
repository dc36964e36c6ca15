"""The adapter folder train-judge writes: the training record (``judge_training.json``), the model card, the export.

Every judge consumer loads this folder: a peft adapter (``adapter_config.json`` +
``adapter_model.safetensors``), a model card ``README.md`` and ``judge_training.json`` (base model,
data, label means for the constant baseline, objective settings, metrics).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ...engines.judge.adapter_record import TRAINING_RECORD, read_adapter_record
from .config import JudgeTrainConfig, effective_lr, target_modules


def build_training_record(config: JudgeTrainConfig, labels: torch.Tensor, train_images: int, steps: int,
                          history: list[dict[str, float]], images_per_second: float,
                          metrics: Optional[dict] = None, pixels: Optional[dict] = None,
                          lora_targets: Any = None) -> dict:
    """The ``judge_training.json`` content of a run after ``steps`` steps.

    ``lora_targets``: what peft wrapped (the architecture's targets when ``model.target_modules`` is empty).
    ``pixels``: the processor's pixel limits during training; every loader applies them with the
    adapter (:func:`...engines.judge.lvlm_loading.apply_pixel_limits`).
    """
    c = config
    mean_v, mean_a = (float(x) for x in labels.mean(dim=0))
    return {
        "base_model": c.model.pretrained,
        "objective": c.objective.kind,
        "sigma": c.objective.sigma,
        "objective_settings": objective_settings(c.objective),
        "manifest": str(Path(c.data.manifest).resolve()),
        "train_split": c.data.train_split,
        "train_images": train_images,
        "shuffled_labels_control": c.data.shuffle_labels,
        "label_mean": {"valence": mean_v, "arousal": mean_a},
        "steps": steps,
        "batch_size": c.optim.batch_size,
        "lr": effective_lr(c),
        "pixels": {k: v for k, v in (pixels or {}).items() if v is not None},
        "lora": {"rank": c.model.lora_rank, "alpha": c.model.lora_alpha, "targets": _targets(lora_targets) if lora_targets is not None else target_modules(c.model)},
        "train_images_per_s": images_per_second,
        "final_train_cross_entropy": history[-1].get("train/cross_entropy") if history else None,
        "final_train_reward": history[-1].get("train/reward") if history else None,
        "metrics": metrics or {},
    }


def write_adapter_folder(model: Any, out: Path, record: dict) -> Path:
    """Write the peft adapter, ``judge_training.json`` and the model card into ``out`` (files replaced atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-adapter-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    (tmp / "README.md").write_text(model_card(record), encoding="utf-8")
    for file in tmp.iterdir():
        os.replace(file, out / file.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return out


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
        f"{record['batch_size']} images at lr {record.get('lr', 'n/a')}; LoRA r={record['lora']['rank']}, "
        f"alpha={record['lora']['alpha']}",
        f"- Training label mean (the constant baseline): V {record['label_mean']['valence']:+.3f}, "
        f"A {record['label_mean']['arousal']:+.3f}",
        f"- Images read at {_pixels(record.get('pixels') or {})}; every loader applies these limits with the "
        "adapter unless told otherwise",
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


def _pixels(pixels: dict) -> str:
    parts = [f"{name} {pixels[name]}" for name in ("min_pixels", "max_pixels") if name in pixels]
    return ", ".join(parts) if parts else "the processor's own pixel limits"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def read_training_record(adapter: str | Path) -> Optional[dict]:
    """The ``judge_training.json`` of an adapter folder, or None (adapters from elsewhere).

    The one reader, :func:`...engines.judge.adapter_record.read_adapter_record` (``~`` expanded, size cap)."""
    return read_adapter_record(adapter)


def _targets(value: Any) -> Any:
    """peft keeps a list of names as a set: write it sorted (JSON), a regex as it is."""
    return sorted(value) if isinstance(value, (set, frozenset, list, tuple)) else value


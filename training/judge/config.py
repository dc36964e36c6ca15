"""Typed, documented configuration of judge (LVLM scorer) fine-tuning: ``emofeedback2 train-judge``.

Same machinery as the generator trainer's config (:mod:`.config`): one dataclass per concern,
every field with a default and a help text, TOML/YAML files, ``--set section.field=value``
overrides coerced to the field's type, unknown names refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ...engines.judge.options import ATTENTION_SETTINGS
from ..config_fields import ConfigError, _coerce, _f, _fill, _number

OBJECTIVES = ("soft_label", "grpo")

#: Peak learning rate per objective when ``optim.lr`` is not set: values for a LoRA on a real-size judge.
#: soft_label: LoRA SFT of a 7B VLM runs at 1e-4..2e-4 (EEmo-Logic's stage 1: 2e-4 at 128 images per step; we
#: default to 8); grpo: trl's ``GRPOConfig.learning_rate`` default (EEmo-Logic's GRPO stage ran with it).
DEFAULT_LR = {"soft_label": 1e-4, "grpo": 1e-6}
#: Above these, a learning rate on a real-size judge is one tuned for tiny test models (they train at 4e-3..2e-2).
REAL_SIZE_MAX_LR = {"soft_label": 2e-4, "grpo": 1e-5}
#: Below this many parameters a judge is a tiny test model: the smallest real VLMs (SmolVLM-256M) are 2.5x above it.
REAL_SIZE_PARAMS = 100_000_000
FAMILY_HINT = "a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model folder (or hub id)"

#: peft target-module regexes. Language model: attention and MLP projections of every decoder layer.
LANGUAGE_TARGETS = r"(?:.*\.)?language_model\..*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
#: Vision merger (patch merger MLP): Qwen2/2.5-VL ``visual.merger.mlp.{0,2}``, Qwen3-VL ``linear_fc{1,2}``.
MERGER_TARGETS = r"(?:.*\.)?visual\.merger\.(?:mlp\.0|mlp\.2|linear_fc1|linear_fc2)"


@dataclass
class JudgeModelConfig:
    pretrained: str = _f("", FAMILY_HINT)
    dtype: str = _f("auto", "base weights dtype: auto (bf16 on a capable GPU, else fp32), float32, bfloat16, float16")
    device: str = _f("auto", "auto, cpu, cuda, cuda:N or mps")
    lora_rank: int = _f(16, "LoRA rank r")
    lora_alpha: float = _f(64.0, "LoRA alpha (update scaled by alpha/r)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA input")
    train_merger: bool = _f(True, "also put LoRA on the vision merger (the projection from vision features to the LM)")
    target_modules: str = _f("", "custom peft target_modules regex; empty = every linear layer of the language "
                                 "model (+ the vision-to-text projector), found from the model's module tree")
    max_pixels: Optional[int] = _f(None, "cap on pixels per image for the vision encoder (None = the processor's)")
    min_pixels: Optional[int] = _f(None, "floor on pixels per image (None = the processor's)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory, slower)")
    attention: str = _f("auto", "attention kernel: 'auto' (transformers' default), 'sdpa', 'eager' or "
                        "'flash_attention_2' (CUDA GPU + the flash-attn package)")


@dataclass
class JudgeDataConfig:
    manifest: str = _f("", "CSV/JSONL manifest: image,valence,arousal[,scale][,split] (image relative to the manifest)")
    train_split: str = _f("train", "rows of this split (and rows without a split) are trained on")
    skip_bad: bool = _f(False, "skip bad manifest rows (counted) instead of stopping at the first")
    shuffle_labels: bool = _f(False, "CONTROL ONLY: permute labels between images (destroys the signal)")


@dataclass
class JudgeObjectiveConfig:
    kind: str = _f("soft_label", "'soft_label': cross-entropy of the digit distribution at each answer prefix "
                   "against a discretised Gaussian on the label (the readout the scorer uses); 'grpo': GRPO on the "
                   "paper's reasoning-then-answer format (accuracy-within-epsilon + format rewards)")
    sigma: float = _f(0.7, "soft_label: std of the soft label in digit units (1..9 scale; 1 digit = 0.75 V-A units)")
    digit_mass_weight: float = _f(0.05, "soft_label: weight of -log(probability on any digit) (keeps answers on the digits)")
    group_size: int = _f(8, "grpo: completions sampled per image (the group G of the advantage)")
    temperature: float = _f(1.0, "grpo: sampling temperature (full distribution: no top-k/top-p); log-probs use the same")
    max_new_tokens: int = _f(128, "grpo: cap on tokens per completion (short reasoning + answer)")
    epsilon: float = _f(0.5, "grpo: accuracy threshold in V-A units: an axis scores 1 when |answer - label| <= epsilon")
    format_weight: float = _f(0.5, "grpo: weight of the format reward (1 for one well-formed <think>..</think>"
                              "<answer>V, A</answer> in range); reward = accuracy (mean of the two axes) + this x format")
    kl_coef: float = _f(0.04, "grpo: weight of the per-token KL to the base model (the LoRA disabled)")
    clip_range: float = _f(0.2, "grpo: PPO clip on the per-token probability ratio")
    inner_updates: int = _f(1, "grpo: optimizer updates on each batch of completions (1 = on-policy, the ratio stays 1)")
    rows_per_pass: int = _f(0, "grpo: completions per forward pass when sampling and training (0 = all B x G at once)")


@dataclass
class JudgeOptimConfig:
    lr: Optional[float] = _f(None, "peak learning rate (linear warm-up, then linear decay to 0); None = the "
                             "objective's default for a real-size judge: 1e-4 for soft_label (LoRA SFT), 1e-6 for grpo "
                             "(trl's GRPO default). Tiny test models need ~4e-3")
    warmup_steps: int = _f(10, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: list = _f([0.9, 0.999], "AdamW betas")
    max_grad_norm: float = _f(1.0, "gradient-norm clip (0 disables)")
    batch_size: int = _f(8, "images per optimizer step")


@dataclass
class JudgeTrainConfig:
    model: JudgeModelConfig = field(default_factory=JudgeModelConfig)
    data: JudgeDataConfig = field(default_factory=JudgeDataConfig)
    objective: JudgeObjectiveConfig = field(default_factory=JudgeObjectiveConfig)
    optim: JudgeOptimConfig = field(default_factory=JudgeOptimConfig)
    output_dir: str = _f("runs/judge", "the adapter (adapter_config.json + adapter_model.safetensors + README.md), "
                         "checkpoints/ and tb/ go here")
    seed: int = _f(0, "master seed: LoRA init and every step's batch derive from (seed, step)")
    max_steps: int = _f(300, "optimizer steps")
    save_every: int = _f(50, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(2, "how many step checkpoints to keep")
    log_every: int = _f(1, "TensorBoard scalars every N steps")
    progress: bool = _f(True, "show a tqdm progress bar")


SECTIONS = {"model": JudgeModelConfig, "data": JudgeDataConfig, "objective": JudgeObjectiveConfig, "optim": JudgeOptimConfig}
_TOP = [f for f in dataclasses.fields(JudgeTrainConfig) if f.name not in SECTIONS]


def judge_config_from_dict(data: dict) -> JudgeTrainConfig:
    data = dict(data)
    kwargs: dict[str, Any] = {name: _fill(cls, data.pop(name, {}) or {}, name) for name, cls in SECTIONS.items()}
    known = {f.name: f for f in _TOP}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} at the top level; known: {sorted(known)} and sections {sorted(SECTIONS)}")
    kwargs.update({k: _coerce(v, known[k].type, k) for k, v in data.items()})
    return JudgeTrainConfig(**kwargs)


def load_judge_config(path: str | Path) -> JudgeTrainConfig:
    """Read a TOML or YAML judge-training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        return judge_config_from_dict(tomllib.loads(text))
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return judge_config_from_dict(yaml.safe_load(text) or {})
    raise ConfigError(f"config {path} must end in .toml, .yaml or .yml")


def apply_judge_overrides(config: JudgeTrainConfig, overrides: list[str]) -> JudgeTrainConfig:
    """``section.field=value`` or top-level ``field=value``; values are coerced to the field's type."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. optim.lr=1e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) == 2 and parts[0] in SECTIONS:
            target, name = getattr(config, parts[0]), parts[1]
        elif len(parts) == 1 and parts[0] not in SECTIONS:
            target, name = config, parts[0]
        else:
            raise ConfigError(f"override {key!r}: use section.field=value with a section in {sorted(SECTIONS)}, or a top-level field")
        fields = {f.name: f for f in dataclasses.fields(target)}
        if name not in fields or name in SECTIONS:
            raise ConfigError(f"override {key!r}: unknown field; known: {sorted(n for n in fields if n not in SECTIONS)}")
        setattr(target, name, _coerce(value, fields[name].type, key))
    return config


def validate_judge_config(config: JudgeTrainConfig) -> None:
    """Fail early, with the fix, on settings that cannot work."""
    m, o, obj = config.model, config.optim, config.objective
    if not m.pretrained:
        raise ConfigError(f"model.pretrained is empty: pass --model with {FAMILY_HINT}")
    if not config.data.manifest:
        raise ConfigError("data.manifest is empty: pass --data with a CSV/JSONL manifest")
    if m.lora_rank < 1 or m.lora_alpha <= 0 or not 0 <= m.lora_dropout < 1:
        raise ConfigError("model.lora_rank must be >= 1, model.lora_alpha > 0 and model.lora_dropout in [0, 1)")
    if m.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype must be auto, float32, bfloat16 or float16, got {m.dtype!r}")
    if m.attention not in ATTENTION_SETTINGS:
        raise ConfigError(f"model.attention must be one of {', '.join(ATTENTION_SETTINGS)}, got {m.attention!r}")
    if obj.kind not in OBJECTIVES:
        raise ConfigError(f"objective.kind={obj.kind!r}: use one of {', '.join(OBJECTIVES)}")
    if obj.sigma <= 0 or obj.digit_mass_weight < 0:
        raise ConfigError("objective.sigma must be > 0 and objective.digit_mass_weight >= 0")
    if obj.kind == "grpo":
        _validate_grpo(obj)
    if (o.lr is not None and (o.lr < 0 or o.lr != o.lr)) or o.batch_size < 1 or o.warmup_steps < 0 or o.max_grad_norm < 0:
        raise ConfigError("optim.lr and optim.max_grad_norm must be >= 0, optim.batch_size >= 1, optim.warmup_steps >= 0")
    if config.max_steps < 0 or config.save_every < 1 or config.keep_checkpoints < 1 or config.log_every < 1:
        raise ConfigError("max_steps must be >= 0; save_every, keep_checkpoints and log_every >= 1")


def _validate_grpo(obj: JudgeObjectiveConfig) -> None:
    """Every GRPO field finite and in its range; the error names the field and the range."""
    _number(obj.group_size, "objective.group_size", 2, 1024, integer=True)  # a group of one has no advantage
    _number(obj.temperature, "objective.temperature", 0, 10, lo_open=True)
    _number(obj.max_new_tokens, "objective.max_new_tokens", 8, 8192, integer=True)  # room for <answer>V, A</answer>
    _number(obj.epsilon, "objective.epsilon", 0, 6, lo_open=True)  # V-A units; 6 = the whole scale
    _number(obj.format_weight, "objective.format_weight", 0, 100)
    _number(obj.kl_coef, "objective.kl_coef", 0, 100)
    _number(obj.clip_range, "objective.clip_range", 0, 1, lo_open=True, hi_open=True)
    _number(obj.inner_updates, "objective.inner_updates", 1, 64, integer=True)
    _number(obj.rows_per_pass, "objective.rows_per_pass", 0, 1 << 20, integer=True)


def format_lr(value: float) -> str:
    """``1e-4``, ``4e-3``, ``1.5e-4``: learning rates as people write them."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def effective_lr(config: JudgeTrainConfig) -> float:
    """``optim.lr``, or the objective's default when it is not set (:data:`DEFAULT_LR`)."""
    return float(config.optim.lr) if config.optim.lr is not None else DEFAULT_LR[config.objective.kind]


def real_size_warnings(config: JudgeTrainConfig, n_params: int) -> list[str]:
    """Settings tuned on tiny test models met a real-size judge (``n_params`` >= :data:`REAL_SIZE_PARAMS`)."""
    kind, lr = config.objective.kind, effective_lr(config)
    if n_params < REAL_SIZE_PARAMS or lr <= REAL_SIZE_MAX_LR[kind]:
        return []
    return [f"optim.lr = {format_lr(lr)} is a learning rate for tiny test models; this judge has "
            f"{n_params / 1e9:.2f}B parameters, where a LoRA with the {kind} objective trains at about "
            f"{format_lr(DEFAULT_LR[kind])} (at most ~{format_lr(REAL_SIZE_MAX_LR[kind])}): drop optim.lr to take "
            "that default, or set it in that range"]


def judge_config_to_dict(config: JudgeTrainConfig) -> dict:
    return dataclasses.asdict(config)


def describe_judge_fields() -> str:
    """Every field with its default and help text (``emofeedback2 train-judge --help-config``)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}  # {f.metadata.get('help', '')}")
    lines.append("[top level]")
    for f in _TOP:
        lines.append(f"  {f.name} = {f.default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def target_modules(config: JudgeModelConfig, model: Any = None) -> str:
    """The peft target regex: ``model.target_modules`` when set; else read from ``model``'s module tree
    (its language model's linear layers, + the vision-to-text projector with ``train_merger``; see
    :mod:`.lora_targets`); without a model, the Qwen-VL names (kept for callers that have none)."""
    if config.target_modules:
        return config.target_modules
    if model is not None:
        from .lora_targets import architecture_targets

        return architecture_targets(model, include_projector=config.train_merger)
    return f"(?:{LANGUAGE_TARGETS})|(?:{MERGER_TARGETS})" if config.train_merger else LANGUAGE_TARGETS

"""Typed, documented configuration for GRPO training of the generator LoRA (+ emotion adapter).

One dataclass per concern, every field with a default and a ``help`` text (``emofeedback2 train
--help-config`` prints them). Configs load from TOML or YAML; ``--set section.field=value`` overrides
any field. :func:`derive` does the batch arithmetic the user would otherwise get wrong (samples per
step, micro-batches, optimizer updates per step) and fails early on impossible combinations.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config_fields import ConfigError, _coerce, _f, _fill, _number
from ...engines.generation.pipeline_families import ARCHES as MODEL_ARCHES
from ...engines.judge.options import ATTENTION_SETTINGS


@dataclass
class ModelConfig:
    pretrained: str = _f("", "diffusers pipeline: a local save_pretrained folder or a hub id (SD1.5, SDXL, SD3.x, "
                         "Flux.1, Flux.2 Klein, Qwen-Image or Z-Image)")
    arch: str = _f("auto", "'auto' (detected from the pipeline), 'sd15', 'sdxl', 'sd3', 'flux', 'flux2_klein', "
                   "'qwen_image' or 'z_image'")
    dtype: str = _f("float32", "dtype of the frozen base weights: float32, float16 or bfloat16 (LoRA/adapter stay fp32)")
    lora_rank: int = _f(8, "LoRA rank r")
    lora_alpha: float = _f(8.0, "LoRA alpha; the update is scaled by alpha/r (exported as kohya '.alpha')")
    lora_targets: list = _f([], "module names LoRA wraps; empty = the attention projections of the arch")
    train_adapter: bool = _f(True, "train the emotion adapter jointly (it feeds the target V-A into the conditioning)")
    adapter_init: Optional[str] = _f(None, "optional emotion adapter .safetensors to start from (else a fresh identity adapter)")
    adapter_hidden: int = _f(0, "hidden width of a fresh emotion adapter (0 = the adapter's default)")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory, ~30% slower)")
    quantization: str = _f("none", "frozen denoiser weights: 'none', '8bit' or '4bit' (QLoRA: quantised as they load, "
                           "LoRA and adapter stay fp32); see quantization_backend")
    quantization_backend: str = _f("bitsandbytes", "'bitsandbytes' (8bit LLM.int8 / 4bit NF4; CUDA only) or 'torchao' "
                                   "(8bit int8 weight-only; also runs on CPU)")


@dataclass
class SamplingConfig:
    steps: int = _f(10, "sampling steps of each rollout (Flow-GRPO trains on 10, evaluates on 40)")
    eval_steps: int = _f(20, "sampling steps of the deterministic evaluation sampler")
    resolution: int = _f(512, "image side in pixels (multiple of 8)")
    guidance_scale: float = _f(4.5, "classifier-free guidance; 1.0 disables the unconditional branch. Guidance-"
                               "distilled Flux.1-dev feeds it to its guidance embedding (3.5 typical, no negative "
                               "branch); step-distilled Flux.2 Klein ignores it; Z-Image-Turbo runs at 1.0")
    negative_prompt: str = _f("", "negative prompt for the unconditional branch")
    eta: float = _f(1.0, "DDIM eta for SD1.5/SDXL rollouts; must be > 0 (eta=0 has no log-prob)")
    sde_noise_level: float = _f(0.7, "'a' in the flow SDE sigma_t = a*sqrt(t/(1-t)) for flow-matching rollouts "
                                "(SD3.x, Flux, Qwen-Image, Z-Image)")
    adapter_strength: float = _f(1.0, "emotion adapter strength during rollouts and training")
    cfg_free_training: bool = _f(False, "Flow-GRPO: roll out and train without guidance (half the denoiser batch); "
                                 "evaluation still samples with guidance_scale")


@dataclass
class DataConfig:
    prompts_file: str = _f("", "text file, one prompt per line ('#' comments); empty = the shipped neutral prompts")
    targets: str = _f("uniform", "'uniform' over [-3,3]^2, or a CSV/JSONL file with valence,arousal[,prompt] rows")
    cache_prompt_embeddings: bool = _f(False, "encode every training prompt once, keep the embeddings in host memory "
                                       "(always on for language-model encoders: Flux.2 Klein, Qwen-Image, Z-Image) "
                                       "and free the text encoders (SD3.x: frees T5-XXL + both CLIPs)")
    prompt_cache_file: str = _f("", "safetensors file for the prompt cache, reused when model and prompts match "
                                "('' = host memory only)")


@dataclass
class GRPOConfig:
    group_size: int = _f(8, "G: images per (prompt, target) group, each with its own seed")
    groups_per_step: int = _f(4, "groups sampled per step on EACH process (a group never spans processes)")
    batch_size: int = _f(4, "micro-batch for rollouts AND training (the same, so the first ratio is exactly 1)")
    updates_per_step: int = _f(1, "optimizer updates per step (micro-batches are split evenly between them)")
    inner_epochs: int = _f(1, "passes over each step's samples")
    clip_range: float = _f(1e-4, "PPO clip on the per-step likelihood ratio")
    adv_clip: float = _f(5.0, "advantages are clipped to +-adv_clip")
    global_std: bool = _f(True, "divide by the std over all groups (True) or each group's own std (False)")
    kl_beta: float = _f(0.01, "weight of the KL to the base model (adapters disabled); 0 skips the reference pass")
    train_timestep_fraction: float = _f(1.0, "fraction of the sampling steps trained per sample (random subset)")
    train_window: list = _f([], "[start, end) step indices to train on (MixGRPO-style window); empty = all")
    shuffle_advantages: bool = _f(False, "CONTROL ONLY: permute advantages between samples (destroys the signal)")
    ratio_norm: str = _f("none", "'none' or 'grpo_guard' (GRPO-Guard: centre and rescale the per-step log ratio "
                         "so its mean is not biased below 1 at low-noise steps; flow models also reweight by 1/|dt|)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-4, "learning rate of the LoRA parameters")
    adapter_lr: Optional[float] = _f(None, "learning rate of the emotion adapter (None = lr)")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    betas: list = _f([0.9, 0.999], "AdamW betas")
    eps: float = _f(1e-8, "AdamW eps")
    max_grad_norm: float = _f(1.0, "gradient-norm clip (0 disables)")
    ema: bool = _f(False, "keep an EMA of the trainable weights; exports use the EMA")
    ema_decay: float = _f(0.95, "EMA decay per optimizer update")


@dataclass
class RewardSpec:
    kind: str = _f("color", "'lvlm' (V-A from the LVLM scorer's digit readout), 'lvlm_reasoning' (the judge writes "
                   "an answer in a preset's format, e.g. the paper's reasoning format a GRPO-trained judge adapter "
                   "writes, and it is parsed), 'color' (colour heuristic V-A), 'brightness' (toy: brightness toward "
                   "target valence), 'clip_quality' (PickScore-style)")
    weight: float = _f(1.0, "weight in the summed reward")
    normalize: str = _f("group", "one rule for ALL terms: 'group' (divide by the term's within-group std: weights "
                        "set shares), 'batch' (z-score over the step) or 'none' (raw scales)")
    path: str = _f("", "model folder / hub id: the LVLM for 'lvlm'/'lvlm_reasoning', a CLIPModel+processor for "
                   "'clip_quality'")
    adapter: str = _f("", "'lvlm'/'lvlm_reasoning': a peft judge adapter folder from `emofeedback2 train-judge` "
                      "('' = none); a GRPO adapter needs 'lvlm_reasoning', a soft-label one 'lvlm'")
    preset: str = _f("", "'lvlm_reasoning' only: how the judge is asked and read: 'paper' (default: the paper's "
                     "reasoning format), 'eemo-logic', or a preset .toml/.json file")
    samples: int = _f(1, "'lvlm_reasoning': answers per question and image; the reading is their mean (> 1 needs "
                      "temperature > 0; their spread is logged)")
    temperature: float = _f(0.0, "'lvlm_reasoning': 0 = greedy decoding; > 0 = sample at this temperature")
    max_new_tokens: int = _f(0, "'lvlm_reasoning': cap on generated tokens per answer (0 = the GRPO adapter's "
                             "training cap, else the preset's)")
    reading: str = _f("expected", "'lvlm_reasoning': 'expected' (digit-by-digit expected value of the written "
                      "number where the format allows it; free), 'exact_expected' (exact to the second decimal: ten "
                      "extra rows per number) or 'parsed' (the number as written)")
    unparsable_reward: float = _f(0.0, "'lvlm_reasoning': reward of an answer that cannot be parsed (counted and "
                                  "logged; 0 = the worst a readable answer gets)")
    device: str = _f("", "device of the reward model ('' = the training device)")
    dtype: str = _f("float32", "dtype of the reward model")
    offload: bool = _f(False, "move the reward model to CPU between uses (saves GPU memory); with "
                       "reward_schedule='step' that is one swap in and out per step")
    quantization: str = _f("none", "LVLM judge weights: 'none', '8bit' or '4bit' (bitsandbytes, CUDA only)")
    attention: str = _f("auto", "LVLM judge attention kernel: 'auto' (transformers' default), 'sdpa', 'eager' or "
                        "'flash_attention_2' (CUDA GPU + the flash-attn package)")
    images_per_pass: int = _f(0, "LVLM judge images per forward pass inside its one call per step (0 = all)")
    max_pixels: int = _f(0, "LVLM judge: cap on pixels per image for its vision encoder (0 = the limit the adapter "
                         "was trained at, from its judge_training.json; without one, the model's own)")
    role: str = _f("auto", "'emotion', 'quality' or 'auto' (clip_quality = quality, others = emotion): how the "
                   "held-out check reports it")


@dataclass
class HeldoutConfig:
    every: int = _f(0, "held-out check every N steps (0 = off): deterministic sampler on a fixed set, emotion "
                    "reward, quality reward and distance to the base model's images logged apart")
    prompts_file: str = _f("", "held-out prompts, one a line ('' = the first num_prompts training prompts)")
    num_prompts: int = _f(4, "prompts in the held-out set")
    targets: list = _f([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]], "V-A targets of the held-out set")
    steps: int = _f(0, "sampling steps of the held-out images (0 = sampling.eval_steps)")
    tolerance: float = _f(0.0, "warn when emotion reward rises and quality falls by more than this between checks")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    rewards: list = field(default_factory=lambda: [RewardSpec()], metadata={"help": "list of [[rewards]] tables"})
    output_dir: str = _f("runs/grpo", "checkpoints, TensorBoard logs and exports go here")
    seed: int = _f(0, "master seed: prompts, targets and every sample's noise derive from (seed, step)")
    max_steps: int = _f(100, "GRPO steps (one step = sample, score, update)")
    save_every: int = _f(10, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = _f(2, "how many step checkpoints to keep")
    log_every: int = _f(1, "TensorBoard scalars every N steps")
    image_log_every: int = _f(10, "TensorBoard sample grid every N steps (0 = never)")
    device: str = _f("auto", "'auto' (accelerate's choice), 'cpu' or 'cuda'")
    reward_workers: int = _f(1, "threads scoring rewards while the next micro-batch is sampled (0 = inline)")
    reward_schedule: str = _f("step", "'step': one reward call over all of a step's images (the judge is swapped in "
                              "at most once per step); 'micro_batch': score each micro-batch on the worker while "
                              "the next is sampled (needs the judge resident: another device or spare memory)")
    export_at_end: bool = _f(True, "write the kohya LoRA, diffusers LoRA and adapter into output_dir/export at the end")
    progress: bool = _f(True, "show a tqdm progress bar")


SECTIONS = {"model": ModelConfig, "sampling": SamplingConfig, "data": DataConfig, "grpo": GRPOConfig, "optim": OptimConfig,
            "heldout": HeldoutConfig}


# --- loading, overrides ---------------------------------------------------------------------------------


def config_from_dict(data: dict) -> TrainConfig:
    data = dict(data)
    kwargs: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        kwargs[name] = _fill(cls, data.pop(name, {}) or {}, name)
    rewards = data.pop("rewards", None)
    if rewards is not None:
        if not isinstance(rewards, list) or not rewards:
            raise ConfigError("rewards must be a non-empty list of tables ([[rewards]] in TOML)")
        kwargs["rewards"] = [_fill(RewardSpec, r, f"rewards[{i}]") for i, r in enumerate(rewards)]
    top = _fill(_TopLevel, data, "top level")
    kwargs.update(dataclasses.asdict(top))
    return TrainConfig(**kwargs)


@dataclass
class _TopLevel:  # the scalar top-level fields, for validation of unknown names
    output_dir: str = "runs/grpo"
    seed: int = 0
    max_steps: int = 100
    save_every: int = 10
    keep_checkpoints: int = 2
    log_every: int = 1
    image_log_every: int = 10
    device: str = "auto"
    reward_workers: int = 1
    reward_schedule: str = "step"
    export_at_end: bool = True
    progress: bool = True


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) training config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see training/configs/*.toml for examples")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config {path} must end in .toml, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    if suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {path} is not valid TOML: {exc}") from exc
    else:
        import yaml

        try:  # safe_load: a '!!python/...' tag is refused, never executed
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise ConfigError(f"config {path} is not valid (safe) YAML: {detail}") from exc
        data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a table of sections (model, sampling, ...), "
                          f"not a {type(data).__name__}")
    return config_from_dict(data)


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``section.field=value`` (or top-level ``field=value``) strings; values parse as JSON when they can."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value, e.g. grpo.group_size=4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        target: Any = config
        if parts[0] == "rewards":
            if len(parts) != 3 or not parts[1].isdigit():
                raise ConfigError(f"override {key!r}: reward fields are set as rewards.<index>.<field>")
            index = int(parts[1])
            if index >= len(config.rewards):
                raise ConfigError(f"override {key!r}: there are only {len(config.rewards)} rewards")
            target, parts = config.rewards[index], parts[2:]
        elif len(parts) == 2:
            if parts[0] not in SECTIONS:
                raise ConfigError(f"override {key!r}: unknown section {parts[0]!r}; sections: {sorted(SECTIONS)}")
            target, parts = getattr(config, parts[0]), parts[1:]
        elif len(parts) != 1:
            raise ConfigError(f"override {key!r}: use section.field=value")
        names = {f.name: f for f in dataclasses.fields(target)}
        if parts[0] not in names or parts[0] in SECTIONS or parts[0] == "rewards":
            raise ConfigError(f"override {key!r}: unknown field; known: {sorted(n for n in names if n not in SECTIONS)}")
        setattr(target, parts[0], _coerce(value, names[parts[0]].type, key))
    return config


def config_to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def describe_fields() -> str:
    """Every field with its default and help text (``emofeedback2 train --help-config``)."""
    lines = []
    for section, cls in list(SECTIONS.items()) + [("rewards[i]", RewardSpec)]:
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}  # {f.metadata.get('help', '')}")
    lines.append("[top level]")
    for f in dataclasses.fields(TrainConfig):
        if f.name in SECTIONS or f.name == "rewards":
            continue
        lines.append(f"  {f.name} = {f.default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


# --- derived numbers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """Numbers computed from the config and the process count; printed at start."""

    num_processes: int
    samples_per_step_per_process: int
    samples_per_step: int
    groups_per_step: int
    micro_batches_per_step: int
    micro_batches_per_update: int
    trained_timesteps: int
    backward_passes_per_update: int
    optimizer_updates_per_step: int
    total_optimizer_updates: int
    total_images: int

    def summary(self) -> str:
        return (
            f"processes={self.num_processes} groups/step={self.groups_per_step} "
            f"samples/step={self.samples_per_step} ({self.samples_per_step_per_process}/process) "
            f"micro-batches/step/process={self.micro_batches_per_step} trained timesteps/sample={self.trained_timesteps} "
            f"backward passes/update={self.backward_passes_per_update} updates/step={self.optimizer_updates_per_step} "
            f"total updates={self.total_optimizer_updates} total images={self.total_images}"
        )


def trained_step_indices_count(config: TrainConfig) -> int:
    steps = config.sampling.steps
    window = config.grpo.train_window
    if window:
        start, end = int(window[0]), int(window[1])
        span = end - start
    else:
        span = steps
    return max(1, int(math.ceil(span * config.grpo.train_timestep_fraction)))


SEED_MAX = 2**63 - 1  # numpy's and torch's seeders both take 0..2**63-1 without wrapping
MAX_RESOLUTION = 8192


def _check_numbers(config: TrainConfig) -> None:
    """Every numeric field finite and in its range (NaN/inf would train NaN weights and exit 0)."""
    m, s, g, o = config.model, config.sampling, config.grpo, config.optim
    _number(m.lora_rank, "model.lora_rank", 1, 4096, integer=True)
    _number(m.lora_alpha, "model.lora_alpha", 0, None, lo_open=True)
    _number(m.adapter_hidden, "model.adapter_hidden", 0, 1 << 20, integer=True)
    _number(s.steps, "sampling.steps", 1, 10_000, integer=True)
    _number(s.eval_steps, "sampling.eval_steps", 1, 10_000, integer=True)
    _number(s.resolution, "sampling.resolution", 8, MAX_RESOLUTION, integer=True)
    _number(s.guidance_scale, "sampling.guidance_scale", 0, 100)
    _number(s.eta, "sampling.eta", 0, 100, lo_open=True)
    _number(s.sde_noise_level, "sampling.sde_noise_level", 0, 100, lo_open=True)
    _number(s.adapter_strength, "sampling.adapter_strength", -100, 100)
    _number(g.group_size, "grpo.group_size", 2, 1 << 16, integer=True)
    for name in ("groups_per_step", "batch_size", "updates_per_step", "inner_epochs"):
        _number(getattr(g, name), f"grpo.{name}", 1, 1 << 16, integer=True)
    _number(g.clip_range, "grpo.clip_range", 0, None, lo_open=True)
    _number(g.adv_clip, "grpo.adv_clip", 0, None, lo_open=True)
    _number(g.kl_beta, "grpo.kl_beta", 0, None)
    _number(g.train_timestep_fraction, "grpo.train_timestep_fraction", 0, 1, lo_open=True)
    for i, bound in enumerate(g.train_window):
        _number(bound, f"grpo.train_window[{i}]", 0, None, integer=True)
    _number(o.lr, "optim.lr", 0, 1, lo_open=True)  # lr = 0 would "train" for hours and change nothing
    if o.adapter_lr is not None:
        _number(o.adapter_lr, "optim.adapter_lr", 0, 1)
    _number(o.weight_decay, "optim.weight_decay", 0, None)
    if not isinstance(o.betas, list) or len(o.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers [beta1, beta2], e.g. [0.9, 0.999], got {o.betas!r}")
    for i, beta in enumerate(o.betas):
        _number(beta, f"optim.betas[{i}]", 0, 1, hi_open=True)
    _number(o.eps, "optim.eps", 0, 1, lo_open=True)
    _number(o.max_grad_norm, "optim.max_grad_norm", 0, None)
    _number(o.ema_decay, "optim.ema_decay", 0, 1, hi_open=True)
    for i, r in enumerate(config.rewards):
        _number(r.weight, f"rewards[{i}].weight", -1e6, 1e6)
    _number(config.seed, "seed", 0, SEED_MAX, integer=True)
    _number(config.max_steps, "max_steps", 0, 10**9, integer=True)
    _number(config.save_every, "save_every", 1, 10**9, integer=True)
    _number(config.keep_checkpoints, "keep_checkpoints", 1, 10**6, integer=True)
    _number(config.log_every, "log_every", 1, 10**9, integer=True)
    _number(config.image_log_every, "image_log_every", 0, 10**9, integer=True)
    _number(config.reward_workers, "reward_workers", 0, 64, integer=True)


def _check_device(device: str, name: str) -> None:
    """Refuse a device this machine cannot give (``cuda`` without a GPU trained on CPU with rc 0)."""
    from ...engines.devices import resolve_device

    if device in ("", "auto"):
        return
    try:
        resolve_device(device, error=ConfigError)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


NORMALIZATIONS = ("group", "batch", "none")
REWARD_KINDS = ("lvlm", "lvlm_reasoning", "color", "brightness", "clip_quality")
LVLM_REWARD_KINDS = ("lvlm", "lvlm_reasoning")


def check_one_normalization(rules: list[str]) -> str:
    """The one normalisation rule all reward terms share (or the weights stop meaning shares)."""
    if len(set(rules)) != 1 or rules[0] not in NORMALIZATIONS:
        raise ConfigError(
            f"rewards use normalisations {list(rules)}: give every [[rewards]] the same normalize, one of "
            f"{list(NORMALIZATIONS)} (\"group\" puts all terms on the scale of their within-group spread)")
    return rules[0]


def validate(config: TrainConfig) -> None:
    """Fail early, with the fix, on combinations that cannot work (no files or models are read)."""
    m, s, g = config.model, config.sampling, config.grpo
    if m.arch not in ("auto", *MODEL_ARCHES):
        raise ConfigError(f"model.arch must be auto or one of {', '.join(MODEL_ARCHES)}, got {m.arch!r}")
    if m.dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"model.dtype must be float32, float16 or bfloat16, got {m.dtype!r}")
    if not all(isinstance(t, str) and t.strip() for t in m.lora_targets):
        raise ConfigError(f"model.lora_targets must be a list of module names (strings), got {m.lora_targets!r}")
    if not config.rewards:
        raise ConfigError("at least one [[rewards]] entry is needed")
    _check_numbers(config)
    if s.resolution % 8:
        raise ConfigError(f"sampling.resolution must be a positive multiple of 8, got {s.resolution}")
    per_process = g.group_size * g.groups_per_step
    if per_process % g.batch_size:
        ok = [b for b in range(1, per_process + 1) if per_process % b == 0]
        raise ConfigError(
            f"grpo.batch_size={g.batch_size} must divide group_size*groups_per_step={per_process}; "
            f"choose one of {ok}"
        )
    micro = per_process // g.batch_size
    if micro % g.updates_per_step:
        raise ConfigError(
            f"grpo.updates_per_step={g.updates_per_step} must divide the {micro} micro-batches per step"
        )
    if g.train_window:
        if len(g.train_window) != 2:
            raise ConfigError("grpo.train_window must be [start, end) or empty")
        start, end = int(g.train_window[0]), int(g.train_window[1])
        if not 0 <= start < end <= s.steps:
            raise ConfigError(f"grpo.train_window {g.train_window} must satisfy 0 <= start < end <= sampling.steps={s.steps}")
    for i, r in enumerate(config.rewards):
        if r.kind not in REWARD_KINDS:
            raise ConfigError(f"rewards[{i}].kind must be one of {', '.join(REWARD_KINDS)}, got {r.kind!r}")
        if r.preset and r.kind != "lvlm_reasoning":
            raise ConfigError(f"rewards[{i}].preset applies to kind = 'lvlm_reasoning' (the judge writes an answer in "
                              f"the preset's format): set kind = 'lvlm_reasoning' or remove preset")
        if r.kind in ("lvlm", "lvlm_reasoning", "clip_quality") and not r.path:
            raise ConfigError(f"rewards[{i}] ({r.kind}) needs path = a local model folder or hub id")
        if r.kind == "lvlm_reasoning":
            from .reasoning_reward import sampling_settings

            sampling_settings(r, i)  # samples, temperature, max_new_tokens, reading, unparsable_reward
        if r.normalize not in NORMALIZATIONS:
            raise ConfigError(f"rewards[{i}].normalize must be 'group', 'batch' or 'none', got {r.normalize!r}")
        if r.dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"rewards[{i}].dtype must be float32, float16 or bfloat16, got {r.dtype!r}")
        _check_device(r.device, f"rewards[{i}].device")
    check_one_normalization([r.normalize for r in config.rewards])  # before any reward model loads
    _validate_one_gpu_options(config)
    if config.max_steps < 0 or config.save_every < 1 or config.keep_checkpoints < 1:
        raise ConfigError("max_steps must be >= 0, save_every and keep_checkpoints >= 1")
    if config.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {config.device!r}")
    _check_device(config.device, "device")
    _check_quantized_base(config)
    if not str(config.output_dir).strip():
        raise ConfigError("output_dir is empty: set it to the run folder (checkpoints, logs, exports)")


def check_inputs(config: TrainConfig, need_model: bool = True) -> None:
    """Read what the run will read before anything heavy loads: prompts and targets parsed, model and
    adapter paths present. ``train --dry-run`` runs this too."""
    from .data import load_prompts, load_targets

    load_prompts(config.data.prompts_file)
    if str(config.data.targets) != "uniform":
        load_targets(config.data.targets)
    _check_local_path(config.model.pretrained, "model.pretrained", folder=True, required=need_model)
    if config.model.adapter_init:
        _check_local_path(config.model.adapter_init, "model.adapter_init", folder=False, required=True)
    if config.heldout.every and config.heldout.prompts_file:
        load_prompts(config.heldout.prompts_file, "heldout.prompts_file")
    for i, r in enumerate(config.rewards):
        if r.path:
            _check_local_path(r.path, f"rewards[{i}].path", folder=True, required=True)
        if r.adapter:
            _check_local_path(r.adapter, f"rewards[{i}].adapter", folder=True, required=True)
        if r.kind in LVLM_REWARD_KINDS:  # the judge read as its adapter was trained; preset files parsed
            from .reasoning_reward import reading_choice

            reading_choice(r, i)


def _check_local_path(value: str, name: str, folder: bool, required: bool) -> None:
    text = str(value).strip()
    if not text:
        if required:
            raise ConfigError(f"{name} is empty: set it to a local folder or hub id")
        return
    path = Path(text).expanduser()
    looks_local = path.exists() or text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
    if not folder:
        looks_local = True  # files (adapter .safetensors) are always local
    if not looks_local:
        return  # a hub id ("org/name"): the loader says whether it can be had
    if not path.exists():
        raise ConfigError(f"{name} = {text!r} does not exist; point it at an existing {'folder' if folder else 'file'}")
    if folder and not path.is_dir():
        raise ConfigError(f"{name} = {text!r} is a file; it must be a model folder")
    if not folder and not path.is_file():
        raise ConfigError(f"{name} = {text!r} is a folder; it must be a .safetensors file")


def _validate_one_gpu_options(config: TrainConfig) -> None:
    """Judge placement, guards and the held-out check (issue 15's options)."""
    if config.grpo.ratio_norm not in ("none", "grpo_guard"):
        raise ConfigError(f"grpo.ratio_norm must be 'none' or 'grpo_guard', got {config.grpo.ratio_norm!r}")
    if config.reward_schedule not in ("step", "micro_batch"):
        raise ConfigError(f"reward_schedule must be 'step' or 'micro_batch', got {config.reward_schedule!r}")
    for i, r in enumerate(config.rewards):
        if r.quantization not in ("none", "8bit", "4bit"):
            raise ConfigError(f"rewards[{i}].quantization must be 'none', '8bit' or '4bit', got {r.quantization!r}")
        if r.quantization != "none" and r.kind not in LVLM_REWARD_KINDS:
            raise ConfigError(f"rewards[{i}].quantization applies to the LVLM judge only (kind = 'lvlm' or 'lvlm_reasoning')")
        if r.attention not in ATTENTION_SETTINGS:
            raise ConfigError(f"rewards[{i}].attention must be one of {', '.join(ATTENTION_SETTINGS)}, got {r.attention!r}")
        if r.attention != "auto" and r.kind not in LVLM_REWARD_KINDS:
            raise ConfigError(f"rewards[{i}].attention applies to the LVLM judge only (kind = 'lvlm' or 'lvlm_reasoning')")
        if r.role not in ("auto", "emotion", "quality"):
            raise ConfigError(f"rewards[{i}].role must be 'auto', 'emotion' or 'quality', got {r.role!r}")
        if r.images_per_pass < 0:
            raise ConfigError(f"rewards[{i}].images_per_pass must be >= 0 (0 = all images in one pass)")
        if r.max_pixels < 0 or (r.max_pixels and not r.kind.startswith("lvlm")):
            raise ConfigError(f"rewards[{i}].max_pixels must be >= 0 (0 = the adapter's training limit, else the "
                              "model's own) and applies to the LVLM judge only")
    h = config.heldout
    if h.every < 0 or h.num_prompts < 1 or h.steps < 0:
        raise ConfigError("heldout.every and heldout.steps must be >= 0 and heldout.num_prompts >= 1")
    if h.every and not h.targets:
        raise ConfigError("heldout.targets must list at least one [valence, arousal] pair")
    for t in h.targets:
        if not (isinstance(t, (list, tuple)) and len(t) == 2 and all(-3 <= float(x) <= 3 for x in t)):
            raise ConfigError(f"heldout.targets entry {t!r} must be [valence, arousal] with both in [-3, 3]")


def _check_quantized_base(config: TrainConfig) -> None:
    """Names and combinations; the trainer checks the device it really got (device = "auto" on a CPU box)."""
    from .quantized_base import check_quantization

    check_quantization(config.model, config.device)


def derive(config: TrainConfig, num_processes: int = 1) -> Derived:
    validate(config)
    g = config.grpo
    per_process = g.group_size * g.groups_per_step
    micro = per_process // g.batch_size
    per_update = micro // g.updates_per_step
    trained = trained_step_indices_count(config)
    updates = g.updates_per_step * g.inner_epochs
    return Derived(
        num_processes=num_processes,
        samples_per_step_per_process=per_process,
        samples_per_step=per_process * num_processes,
        groups_per_step=g.groups_per_step * num_processes,
        micro_batches_per_step=micro,
        micro_batches_per_update=per_update,
        trained_timesteps=trained,
        backward_passes_per_update=per_update * trained,
        optimizer_updates_per_step=updates,
        total_optimizer_updates=updates * config.max_steps,
        total_images=per_process * num_processes * config.max_steps,
    )

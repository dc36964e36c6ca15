"""The typed training config of the generator's GRPO run: one dataclass per concern.

Every field has a default and a ``help`` text (``emofeedback2 train --help-config`` prints them);
:mod:`.config` is the import path users and tests name (it re-exports this module, the loading and
validation helpers and :func:`~.config_derived.derive`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..config_fields import _f

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
                                 "the evaluation and held-out samplers then judge that unguided policy (the "
                                 "held-out check also reports guidance_scale)")


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
    kl_beta: float = _f(0.01, "weight of the KL to the base model (adapters disabled); 0 skips the reference pass. "
                        "Flow-GRPO's scale, so its beta values (0.004-0.04) mean the same here: flow SDE (SD3.x) KL "
                        "= mean((mu - mu_ref)^2) / (2 sigma_t^2), sigma_t = a*sqrt(t/(1-t)) the SDE noise level "
                        "(the step's exact KL times |dt|); DDIM (SD1.5/SDXL) divides by the step variance "
                        "eta^2*beta~_t (DDIM's step has no separate dt: the exact step KL)")
    train_timestep_fraction: float = _f(1.0, "fraction of the sampling steps trained per sample: int(steps * fraction) "
                                        "of them (floor, as Flow-GRPO), at least 1, at most the window's size; a "
                                        "random subset of the window")
    train_window: list = _f([], "[start, end) step indices to train on (MixGRPO-style window); empty = [0, steps-1]: "
                            "every step but the last, near-deterministic one (Flow-GRPO leaves it out too); "
                            "[0, steps] trains all")
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
    ema: bool = _f(False, "keep an EMA of the trainable weights (diffusers EMAModel) with Flow-GRPO's warm-up: "
                   "decay min((1+n)/(10+n), ema_decay) at the n-th update; exports use the EMA once it has warmed "
                   "up (n >= (10*ema_decay - 1)/(1 - ema_decay)), the live weights before, and say which")
    ema_decay: float = _f(0.95, "EMA decay per optimizer update, reached after the warm-up")
    max_skipped_updates_in_a_row: int = _f(20, "stop when the fp16 grad scaler skips this many optimizer updates in "
                                           "a row (their gradients overflow at every scale it tries: 20 halvings "
                                           "take the default scale 65536 below 1); isolated skips are normal while "
                                           "the scale settles and are counted in train/skipped_updates")


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
    max_pixels: int = _f(0, "LVLM judge: cap on pixels per image fed to its vision encoder (0 = the limit the adapter "
                         "was trained at, from its judge_training.json; without an adapter, the model's own); fewer "
                         "image tokens, less memory and time (Qwen2.5-VL: one token per 28x28 px)")
    role: str = _f("auto", "'emotion', 'quality' or 'auto' (clip_quality = quality, others = emotion): how the "
                   "held-out check reports it")
    low_digit_mass: str = _f("floor", "'lvlm' only: a reading whose digit probability mass is below the judge's "
                             "LOW_DIGIT_MASS (0.5) was no answer (e.g. text in the image hijacked the judge): "
                             "'floor' gives it the lowest reward (0), 'keep' scores it as read; counted either way "
                             "in reward_flags/<reward>/low_digit_mass")


@dataclass
class HeldoutConfig:
    every: int = _f(0, "held-out check every N steps (0 = off): deterministic sampler on a fixed set, emotion "
                    "reward, quality reward and distance to the base model's images logged apart; made at the "
                    "guidance the policy trains at (1 with cfg_free_training) and also at guidance_scale when "
                    "that differs ('@guided' figures)")
    prompts_file: str = _f("", "held-out prompts, one a line, not training prompts ('' = the shipped "
                           "training/data/heldout_prompts.txt)")
    num_prompts: int = _f(4, "prompts in the held-out set")
    targets: list = _f([[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]], "V-A targets of the held-out set")
    steps: int = _f(0, "sampling steps of the held-out images (0 = sampling.eval_steps)")
    tolerance: float = _f(0.0, "warn when emotion reward rises and quality falls by more than this between checks")
    quality: dict = _f({}, "a quality judge for the check only, never trained on: a reward table, e.g. "
                       "{kind = \"clip_quality\", path = \"models/PickScore_v1\"} (TOML: [heldout.quality]); "
                       "{} = the training rewards with role 'quality'")


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


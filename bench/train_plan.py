"""``bench train --real-size sd3.5-medium --judge-real-size qwen2.5-vl-7b --plan``: the recipe's memory plan.

Builds the shipped one-GPU recipe (``training/configs/sd35_medium_lvlm.toml``, or ``--plan-config``)
at real size on the ``meta`` device — no weights, no GPU — and prints :mod:`~.training.memory_plan`'s
table: bytes per component per device from parameter counts of the instantiated modules, measured
activation bytes per micro-batch, and the peak per phase. Last line: ``planned_peak_gib=<x>``.
Also prints what each one-GPU option changes (same config with one field flipped) so the figures
sit next to the control they move against.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

RECIPE = Path(__file__).resolve().parent.parent / "training" / "configs" / "sd35_medium_lvlm.toml"
REAL_PIPELINES = {"sd3.5-medium": "stabilityai/stable-diffusion-3.5-medium"}
REAL_JUDGES = {"qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct"}

#: one field flipped at a time: (label, [overrides])
OPTIONS = [
    ("text encoders kept (no prompt cache)", ["data.cache_prompt_embeddings=false"]),
    ("judge bf16, swapped in once per step", ["rewards.0.quantization=none", "rewards.0.offload=true"]),
    ("judge bf16, resident", ["rewards.0.quantization=none", "rewards.0.offload=false"]),
    ("judge 4-bit", ["rewards.0.quantization=4bit"]),
    ("judge 4 images per pass", ["rewards.0.images_per_pass=4"]),
    ("judge capped at 448x448 px", ["rewards.0.max_pixels=200704"]),
    ("judge scored per micro-batch", ["reward_schedule=micro_batch"]),
    ("no KL (kl_beta 0)", ["grpo.kl_beta=0"]),
    ("judge on cuda:1", ["rewards.0.device=cuda:1"]),
    ("CFG-free training", ["sampling.cfg_free_training=true"]),
    ("no gradient checkpointing", ["model.gradient_checkpointing=false"]),
    ("GRPO-Guard (stores step means)", ["grpo.ratio_norm=grpo_guard"]),
]


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", action="store_true",
                        help="print the memory plan of the one-GPU recipe (meta device, no weights) and exit")
    parser.add_argument("--judge-real-size", choices=sorted(REAL_JUDGES), default=None,
                        help="with --plan: the LVLM judge of the plan (default: the recipe's)")
    parser.add_argument("--plan-config", default=str(RECIPE), help="with --plan: the training config to plan")
    parser.add_argument("--plan-json", default="", help="with --plan: also write the plan's components to this JSON file")
    parser.add_argument("--plan-options", action="store_true",
                        help="with --plan: also plan each one-GPU option flipped (slower: one plan per option)")


def _config(args):
    from ..training.generator.config import apply_overrides, load_config

    config = load_config(args.plan_config)
    if args.real_size:
        config.model.pretrained = REAL_PIPELINES[args.real_size]
    if args.judge_real_size:
        for spec in config.rewards:
            if spec.kind == "lvlm":
                spec.path = REAL_JUDGES[args.judge_real_size]
    return config, apply_overrides


def run_plan(args: argparse.Namespace) -> int:
    from ..training.generator.config import ConfigError
    from ..training.generator.memory_plan import GIB, plan_training

    config, apply_overrides = _config(args)
    print(f"bench train --plan: {args.plan_config} with model {config.model.pretrained}, judge "
          f"{[s.path for s in config.rewards if s.kind == 'lvlm'] or 'none'}; every model built on the meta device "
          "(no weights); parameter counts from the instantiated modules")
    plan = plan_training(config)
    print(plan.render())
    for line in plan.summary_lines():
        print(line)
    if args.plan_json:
        rows = [dict(name=c.name, device=c.device, bytes=c.bytes, params=c.params, phases=list(c.phases),
                     detail=c.detail) for c in plan.components]
        Path(args.plan_json).write_text(json.dumps({"components": rows, "phases": plan.phases,
                                                    "planned_peak_bytes": plan.planned_peak_bytes(),
                                                    "margin_bytes": plan.margin_bytes(),
                                                    "fits_24gb": plan.fits()}, indent=2))
    if args.plan_options:
        base = plan.planned_peak_bytes()
        print("options (one field flipped; training-device peak; change against the recipe):")
        for label, overrides in OPTIONS:
            variant = apply_overrides(copy.deepcopy(config), overrides)
            try:
                other = plan_training(variant)
            except ConfigError as exc:  # e.g. a second GPU this machine does not have
                print(f"  {label:<38} skipped: {exc}")
                continue
            peak, phase = other.peak(other.training_device)
            score = other.phase_bytes(other.training_device, "score:lvlm") if "score:lvlm" in other.phases else 0
            extra = "".join(f", {d} peak {other.peak(d)[0] / GIB:.2f} GiB" for d in other.accelerator_devices()
                            if d != other.training_device)
            fits = "fits" if other.fits() else "does not fit"
            print(f"  {label:<38} {peak / GIB:6.2f} GiB ({(peak - base) / GIB:+.2f}) in {phase}; "
                  f"judge phase {score / GIB:.2f} GiB; + margin {other.margin_bytes() / GIB:.2f} GiB: "
                  f"{fits} 24 GB{extra}")
    print(f"planned_peak_gib={plan.planned_peak_bytes() / GIB:.2f}")
    return 0

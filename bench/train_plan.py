"""``bench train --real-size FAMILY --judge-real-size qwen2.5-vl-7b --plan``: a shipped recipe's memory plan.

Builds the family's shipped recipe (``RECIPES``: ``training/configs/<family>_lvlm.toml``, or
``--plan-config``) at real size on the ``meta`` device — no weights, no GPU — and prints the
parameter count of every component built from the real configs (:mod:`~.training.generator.real_configs`,
to check against the published sizes), then :mod:`~.training.generator.memory_plan`'s table: bytes per
component per device, measured activation bytes per micro-batch, and the peak per phase. Last line:
``planned_peak_gib=<x>``. ``--plan-options`` also prints what each one-GPU option changes (same config
with one field flipped) so the figures sit next to the control they move against.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from ..training.generator.real_configs import REAL_JUDGES  # plain data: --help stays light

CONFIGS = Path(__file__).resolve().parent.parent / "training" / "configs"
RECIPE = CONFIGS / "sd35_medium_lvlm.toml"
REAL_PIPELINES = {
    "sd3.5-medium": "stabilityai/stable-diffusion-3.5-medium",
    "flux.1-dev": "black-forest-labs/FLUX.1-dev",
    "flux.2-klein-4b": "black-forest-labs/FLUX.2-klein-4B",
    "qwen-image": "Qwen/Qwen-Image",
    "z-image-turbo": "Tongyi-MAI/Z-Image-Turbo",
}
#: the shipped recipe of each real size (its model.pretrained is the hub id above)
RECIPES = {
    "sd3.5-medium": RECIPE,
    "flux.1-dev": CONFIGS / "flux1_dev_lvlm.toml",
    "flux.2-klein-4b": CONFIGS / "flux2_klein_4b_lvlm.toml",
    "qwen-image": CONFIGS / "qwen_image_lvlm.toml",
    "z-image-turbo": CONFIGS / "z_image_turbo_lvlm.toml",
}

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
    ("base 8-bit", ["model.quantization=8bit"]),
    ("base 4-bit", ["model.quantization=4bit"]),
    ("base unquantised", ["model.quantization=none"]),
    ("GRPO-Guard (stores step means)", ["grpo.ratio_norm=grpo_guard"]),
]


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", action="store_true",
                        help="print the memory plan of the one-GPU recipe (meta device, no weights) and exit")
    parser.add_argument("--judge-real-size", choices=list(REAL_JUDGES), default=None,
                        help="with --plan: the LVLM judge of the plan at its real size, any supported family "
                             "(default: the recipe's)")
    parser.add_argument("--plan-config", default="",
                        help="with --plan: the training config to plan (default: the --real-size family's recipe)")
    parser.add_argument("--plan-json", default="", help="with --plan: also write the plan's components to this JSON file")
    parser.add_argument("--plan-fsdp", type=int, default=0, metavar="N",
                        help="with --plan: the plan per GPU when FSDP shards the bf16 base over N GPUs "
                             "(training/configs/accelerate_fsdp.yaml; sets model.quantization=none)")
    parser.add_argument("--plan-options", action="store_true",
                        help="with --plan: also plan each one-GPU option flipped (slower: one plan per option)")


def _config(args):
    from ..training.generator.config import apply_overrides, load_config

    if not args.plan_config:
        args.plan_config = str(RECIPES[args.real_size or "sd3.5-medium"])
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
    from ..training.generator.memory_plan import GIB, count_params, pipeline_components, plan_training

    config, apply_overrides = _config(args)
    print(f"bench train --plan: {args.plan_config} with model {config.model.pretrained}, judge "
          f"{[s.path for s in config.rewards if s.kind == 'lvlm'] or 'none'}; every model built on the meta device "
          "(no weights); parameter counts from the instantiated modules")
    components = pipeline_components(config.model.pretrained)
    print("parameters of the models built from the real configs (meta device):")
    for name, module in components.items():
        n = count_params(module)
        print(f"  {name:<15} {type(module).__name__:<36} {n:>15,d} ({n / 1e9:.2f} B)")
    if args.plan_fsdp:
        config.model.quantization = "none"  # FSDP shards the unquantised base
        print(f"FSDP over {args.plan_fsdp} GPUs: model.quantization=none, figures per GPU")
    plan = plan_training(config, components=components)
    if args.plan_fsdp:
        from ..training.generator.fsdp_plan import shard_plan

        plan = shard_plan(plan, args.plan_fsdp, components["transformer" if "transformer" in components else "unet"])
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
            except ConfigError as exc:  # e.g. a second GPU this machine does not have: say so, plan the rest
                print(f"  {label:<38} not planned here: {exc}")
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

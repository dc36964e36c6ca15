"""``emofeedback2 train`` (GRPO fine-tuning) and ``emofeedback2 export`` (checkpoint → ComfyUI files).

Multi-GPU: ``accelerate launch -m emofeedback2.cli train --config FILE`` (each process samples whole
groups; rewards are gathered before advantages).
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="GRPO fine-tuning of the generator LoRA + emotion adapter with the emotion reward",
        description="Train from a TOML/YAML config (see training/configs/). Any field can be overridden with "
        "--set section.field=value (e.g. --set grpo.group_size=4 --set rewards.0.weight=0.5).",
    )
    train.add_argument("--config", help="TOML or YAML training config")
    train.add_argument("--resume", action="store_true", help="continue from output_dir/checkpoints/latest")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field (repeatable)")
    train.add_argument("--model", help="shortcut for --set model.pretrained=...")
    train.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    train.add_argument("--max-steps", type=int, help="shortcut for --set max_steps=...")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="shortcut for --set device=...")
    train.add_argument("--dry-run", action="store_true",
                       help="print the resolved config, derived numbers and the memory plan (meta device, no weights), "
                       "then exit")
    train.add_argument("--help-config", action="store_true", help="list every config field with its default and meaning")
    train.set_defaults(func=_train)

    export = subparsers.add_parser(
        "export",
        help="write a checkpoint's LoRA (kohya keys for ComfyUI + diffusers copy) and emotion adapter",
    )
    export.add_argument("--checkpoint", required=True,
                        help="a checkpoint folder (step-XXXXXX) or a run folder / checkpoints folder with 'latest'")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--no-ema", action="store_true", help="export the live weights even if an EMA was kept")
    export.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    import json

    from ..training.config import (
        ConfigError,
        TrainConfig,
        apply_overrides,
        config_to_dict,
        derive,
        describe_fields,
        load_config,
    )

    if args.help_config:
        print(describe_fields())
        return 0
    try:
        config = load_config(args.config) if args.config else TrainConfig()
        overrides = list(args.overrides)
        for flag, key in (("model", "model.pretrained"), ("output_dir", "output_dir"), ("max_steps", "max_steps"),
                          ("device", "device")):
            value = getattr(args, flag)
            if value is not None:
                overrides.append(f"{key}={value}")
        apply_overrides(config, overrides)
        derived = derive(config)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(config_to_dict(config), indent=2))
        print(f"[train] {derived.summary()} (for 1 process)")
        from ..training.memory_plan import print_plan_or_reason

        print_plan_or_reason(config)
        return 0
    from ..training.trainer import GRPOTrainer

    trainer = GRPOTrainer(config)
    history = trainer.train(resume=args.resume)
    if history and trainer.accelerator.is_main_process:
        last = history[-1]
        print(f"[train] done: step {trainer.step}, reward {last['reward/mean']:.4f}, kl {last['train/kl']:.3e}; "
              f"outputs in {config.output_dir}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..training.checkpoint import CheckpointError
    from ..training.export import export_checkpoint

    try:
        paths = export_checkpoint(args.checkpoint, args.out, use_ema=not args.no_ema)
    except (CheckpointError, FileNotFoundError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0

"""``emofeedback2 train`` (GRPO fine-tuning; ``export`` lives in :mod:`.export_commands`).

Multi-GPU: ``accelerate launch -m emofeedback2.cli train --config FILE`` (each process samples whole
groups; rewards are gathered before advantages).
"""

from __future__ import annotations

import argparse
import sys

from .interrupts import interrupted_note


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="GRPO fine-tuning of the generator LoRA + emotion adapter with the emotion reward",
        description="Train from a TOML/YAML config (see training/configs/). Any field can be overridden with "
        "--set section.field=value (e.g. --set grpo.group_size=4 --set rewards.0.weight=0.5). The config, the "
        "data files and the output folder are checked before any model loads.",
    )
    train.add_argument("--config", help="TOML or YAML training config; none = the built-in defaults")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in output_dir from checkpoints/latest (an error if there is none)")
    train.add_argument("--overwrite", action="store_true",
                       help="start a new run in a non-empty output_dir, deleting its checkpoints/, export/ and tb/")
    train.add_argument("--allow-change", action="append", default=[], metavar="FIELD",
                       help="with --resume: allow this run-defining field (e.g. grpo.group_size, seed, rewards) to "
                       "differ from the checkpoint's (repeatable; recorded in the checkpoint)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field (repeatable)")
    train.add_argument("--model", help="shortcut for --set model.pretrained=...")
    train.add_argument("--output-dir", help="shortcut for --set output_dir=...")
    train.add_argument("--max-steps", type=int, help="shortcut for --set max_steps=...")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], help="shortcut for --set device=...")
    train.add_argument("--dry-run", action="store_true",
                       help="check the config, data files and output folder, print the resolved config, "
                       "derived numbers and the memory plan (meta device, no weights), then exit")
    train.add_argument("--help-config", action="store_true", help="list every config field with its default and meaning")
    train.set_defaults(func=_train)


def resolve_config(args: argparse.Namespace):
    """The config the command line asks for, validated (no files read beyond the config itself)."""
    from ..training.generator.config import TrainConfig, apply_overrides, derive, load_config

    config = load_config(args.config) if args.config else TrainConfig()
    overrides = list(args.overrides)
    for flag, key in (("model", "model.pretrained"), ("output_dir", "output_dir"), ("max_steps", "max_steps"),
                      ("device", "device")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    apply_overrides(config, overrides)
    return config, derive(config)


def _train(args: argparse.Namespace) -> int:
    import json

    from ..training.generator.config import check_inputs, config_to_dict, describe_fields
    from ..training.generator.resume_guard import check_allow_list
    from ..training.run_dir import check_output_dir

    if args.help_config:
        print(describe_fields())
        return 0
    config, derived = resolve_config(args)
    check_allow_list(args.allow_change)
    if args.allow_change and not args.resume:
        from ..training.generator.config import ConfigError

        raise ConfigError("--allow-change only applies with --resume")
    check_inputs(config)  # prompts/targets parsed, model and adapter paths present
    check_output_dir(config.output_dir, args.resume, args.overwrite)
    if args.resume:
        from ..training.generator.resume_guard import precheck

        precheck(config, args.allow_change or ())  # a mismatched run is refused before any model loads
    if args.dry_run:
        print(json.dumps(config_to_dict(config), indent=2))
        print(f"[train] {derived.summary()} (for 1 process)")
        from ..training.generator.memory_plan import print_plan_or_reason

        print_plan_or_reason(config)
        return 0
    from ..training.run_lock import holding, is_main_rank

    if not is_main_rank():  # rank 0 holds the folder for the whole launch; the other ranks wait for it
        return _run_trainer(config, args)
    with holding(config.output_dir, "output_dir"):  # before the models load and before --overwrite deletes anything
        return _run_trainer(config, args)


def _run_trainer(config, args: argparse.Namespace) -> int:
    from ..training.generator.trainer import GRPOTrainer
    from ..training.run_lock import is_main_rank

    trainer = GRPOTrainer(config)
    try:
        history = trainer.train(resume=args.resume, overwrite=args.overwrite, allow_change=args.allow_change)
    except KeyboardInterrupt:
        if is_main_rank():
            print(interrupted_note(config.output_dir, "train", getattr(args, "argv", None)), file=sys.stderr)
        raise
    if history and trainer.accelerator.is_main_process:
        last = history[-1]
        raw = ", ".join(f"{name} {last[f'reward/{name}']:.4f}" for name in trainer.reward.names)
        print(f"[train] done: step {trainer.step}, rewards {raw}, kl {last['train/kl']:.3e}; "
              f"outputs in {config.output_dir}")
    return 0

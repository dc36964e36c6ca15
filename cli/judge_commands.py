"""``emofeedback2 train-judge``, ``eval-judge`` and ``judge-data``: fine-tune, evaluate and feed the LVLM judge.

* ``judge-data import FORMAT``: write a manifest from FindingEmo, EMOTIC or a SAM/OASIS norm table
  (EmoSet is refused: no V-A); ``judge-data check M`` validates a manifest.
* ``train-judge``: soft-label LoRA fine-tuning on the scorer's digit readout; the output folder is
  a peft adapter that ``score --adapter``, the LVLM loader node and the training rewards load.
* ``eval-judge``: MAE / PLCC / SRCC / accuracy within ε per axis beside a constant predictor,
  scatter plots, share of low digit-mass readings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .judge_preset_args import add_judge_preset_arguments, judge_reading, preset_pixel_options, read_with
from .interrupts import interrupted_note
from .lvlm_args import add_lvlm_load_arguments, lvlm_load_options


def register(subparsers) -> None:
    _register_train(subparsers)
    _register_eval(subparsers)
    _register_data(subparsers)


# --- train-judge ----------------------------------------------------------------------------------


def _register_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train-judge",
        help="fine-tune the LVLM judge (peft LoRA) on V-A-labelled images",
        description="Soft-label SFT of a Qwen2/2.5/3-VL judge on the digit readout the scorer uses. Any config "
        "field can be set with --set section.field=value (see --help-config).",
    )
    p.add_argument("--data", help="manifest CSV/JSONL (image,valence,arousal[,scale][,split]); = data.manifest")
    p.add_argument("--model", help="base model folder or hub id; = model.pretrained")
    p.add_argument("--out", help="output folder (the adapter + checkpoints/ + tb/); = output_dir")
    p.add_argument("--config", help="TOML or YAML judge-training config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable), e.g. --set optim.lr=1e-4")
    p.add_argument("--max-steps", type=int, help="= max_steps")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/latest")
    p.add_argument("--dry-run", action="store_true", help="check the config and manifest, print them, and exit")
    p.add_argument("--skip-bad", action="store_true", help="skip bad manifest rows (counted) instead of stopping")
    p.add_argument("--eval-split", default=None,
                   help="held-out split evaluated (base vs trained) for the model card; default: test, else val, else none")
    p.add_argument("--help-config", action="store_true", help="list every config field with its default")
    p.set_defaults(func=_train)


def _judge_config(args: argparse.Namespace):
    from ..training.judge.config import JudgeTrainConfig, apply_judge_overrides, load_judge_config, validate_judge_config

    config = load_judge_config(args.config) if args.config else JudgeTrainConfig()
    overrides = list(args.overrides)
    for flag, key in (("data", "data.manifest"), ("model", "model.pretrained"), ("out", "output_dir"),
                      ("max_steps", "max_steps")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    apply_judge_overrides(config, overrides)
    validate_judge_config(config)
    return config


def _held_out_split(manifest, requested):
    if requested:
        return requested if requested.lower() != "none" else None
    for name in ("test", "val"):
        if name in manifest.splits:
            return name
    return None


def _train(args: argparse.Namespace) -> int:
    from ..training.judge.config import describe_judge_fields, effective_lr, format_lr, judge_config_to_dict
    from ..training.judge.data import read_manifest
    from ..training.run_lock import check_not_held, holding

    if args.help_config:
        print(describe_judge_fields())
        return 0
    config = _judge_config(args)
    manifest = read_manifest(config.data.manifest, skip_bad=config.data.skip_bad)
    held_out = _held_out_split(manifest, args.eval_split)
    train_rows = manifest.split(config.data.train_split)
    check_not_held(config.output_dir, "output_dir")  # a live run's folder: refused before anything loads
    if args.dry_run:
        print(json.dumps(judge_config_to_dict(config), indent=2))
        print(f"[train-judge] manifest {manifest.path}: {len(manifest.samples)} rows, splits "
              f"{sorted(manifest.splits) or ['(none)']}, {len(train_rows)} training rows, held-out split "
              f"{held_out or '(none)'}" + (f", {len(manifest.skipped)} bad rows skipped" if manifest.skipped else "")
              + f"; lr {format_lr(effective_lr(config))}"
              + ("" if config.optim.lr is not None else f" ({config.objective.kind} default)"))
        return 0
    with holding(config.output_dir, "output_dir"):  # before the trainer opens tb/ or reads a checkpoint there
        return _run_judge_trainer(config, manifest, held_out, args)


def _run_judge_trainer(config, manifest, held_out, args: argparse.Namespace) -> int:
    from ..training.judge.trainer import JudgeTrainer

    trainer = JudgeTrainer(config, manifest=manifest)
    try:
        try:
            trainer.train(resume=args.resume)
        except KeyboardInterrupt:
            print(interrupted_note(config.output_dir, "train-judge", getattr(args, "argv", None)), file=sys.stderr)
            raise
        metrics = {}
        if held_out:
            metrics = _held_out_metrics(trainer, manifest, held_out)
        out = trainer.export_adapter(metrics)
    finally:
        trainer.close()
    print(f"[train-judge] done: step {trainer.step}, {trainer.images_per_second:.1f} images/s; adapter in {out}")
    for name in ("base", "trained"):
        block = metrics.get(name)
        if block:
            print(f"[train-judge] {held_out} {name}: " + "  ".join(
                f"{axis} MAE {block[axis]['mae']:.3f} (constant {block[axis]['mae_constant']:.3f}) "
                f"PLCC {_fmt(block[axis]['plcc'])}" for axis in ("valence", "arousal")))
    return 0


def _held_out_metrics(trainer, manifest, split: str) -> dict:
    from ..training.judge.evaluate import evaluate_judge

    rows = [s for s in manifest.samples if s.split == split]
    if not rows:
        return {}
    constant = tuple(float(x) for x in trainer.labels.mean(dim=0))
    with trainer.model.disable_adapter():
        base = evaluate_judge(trainer.scorer, rows, constant=constant)
    trained = evaluate_judge(trainer.scorer, rows, constant=constant)
    return {"split": split, "n": len(rows), "base": base.to_dict(), "trained": trained.to_dict()}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- eval-judge -----------------------------------------------------------------------------------


def _register_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "eval-judge",
        help="evaluate an LVLM judge on a labelled manifest (MAE, PLCC, SRCC vs a constant predictor)",
        description="Per axis: MAE, PLCC, SRCC, accuracy within eps and the MAE of a constant predictor (the training "
        "set's mean: from the adapter's training record, else the manifest's train split, else the evaluated rows); "
        "a predicted-vs-true scatter PNG per axis; the share of readings with low digit mass.",
    )
    p.add_argument("--data", required=True, help="manifest CSV/JSONL")
    p.add_argument("--lvlm", required=True, help="base model folder or hub id")
    p.add_argument("--adapter", default=None, help="peft adapter folder from train-judge")
    p.add_argument("--split", default=None, help="rows evaluated: a split name, or 'all' (default: test if present, else all)")
    p.add_argument("--eps", type=float, default=0.5, help="accuracy threshold in V-A units (default 0.5)")
    p.add_argument("--low-mass", type=float, default=0.5, help="digit mass below this counts as a low-mass reading")
    p.add_argument("--plots", default="eval-judge", help="folder for the scatter PNGs (default ./eval-judge; '' = none)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    p.add_argument("--max-pixels", type=int, default=None, help="cap on pixels per image for the vision encoder")
    add_lvlm_load_arguments(p)
    add_judge_preset_arguments(p)
    p.add_argument("--skip-bad", action="store_true", help="skip bad manifest rows (counted)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from ..engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
    from ..training.judge.data import ManifestError, read_manifest
    from ..training.judge.evaluate import evaluate_judge, write_scatter_plots
    from ..training.judge.trainer import read_training_record

    if args.eps <= 0 or args.batch_size < 1:
        raise ManifestError("--eps must be > 0 and --batch-size >= 1")
    manifest = read_manifest(args.data, skip_bad=args.skip_bad)
    split = args.split
    if split is None:
        split = "test" if "test" in manifest.splits else "all"
    rows = manifest.samples if split == "all" else [s for s in manifest.samples if s.split == split]
    if not rows:
        raise ManifestError(f"{manifest.path} has no rows of split {split!r} (splits: {sorted(manifest.splits) or 'none'})")
    record = read_training_record(args.adapter) if args.adapter else None
    if record and record.get("label_mean"):
        constant = (record["label_mean"]["valence"], record["label_mean"]["arousal"])
        source = "training set mean (adapter's training record)"
    elif "train" in manifest.splits:
        constant = manifest.label_means("train")
        source = "training set mean (manifest's train split)"
    else:
        constant = (sum(s.valence for s in rows) / len(rows), sum(s.arousal for s in rows) / len(rows))
        source = "mean of the evaluated rows (no training set known: optimistic for the constant)"
    choice = judge_reading(args, args.adapter, args.lvlm)  # a GRPO adapter: the paper's format it was trained on
    options = {"max_pixels": args.max_pixels, **preset_pixel_options(choice, args.max_pixels)}
    scorer = read_with(load_lvlm(LVLMConfig(model=args.lvlm, adapter=args.adapter, device=args.device, dtype=args.dtype,
                                            **options, **lvlm_load_options(args))), choice, args)
    evaluation = evaluate_judge(scorer, rows, constant=constant, constant_source=source, eps=args.eps,
                                low_mass=args.low_mass, batch_size=args.batch_size, progress=not args.json)
    plots = write_scatter_plots(evaluation, args.plots) if args.plots else []
    from ..engines.judge.scoring import assess_values

    trust = assess_values(evaluation.predictions["valence"][0], evaluation.predictions["arousal"][0],
                          judge=scorer.name, low_mass_share=evaluation.low_mass_share, low_mass_threshold=args.low_mass)
    result = {**evaluation.to_dict(), "split": split, "judge": scorer.name, "plots": [str(p) for p in plots],
              "skipped_rows": len(manifest.skipped), "reading_trust": trust.as_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"judge: {scorer.name}; {evaluation.n} images (split {split}); constant = {source}")
    for axis in ("valence", "arousal"):
        m = getattr(evaluation, axis)
        verdict = "beats" if m.beats_constant else "does NOT beat"
        print(f"{axis:8s} MAE {m.mae:.3f}  constant MAE {m.mae_constant:.3f} ({verdict} it)  PLCC {_fmt(m.plcc)}  "
              f"SRCC {_fmt(m.srcc)}  acc@{args.eps:g} {m.acc_within_eps:.3f}")
    print(f"low digit-mass readings (< {args.low_mass:g}): {evaluation.low_mass_share:.1%}")
    if evaluation.reading:
        print(f"reading: {', '.join(f'{k}={v}' for k, v in evaluation.reading.items())}; unparsable answers "
              f"(read as 0 on that axis): {evaluation.unparsable_share:.1%}")
    for warning in trust.warnings:
        print(f"WARNING: {warning}")
    for path in plots:
        print(f"plot: {path}")
    if manifest.skipped:
        print(f"{len(manifest.skipped)} bad manifest rows skipped", file=sys.stderr)
    return 0


# --- judge-data -----------------------------------------------------------------------------------


def _register_data(subparsers) -> None:
    from ..training.judge.importers import IMPORTERS

    p = subparsers.add_parser("judge-data", help="make or check a judge manifest (FindingEmo, EMOTIC, SAM/OASIS norms)")
    sub = p.add_subparsers(dest="judge_data_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="write a manifest from a public data set's annotation files",
                         description="Formats: " + "; ".join(f"{k}: {v}" for k, v in IMPORTERS.items()))
    imp.add_argument("format", choices=sorted(IMPORTERS))
    imp.add_argument("--annotations", nargs="+", default=[], type=Path,
                     help="FindingEmo annotations_single.ann; EMOTIC annot_arrs_*.csv (several); the norm table CSV")
    imp.add_argument("--images", type=Path, help="the image folder the annotation paths are relative to")
    imp.add_argument("--out", type=Path, help="manifest to write (.csv or .jsonl)")
    imp.add_argument("--scale", default=None, choices=["sam9", "likert7"],
                     help="norms: the table's rating scale (default: from its layout — OASIS's Theme column → likert7, else sam9)")
    imp.add_argument("--id-column", default=None, help="norms: column with the picture name (auto-detected)")
    imp.add_argument("--valence-column", default=None, help="norms: column with the valence mean (auto-detected)")
    imp.add_argument("--arousal-column", default=None, help="norms: column with the arousal mean (auto-detected)")
    imp.add_argument("--test-fraction", type=float, default=0.0,
                     help="give rows without a split a seeded train/test split with this test share (0 = leave empty)")
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--skip-bad", action="store_true", help="skip bad rows (counted) instead of stopping")
    imp.set_defaults(func=_import)
    check = sub.add_parser("check", help="validate a manifest and print its size and splits")
    check.add_argument("manifest", type=Path)
    check.add_argument("--skip-bad", action="store_true")
    check.set_defaults(func=_check)


def _import(args: argparse.Namespace) -> int:
    from ..training.judge import importers as imp
    from ..training.judge.data import ManifestError

    if args.format == "emoset":
        imp.refuse_emoset()
    if not args.annotations or args.images is None or args.out is None:
        raise ManifestError(f"judge-data import {args.format} needs --annotations FILE, --images DIR and --out MANIFEST")
    common = dict(skip_bad=args.skip_bad, test_fraction=args.test_fraction, seed=args.seed)
    if args.format == "findingemo":
        result = imp.import_findingemo(args.annotations[0], args.images, args.out, **common)
    elif args.format == "emotic":
        result = imp.import_emotic(args.annotations, args.images, args.out, **common)
    else:
        result = imp.import_norm_table(args.annotations[0], args.images, args.out, scale=args.scale,
                                       id_column=args.id_column, valence_column=args.valence_column,
                                       arousal_column=args.arousal_column, **common)
    print(f"wrote {result.manifest}: {result.images} images" + (f" (scale {result.scale})" if result.scale else "")
          + (f", {len(result.skipped)} bad rows skipped" if result.skipped else ""))
    for line in result.skipped[:5]:
        print(f"  skipped {line}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..training.judge.data import read_manifest

    manifest = read_manifest(args.manifest, skip_bad=args.skip_bad)
    counts = {name: sum(1 for s in manifest.samples if s.split == name) for name in sorted(manifest.splits)}
    print(f"{manifest.path}: {len(manifest.samples)} rows; splits {counts or '(none)'}; label means V/A "
          f"{manifest.label_means()[0]:+.2f}/{manifest.label_means()[1]:+.2f}"
          + (f"; {len(manifest.skipped)} bad rows skipped" if manifest.skipped else ""))
    return 0

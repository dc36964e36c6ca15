"""``emofeedback2 score``: read valence/arousal of image files with an LVLM (or the colour heuristic)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .judge_preset_args import add_judge_preset_arguments, judge_reading, preset_pixel_options, read_with, reading_record
from .lvlm_args import add_lvlm_load_arguments, load_scorer, lvlm_load_options
from .run_info import run_identity

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score images' valence and arousal in [-3, 3] with an LVLM",
        description=(
            "Score image files (or folders of images) with a vision-language model: valence "
            "(unpleasant → pleasant) and arousal (calm → excited) in [-3, 3], read from the model's digit "
            "probabilities in one batched pass. --lvlm colour uses the weight-free colour heuristic."
        ),
    )
    parser.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument("--lvlm", required=True, metavar="PATH_OR_ID",
                        help="model folder (e.g. ComfyUI/models/LLM/Qwen2.5-VL-7B-Instruct), hub id, or 'colour'")
    parser.add_argument("--adapter", default=None, metavar="FOLDER", help="peft LoRA adapter folder from training")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    add_lvlm_load_arguments(parser)
    add_judge_preset_arguments(parser)
    parser.add_argument("--max-pixels", type=int, default=None, help="cap on pixels per image for the vision encoder")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with the model to run")
    parser.add_argument("--analysis", action="store_true", help="also generate a short explanation per image")
    parser.add_argument("--valence", type=float, default=None, help="target valence in [-3, 3] (with --arousal)")
    parser.add_argument("--arousal", type=float, default=None, help="target arousal in [-3, 3] (with --valence)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=run)


def _collect(paths: list[Path]) -> list[Path]:
    from ..engines.images import ImageBatchError

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageBatchError(f"folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ImageBatchError(f"image not found: {path}")
    return files


def _load_images(files: list[Path]):
    from ..engines.images import load_image_file

    return [load_image_file(file) for file in files]  # 16-bit scaled, oversize refused naming the limit


def run(args: argparse.Namespace) -> int:
    from ..engines.emotion_space import VA, EmotionValueError
    from ..engines.judge.scoring import LOW_DIGIT_MASS, assess_readings, reading_rows

    # every anticipated failure below is a UserError: cli.main prints it as one line, exit 2
    if (args.valence is None) != (args.arousal is None):
        raise EmotionValueError("give both --valence and --arousal for a target, or neither")
    target = VA(args.valence, args.arousal) if args.valence is not None else None
    files = _collect(args.images)
    images = _load_images(files)
    choice = judge_reading(args, args.adapter, args.lvlm)
    options = {"max_pixels": args.max_pixels, **preset_pixel_options(choice, args.max_pixels)}
    scorer = read_with(load_scorer(args.lvlm, args.device, args.dtype, args.adapter,
                                   trust_remote_code=args.trust_remote_code, **options, **lvlm_load_options(args)),
                       choice, args)
    readings = scorer.score(images, analysis=args.analysis)

    rows = reading_rows(readings, target)
    for row, file in zip(rows, files):
        row["image"] = str(file)
    for row, details in zip(rows, getattr(scorer, "last_details", [])):  # a preset judge: answers and spread
        row["answers"] = len(details.texts)
        row["unparsable_answers"] = details.unparsable_answers
        if len(details.valence.values) > 1:
            row["valence_std"], row["arousal_std"] = round(details.valence.std, 4), round(details.arousal.std, 4)
    trust = assess_readings(readings, scorer)
    if args.json:
        print(json.dumps({
            "scorer": scorer.name,
            "heuristic": scorer.is_heuristic,
            "judge_reading": reading_record(scorer),
            "models": {"lvlm": args.lvlm, "lvlm_adapter": args.adapter, "device": args.device, "dtype": args.dtype,
                       "max_pixels": args.max_pixels, **lvlm_load_options(args)},
            **run_identity(None),  # scoring draws no random numbers (the analysis text is greedy)
            "target": None if target is None else {"valence": target.valence, "arousal": target.arousal},
            "readings": rows,
            "reading_trust": trust.as_dict(),
        }, indent=2))
        return 0
    note = " — a heuristic from colour statistics, not a content judgement" if scorer.is_heuristic else ""
    print(f"scorer: {scorer.name}{note}" + (f"; target {target}" if target is not None else ""))
    for row in rows:
        line = f"{row['image']}: valence {row['valence']:+.2f}  arousal {row['arousal']:+.2f}"
        if "reward" in row:
            line += f"  reward {row['reward']:.3f}"
        if "valence_std" in row:
            line += f"  spread {row['valence_std']:.2f}/{row['arousal_std']:.2f} over {row['answers']} answers"
        if row.get("unparsable"):
            line += "  UNPARSABLE: the judge's answer could not be read in its preset's format (an axis reads 0)"
        elif row.get("low_digit_mass"):
            line += (f"  LOW DIGIT MASS {row['digit_mass']:.2f} (< {LOW_DIGIT_MASS:g}): the judge was barely answering "
                     "with a scale digit, so this reading is unreliable")
        print(line)
        if row.get("analysis"):
            print(f"    {row['analysis']}")
    for warning in trust.warnings:
        print(f"WARNING: {warning}")
    return 0

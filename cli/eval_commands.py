"""``emofeedback2 eval``: the papers' evaluation table (V-Error, A-Error with their constant
baselines, correlations, slopes, monotonicity, CLIPScore, CLIP-IQA, LPIPS-Continuous) for any
generator of this project, and ``eval --compare`` to put several runs in one Markdown table.

The engine is :mod:`..evaluation`; this module only parses arguments and loads the models the way
``emofeedback2 loop`` does (:func:`.lvlm_args.load_scorer`, the diffusers backend's loader).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from .arg_types import finite_number, image_size, positive_int
from .judge_preset_args import add_judge_preset_arguments, judge_reading, preset_pixel_options, read_with, reading_record
from .lvlm_args import add_lvlm_load_arguments, lvlm_load_options
from .run_info import run_identity


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate how well a generator follows V-A targets (the papers' table, with baselines)",
        description="Generate every prompt × seed × V-A target, judge each saved image, and write "
        "OUT/images.csv, OUT/report.json, OUT/report.md and pictures. A killed run continues with --resume. "
        "`eval --compare OUT_A OUT_B ...` prints one Markdown table across runs.",
    )
    p.add_argument("--compare", nargs="+", metavar="OUT", default=None, help="print one Markdown table over these evaluation folders and exit")
    p.add_argument("--demo", action="store_true", help="evaluate the embedded demo (tiny random pipeline + toy mood grade, colour judge; no downloads)")
    p.add_argument("--workdir", default=None, help="--demo: where to build the tiny models (default: a temporary folder)")
    p.add_argument("--generator", default=None, help="diffusers pipeline folder (model_index.json) or hub id")
    p.add_argument("--lora", default=None, help="a trained generator LoRA (.safetensors) to apply")
    p.add_argument("--adapter", default=None, help="a trained emotion adapter (.safetensors) to apply")
    p.add_argument("--text-strength", type=finite_number("--text-strength", 0.0, 2.0), default=None,
                   help="text route: weave each target's emotion words into the prompt, 0..2 (default 0; --demo: 1)")
    p.add_argument("--adapter-strength", type=finite_number("--adapter-strength", 0.0, 2.0), default=1.0, help="emotion adapter strength, 0..2 (default 1)")
    p.add_argument("--lvlm", default=None, help="judge: a vision-language model folder (Qwen-VL, Gemma, InternVL …) or hub id, or 'colour' for the colour heuristic (--demo: colour)")
    p.add_argument("--lvlm-adapter", default=None, help="a peft LoRA folder for the LVLM judge")
    add_lvlm_load_arguments(p)
    add_judge_preset_arguments(p)
    p.add_argument("--prompts", default=None, help="prompts file, one per line (or a .csv with a 'prompt' column)")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable); instead of --prompts")
    targets = p.add_mutually_exclusive_group()
    targets.add_argument("--grid", type=positive_int("--grid", 9), default=5, help="N × N targets, V and A evenly spaced over [-3, 3] (default 5)")
    targets.add_argument("--targets", default=None, help="targets file: one 'valence, arousal' pair per line")
    p.add_argument("--seeds", type=positive_int("--seeds", 1000), default=1, help="seeds per prompt and target: seed, seed+1, ... (default 1)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--steps", type=positive_int("--steps", 1000), default=None, help="sampling steps (default 20; --demo: 2)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default 7; --demo: 1)")
    p.add_argument("--size", type=image_size, default=None, help="image width and height, multiple of 8 (default 512; --demo: 32)")
    p.add_argument("--batch-size", type=positive_int("--batch-size", 256), default=8, help="targets generated per call (default 8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default auto)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"), help="weights dtype (default auto)")
    p.add_argument("--clip", default=None, help="CLIP folder or hub id (CLIPModel + CLIPProcessor) for clip_score and clip_iqa")
    p.add_argument("--lpips", default=None, help="LPIPS weights folder for lpips_continuous (backbone + heads; layout in docs/evaluation.md)")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg", "squeeze"), help="LPIPS backbone (default alex)")
    p.add_argument("--label", default=None, help="name of this run in --compare tables (default: the folder name)")
    p.add_argument("--out", default="eval_out", help="output folder (default eval_out)")
    p.add_argument("--resume", action="store_true", help="continue the evaluation already in --out")
    p.set_defaults(func=run_eval)


def _prompts(args) -> list[str]:
    from ..engines.errors import UserError
    from ..evaluation.demo import DEMO_PROMPTS
    from ..evaluation.targets import read_prompts

    if args.prompts and args.prompt:
        raise UserError("give --prompts FILE or --prompt TEXT, not both")
    if args.prompts:
        return read_prompts(args.prompts)
    if args.prompt:
        prompts = [p.strip() for p in args.prompt if p.strip()]
        if len(set(prompts)) != len(prompts) or not prompts:
            raise UserError("--prompt: give each prompt once, non-empty")
        return prompts
    if args.demo:
        return list(DEMO_PROMPTS)
    raise UserError("--prompts FILE (one prompt per line) or --prompt TEXT is required")


def _judge_choice(args):
    """How the judge will be read, settled before any weights load: a bad ``--judge-*`` option or a missing
    ``--generator``/``--lvlm`` fails in a second, not after the generator and quality models have loaded."""
    from ..engines.errors import UserError

    if args.demo:
        if args.generator or args.lora or args.adapter:
            raise UserError("--demo evaluates the embedded demo; drop --generator/--lora/--adapter or drop --demo")
        if args.lvlm is None:  # a preset needs --lvlm: the demo's judge is the colour heuristic
            return judge_reading(args, None, "colour")
    else:
        if not args.generator:
            raise UserError("--generator is required (a diffusers folder or hub id), or use --demo")
        if not args.lvlm:
            raise UserError("--lvlm is required (a vision-language model folder or hub id, or 'colour')")
    return judge_reading(args, args.lvlm_adapter, args.lvlm)


def _load(args, workdir: Path, choice):
    """(generator, scorer, description) for --demo or real weights; ``choice`` from :func:`_judge_choice`."""
    if args.demo:
        from ..engines.demo.toy_demo import build_demo_components
        from ..evaluation.demo import DEMO_NOTE, TextRouteGenerator

        components = build_demo_components(workdir)
        strength = 1.0 if args.text_strength is None else args.text_strength
        generator = TextRouteGenerator(components.generator, strength)
        scorer = components.scorer if args.lvlm is None else _scorer(args, choice)
        return generator, scorer, {"generator": f"demo: {generator.name}", "demo": True, "note": DEMO_NOTE,
                                   "text_strength": strength}
    from ..engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_diffusers_generator

    strength = 0.0 if args.text_strength is None else args.text_strength
    generator = load_diffusers_generator(DiffusersGeneratorConfig(
        model=args.generator, device=args.device, dtype=args.dtype, lora=args.lora, adapter=args.adapter,
        text_strength=strength, max_batch_size=args.batch_size,
    ))
    description = {"generator": args.generator, "lora": args.lora, "adapter": args.adapter, "text_strength": strength,
                   "arch": generator.arch, "demo": False}
    return generator, _scorer(args, choice), description


def _scorer(args, choice):
    from .lvlm_args import load_scorer

    return read_with(load_scorer(args.lvlm, args.device, args.dtype, args.lvlm_adapter, **lvlm_load_options(args),
                                 **preset_pixel_options(choice)), choice, args)


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluation.report import compare_table

    if args.compare:
        print(compare_table(args.compare))
        return 0
    from ..engines.emotion_space import VA
    from ..evaluation.runner import Sampling, check_output
    from ..evaluation.targets import grid_targets, read_targets
    from ..training.run_lock import holding

    started = time.perf_counter()
    prompts = _prompts(args)
    targets: list[VA] = read_targets(args.targets) if args.targets else grid_targets(args.grid)
    demo = args.demo
    sampling = Sampling(
        negative_prompt=args.negative, width=args.size or (32 if demo else 512), height=args.size or (32 if demo else 512),
        steps=args.steps or (2 if demo else 20), cfg=args.cfg if args.cfg is not None else (1.0 if demo else 7.0),
        adapter_strength=args.adapter_strength,
    )
    out = Path(args.out)
    check_output(out, args.resume)
    with holding(out, "--out"):  # until the report is written; a run that writes nothing leaves no folder
        return _evaluate(args, out, prompts, targets, sampling, started)


def _evaluate(args, out: Path, prompts, targets, sampling, started: float) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..engines.devices import resolve_device
    from ..evaluation.clip_metrics import CLIPMetrics
    from ..evaluation.lpips_metric import LPIPSMetric
    from ..evaluation.plots import write_pictures
    from ..evaluation.report import QualityScores, build_report, markdown_table, write_report
    from ..evaluation.runner import EvalPlan, run_evaluation

    demo = args.demo
    if demo:
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    choice = _judge_choice(args)
    # the quality models next: a wrong --clip or --lpips folder should stop the run before it starts
    device = str(resolve_device(args.device))
    clip = CLIPMetrics(args.clip, device=device) if args.clip else None
    lpips = LPIPSMetric(args.lpips, net=args.lpips_net, device=device) if args.lpips else None
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="emofeedback2-eval-"))
    try:
        generator, scorer, description = _load(args, workdir, choice)
        judge = getattr(scorer, "name", str(args.lvlm))
        models = {**{k: v for k, v in description.items() if k != "note"}, "judge": judge, "lvlm": args.lvlm,
                  "lvlm_adapter": args.lvlm_adapter}
        if reading_record(scorer):  # a preset judge: its sampling settings are part of what was measured
            models["judge_reading"] = reading_record(scorer)
        plan = EvalPlan(prompts=prompts, targets=targets, seeds=[args.seed + k for k in range(args.seeds)],
                        sampling=sampling, batch_size=args.batch_size, models=models)
        run = {**description, "judge": judge, "judge_is_heuristic": bool(getattr(scorer, "is_heuristic", False)),
               "label": args.label, "prompts": prompts, "targets": [[t.valence, t.arousal] for t in targets],
               "seeds": plan.seeds, "sampling": plan.fingerprint()["sampling"], "lvlm": args.lvlm,
               "lvlm_adapter": args.lvlm_adapter, "device": args.device, "dtype": args.dtype, **lvlm_load_options(args),
               **run_identity(args.seed)}
        print(f"evaluating {description['generator']} with judge {judge}: {len(prompts)} prompt(s) × {len(plan.seeds)} seed(s) "
              f"× {len(targets)} target(s) = {plan.total} images → {out}")
        bar = tqdm(total=plan.total, desc="eval", unit="img")

        def progress(done: int, total: int) -> None:
            bar.total, bar.n = total, done
            bar.refresh()

        try:
            records = run_evaluation(generator, scorer, plan, out, resume=args.resume, describe={"run": run}, progress=progress)
        except KeyboardInterrupt:
            bar.close()
            print(f"stopped; the images made so far are in {out}/images.csv: continue with the same command plus --resume")
            raise
        bar.close()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    run["clip"], run["lpips"] = args.clip, (None if lpips is None else {"net": lpips.net, **lpips.files})
    quality = QualityScores(records, out, clip=clip, lpips=lpips)
    report = build_report(records, out, prompts, quality, run)
    report["files"] = {**write_pictures(records, out, prompts), "images_csv": "images.csv",
                       "report_json": "report.json", "report_md": "report.md"}
    write_report(report, out)
    print(markdown_table([("all prompts", report)], first="scope"))
    for key, reason in sorted(report["null_reasons"].items()):
        print(f"  {key}: null ({reason})")
    for warning in report["reading_trust"]["warnings"]:
        print(f"WARNING: {warning}")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}, {out / 'images.csv'}, pictures; {time.perf_counter() - started:.1f} s")
    if demo:
        from ..evaluation.demo import demo_note

        print(demo_note(judge, run["judge_is_heuristic"]))
    return 0

"""``emofeedback2 demo`` and ``emofeedback2 loop``: the feedback loop from the command line.

Both write ``OUT/best.png``, ``OUT/trajectory.png`` and ``OUT/report.json`` (history, counts,
timings); a non-empty ``OUT`` is refused unless ``--overwrite``, so two runs never mix. ``demo``
runs on the embedded default (:mod:`..engines.demo`: tiny local models built in a temporary
folder, CPU, no downloads); ``loop`` loads real weights from a local folder or hub id.
Heavy libraries are imported inside the command functions so ``emofeedback2 --help`` stays instant.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .arg_types import (
    finite_number,
    image_size,
    positive_int,
    seed_value,
    va_component,
)
from .console import quiet_prompt_truncation
from .judge_preset_args import add_judge_preset_arguments, judge_reading, preset_pixel_options, read_with
from .loop_outputs import LoopCommandError, RoundWriter, prepare_out, write_outputs
from .lvlm_args import add_lvlm_load_arguments, load_scorer, lvlm_load_options
from .run_info import run_identity

# The loop engine's defaults (LoopConfig), restated so `emofeedback2 --help` does not import torch;
# tests/test_demo_cli.py pins them to LoopConfig().
LOOP_DEFAULTS = argparse.Namespace(rounds=6, candidates=2, tolerance=0.4, min_improvement=0.0)


def _add_schedule_arguments(parser: argparse.ArgumentParser, steps: int, size: int, cfg: float,
                            prompt_note: str = "") -> None:
    defaults = LOOP_DEFAULTS
    parser.add_argument("--prompt", default=None,
                        help=f"what to draw; subject and composition words are kept every round{prompt_note}")
    parser.add_argument("--negative", default="", help="negative prompt, the same every round")
    parser.add_argument("--rounds", type=positive_int("rounds", 50), default=defaults.rounds,
                        help=f"most rounds of generate → judge → rewrite (default {defaults.rounds})")
    parser.add_argument("--candidates", type=positive_int("candidates", 256), default=defaults.candidates,
                        help=f"images per round, judged in one batch (default {defaults.candidates})")
    parser.add_argument("--tolerance", type=finite_number("tolerance (a V-A distance)", 0.0, 6.0), default=defaults.tolerance,
                        help=f"stop once the best image is this close to the target, mean |ΔV|,|ΔA| (default {defaults.tolerance}; 0 = never)")
    parser.add_argument("--min-improvement", type=finite_number("min-improvement", 0.0, 6.0), default=defaults.min_improvement,
                        help=f"stop when a round brings the best and the mean reading less than this closer (default {defaults.min_improvement}; 0 = never)")
    parser.add_argument("--seed", type=seed_value, default=0, help="seed of the first candidate; candidate k uses seed + k (default 0)")
    parser.add_argument("--steps", type=positive_int("steps", 1000), default=steps, help=f"sampling steps per image (default {steps})")
    parser.add_argument("--cfg", type=finite_number("cfg", 0.0, 100.0), default=cfg, help="classifier-free guidance scale")
    parser.add_argument("--size", type=image_size, default=size, help=f"image width and height in pixels, multiple of 8 (default {size})")


def _add_out_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=default, help="output folder; a non-empty one is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run's outputs in --out (round_NN/, best.png, trajectory.png, "
                        "report.json); a folder holding anything else is still refused and nothing is removed")


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the whole feedback loop on tiny local models (no downloads, CPU, ~20 s)",
        description="Run the EmoFeedback² loop on an embedded default: a tiny random diffusion pipeline "
        "built locally (plus a toy mood grade), the colour-heuristic judge and the descriptor refiner. "
        "The models are untrained: this shows the machinery, not real emotional images.",
    )
    _add_out_arguments(demo, "demo_out")
    # DEMO_TARGET restated (engines.demo imports torch); tests/test_cli_outputs.py pins them to it
    demo.add_argument("--valence", type=va_component("valence"), default=2.0, help="target valence in [-3, 3]")
    demo.add_argument("--arousal", type=va_component("arousal"), default=1.5, help="target arousal in [-3, 3]")
    demo.add_argument("--workdir", default=None, help="where to build the tiny models (default: a temporary folder, removed after)")
    _add_schedule_arguments(demo, steps=2, size=64, cfg=1.0, prompt_note=" (default: the demo's own prompt)")
    demo.set_defaults(func=run_demo)

    loop = subparsers.add_parser(
        "loop",
        help="run the feedback loop on real weights (diffusers model + LVLM judge)",
        description="Generate images whose emotion follows a valence/arousal target: rounds of candidates "
        "judged by the LVLM, whose feedback rewrites the prompt. Models are local folders or hub ids.",
    )
    loop.add_argument("--generator", required=True, help="diffusers pipeline folder (with model_index.json) or hub id (SD1.5, SDXL, SD3.x, "
                      "Flux.1, Flux.2 Klein, Qwen-Image, Z-Image)")
    loop.add_argument("--lvlm", required=True, help="Qwen-VL model folder or hub id, or 'colour' for the weight-free colour heuristic")
    loop.add_argument("--valence", type=va_component("valence"), required=True, help="target valence in [-3, 3]")
    loop.add_argument("--arousal", type=va_component("arousal"), required=True, help="target arousal in [-3, 3]")
    _add_out_arguments(loop, "loop_out")
    loop.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default auto)")
    loop.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"), help="weights dtype (default auto)")
    loop.add_argument("--lora", default=None, help="a trained generator LoRA (.safetensors) to apply")
    loop.add_argument("--adapter", default=None, help="a trained emotion adapter (.safetensors) to apply")
    loop.add_argument("--lvlm-adapter", default=None, help="a peft LoRA folder for the LVLM (from scorer fine-tuning)")
    add_lvlm_load_arguments(loop)
    add_judge_preset_arguments(loop)
    _add_schedule_arguments(loop, steps=20, size=512, cfg=7.0)
    loop.set_defaults(func=run_loop)


# --- running -----------------------------------------------------------------------------------------


def _config(args):
    from ..engines.loop.loop_config import LoopConfig

    return LoopConfig(
        rounds=args.rounds, candidates=args.candidates, tolerance=args.tolerance,
        min_improvement=args.min_improvement, seed=args.seed, steps=args.steps,
        cfg=args.cfg, width=args.size, height=args.size,
        negative_prompt=args.negative,
    )


def _run_and_report(generator, scorer, refiner, prompt: str, target, config, out: Path, extra: dict) -> int:
    from ..engines.judge.scoring import RecordedScorer
    from ..engines.loop.feedback_loop import progress_units, run_feedback_loop
    from ..engines.progress import TqdmProgress

    bar = TqdmProgress("feedback loop", total=progress_units(config))
    judged = RecordedScorer(scorer)  # keeps the readings: are they trustworthy? (digit mass, spread)
    try:
        with quiet_prompt_truncation() as truncations:
            result = run_feedback_loop(generator, judged, refiner, prompt, target, config, progress=bar,
                                       on_round=RoundWriter(out, extra))
    except BaseException as exc:
        bar.close()
        partial = getattr(exc, "partial_result", None)
        if partial is not None and partial.rounds:
            try:
                write_outputs(out, partial, {**extra, "complete": False, "error": f"{type(exc).__name__}: {exc}"[:500],
                                             "prompt_truncations": truncations.count})
                print(f"stopped ({partial.stop_reason}); partial results of {len(partial.rounds)} round(s) in {out}",
                      file=sys.stderr)
            except Exception as write_error:  # noqa: BLE001 - the round folders and partial report are on disk
                print(f"stopped; could not write the final files ({write_error}); per-round files are in {out}",
                      file=sys.stderr)
        raise
    bar.close()
    trust = judged.trust()
    report = write_outputs(out, result, {**extra, "complete": True, "prompt_truncations": truncations.count,
                                         "reading_trust": trust.as_dict()})
    if truncations.note():
        print(truncations.note())
    best = result.best
    counts = report["counts"]
    print(f"target {target}; {len(result.rounds)} round(s), stopped: {result.stop_reason}")
    for record in result.rounds:
        print(f"  round {record.round}: best of {len(record.candidates)} d={record.candidates[record.best_index].distance:.3f}, "
              f"best so far d={record.best_so_far_distance:.3f}")
    print(f"best image: V={best.valence:+.2f} A={best.arousal:+.2f} (error {best.distance:.3f}, reward {best.reward:.3f}), seed {best.seed}")
    print(f"final prompt: {result.final_prompt}")
    print(f"generated {counts['generator_images']} images, {counts['image_evaluations']} judge image evaluations, "
          f"{result.timings['total']:.1f} s")
    for warning in trust.warnings:
        print(f"WARNING: {warning}")
    print(f"wrote {out / 'best.png'}, {out / 'trajectory.png'}, {out / 'report.json'}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from ..engines.demo.toy_demo import DEMO_PROMPT, HONESTY_NOTE, build_demo_components
    from ..engines.emotion_space import VA

    started = time.perf_counter()
    if args.prompt is not None and not args.prompt.strip():
        raise LoopCommandError("--prompt is empty: say what to draw, or leave --prompt out for the demo's own prompt")
    folder = prepare_out(Path(args.out), args.overwrite)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    print(HONESTY_NOTE)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="emofeedback2-demo-"))
    try:
        components = build_demo_components(workdir)
        print(f"built tiny models in {components.seconds_to_build:.1f} s ({components.pipeline_dir})")
        target = VA(args.valence, args.arousal)
        extra = {
            "demo": True,
            "note": HONESTY_NOTE,
            "seconds_to_build_models": round(components.seconds_to_build, 3),
            "models": {"generator": f"demo: {components.generator.name} (tiny random weights, built in a temporary "
                                    "folder) + toy mood grade", "lora": None, "adapter": None,
                       "lvlm": "colour", "lvlm_adapter": None},
            **run_identity(args.seed),
        }
        code = _run_and_report(components.generator, components.scorer, components.refiner,
                               DEMO_PROMPT if args.prompt is None else args.prompt, target,
                               _config(args), folder.path, extra)
    finally:
        folder.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"demo finished in {time.perf_counter() - started:.1f} s (untrained demo models: see the note above)")
    return code


def run_loop(args: argparse.Namespace) -> int:
    if not args.prompt or not args.prompt.strip():
        raise LoopCommandError("--prompt is required (what to draw, e.g. 'a lighthouse on a rocky coast')")
    folder = prepare_out(Path(args.out), args.overwrite)
    try:
        return _load_and_loop(args, folder.path)
    finally:
        folder.close()  # a run that failed before its first round leaves no empty --out behind


def _load_and_loop(args: argparse.Namespace, out: Path) -> int:
    from ..engines.emotion_space import VA
    from ..engines.generation.diffusers_backend import (
        DiffusersGeneratorConfig,
        ModelLoadError,
        load_diffusers_generator,
    )
    from ..engines.generation.emotion_adapter import AdapterArchitectureError
    from ..engines.judge.lvlm_scorer import LVLMLoadError
    from ..engines.loop.refiner import make_refiner

    choice = judge_reading(args, args.lvlm_adapter, args.lvlm)  # before any weights load
    try:
        generator = load_diffusers_generator(DiffusersGeneratorConfig(
            model=args.generator, device=args.device, dtype=args.dtype, lora=args.lora, adapter=args.adapter,
        ))
    except AdapterArchitectureError as exc:
        raise LoopCommandError(f"--adapter {args.adapter!r} does not fit this generator: {exc}") from exc
    except (ModelLoadError, FileNotFoundError) as exc:
        raise LoopCommandError(f"cannot load --generator {args.generator!r}: {exc}") from exc
    try:
        scorer = read_with(load_scorer(args.lvlm, args.device, args.dtype, args.lvlm_adapter, **lvlm_load_options(args),
                                       **preset_pixel_options(choice)), choice, args)
    except (LVLMLoadError, FileNotFoundError) as exc:
        raise LoopCommandError(f"cannot load --lvlm {args.lvlm!r}: {exc}") from exc
    refiner = make_refiner(scorer)
    print(f"generator: {args.generator} ({generator.arch}); judge: {getattr(scorer, 'name', args.lvlm)}; refiner: {refiner.name}")
    extra = {
        "demo": False, "generator": args.generator, "lvlm": args.lvlm,
        "models": {"generator": args.generator, "arch": generator.arch, "lora": args.lora, "adapter": args.adapter,
                   "lvlm": args.lvlm, "lvlm_adapter": args.lvlm_adapter, "device": args.device, "dtype": args.dtype,
                   **lvlm_load_options(args)},
        **run_identity(args.seed),
    }
    return _run_and_report(generator, scorer, refiner, args.prompt, VA(args.valence, args.arousal),
                           _config(args), out, extra)

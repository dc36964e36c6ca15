"""``emofeedback2 demo`` and ``emofeedback2 loop``: the feedback loop from the command line.

Both write ``OUT/best.png``, ``OUT/trajectory.png`` and ``OUT/report.json`` (history, counts,
timings); a non-empty ``OUT`` is refused unless ``--overwrite``, so two runs never mix. ``demo``
runs on the embedded default (:mod:`..engines.demo`: tiny local models built in a temporary
folder, CPU, no downloads); ``loop`` loads real weights from a local folder or hub id.
Heavy libraries are imported inside the command functions so ``emofeedback2 --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from ..engines.emotion_space import EmotionValueError, check_component
from ..engines.errors import UserError
from .lvlm_args import add_lvlm_load_arguments, lvlm_load_options

SEED_LIMIT = 2**64  # ComfyUI's seed range; the loop's candidate seeds wrap at the same modulus


class LoopCommandError(UserError):
    """A loop/demo argument or output folder that cannot be used."""


def _component(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [-3, 3], got {text!r}") from None
        try:
            return check_component(value, name)
        except EmotionValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _positive_int(name: str, maximum: int = 1000):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, got {text!r}") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{name} must be in 1..{maximum}, got {value}")
        return value

    return parse


def _finite(name: str, lo: float, hi: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number in [{lo:g}, {hi:g}], got {text!r}") from None
        if not (math.isfinite(value) and lo <= value <= hi):  # NaN would reach report.json as invalid JSON
            raise argparse.ArgumentTypeError(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {text!r}")
        return value

    return parse


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a whole number, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"seed must be in 0..{SEED_LIMIT - 1} (2**64-1), got {value}")
    return value


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tolerance must be a number in [0, 6], got {text!r}") from None
    if not 0.0 <= value <= 6.0:
        raise argparse.ArgumentTypeError(f"tolerance is a V-A distance in [0, 6], got {value}")
    return value


def _size(text: str) -> int:
    value = _positive_int("size", 4096)(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"size must be a multiple of 8, got {value}")
    return value


# The loop engine's defaults (LoopConfig), restated so `emofeedback2 --help` does not import torch;
# tests/test_demo_cli.py pins them to LoopConfig().
LOOP_DEFAULTS = argparse.Namespace(rounds=6, candidates=2, tolerance=0.4, min_improvement=0.0)


def _add_schedule_arguments(parser: argparse.ArgumentParser, steps: int, size: int, cfg: float,
                            prompt_note: str = "") -> None:
    defaults = LOOP_DEFAULTS
    parser.add_argument("--prompt", default=None,
                        help=f"what to draw; subject and composition words are kept every round{prompt_note}")
    parser.add_argument("--negative", default="", help="negative prompt, the same every round")
    parser.add_argument("--rounds", type=_positive_int("rounds", 50), default=defaults.rounds,
                        help=f"most rounds of generate → judge → rewrite (default {defaults.rounds})")
    parser.add_argument("--candidates", type=_positive_int("candidates", 256), default=defaults.candidates,
                        help=f"images per round, judged in one batch (default {defaults.candidates})")
    parser.add_argument("--tolerance", type=_tolerance, default=defaults.tolerance,
                        help=f"stop once the best image is this close to the target, mean |ΔV|,|ΔA| (default {defaults.tolerance}; 0 = never)")
    parser.add_argument("--min-improvement", type=_finite("min-improvement", 0.0, 6.0), default=defaults.min_improvement,
                        help=f"stop when a round brings the best and the mean reading less than this closer (default {defaults.min_improvement}; 0 = never)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the first candidate; candidate k uses seed + k (default 0)")
    parser.add_argument("--steps", type=_positive_int("steps", 1000), default=steps, help=f"sampling steps per image (default {steps})")
    parser.add_argument("--cfg", type=_finite("cfg", 0.0, 100.0), default=cfg, help="classifier-free guidance scale")
    parser.add_argument("--size", type=_size, default=size, help=f"image width and height in pixels, multiple of 8 (default {size})")


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
    demo.add_argument("--valence", type=_component("valence"), default=2.0, help="target valence in [-3, 3]")
    demo.add_argument("--arousal", type=_component("arousal"), default=1.5, help="target arousal in [-3, 3]")
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
    loop.add_argument("--valence", type=_component("valence"), required=True, help="target valence in [-3, 3]")
    loop.add_argument("--arousal", type=_component("arousal"), required=True, help="target arousal in [-3, 3]")
    _add_out_arguments(loop, "loop_out")
    loop.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default auto)")
    loop.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"), help="weights dtype (default auto)")
    loop.add_argument("--lora", default=None, help="a trained generator LoRA (.safetensors) to apply")
    loop.add_argument("--adapter", default=None, help="a trained emotion adapter (.safetensors) to apply")
    loop.add_argument("--lvlm-adapter", default=None, help="a peft LoRA folder for the LVLM (from scorer fine-tuning)")
    add_lvlm_load_arguments(loop)
    _add_schedule_arguments(loop, steps=20, size=512, cfg=7.0)
    loop.set_defaults(func=run_loop)


# --- running -----------------------------------------------------------------------------------------


def _config(args):
    from ..engines.loop.feedback_loop import LoopConfig

    return LoopConfig(
        rounds=args.rounds, candidates=args.candidates, tolerance=args.tolerance,
        min_improvement=args.min_improvement, seed=args.seed, steps=args.steps,
        cfg=args.cfg, width=args.size, height=args.size,
        negative_prompt=args.negative,
    )


def strict_json(value):
    """``value`` with NaN/inf floats replaced by None, so the report is valid (strict) JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# What RoundWriter and _write_outputs put in --out (plus their temp/probe files): all --overwrite removes.
_ROUND_FOLDER = re.compile(r"round_\d{2,}")
_CANDIDATE_FILE = re.compile(r"candidate_\d{2,}_seed\d+\.png")
_OUTPUT_FILES = re.compile(r"(best\.png|trajectory\.png|report\.json|\.report\.json\.tmp|\.write-test-\d+)")


def _ours(entry: Path) -> bool:
    if entry.is_symlink():  # never followed: removing through a link could reach another folder
        return False
    if entry.is_dir():
        return bool(_ROUND_FOLDER.fullmatch(entry.name)) and all(
            f.is_file() and not f.is_symlink() and _CANDIDATE_FILE.fullmatch(f.name) for f in entry.iterdir())
    return entry.is_file() and bool(_OUTPUT_FILES.fullmatch(entry.name))


def _clear_previous_run(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (rounds of two runs would mix); with ``overwrite`` remove only a run's outputs."""
    entries = sorted(out.iterdir())
    if not entries:
        return
    shown = ", ".join(e.name for e in entries[:4]) + (" ..." if len(entries) > 4 else "")
    if not overwrite:
        raise LoopCommandError(f"--out {out} is not empty ({shown}); choose a new folder, or pass --overwrite "
                               "to replace the earlier run's outputs in it")
    foreign = [e.name for e in entries if not _ours(e)]
    if foreign:  # checked before anything is removed: all or nothing
        raise LoopCommandError(f"--out {out} holds files a loop/demo run does not write ({', '.join(foreign[:4])}); "
                               "--overwrite only replaces round_NN/, best.png, trajectory.png and report.json: "
                               "choose another folder")
    for entry in entries:
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def prepare_out(out: Path, overwrite: bool = False) -> Path:
    """Check and create ``--out`` before anything is generated (a bad folder must not cost the run)."""
    if out.exists() and not out.is_dir():
        raise LoopCommandError(f"--out {out} is a file; choose a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LoopCommandError(f"--out {out} lies under {parent}, which is a file; choose another folder")
            break
    try:
        if out.is_dir():
            _clear_previous_run(out, overwrite)
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LoopCommandError(f"--out {out} cannot be written ({exc.strerror or exc}); choose another folder") from exc
    return out


class RoundWriter:
    """Writes each round's candidates and a partial ``report.json`` as soon as the round is committed."""

    def __init__(self, out: Path, extra: dict):
        self.out, self.extra = out, extra

    def __call__(self, result, images) -> None:
        from ..engines.images import to_pil_list

        record = result.rounds[-1]
        folder = self.out / f"round_{record.round:02d}"
        folder.mkdir(exist_ok=True)
        for candidate, image in zip(record.candidates, to_pil_list(images)):
            image.save(folder / f"candidate_{candidate.index:02d}_seed{candidate.seed}.png")
        write_report(self.out, result, {**self.extra, "complete": False}, {"rounds": str(self.out / "round_NN")})


def write_report(out: Path, result, extra: dict, files: dict) -> dict:
    report = result.to_dict()
    report.update(extra)
    report["files"] = {**files, "report": str(out / "report.json")}
    report = strict_json(report)
    _write_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    return report


def _write_outputs(out: Path, result, extra: dict) -> dict:
    """best.png, trajectory.png, report.json; returns the report."""
    from ..engines.images import to_pil_list
    from ..engines.loop.trajectory_plot import plot_trajectory

    out.mkdir(parents=True, exist_ok=True)
    files = {"rounds": str(out / "round_NN")}
    if result.best_image is not None:
        to_pil_list(result.best_image)[0].save(out / "best.png")
        files["best"] = str(out / "best.png")
    plot_trajectory(result).save(out / "trajectory.png")
    files["trajectory"] = str(out / "trajectory.png")
    return write_report(out, result, extra, files)


def _run_and_report(generator, scorer, refiner, prompt: str, target, config, out: Path, extra: dict) -> int:
    from ..engines.loop.feedback_loop import run_feedback_loop
    from ..engines.progress import TqdmProgress

    bar = TqdmProgress("feedback loop", total=config.rounds * (config.candidates + 1))
    try:
        result = run_feedback_loop(generator, scorer, refiner, prompt, target, config, progress=bar,
                                   on_round=RoundWriter(out, extra))
    except BaseException as exc:
        bar.close()
        partial = getattr(exc, "partial_result", None)
        if partial is not None and partial.rounds:
            try:
                _write_outputs(out, partial, {**extra, "complete": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
                print(f"stopped ({partial.stop_reason}); partial results of {len(partial.rounds)} round(s) in {out}",
                      file=sys.stderr)
            except Exception as write_error:  # noqa: BLE001 - the round folders and partial report are on disk
                print(f"stopped; could not write the final files ({write_error}); per-round files are in {out}",
                      file=sys.stderr)
        raise
    bar.close()
    report = _write_outputs(out, result, {**extra, "complete": True})
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
    print(f"wrote {out / 'best.png'}, {out / 'trajectory.png'}, {out / 'report.json'}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from ..engines.demo.toy_demo import DEMO_PROMPT, HONESTY_NOTE, build_demo_components
    from ..engines.emotion_space import VA

    started = time.perf_counter()
    if args.prompt is not None and not args.prompt.strip():
        raise LoopCommandError("--prompt is empty: say what to draw, or leave --prompt out for the demo's own prompt")
    out = prepare_out(Path(args.out), args.overwrite)
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
        }
        code = _run_and_report(components.generator, components.scorer, components.refiner,
                               DEMO_PROMPT if args.prompt is None else args.prompt, target,
                               _config(args), out, extra)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"demo finished in {time.perf_counter() - started:.1f} s (untrained demo models: see the note above)")
    return code


def load_scorer(spec: str, device: str = "auto", dtype: str = "auto", adapter: Optional[str] = None, **options):
    """``colour``/``color`` → the colour heuristic; anything else → an LVLM folder or hub id.

    ``options``: further :class:`LVLMConfig` fields, e.g. from :func:`.lvlm_args.lvlm_load_options`.
    """
    if spec.lower() in ("colour", "color", "colour-heuristic", "color-heuristic"):
        from ..engines.judge.color_scorer import ColorHeuristicScorer

        return ColorHeuristicScorer()
    from ..engines.judge.lvlm_scorer import LVLMConfig, load_lvlm

    return load_lvlm(LVLMConfig(model=spec, device=device, dtype=dtype, adapter=adapter, **options))


def run_loop(args: argparse.Namespace) -> int:
    from ..engines.generation.diffusers_backend import DiffusersGeneratorConfig, ModelLoadError, load_diffusers_generator
    from ..engines.generation.emotion_adapter import AdapterArchitectureError
    from ..engines.emotion_space import VA
    from ..engines.judge.lvlm_scorer import LVLMLoadError
    from ..engines.loop.refiner import make_refiner

    if not args.prompt or not args.prompt.strip():
        raise LoopCommandError("--prompt is required (what to draw, e.g. 'a lighthouse on a rocky coast')")
    out = prepare_out(Path(args.out), args.overwrite)
    try:
        generator = load_diffusers_generator(DiffusersGeneratorConfig(
            model=args.generator, device=args.device, dtype=args.dtype, lora=args.lora, adapter=args.adapter,
        ))
    except AdapterArchitectureError as exc:
        raise LoopCommandError(f"--adapter {args.adapter!r} does not fit this generator: {exc}") from exc
    except (ModelLoadError, FileNotFoundError) as exc:
        raise LoopCommandError(f"cannot load --generator {args.generator!r}: {exc}") from exc
    try:
        scorer = load_scorer(args.lvlm, args.device, args.dtype, args.lvlm_adapter, **lvlm_load_options(args))
    except (LVLMLoadError, FileNotFoundError) as exc:
        raise LoopCommandError(f"cannot load --lvlm {args.lvlm!r}: {exc}") from exc
    refiner = make_refiner(scorer)
    print(f"generator: {args.generator} ({generator.arch}); judge: {getattr(scorer, 'name', args.lvlm)}; refiner: {refiner.name}")
    extra = {"demo": False, "generator": args.generator, "lvlm": args.lvlm}
    return _run_and_report(generator, scorer, refiner, args.prompt, VA(args.valence, args.arousal),
                           _config(args), out, extra)

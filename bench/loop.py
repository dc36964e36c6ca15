"""``emofeedback2 bench loop``: our early-stopping schedule vs the paper's fixed 3 rounds × 8.

Both schedules run on the same components (by default the demo's: tiny random diffusion pipeline
+ toy mood grade, colour-heuristic scorer, descriptor refiner — see :mod:`..engines.demo`) over
the same fixed targets spread across [-3, 3]² and the same seeds. Per schedule it prints the mean
final V-A error (``va_distance`` of the chosen image), judge image evaluations per final image,
generator images per final image and wall time. The line before last prints both errors; the last
line is ``evaluations_ratio_vs_paper=<ours/paper>``, valid only if our mean error ≤ paper's + 0.05.

The demo components make this a benchmark of the *schedule* (how many evaluations a feedback
controller needs), not of emotion fidelity: their readings come from a heuristic on a toy.
"""

from __future__ import annotations

import argparse
import time

from ..engines.emotion_space import VA

# 24 fixed targets: a 5×5 grid over [-2.5, 2.5]² without its centre, jittered off the grid lines so
# no two share a coordinate (keeps the descriptor ladders from aliasing).
BENCH_TARGETS: tuple[VA, ...] = tuple(
    VA(round(-2.5 + 1.25 * i + 0.1 * ((i + 2 * j) % 3 - 1), 2), round(-2.5 + 1.25 * j + 0.1 * ((2 * i + j) % 3 - 1), 2))
    for i in range(5)
    for j in range(5)
    if (i, j) != (2, 2)
)
BENCH_PROMPTS = (
    "a lighthouse on a rocky coast, wide shot",
    "a woman reading in a kitchen, medium shot",
    "a city street with parked cars, eye level",
    "a forest path with a wooden bench",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", type=int, default=len(BENCH_TARGETS), help=f"how many of the {len(BENCH_TARGETS)} fixed targets to run (>= 20 for the headline)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (each target adds its index)")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels (multiple of 8)")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per image")
    parser.add_argument("--workdir", default=None, help="where to build the tiny pipeline (default: a temp folder)")
    parser.add_argument("--rounds", type=int, default=None, help="our schedule's rounds (default: the loop default)")
    parser.add_argument("--candidates", type=int, default=None, help="our schedule's candidates per round (default: the loop default)")
    parser.add_argument("--tolerance", type=float, default=None, help="our schedule's tolerance (default: the loop default)")
    parser.add_argument("--min-improvement", type=float, default=None, help="our schedule's plateau threshold (default: the loop default)")
    parser.add_argument("--verbose", action="store_true", help="print one line per target and schedule")


def run_schedule(components, config_for, targets, verbose: bool = False, label: str = ""):
    """Run one schedule over ``targets``; return (mean error, evaluations, generated images, seconds)."""
    from ..engines.feedback_loop import run_feedback_loop

    errors, evaluations, generated = [], 0, 0
    started = time.perf_counter()
    for k, target in enumerate(targets):
        prompt = BENCH_PROMPTS[k % len(BENCH_PROMPTS)]
        result = run_feedback_loop(components.generator, components.scorer, components.refiner, prompt, target, config_for(k))
        errors.append(result.best.distance)
        evaluations += result.counts.image_evaluations
        generated += result.counts.generator_images
        if verbose:
            print(f"  {label:5s} target {target} rounds={len(result.rounds)} stop={result.stop_reason:9s} "
                  f"images={result.counts.generator_images:2d} error={result.best.distance:.3f}")
    return sum(errors) / len(errors), evaluations, generated, time.perf_counter() - started


def run(args: argparse.Namespace) -> int:
    import torch

    from ..engines.demo import build_demo_components
    from ..engines.feedback_loop import LoopConfig

    if not 1 <= args.targets <= len(BENCH_TARGETS):
        raise SystemExit(f"--targets must be in 1..{len(BENCH_TARGETS)}, got {args.targets}")
    if args.size % 8 or args.size < 8:
        raise SystemExit(f"--size must be a positive multiple of 8, got {args.size}")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    components = build_demo_components(args.workdir)
    targets = BENCH_TARGETS[: args.targets]
    sampling = dict(width=args.size, height=args.size, steps=args.steps, cfg=1.0)
    ours_overrides = {
        key: value
        for key, value in (("rounds", args.rounds), ("candidates", args.candidates), ("tolerance", args.tolerance),
                           ("min_improvement", args.min_improvement))
        if value is not None
    }
    ours_defaults = LoopConfig(**ours_overrides)
    paper_defaults = LoopConfig.paper()
    print(f"components: {components.generator.name}; {components.scorer.name}; {components.refiner.name}")
    print(f"targets: {len(targets)} fixed points over [-3, 3]^2; image {args.size}x{args.size}, {args.steps} steps")
    print(f"paper schedule: {paper_defaults.rounds} rounds x {paper_defaults.candidates} candidates, no early stop")
    plateau = (f" or when a round improves by < {ours_defaults.min_improvement}" if ours_defaults.min_improvement > 0 else "")
    print(f"our schedule:   up to {ours_defaults.rounds} rounds x {ours_defaults.candidates} candidates, "
          f"stop once the best error <= {ours_defaults.tolerance}{plateau}")

    figures = {}
    for label, make in (
        ("paper", lambda k: LoopConfig.paper(seed=args.seed + 1000 * k, **sampling)),
        ("ours", lambda k: LoopConfig(seed=args.seed + 1000 * k, **ours_overrides, **sampling)),
    ):
        error, evaluations, generated, seconds = run_schedule(components, make, targets, args.verbose, label)
        n = len(targets)
        figures[label] = (error, evaluations / n)
        print(f"{label:5s}: mean final V-A error {error:.3f} | judge image evaluations per final image "
              f"{evaluations / n:.2f} | generator images per final image {generated / n:.2f} | wall {seconds:.1f} s")

    ours_error, ours_evals = figures["ours"]
    paper_error, paper_evals = figures["paper"]
    valid = ours_error <= paper_error + 0.05
    print(f"mean_error_ours={ours_error:.3f} mean_error_paper={paper_error:.3f} "
          f"({'valid' if valid else 'INVALID'}: ours must be <= paper + 0.05)")
    print(f"evaluations_ratio_vs_paper={ours_evals / paper_evals:.3f}")
    return 0 if valid else 1

"""``emofeedback2 bench <name>``: benchmarks that print figures; the last line is the headline ratio.

Each benchmark is a module in :mod:`emofeedback2.bench` exposing ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen.
"""

from __future__ import annotations

import argparse
import importlib
import math

from ..engines.errors import UserError


class BenchArgumentError(UserError):
    """A benchmark option outside what the benchmark can run."""


# Options the benchmarks share by name, checked before anything loads: (lowest, highest, multiple of).
_WHOLE = {"repeats": (1, 10_000), "steps": (1, 10_000), "group_size": (2, 4096), "batch_size": (1, 4096),
          "resolution": (8, 8192, 8), "images": (1, 4096), "image_size": (2, 16384), "new_tokens": (1, 4096),
          "reasoning_tokens": (1, 16384), "batch": (1, 4096), "size": (8, 8192, 8), "targets": (1, 10_000),
          "rounds": (1, 1000), "candidates": (1, 4096), "lora_rank": (1, 4096), "threads": (1, 1024),
          "max_pixels": (1, 1 << 30), "warmup": (0, 10_000),
          # bench judge: correlations need a few test images; Qwen-VL's smallest image is 28 px (one merged patch)
          "train_images": (2, 100_000), "test_images": (3, 100_000), "pixels": (28, 4096)}
_REAL = {"cfg": (0.0, 100.0), "tolerance": (0.0, 6.0), "min_improvement": (0.0, 6.0)}


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse values a benchmark would crash on (or silently mis-measure) with one line naming the flag."""
    for name, rule in _WHOLE.items():
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is None:
                continue
            lo, hi = rule[0], rule[1]
            if not lo <= value <= hi:
                raise BenchArgumentError(f"--{name.replace('_', '-')} must be in {lo}..{hi}, got {value}")
            if len(rule) == 3 and value % rule[2]:
                raise BenchArgumentError(f"--{name.replace('_', '-')} must be a multiple of {rule[2]}, got {value}")
    steps = getattr(args, "steps", None)
    if isinstance(steps, list) and len(set(steps)) < 2:
        # bench train: one T gives update_mem_ratio_T4_T4=1.000, which "meets" the flat-memory goal unmeasured
        raise BenchArgumentError(f"--steps needs at least two different step counts to compare (e.g. --steps 4 16), "
                                 f"got {' '.join(map(str, steps))}")
    for name, (lo, hi) in _REAL.items():
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and lo <= value <= hi):
            raise BenchArgumentError(f"--{name.replace('_', '-')} must be a finite number in [{lo:g}, {hi:g}], got {value}")
    device = getattr(args, "device", None)
    if device:
        from ..engines.devices import resolve_device

        resolve_device(device, error=BenchArgumentError)


def _run(name: str, args: argparse.Namespace) -> int:
    check_arguments(args)
    return _load(name).run(args)

BENCHMARKS = {
    "scorer": "expected-value scoring vs generate-then-parse on a tiny LVLM",
    "generate": "overhead of the diffusers backend over calling the pipeline directly",
    "loop": "feedback-loop error vs judge evaluations on toy plants: ours vs the paper's fixed 3×8",
    "train": "GRPO rollout/update throughput and backward memory vs sampling steps",
    "judge": "judge fine-tuning on a tiny LVLM: base vs trained vs shuffled-label control (PLCC, MAE), images/s",
    "gpu": "the real-size figures in one prepared GPU run: scorer, GRPO phases vs the plan, judge training, fp16",
}


def _load(name: str):
    return importlib.import_module(f"..bench.{name}", __package__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its figures",
                                   description="Benchmarks that print measured figures; the last line is the headline.")
    bench_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        bench_parser = bench_sub.add_parser(name, help=help_text, description=help_text)
        module = None
        try:
            module = _load(name)
        except ModuleNotFoundError:
            pass
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(bench_parser)
        bench_parser.set_defaults(func=lambda args, name=name: _run(name, args))

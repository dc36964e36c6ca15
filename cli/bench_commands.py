"""``emofeedback2 bench <name>``: benchmarks that print figures; the last line is the headline ratio.

Each benchmark is a module in :mod:`emofeedback2.bench` exposing ``add_arguments(parser)`` and
``run(args) -> int``; it is imported only when chosen.
"""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "scorer": "expected-value scoring vs generate-then-parse on a tiny LVLM",
    "generate": "overhead of the diffusers backend over calling the pipeline directly",
    "loop": "feedback-loop schedules: ours (early stop) vs the paper's fixed 3×8",
    "train": "GRPO rollout/update throughput and backward memory vs sampling steps",
    "judge": "judge fine-tuning on a tiny LVLM: base vs trained vs shuffled-label control (PLCC, MAE), images/s",
}


def _load(name: str):
    return importlib.import_module(f"..bench.{name}", __package__)


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run a benchmark and print its figures")
    bench_sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, help_text in BENCHMARKS.items():
        bench_parser = bench_sub.add_parser(name, help=help_text)
        module = None
        try:
            module = _load(name)
        except ModuleNotFoundError:
            pass
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(bench_parser)
        bench_parser.set_defaults(func=lambda args, name=name: _load(name).run(args))

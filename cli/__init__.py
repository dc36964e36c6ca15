"""The ``emofeedback2`` command line: demo, score, loop, train, export and benchmarks.

Each sub-command lives in its own module exposing ``register(subparsers)``; that function adds the
parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
Modules import heavy libraries inside ``func`` so ``emofeedback2 --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import bench_commands, judge_commands, loop_commands, score_commands, train_commands
from ..engines.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emofeedback2",
        description="Continuous valence/arousal emotion control with LVLM feedback (EmoFeedback²).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (loop_commands, score_commands, train_commands, judge_commands, bench_commands):
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # anticipated failures (bad value, missing file): one line that says what to fix, no traceback
        print(f"emofeedback2 {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

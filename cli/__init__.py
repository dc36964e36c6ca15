"""The ``emofeedback2`` command line: demo, score, loop, train, export, convert-scale and benchmarks.

Each sub-command lives in its own module exposing ``register(subparsers)``; that function adds the
parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
Modules import heavy libraries inside ``func`` so ``emofeedback2 --help`` stays instant.

One error path for every command: an anticipated failure (a :class:`UserError`, or a file-system
error) prints one line saying what to fix and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from typing import Optional, Sequence

from . import (bench_commands, eval_commands, export_commands, judge_commands, loop_commands, scale_commands,
               score_commands, train_commands)
from .. import __version__
from ..engines.errors import UserError
from ..training.disk_space import DISK_FULL_ERRNOS, disk_full_message

# A hand-written default note: "(default X)", "(default: X; more)" or a trailing "; default: X".
_HANDWRITTEN_DEFAULT = re.compile(
    r"\s*\(default:?\s+(?P<value>[^;()]*?)\s*(?:;\s*(?P<rest>[^()]*?)\s*)?\)|[;,]\s*default:\s+(?P<tail>[^()]*?)\s*$")
_SHOWN_DEFAULT = "(default: "


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help already says what its default means (see ``_one_default``)."""

    def _get_help_string(self, action):
        if _SHOWN_DEFAULT in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _one_default(action: argparse.Action) -> str:
    """The help with exactly one default note, and that note true.

    A real default is shown by the formatter from the parser, so a hand-written value (which can go
    stale, or say the default twice) is dropped and only its remark kept. A default of None means
    "decided later"; there the hand-written note is the only true description, so it is kept as the
    one "(default: ...)".
    """
    match = _HANDWRITTEN_DEFAULT.search(action.help)
    if match is None:
        return action.help
    head, tail = action.help[:match.start()], action.help[match.end():]
    if action.default is None:
        note = match.group("tail") or "; ".join(filter(None, (match.group("value"), match.group("rest"))))
        return f"{head}{tail} {_SHOWN_DEFAULT}{note})"
    rest = match.group("rest")
    return f"{head} ({rest}){tail}" if rest else f"{head}{tail}"


def _finish(parser: argparse.ArgumentParser, description: Optional[str] = None, top: bool = False) -> None:
    """Defaults in every help text, a description on every sub-command, ``--debug`` everywhere."""
    parser.formatter_class = _DefaultsFormatter
    if parser.description is None and description:
        parser.description = description
    if not top and not any("--debug" in a.option_strings for a in parser._actions):
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the full traceback of an error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                _finish(child, helps.get(name))
            continue
        if action.help is argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if not action.help:
            action.help = action.dest.replace("_", " ")
        else:
            action.help = _one_default(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emofeedback2",
        description="Continuous valence/arousal emotion control with LVLM feedback (EmoFeedback²).",
    )
    parser.add_argument("--version", action="version", version=f"emofeedback2 {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (loop_commands, score_commands, train_commands, export_commands, judge_commands, scale_commands,
                   bench_commands):
        module.register(sub)
    eval_commands.register(sub)
    _finish(parser, top=True)
    return parser


def _anticipated(exc: BaseException) -> Optional[str]:
    """The one-line message for an anticipated failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS and exc.filename:
        return disk_full_message(exc.filename, exc) + "; free space, then run again"
    if "No space left on device" in str(exc) or (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS):  # a library's own writer (safetensors, torch) wrapping ENOSPC
        return f"no space left on device ({' '.join(str(exc).split())[:200]}); free space, then run again"
    if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, BlockingIOError)):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or exc}; check the path and its permissions"
    if type(exc).__name__ == "OutOfMemoryError":
        return "out of GPU memory; lower the batch size / resolution, or use a smaller dtype"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # what a resume hint repeats
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # a command that exits with a message string: the same one-line path
        if not isinstance(exc.code, str):
            raise
        print(f"emofeedback2 {args.command}: error: {' '.join(exc.code.split())}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - sorted into anticipated (one line) and bugs (re-raised)
        message = _anticipated(exc)
        if message is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exc()
        # anticipated failures (bad value, missing file): one line that says what to fix, no traceback
        first = " ".join(message.split())
        print(f"emofeedback2 {args.command}: error: {first}", file=sys.stderr)
        return 2

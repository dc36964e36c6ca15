"""``--judge-preset`` and its sampling options, one definition for ``score``, ``loop``, ``eval`` and ``eval-judge``.

``auto`` (the default) reads a judge as its adapter was trained (:func:`..engines.judge.preset_judge.
choose_reading`): a GRPO adapter in the paper's reasoning format, anything else with the digit
readout. ``digits`` forces the digit readout; ``paper``, ``eemo-logic`` or a preset file make the judge
write its answer in that format, parsed and read (:mod:`..engines.judge.generated_reading`). A choice
that does not match the adapter's training is kept, with a warning naming the fix.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from ..engines.judge.presets import AUTO, DIGITS, shipped_preset_names
from .lvlm_args import is_colour


def add_judge_preset_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(shipped_preset_names())
    parser.add_argument(
        "--judge-preset", default=AUTO, metavar="NAME_OR_FILE",
        help=f"how the LVLM judge is asked and read: auto (as its adapter was trained), digits (the 1-9 "
             f"digit readout), a preset ({names}: the judge writes its answer, which is parsed) or a preset "
             ".toml/.json file (see docs/judge.md)")
    parser.add_argument("--judge-samples", type=int, default=1,
                        help="presets: answers per image and question; the reading is their mean (> 1 needs "
                             "--judge-temperature > 0)")
    parser.add_argument("--judge-temperature", type=float, default=0.0,
                        help="presets: 0 = greedy decoding, > 0 = sample at this temperature")
    parser.add_argument("--judge-max-new-tokens", type=int, default=0,
                        help="presets: cap on generated tokens per answer; 0 = the GRPO adapter's training cap, "
                             "else the preset's")


def judge_reading(args: argparse.Namespace, adapter: Optional[str], lvlm: str = "") -> Any:
    """The :class:`ReadingChoice` for these arguments (printed note and warning); ``None`` for the colour heuristic."""
    from ..engines.judge.presets import JudgePresetError
    from ..engines.judge.preset_judge import choose_reading

    requested = getattr(args, "judge_preset", AUTO) or AUTO
    _settings(args).check()  # before any weights load
    if is_colour(lvlm):
        if requested not in (AUTO, DIGITS):
            raise JudgePresetError(f"--judge-preset {requested} needs an LVLM that writes text; the colour heuristic "
                                   "reads no answer: pass --lvlm <model folder> or drop --judge-preset")
        return None
    choice = choose_reading(requested, adapter)
    if choice.warning:
        print(f"warning: {choice.warning}", file=sys.stderr)
    if choice.preset is not None:
        print(f"judge reading: {choice.note}", file=sys.stderr)
    return choice


def preset_pixel_options(choice: Any, explicit_max_pixels: Optional[int] = None) -> dict[str, Any]:
    """``LVLMConfig`` pixel fields the preset asks for (its released judge's limits) unless ``--max-pixels`` is given."""
    preset = getattr(choice, "preset", None)
    if preset is None or explicit_max_pixels or not (preset.min_pixels or preset.max_pixels):
        return {}
    return {"min_pixels": preset.min_pixels, "max_pixels": preset.max_pixels}


def read_with(scorer: Any, choice: Any, args: argparse.Namespace) -> Any:
    """``scorer`` read as ``choice`` says (the digit readout: unchanged)."""
    from ..engines.judge.preset_judge import judge_with_reading

    if choice is None:
        return scorer
    return judge_with_reading(scorer, choice, _settings(args))


def _settings(args: argparse.Namespace) -> Any:
    from ..engines.judge.generated_reading import SamplingSettings

    return SamplingSettings(samples=getattr(args, "judge_samples", 1),
                            temperature=getattr(args, "judge_temperature", 0.0),
                            max_new_tokens=getattr(args, "judge_max_new_tokens", 0))


def reading_record(judge: Any) -> Optional[dict[str, Any]]:
    """The generation settings of a preset judge (for reports and JSON output), ``None`` for a digit readout."""
    settings = getattr(judge, "settings", None)
    return dict(settings) if isinstance(settings, dict) else None


__all__ = ["add_judge_preset_arguments", "judge_reading", "preset_pixel_options", "read_with", "reading_record"]

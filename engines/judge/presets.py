"""Judge presets: how a judge is asked for an answer and how its answer is read, as data.

A preset says which question(s) a vision-language judge gets, how its written answer is parsed, on
which scale the answer is given and whether an expected value can be read from the digits it
writes. The reading engine (:mod:`.generated_reading`) knows nothing of any particular judge: the
paper's reasoning format is one preset (``paper``, built from :mod:`.paper_format`, the same
instruction and parser as the judge's GRPO objective), EEmo-Logic another (a TOML file shipped in
``preset_files/``), and a user adds one for another released judge by writing a TOML or JSON file
and passing its path (``--judge-preset my_judge.toml``, ``preset = "my_judge.toml"`` on a reward).

Mapping: an answer ``x`` on the preset's scale ``[low, high]`` maps linearly onto [-3, 3]:
``v = -3 + 6 · (x - low) / (high - low)`` (EEmo-Logic's [0, 1]: ``v = 6x - 3``). Answers outside
``[low, high]`` are unparsable, never clamped silently.

The file format (every key is checked; unknown keys are refused so a typo cannot pass unnoticed)::

    name = "my-judge"
    description = "one line"
    source = "where the prompt comes from"
    weights = "the model the preset is meant for"
    scale = [0.0, 1.0]                # the answers' range, mapped linearly onto [-3, 3]
    parser = "regex"                  # or "paper_format" (the paper's strict parser, scale [-3, 3])
    match = "last"                    # "last": the last match counts; "only": exactly one match or unparsable
    expected_value = true             # read the digits' expected value where the answer is a decimal number
    max_new_tokens = 512              # generation cap (the reward and CLI may lower it)
    min_pixels = 0                    # optional image-area limits the judge was run at (0 = the processor's)
    max_pixels = 0
    [questions]                       # "both" (one answer with both values) or "valence" and "arousal"
    valence = "..."
    arousal = "..."
    [patterns]                        # regex parser: per question, group "value" (per axis) or
    valence = '...(?P<value>...)...'  # groups "valence" and "arousal" (question "both")
    arousal = '...'
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..emotion_space import VA_MAX, VA_MIN, VA_SPAN
from ..errors import UserError
from .paper_format import REASONING_INSTRUCTION

PRESET_DIR = Path(__file__).with_name("preset_files")
AXES = ("valence", "arousal")
BOTH = "both"
PARSERS = ("regex", "paper_format")
MATCHES = ("last", "only")
#: not presets: the digit readout (the scorer's 1-9 question) and "follow the adapter's training record"
DIGITS = "digits"
AUTO = "auto"
MAX_PATTERN_CHARS = 2000
MAX_QUESTION_CHARS = 8000
MAX_NEW_TOKENS_LIMIT = 8192


class JudgePresetError(UserError, ValueError):
    """A preset name, file or field is wrong; the message names the fix."""


@dataclass(frozen=True)
class JudgePreset:
    """One judge's question(s), answer parser and scale. See the module docstring for the fields."""

    name: str
    questions: dict[str, str]
    parser: str = "regex"
    patterns: dict[str, str] = field(default_factory=dict)
    scale: tuple[float, float] = (VA_MIN, VA_MAX)
    match: str = "last"
    expected_value: bool = True
    max_new_tokens: int = 256
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    description: str = ""
    source: str = ""
    weights: str = ""

    @property
    def joint(self) -> bool:
        """One question whose answer carries both values (else one question per axis)."""
        return BOTH in self.questions

    @property
    def question_keys(self) -> tuple[str, ...]:
        return (BOTH,) if self.joint else AXES

    def to_va(self, value: float) -> float:
        """An answer on the preset's scale, mapped linearly onto [-3, 3]."""
        low, high = self.scale
        return VA_MIN + (value - low) * VA_SPAN / (high - low)

    def in_scale(self, value: float) -> bool:
        low, high = self.scale
        return math.isfinite(value) and low <= value <= high

    def summary(self) -> str:
        low, high = self.scale
        how = "one question for both axes" if self.joint else "one question per axis"
        return (f"preset {self.name!r}: {how}, answers on [{low:g}, {high:g}] mapped linearly to [-3, 3], "
                f"{'expected value of the written digits' if self.expected_value else 'parsed answer'}")


#: The paper's format (EmoFeedback², what ``train-judge --set objective.kind=grpo`` trains): one copy of
#: the instruction and the strict parser, shared with the GRPO objective through :mod:`.paper_format`.
PAPER = JudgePreset(
    name="paper",
    questions={BOTH: REASONING_INSTRUCTION},
    parser="paper_format",
    scale=(VA_MIN, VA_MAX),
    match="only",
    expected_value=True,
    max_new_tokens=128,  # the GRPO objective's default cap (objective.max_new_tokens)
    description="EmoFeedback²'s reasoning format: <think>…</think><answer>V, A</answer> on [-3, 3]",
    source="engines/judge/paper_format.py (the instruction and parser of train-judge's GRPO objective)",
    weights="a judge adapter trained with `train-judge --set objective.kind=grpo`",
)
BUILTIN = {PAPER.name: PAPER}


def shipped_preset_names() -> list[str]:
    """Names accepted by :func:`load_preset` without a path: built-in and shipped files."""
    files = sorted(p.stem for p in PRESET_DIR.glob("*.toml")) if PRESET_DIR.is_dir() else []
    return sorted(set(BUILTIN) | set(files))


def load_preset(name_or_path: str) -> JudgePreset:
    """A shipped preset by name (``paper``, ``eemo-logic``) or a preset file (``.toml`` or ``.json``) by path."""
    text = str(name_or_path or "").strip()
    if not text:
        raise JudgePresetError(f"empty judge preset: give a name ({', '.join(shipped_preset_names())}) or a .toml file")
    if text in BUILTIN:
        return BUILTIN[text]
    shipped = PRESET_DIR / f"{text}.toml"
    if "/" not in text and "\\" not in text and shipped.is_file():
        return preset_from_file(shipped)
    path = Path(text).expanduser()
    if path.suffix.lower() in (".toml", ".json"):
        if not path.is_file():
            raise JudgePresetError(f"judge preset file {path} does not exist; point at a .toml/.json preset file")
        return preset_from_file(path)
    raise JudgePresetError(f"unknown judge preset {text!r}: use one of {', '.join(shipped_preset_names())}, "
                           f"'{DIGITS}' (the digit readout) or the path of a .toml/.json preset file")


def preset_from_file(path: str | Path) -> JudgePreset:
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JudgePresetError(f"cannot read judge preset {path}: {exc}; save it as UTF-8 text") from exc
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            import tomllib

            data = tomllib.loads(raw)
    except ValueError as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise JudgePresetError(f"judge preset {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise JudgePresetError(f"judge preset {path} must hold a table of fields, not {type(data).__name__}")
    return preset_from_dict(data, where=str(path))


_FIELDS = {"name", "questions", "parser", "patterns", "scale", "match", "expected_value", "max_new_tokens",
           "min_pixels", "max_pixels", "description", "source", "weights"}


def preset_from_dict(data: dict[str, Any], where: str = "preset") -> JudgePreset:
    """A checked :class:`JudgePreset` from plain data (a parsed TOML/JSON file)."""
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise JudgePresetError(f"{where}: unknown field(s) {unknown}; known: {sorted(_FIELDS)}")

    def text(key: str, default: str = "", limit: int = 2000) -> str:
        value = data.get(key, default)
        if not isinstance(value, str) or len(value) > limit:
            raise JudgePresetError(f"{where}: {key} must be a string of at most {limit} characters")
        return value

    name = text("name").strip()
    if not name:
        raise JudgePresetError(f"{where}: name is missing (a short name such as 'my-judge')")
    questions = _str_table(data.get("questions"), "questions", where, MAX_QUESTION_CHARS)
    if set(questions) not in ({BOTH}, set(AXES)):
        raise JudgePresetError(f"{where}: [questions] must hold either 'both' (one answer with both values) or "
                               f"'valence' and 'arousal' (one question each), got {sorted(questions)}")
    parser = text("parser", "regex")
    if parser not in PARSERS:
        raise JudgePresetError(f"{where}: parser must be one of {list(PARSERS)}, got {parser!r}")
    scale = data.get("scale", [VA_MIN, VA_MAX])
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in scale)
            or not scale[0] < scale[1]):
        raise JudgePresetError(f"{where}: scale must be [low, high] with low < high (finite numbers), got {scale!r}")
    patterns: dict[str, str] = {}
    if parser == "regex":
        patterns = _str_table(data.get("patterns"), "patterns", where, MAX_PATTERN_CHARS)
        _check_patterns(patterns, set(questions), where)
    elif set(questions) != {BOTH} or tuple(scale) != (VA_MIN, VA_MAX) or data.get("patterns"):
        raise JudgePresetError(f"{where}: parser 'paper_format' reads one answer with both values on [-3, 3]: "
                               "use [questions] both = ..., scale = [-3, 3] and no [patterns]")
    match = text("match", "last")
    if match not in MATCHES:
        raise JudgePresetError(f"{where}: match must be 'last' or 'only', got {match!r}")
    expected = data.get("expected_value", True)
    if not isinstance(expected, bool):
        raise JudgePresetError(f"{where}: expected_value must be true or false")
    return JudgePreset(
        name=name, questions=questions, parser=parser, patterns=patterns, scale=(float(scale[0]), float(scale[1])),
        match=match, expected_value=expected,
        max_new_tokens=_int(data, "max_new_tokens", 256, 1, MAX_NEW_TOKENS_LIMIT, where),
        min_pixels=_int(data, "min_pixels", 0, 0, 1 << 26, where) or None,
        max_pixels=_int(data, "max_pixels", 0, 0, 1 << 26, where) or None,
        description=text("description"), source=text("source"), weights=text("weights"),
    )


def _str_table(value: Any, key: str, where: str, limit: int) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise JudgePresetError(f"{where}: [{key}] must be a table of strings")
    for name, item in value.items():
        if not isinstance(item, str) or not item.strip() or len(item) > limit:
            raise JudgePresetError(f"{where}: {key}.{name} must be a non-empty string of at most {limit} characters")
    return dict(value)


@functools.lru_cache(maxsize=64)
def compile_pattern(pattern: str):
    """A preset pattern compiled with the ``regex`` package (same syntax as ``re``; matching takes a time limit)."""
    import regex

    return regex.compile(pattern, regex.DOTALL)


def _check_patterns(patterns: dict[str, str], questions: set[str], where: str) -> None:
    if set(patterns) != questions:
        raise JudgePresetError(f"{where}: [patterns] needs one pattern per question {sorted(questions)}, "
                               f"got {sorted(patterns)}")
    for key, pattern in patterns.items():
        groups = {"valence", "arousal"} if key == BOTH else {"value"}
        try:
            compiled = compile_pattern(pattern)
        except Exception as exc:  # the regex module's error type varies with its version
            raise JudgePresetError(f"{where}: patterns.{key} is not a valid regular expression: {exc}") from exc
        if not groups <= set(compiled.groupindex):
            raise JudgePresetError(f"{where}: patterns.{key} needs the named group(s) "
                                   f"{', '.join(f'(?P<{g}>...)' for g in sorted(groups))} around the number(s)")


def _int(data: dict, key: str, default: int, low: int, high: int, where: str) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise JudgePresetError(f"{where}: {key} must be a whole number in [{low}, {high}], got {value!r}")
    return value


__all__ = ["AUTO", "AXES", "BOTH", "DIGITS", "PAPER", "JudgePreset", "JudgePresetError", "compile_pattern", "load_preset",
           "preset_from_dict", "preset_from_file", "shipped_preset_names"]

"""Reading a judge's written answer with a preset's parser: the values and where their digits stand.

Model text is untrusted. It is capped (:data:`.paper_format.MAX_PARSE_CHARS`) before any pattern
runs; the paper's format goes through its own strict parser (:func:`.paper_format.parse_paper_answer`,
the one the GRPO objective rewards); a preset's regular expressions run through the ``regex``
package with a time limit, so a pattern that backtracks badly on hostile text ends as "unparsable",
never as a hung reward. A number must be a plain decimal (``[+-]digits[.digits]``) inside the
preset's scale, or the answer is unparsable.

Besides the values, a parse returns each number's character span: the expected-value reading
(:mod:`.digit_expectation`) needs to know which generated tokens are the number's digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .paper_format import MAX_PARSE_CHARS, PAPER_FORMAT, parse_paper_answer
from .presets import BOTH, JudgePreset, compile_pattern

#: A number as the answer may write it (ASCII digits; at most 12 digits each side).
PLAIN_NUMBER = re.compile(r"[+-]?[0-9]{1,12}(?:\.[0-9]{1,12})?", re.ASCII)
#: Seconds one preset pattern may run on one answer before the answer counts as unparsable.
PATTERN_TIMEOUT_S = 0.25


@dataclass(frozen=True)
class ParsedNumber:
    """One value as written: on the preset's scale, with its characters' span in the answer text."""

    value: float
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class ParsedAnswer:
    """The numbers of one answer, by axis (``valence``/``arousal``): one for a per-axis question, two for ``both``."""

    numbers: dict[str, ParsedNumber]


def _number(text: str, start: int, end: int, preset: JudgePreset) -> Optional[ParsedNumber]:
    written = text[start:end]
    if PLAIN_NUMBER.fullmatch(written) is None:
        return None
    value = float(written)
    if not preset.in_scale(value):
        return None
    return ParsedNumber(value=value, text=written, start=start, end=end)


def parse_answer(preset: JudgePreset, question: str, text: object) -> Optional[ParsedAnswer]:
    """The numbers ``text`` answers to ``question`` (``both``, ``valence`` or ``arousal``), or ``None``.

    ``None`` for anything but a well-formed answer in scale: no match, several matches where the
    preset says ``match = "only"``, a malformed or out-of-scale number, a pattern that timed out,
    text longer than :data:`MAX_PARSE_CHARS` or not a string. Never raises on content.
    """
    if not isinstance(text, str) or len(text) > MAX_PARSE_CHARS:
        return None
    if preset.parser == "paper_format":
        return _parse_paper(preset, text)
    return _parse_regex(preset, question, text)


def _parse_paper(preset: JudgePreset, text: str) -> Optional[ParsedAnswer]:
    # the GRPO objective's verdict decides; the same regex gives the spans of the two numbers
    if parse_paper_answer(text) is None:
        return None
    match = PAPER_FORMAT.fullmatch(text)
    numbers = {axis: _number(text, *match.span(group), preset) for axis, group in (("valence", 2), ("arousal", 3))}
    if any(n is None for n in numbers.values()):
        return None
    return ParsedAnswer(numbers=numbers)


def _parse_regex(preset: JudgePreset, question: str, text: str) -> Optional[ParsedAnswer]:
    compiled = compile_pattern(preset.patterns[question])
    try:
        matches = list(compiled.finditer(text, timeout=PATTERN_TIMEOUT_S, concurrent=True))
    except TimeoutError:
        return None
    if not matches or (preset.match == "only" and len(matches) != 1):
        return None
    match = matches[-1]
    groups = {"valence": "valence", "arousal": "arousal"} if question == BOTH else {question: "value"}
    numbers = {}
    for axis, group in groups.items():
        start, end = match.span(group)
        if start < 0:
            return None
        number = _number(text, start, end, preset)
        if number is None:
            return None
        numbers[axis] = number
    return ParsedAnswer(numbers=numbers)


def fraction_digits(number: ParsedNumber) -> tuple[int, str, int]:
    """``(sign, integer digits, index of the first fractional digit in the answer text)`` or index -1."""
    written = number.text
    sign = -1 if written.startswith("-") else 1
    body = written.lstrip("+-")
    integer, _, fraction = body.partition(".")
    if not fraction:
        return sign, integer, -1
    return sign, integer, number.start + (len(written) - len(body)) + len(integer) + 1


__all__ = ["PATTERN_TIMEOUT_S", "PLAIN_NUMBER", "ParsedAnswer", "ParsedNumber",
           "fraction_digits", "parse_answer"]

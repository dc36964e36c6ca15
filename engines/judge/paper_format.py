"""The paper's reasoning-then-answer output format: the instruction and its strict parsers.

EmoFeedback²'s GRPO-tuned judge writes a short chain of thought and then its answer,
``<think>…</think><answer>V, A</answer>``, with valence and arousal on the [-3, 3] scale itself
(two decimals), so an answer needs no mapping to compare with a [-3, 3] label. One copy of the
instruction and the regexes, used by ``bench scorer`` (the generate-then-parse baseline) and by
the judge's GRPO objective (:mod:`..training.judge_grpo`, its format and accuracy rewards).

Model text is untrusted: it is matched by regexes with bounded repetition, never evaluated, and
only a single well-formed answer in range counts (:func:`parse_paper_answer`).
"""

from __future__ import annotations

import math
import re
from typing import Optional

from ..emotion_space import VA_MAX, VA_MIN

REASONING_INSTRUCTION = (
    "Look at the colours, light, subject, expressions and composition of this image and think briefly "
    "inside <think></think> about the emotion it evokes. Then give valence from -3 (very unpleasant) to 3 "
    "(very pleasant) and arousal from -3 (very calm) to 3 (very excited), with two decimals, as "
    "<answer>valence, arousal</answer>."
)

_NUMBER = r"([+-]?[0-9](?:\.[0-9]+)?)"  # ASCII digits only (re.ASCII below too)
#: An answer tag anywhere in the text (the lenient parse of ``bench scorer``'s baseline).
ANSWER_TAG = re.compile(rf"<answer>\s*{_NUMBER}\s*,\s*{_NUMBER}\s*</answer>", re.ASCII)
#: The whole completion in the paper's format: one reasoning block, then one answer, nothing else.
#: The reasoning may not contain another think/answer tag (a tempered token: linear time, no backtracking blow-up).
PAPER_FORMAT = re.compile(
    r"\s*<think>((?:(?!</?think>|</?answer>).){0,4000})</think>\s*"
    rf"<answer>\s*{_NUMBER}\s*,\s*{_NUMBER}\s*</answer>\s*",
    re.DOTALL | re.ASCII,
)
#: Longer completions are not parsed at all (max_new_tokens keeps real ones far below this).
MAX_PARSE_CHARS = 8000


def parse_paper_answer(text: object) -> Optional[tuple[float, float]]:
    """``(valence, arousal)`` when ``text`` is exactly ``<think>…</think><answer>V, A</answer>`` with both
    values finite and in [-3, 3]; otherwise ``None`` (never raises on content).

    Not accepted: a missing or repeated think/answer block, text after the answer, values out of
    range, ``nan``/``inf`` or any spelling other than a plain decimal number.
    """
    if not isinstance(text, str) or len(text) > MAX_PARSE_CHARS:
        return None
    match = PAPER_FORMAT.fullmatch(text)
    if match is None:
        return None
    valence, arousal = float(match.group(2)), float(match.group(3))
    if not all(math.isfinite(x) and VA_MIN <= x <= VA_MAX for x in (valence, arousal)):
        return None
    return valence, arousal


__all__ = ["ANSWER_TAG", "MAX_PARSE_CHARS", "PAPER_FORMAT", "REASONING_INSTRUCTION", "parse_paper_answer"]

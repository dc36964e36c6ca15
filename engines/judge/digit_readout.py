"""Where the judge's answer digit sits, per tokenizer: the answer prefixes and the token id of each digit 1..9.

The expected-value readout needs every scale digit to be exactly one token right after the answer
prefix. Tokenizers disagree on the space before it: Qwen's, Gemma's and SmolLM's split the space
off (``"Valence: 5"`` → ``… ':' ' ' '5'``), so the prefix keeps its trailing space and the digit is
the next token; GPT-2-style vocabularies join them (``… ':' 'Ġ5'``), so a prefix ending with the
space would leave a lone space token the model never writes before a digit — there the prefix
drops the space and the digit tokens are the spaced ones. The choice is made by tokenising, never
by family name, and checked once at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .lvlm_config import SCALE_DIGITS, LVLMLoadError


@dataclass(frozen=True)
class DigitReadout:
    """The answer prefixes as the model sees them and the 9 digit token ids that follow them."""

    prefixes: tuple[str, ...]
    digit_ids: tuple[int, ...]
    #: why the prefixes differ from the configured ones ('' when they do not)
    note: str = ""


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _digit_ids_after(tokenizer: Any, context: str, prefix: str, joiner: str) -> tuple[list[int], str]:
    """Digit ids after ``context + prefix`` (each digit written as ``joiner + digit``), or ``([], why)``."""
    base = _encode(tokenizer, context + prefix)
    ids = []
    for digit in SCALE_DIGITS:
        full = _encode(tokenizer, context + prefix + joiner + digit)
        tail = full[len(base):]
        if full[: len(base)] != base or len(tail) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tail) if full[: len(base)] == base else "a different prefix"
            return [], f"{joiner + digit!r} after {prefix!r} becomes {pieces}"
        ids.append(tail[0])
    if len(set(ids)) != len(ids):
        return [], f"the digits after {prefix!r} share token ids {ids}"
    return ids, ""


def resolve_digit_readout(tokenizer: Any, context: str, prefixes: Sequence[str], model_name: str = "the model") -> DigitReadout:
    """The prefixes (kept, or without their trailing space) after which 1..9 are one token each.

    ``context`` is the prompt the prefixes follow (the chat-templated question). Raises
    :class:`LVLMLoadError` saying what to do when no form of a prefix gives single-token digits.
    """
    chosen: list[str] = []
    digit_ids: list[int] = []
    reasons: list[str] = []
    for prefix in prefixes:
        stripped = prefix.rstrip()
        forms = [(prefix, "")] + ([(stripped, prefix[len(stripped):])] if stripped != prefix else [])
        for form, joiner in forms:
            ids, why = _digit_ids_after(tokenizer, context, form, joiner)
            if ids:
                break
            reasons.append(why)
        if not ids:
            raise LVLMLoadError(
                f"the tokenizer of {model_name} does not read each digit 1-9 as one token after the answer prefix "
                f"{prefix!r} ({'; '.join(reasons)}). The expected-value readout needs one token per digit: use a judge "
                "whose tokenizer has single-digit tokens (Qwen-VL, Qwen3.5, Gemma 3/4, InternVL, LLaVA-OneVision and "
                "SmolVLM all do), or set ScoringPrompts.valence_prefix/arousal_prefix so that a digit follows as one token."
            )
        if digit_ids and ids != digit_ids:
            raise LVLMLoadError(
                f"the digits 1-9 are different tokens after {prefix!r} than after {chosen[0]!r} in the tokenizer of "
                f"{model_name}; give both answer prefixes the same ending (e.g. 'Valence: ' and 'Arousal: ')."
            )
        chosen.append(form)
        digit_ids = ids
    changed = [p for p, c in zip(prefixes, chosen) if p != c]
    note = (f"answer prefixes end without their trailing space ({', '.join(repr(c) for c in chosen)}): this tokenizer "
            "joins the space with the digit") if changed else ""
    return DigitReadout(prefixes=tuple(chosen), digit_ids=tuple(digit_ids), note=note)

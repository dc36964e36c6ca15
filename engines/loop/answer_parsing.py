"""Untrusted LVLM answers: split into FEEDBACK and PROMPT, normalised, checked.

Model text passes three stages, in this order:

1. structure (:func:`split_answer`) — the answer is split into its FEEDBACK and PROMPT fields on the
   text as generated (lines kept), so a trailing explanation never joins the prompt; a second PROMPT
   marker, or none, rejects the answer;
2. normalisation (:func:`sanitize_answer`) — NFKC, zero-width/format/bidi/control characters removed,
   special tokens gone;
3. checks — the real defence is structural: the prompt is reduced to words and commas with all
   ComfyUI prompt syntax neutralised (:func:`clean_prompt`: no weights, embeddings, LoRA tags,
   wildcards, choices), must keep every subject word and fit the token budget (the LVLM refiner
   checks those). The injection phrase list below is a heuristic on top (matched on
   :func:`..text_safety.skeleton`, so spacing, look-alike letters and invisible characters do not
   hide a phrase), never the only guard.
"""

from __future__ import annotations

import re

from ..text_safety import neutralize_prompt_syntax, sanitize_model_text, skeleton
from .prompt_text import MAX_FEEDBACK_CHARS

_INJECTION_RE = re.compile(
    r"(ignore|disregard|forget|override|bypass|skip)\s+(all\s+|any\s+|the\s+|your\s+|my\s+|of\s+)*"
    r"(previous|prior|above|earlier|preceding|system|former|original)?\s*"
    r"(instructions?|prompts?|rules?|messages?|directions?|guidelines?|context)"
    # the object left out ("forget everything above", "ignore all previous") or the verb hidden
    # (reversed or spelled out around it: "... previous instructions")
    r"|(ignore|disregard|forget)\s+(everything|anything|all\s+(of\s+)?(the\s+)?(above|previous|prior|earlier|that))"
    r"|(previous|prior|above|earlier|preceding|original)\s+(instructions?|prompts?|rules?|directions?|guidelines?)"
    r"|system\s*prompt|you\s+are\s+now|from\s+now\s+on|new\s+instructions?|jailbreak|developer\s+mode"
    r"|act\s+as|pretend\s+(to\s+be|you)|do\s+anything\s+now|assistant\s*:|user\s*:|system\s*:",
    re.IGNORECASE,
)
_SPECIAL_TOKEN_RE = re.compile(r"<\|[^|>]{0,40}\|>|</?s>|\[/?INST\]|<<\s*/?SYS\s*>>", re.IGNORECASE)
_JSON_RE = re.compile(r"[{}\[\]\"`\\<>|]|\b(true|false|null)\b")
_JSON_DEBRIS_RE = re.compile(r"[{\[]\s*[\"']|[\"']\s*:|^\s*[{\[]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def sanitize_answer(text: str, max_chars: int, keep_newlines: bool = False) -> str:
    """Normalise model text: NFKC, invisible/control characters and special tokens removed."""
    text = sanitize_model_text(str(text), max_chars=max_chars, keep_newlines=keep_newlines)
    text = _SPECIAL_TOKEN_RE.sub(" ", text)
    if keep_newlines:
        return "\n".join(re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n"))
    text = _CONTROL_RE.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()[:max_chars]


def contains_injection(text: str) -> bool:
    """Heuristic: does ``text`` contain an instruction-like phrase (after :func:`skeleton`)?"""
    text = str(text)
    return bool(_INJECTION_RE.search(text) or _INJECTION_RE.search(skeleton(text)))


def clean_feedback(text: str, max_chars: int = MAX_FEEDBACK_CHARS) -> str:
    """Model feedback made safe to show and store: sanitised, one line, injection phrases and JSON
    debris neutralised, capped at ``max_chars`` on a word boundary. (Feedback never enters a
    prompt; prompt text goes through :func:`clean_prompt`.)"""
    text = sanitize_answer(text, max_chars=4 * max_chars)
    text = _JSON_RE.sub(" ", text)
    text = _INJECTION_RE.sub("(removed)", text)
    return cap_text(re.sub(r"\s+", " ", text).strip(), max_chars)


def cap_text(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    return text


def clean_prompt(text: str) -> str:
    """A model-written prompt reduced to plain comma-separated words: no JSON, no markup and no
    ComfyUI prompt syntax (weights, embeddings, LoRA tags, wildcards, choices)."""
    text = sanitize_answer(text, max_chars=2000)
    text = neutralize_prompt_syntax(text)
    text = _JSON_RE.sub(" ", text)
    text = re.sub(r"(?<![\w])[-+]?\d*\.\d+(?![\w])", " ", text)  # bare weights left over: 25.0, .3
    text = re.sub(r"[^\w\s,.;'\-]|_", " ", text)
    text = re.sub(r"\s*,\s*(,\s*)*", ", ", text)
    return re.sub(r"\s+", " ", text).strip(" ,.;:")


def has_json_debris(text: str) -> bool:
    """Does normalised prompt text look like JSON or markup (a model answering in a data format)?"""
    return bool(_JSON_DEBRIS_RE.search(text))


_MARKER_RE = re.compile(r"\b(FEEDBACK|PROMPT)\s*:", re.IGNORECASE)
# Where a one-line (flattened) prompt stops: a sentence end followed by a capitalised word, or the
# usual openers of an explanation. Prompts are comma-separated phrases, not sentences.
_PROMPT_END_RE = re.compile(
    r"(?<=[\w)\]])[.!?]\s+(?=[A-Z])|\s+(?:Explanation|Note|Notes|Reason|Reasoning|Rationale|This prompt|This version|"
    r"I (?:have|changed|kept|added|removed|made)|Here)\b",
)


def split_answer(answer: object) -> "tuple[str, str] | str":
    """Split a raw answer into (feedback, prompt) text, or return why it has no such structure.

    Runs before any normalisation, on the answer's own lines when it has them: the prompt is the
    rest of the PROMPT line only (later lines — an explanation, a second attempt — are dropped). When
    the answer arrives as one line, the prompt ends at the first sentence break or explanation
    opener. Exactly one FEEDBACK marker followed by exactly one PROMPT marker is required: a
    repeated marker means the model is quoting or being steered, and the answer is rejected.
    """
    raw = str(answer if answer is not None else "")[:8000]
    raw = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    markers = [(m.group(1).upper(), m.start(), m.end()) for m in _MARKER_RE.finditer(raw)]
    kinds = [kind for kind, _, _ in markers]
    if kinds.count("FEEDBACK") != 1 or kinds.count("PROMPT") != 1 or kinds.index("FEEDBACK") > kinds.index("PROMPT"):
        if "PROMPT" in kinds and kinds.count("PROMPT") > 1:
            return "the LVLM answer had more than one PROMPT field (ambiguous format)"
        return "the LVLM answer did not follow the FEEDBACK/PROMPT format"
    (_, _, f_end), (_, p_start, p_end) = markers[kinds.index("FEEDBACK")], markers[kinds.index("PROMPT")]
    feedback = raw[f_end:p_start]
    rest = raw[p_end:].lstrip(" \t")
    if "\n" in rest.strip("\n"):
        prompt = rest.strip("\n").split("\n", 1)[0]
    else:
        prompt = _PROMPT_END_RE.split(rest.strip(), maxsplit=1)[0]
    return feedback, prompt

"""Prompt text for the refiners: emotional vocabulary, subject words, CLIP token budget, steer read-back.

"Subject words" are the content words of the user's prompt that are not emotional vocabulary;
every refined prompt must contain all of them and stay within a CLIP token budget
(:data:`CLIP_TOKEN_BUDGET`). :func:`implied_point` reads back the valence-arousal point a prompt's
emotional phrases were written for, so a fixed-gain refiner can continue from it.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from ..descriptors import AROUSAL_CUES, CONNOTATIONS, EMOTION_ANCHORS, VALENCE_CUES, contradicts
from ..emotion_space import VA, VA_MAX, VA_MIN

#: CLIP's context is 77 tokens including the start and end tokens.
CLIP_TOKEN_BUDGET = 75
#: Hard cap on the words of a model-written prompt, whatever the token estimate says.
MAX_PROMPT_WORDS = 60
#: Hard cap on the characters of model-written feedback kept in results and histories.
MAX_FEEDBACK_CHARS = 300

# --- Vocabulary -------------------------------------------------------------------------------------

_STOPWORDS = frozenset(
    "a an the of in on at to and or with without for from by into onto over under near its his her "
    "their our my your is are be very this that these those as it".split()
)
_INTENSITY_WORDS = frozenset({"subtly", "strongly", "intensely", "mood", "moods", "atmosphere", "feeling"})
# Common affect adjectives users write that are not among the descriptor anchors.
_EXTRA_EMOTION_WORDS = frozenset(
    "sad happy sorrowful sorrow joyous gleeful glad merry grim bleak dreary somber sombre moody "
    "scary creepy eerie ominous menacing spooky frightening horrifying terrifying dismal miserable "
    "cozy cosy cheery upbeat playful romantic nostalgic tranquil restful soothing quiet sleepy "
    "energetic chaotic frantic violent aggressive hostile tragic mournful grieving crying weeping "
    "smiling laughing gloomy happy hopeless lovely dreadful dread fear fearful horror joy sadness".split()
)
EMOTION_WORDS = frozenset(w for w, _, _ in EMOTION_ANCHORS) | _EXTRA_EMOTION_WORDS
_CUE_PHRASES = frozenset(p.strip().lower() for cue in VALENCE_CUES + AROUSAL_CUES for p in cue.split(","))

WORD_RE = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+")
_TOKEN_RE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def content_words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text) if w.lower() not in _STOPWORDS]



def estimate_clip_tokens(text: str) -> int:
    """Upper-leaning estimate of CLIP BPE tokens (without start/end): one per short word, digit or
    punctuation mark, plus one per extra 7 letters of long words (rare words split into pieces)."""
    total = 0
    for piece in _TOKEN_RE.findall(text):
        total += 1 + (max(0, len(piece) - 7) // 7 if piece.isalpha() else 0)
    return total


def _segments(prompt: str) -> list[str]:
    return [s.strip() for s in re.split(r"[,;\n]+", prompt) if s.strip()]


def _unweight(segment: str) -> str:
    """``(joyful mood:1.25)`` → ``joyful mood`` (ComfyUI/A1111 emphasis syntax)."""
    match = re.fullmatch(r"\(+\s*(.*?)\s*(?::\s*[\d.]+)?\s*\)+", segment)
    return match.group(1) if match else segment


def _is_emotional_segment(segment: str) -> bool:
    plain = _unweight(segment).lower().strip()
    if plain in _CUE_PHRASES:
        return True
    words = content_words(plain)
    return bool(words) and all(w in EMOTION_WORDS or w in _INTENSITY_WORDS for w in words)


def split_prompt(prompt: str) -> tuple[str, list[str]]:
    """Split ``prompt`` into (subject text, emotional segments).

    Emotional segments (our cue phrases, mood phrases, segments made only of emotion words) are
    removed whole; emotion adjectives inside the remaining segments are removed word by word, so
    ``"a sad clown, gloomy mood"`` → subject ``"a clown"``.
    """
    subject_parts: list[str] = []
    emotional: list[str] = []
    for segment in _segments(prompt):
        if _is_emotional_segment(segment):
            emotional.append(segment)
            continue
        kept = [w for w in segment.split() if re.sub(r"[^a-z'\-]", "", w.lower()) not in EMOTION_WORDS]
        if len(kept) < len(segment.split()):
            emotional.append(segment)
        if kept:
            subject_parts.append(" ".join(kept))
    return ", ".join(subject_parts), emotional


def drop_contradicting(subject: str, target: VA) -> str:
    """``subject`` without words whose mood contradicts ``target`` (:data:`.descriptors.CONNOTATIONS`):
    "a dog in a sunny park" for a bleak target → "a dog in a park"."""
    parts = []
    for segment in _segments(subject):
        kept = [w for w in segment.split() if not contradicts(re.sub(r"[^a-z]", "", w.lower()), target)]
        if kept:
            parts.append(" ".join(kept))
    return ", ".join(parts)


def subject_words(prompt: str) -> list[str]:
    """The user's subject/composition words: content words that are not emotional vocabulary (nor
    mood-carrying words such as "sunny", which a refinement may drop when they contradict the target)."""
    subject, _ = split_prompt(prompt)
    seen: list[str] = []
    for word in content_words(subject):
        if word in CONNOTATIONS:
            continue
        if word not in seen:
            seen.append(word)
    return seen


def missing_subject_words(prompt: str, required: Sequence[str]) -> list[str]:
    present = set(content_words(prompt))
    return [w for w in required if w not in present]


def implied_point(prompt: str) -> Optional[VA]:
    """The V-A point a prompt's emotional phrases were written for, read back from the text.

    Our own cue phrases give exact rungs on the valence/arousal ladders; emotion words give the
    mean of their anchors. ``None`` when the prompt holds no emotional vocabulary.
    """
    lowered = prompt.lower()
    v_rung = [i for i, cue in enumerate(VALENCE_CUES) if cue.lower() in lowered]
    a_rung = [i for i, cue in enumerate(AROUSAL_CUES) if cue.lower() in lowered]
    anchors = {w: (v, a) for w, v, a in EMOTION_ANCHORS}
    found = [anchors[w] for w in content_words(prompt) if w in anchors]
    if not (v_rung or a_rung or found):
        return None
    mean_v = sum(p[0] for p in found) / len(found) if found else 0.0
    mean_a = sum(p[1] for p in found) / len(found) if found else 0.0

    def rung_value(rungs: list[int], ladder: tuple[str, ...]) -> float:
        return VA_MIN + rungs[0] * (VA_MAX - VA_MIN) / (len(ladder) - 1)

    valence = rung_value(v_rung, VALENCE_CUES) if v_rung else mean_v
    arousal = rung_value(a_rung, AROUSAL_CUES) if a_rung else mean_a
    if found and v_rung:
        valence = 0.5 * (valence + mean_v)
    if found and a_rung:
        arousal = 0.5 * (arousal + mean_a)
    return VA.clamped(valence, arousal)


def fit_budget(parts: Sequence[str], token_budget: int = CLIP_TOKEN_BUDGET, max_words: int = MAX_PROMPT_WORDS, keep: int = 1) -> str:
    """Join ``parts`` with commas, dropping trailing parts (never the first ``keep``) to fit the budget."""
    parts = [p for p in parts if p]
    while len(parts) > keep:
        text = ", ".join(parts)
        if estimate_clip_tokens(text) <= token_budget and count_words(text) <= max_words:
            return text
        parts = parts[:-1]
    return ", ".join(parts)



def count_words(text: str) -> int:
    """Words and numbers in ``text`` (the unit of :data:`MAX_PROMPT_WORDS`)."""
    return len(WORD_RE.findall(text))

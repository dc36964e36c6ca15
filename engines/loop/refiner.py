"""Prompt refinement: measured vs target emotion → short feedback and a rewritten prompt.

Two refiners share one interface (:class:`Refiner`) and one result type (:class:`RefinementResult`):

* :class:`LVLMRefiner` shows the image to the vision-language model with the measured and the
  target valence-arousal (V-A) and asks for one line of feedback (what pulls the emotion the wrong
  way) and a rewritten prompt. The answer is untrusted text: it is sanitised, capped, checked for
  instruction-injection, JSON debris and a dropped subject; anything doubtful falls back to …
* :class:`FallbackRefiner`, weight-free, built on :mod:`.descriptors`: it removes the emotional
  phrases of the previous prompt, keeps the user's subject and composition words, and writes new
  emotional content (mood words, light/colour and motion cues) for a *steer point* that moves
  past the target by a fraction of the measured error (a proportional-integral step: the steer
  point the previous prompt was written for is read back from its own cue phrases).

"Subject words" are the content words of the user's prompt that are not emotional vocabulary;
every refined prompt must contain all of them and stay within a CLIP token budget.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, runtime_checkable

from ..descriptors import (
    AROUSAL_CUES,
    CONNOTATIONS,
    contradicts,
    EMOTION_ANCHORS,
    VALENCE_CUES,
    describe_emotion,
    nearest_emotion_words,
)
from ..emotion_space import VA, VA_MAX, VA_MIN
from ..images import ImageBatch
from ..text_safety import neutralize_prompt_syntax, sanitize_model_text, skeleton

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

_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d+")
_TOKEN_RE = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]")


def _content_words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text) if w.lower() not in _STOPWORDS]


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
    words = _content_words(plain)
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
    for word in _content_words(subject):
        if word in CONNOTATIONS:
            continue
        if word not in seen:
            seen.append(word)
    return seen


def missing_subject_words(prompt: str, required: Sequence[str]) -> list[str]:
    present = set(_content_words(prompt))
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
    found = [anchors[w] for w in _content_words(prompt) if w in anchors]
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


# --- Untrusted text ----------------------------------------------------------------------------------
#
# Model text passes three stages, in this order:
#   1. structure — the answer is split into its FEEDBACK and PROMPT fields on the text as generated
#      (lines kept), so a trailing explanation never joins the prompt; a second PROMPT marker, or
#      none, rejects the answer;
#   2. normalisation — NFKC, zero-width/format/bidi/control characters removed, special tokens gone;
#   3. checks — the real defence is structural: the prompt is reduced to words and commas with all
#      ComfyUI prompt syntax neutralised (no weights, embeddings, LoRA tags, wildcards, choices), must
#      keep every subject word and fit the token budget. The injection phrase list below is a
#      heuristic on top (matched on :func:`.text_safety.skeleton`, so spacing, look-alike letters and
#      invisible characters do not hide a phrase), never the only guard.

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


def _sanitize(text: str, max_chars: int, keep_newlines: bool = False) -> str:
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
    text = _sanitize(text, max_chars=4 * max_chars)
    text = _JSON_RE.sub(" ", text)
    text = _INJECTION_RE.sub("(removed)", text)
    return _cap(re.sub(r"\s+", " ", text).strip(), max_chars)


def _cap(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
    return text


def clean_prompt(text: str) -> str:
    """A model-written prompt reduced to plain comma-separated words: no JSON, no markup and no
    ComfyUI prompt syntax (weights, embeddings, LoRA tags, wildcards, choices)."""
    text = _sanitize(text, max_chars=2000)
    text = neutralize_prompt_syntax(text)
    text = _JSON_RE.sub(" ", text)
    text = re.sub(r"(?<![\w])[-+]?\d*\.\d+(?![\w])", " ", text)  # bare weights left over: 25.0, .3
    text = re.sub(r"[^\w\s,.;'\-]|_", " ", text)
    text = re.sub(r"\s*,\s*(,\s*)*", ", ", text)
    return re.sub(r"\s+", " ", text).strip(" ,.;:")


def fit_budget(parts: Sequence[str], token_budget: int = CLIP_TOKEN_BUDGET, max_words: int = MAX_PROMPT_WORDS, keep: int = 1) -> str:
    """Join ``parts`` with commas, dropping trailing parts (never the first ``keep``) to fit the budget."""
    parts = [p for p in parts if p]
    while len(parts) > keep:
        text = ", ".join(parts)
        if estimate_clip_tokens(text) <= token_budget and len(_WORD_RE.findall(text)) <= max_words:
            return text
        parts = parts[:-1]
    return ", ".join(parts)


# --- Results and interface --------------------------------------------------------------------------


@dataclass(frozen=True)
class RefinementResult:
    """A rewritten prompt and the feedback behind it.

    ``used_fallback`` is True when the descriptor fallback wrote the prompt, either by choice (no
    LVLM) or because the LVLM answer was rejected; ``reason`` then says why.
    """

    prompt: str
    feedback: str
    used_fallback: bool
    reason: str = ""
    steer: Optional[tuple[float, float]] = None


@runtime_checkable
class Refiner(Protocol):
    name: str

    def refine(
        self,
        image: Optional[ImageBatch],
        prompt: str,
        measured: VA,
        target: VA,
        *,
        subject: Optional[str] = None,
        previous_steer: Optional[VA] = None,
    ) -> RefinementResult:
        """Rewrite ``prompt`` so the next image moves from ``measured`` toward ``target``.

        ``subject`` is the user's original prompt when ``prompt`` is already a refined one; its
        subject words must survive. ``image`` is the image ``measured`` was read from.
        ``previous_steer`` is the V-A point ``prompt``'s emotional content was written for, when
        known (``RefinementResult.steer`` of the refinement that wrote it).
        """
        ...


def _direction_words(measured: VA, target: VA, dead_zone: float = 0.25) -> list[str]:
    dv = target.valence - measured.valence
    da = target.arousal - measured.arousal
    words = []
    if dv > dead_zone:
        words.append(f"it reads too unpleasant (valence {measured.valence:+.1f}, want {target.valence:+.1f}): warmer, brighter light and friendlier colours")
    elif dv < -dead_zone:
        words.append(f"it reads too pleasant (valence {measured.valence:+.1f}, want {target.valence:+.1f}): colder, dimmer, more muted light and colour")
    if da > dead_zone:
        words.append(f"it reads too calm (arousal {measured.arousal:+.1f}, want {target.arousal:+.1f}): more motion, contrast and drama")
    elif da < -dead_zone:
        words.append(f"it reads too intense (arousal {measured.arousal:+.1f}, want {target.arousal:+.1f}): stiller, softer, lower contrast")
    return words


@dataclass
class FallbackRefiner:
    """Weight-free refiner: descriptor phrases for a steer point past the target.

    ``gain`` scales the measured error added to the previous steer point (integral action);
    ``max_overshoot`` bounds how far the steer point may sit from the target on each axis.
    """

    gain: float = 1.6
    max_overshoot: float = 2.0
    blend_cues: bool = True  # half-rung cue resolution (both neighbouring cues between two rungs)
    token_budget: int = CLIP_TOKEN_BUDGET
    max_words: int = MAX_PROMPT_WORDS
    name: str = "descriptor fallback"

    def steer_point(self, prompt: str, measured: VA, target: VA, previous_steer: Optional[VA] = None) -> VA:
        """``previous + gain × (target − measured)``, bounded; ``previous`` is the steer point the
        prompt was written for (given by the loop, else read back from the prompt, else the target)."""
        previous = previous_steer or implied_point(prompt) or target
        def axis(prev: float, meas: float, want: float) -> float:
            value = prev + self.gain * (want - meas)
            return min(want + self.max_overshoot, max(want - self.max_overshoot, value))
        return VA.clamped(
            axis(previous.valence, measured.valence, target.valence),
            axis(previous.arousal, measured.arousal, target.arousal),
        )

    def compose(self, subject: str, steer: VA, target: Optional[VA] = None) -> str:
        """Subject first (without words that contradict ``target``, default ``steer``), then the mood
        phrase, then the valence and arousal cues, within the budget."""
        subject = drop_contradicting(subject, target or steer) if subject else subject
        description = describe_emotion(steer, k=3, blend=self.blend_cues)
        parts = [subject, description.phrase, *description.cues] if subject else [description.phrase, *description.cues]
        return fit_budget(parts, self.token_budget, self.max_words, keep=2 if subject else 1)

    def refine(
        self,
        image: Optional[ImageBatch],
        prompt: str,
        measured: VA,
        target: VA,
        *,
        subject: Optional[str] = None,
        previous_steer: Optional[VA] = None,
        steer: Optional[VA] = None,
        reason: str = "",
    ) -> RefinementResult:
        """``steer``, when given (the loop's secant controller), is the point to write the prompt
        for; otherwise the refiner takes its own fixed-gain step (:meth:`steer_point`)."""
        base_subject, _ = split_prompt(subject if subject is not None else prompt)
        if steer is None:
            steer = self.steer_point(prompt, measured, target, previous_steer)
        new_prompt = self.compose(base_subject, steer, target)
        directions = _direction_words(measured, target)
        if directions:
            feedback = "; ".join(directions) + f". Rewrote the mood toward {', '.join(nearest_emotion_words(steer, 2))}."
        else:
            feedback = f"Close to the target {target}; kept the mood {', '.join(nearest_emotion_words(steer, 2))}."
        feedback = clean_feedback(feedback, 2 * MAX_FEEDBACK_CHARS)
        if reason:  # our own marker, added after cleaning so its brackets survive (the node's tooltip promises them)
            feedback = f"[fallback: {clean_feedback(reason, 120)}] {feedback}"
        return RefinementResult(new_prompt, feedback, True, reason, steer.as_tuple())


_INSTRUCTION = (
    "You judge the emotion of images on two scales from -3 to 3: valence (unpleasant to pleasant) "
    "and arousal (calm to excited). This image was generated from the prompt: \"{prompt}\". "
    "It was measured at valence {mv:+.1f}, arousal {ma:+.1f}; the target is valence {tv:+.1f}, "
    "arousal {ta:+.1f} ({words}). In one sentence, say what in the image pulls the emotion away "
    "from the target. Then rewrite the prompt: keep every subject and composition word ({subject}), "
    "change only emotional content (light, colour, weather, facial expression, setting details), "
    "at most {max_words} words. Answer exactly in two lines:\n"
    "FEEDBACK: <one sentence>\nPROMPT: <rewritten prompt>"
)
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


@dataclass
class LVLMRefiner:
    """Refiner driven by an LVLM that exposes ``generate_text(images, instructions, max_new_tokens)``.

    Malformed, hostile or subject-dropping answers fall back to ``fallback`` (flagged in the result)
    instead of raising; errors raised by the model call itself propagate.
    """

    lvlm: object
    fallback: FallbackRefiner = None  # type: ignore[assignment]
    max_new_tokens: int = 128
    token_budget: int = CLIP_TOKEN_BUDGET
    max_words: int = MAX_PROMPT_WORDS
    name: str = "lvlm"

    def __post_init__(self) -> None:
        if not callable(getattr(self.lvlm, "generate_text", None)):
            raise TypeError(
                f"LVLMRefiner needs a model with generate_text(images, instructions) (an LVLMScorer from "
                f"load_lvlm); got {type(self.lvlm).__name__}. Use FallbackRefiner for the colour scorer."
            )
        if self.fallback is None:
            self.fallback = FallbackRefiner(token_budget=self.token_budget, max_words=self.max_words)
        self.name = f"lvlm ({getattr(self.lvlm, 'name', type(self.lvlm).__name__)})"

    def instruction(self, prompt: str, measured: VA, target: VA, subject_list: Sequence[str]) -> str:
        return _INSTRUCTION.format(
            prompt=clean_prompt(prompt)[:400],
            mv=measured.valence, ma=measured.arousal, tv=target.valence, ta=target.arousal,
            words=", ".join(nearest_emotion_words(target, 2)),
            subject=", ".join(subject_list) or "none",
            max_words=self.max_words,
        )

    def parse(self, answer: str, required: Sequence[str]) -> tuple[Optional[str], str, str]:
        """(prompt or None, feedback, reason for rejection) from a model answer: structure first
        (:func:`split_answer`), then normalisation, then checks (see the "Untrusted text" notes)."""
        fields = split_answer(answer)
        if isinstance(fields, str):
            return None, "", fields
        feedback_raw, prompt_raw = fields
        if contains_injection(feedback_raw) or contains_injection(prompt_raw):
            return None, "", "the LVLM answer contained instruction-like text"
        # Feedback never enters our prompts, but a user may wire it into a text encoder: no syntax either.
        feedback = clean_feedback(neutralize_prompt_syntax(_sanitize(feedback_raw, max_chars=4000), prose=True))
        normalised = _sanitize(prompt_raw, max_chars=2000)
        if _JSON_DEBRIS_RE.search(normalised):
            return None, feedback, "the LVLM prompt contained JSON or markup"
        prompt = clean_prompt(normalised)
        words = _WORD_RE.findall(prompt)
        if len(words) < 2:
            return None, feedback, "the LVLM prompt was empty"
        if len(words) > self.max_words or estimate_clip_tokens(prompt) > self.token_budget:
            return None, feedback, f"the LVLM prompt exceeded the budget ({len(words)} words, ~{estimate_clip_tokens(prompt)} tokens)"
        missing = missing_subject_words(prompt, required)
        if missing:
            return None, feedback, f"the LVLM prompt dropped subject words: {', '.join(missing[:5])}"
        return prompt, feedback, ""

    def refine(
        self,
        image: Optional[ImageBatch],
        prompt: str,
        measured: VA,
        target: VA,
        *,
        subject: Optional[str] = None,
        previous_steer: Optional[VA] = None,
        steer: Optional[VA] = None,
    ) -> RefinementResult:
        required = subject_words(subject if subject is not None else prompt)
        fallback_args = dict(subject=subject, previous_steer=previous_steer, steer=steer)
        if image is None:
            return self.fallback.refine(None, prompt, measured, target, reason="no image to show the LVLM", **fallback_args)
        kwargs = {"keep_newlines": True} if self._keeps_lines() else {}
        answers = self.lvlm.generate_text(
            image, [self.instruction(prompt, measured, target, required)], max_new_tokens=self.max_new_tokens, **kwargs
        )
        answer = answers[0] if isinstance(answers, (list, tuple)) and answers else ""
        new_prompt, feedback, reason = self.parse(answer, required)
        if new_prompt is None:
            result = self.fallback.refine(image, prompt, measured, target, reason=reason, **fallback_args)
            if feedback:  # the model's (cleaned) sentence after our marked fallback explanation
                combined = _cap(f"{result.feedback} LVLM: {feedback}", 3 * MAX_FEEDBACK_CHARS)
                result = RefinementResult(result.prompt, combined, True, reason, result.steer)
            return result
        return RefinementResult(new_prompt, feedback, False, "", None)

    def _keeps_lines(self) -> bool:
        """Whether the model's ``generate_text`` can return answers with their lines kept."""
        try:
            return "keep_newlines" in inspect.signature(self.lvlm.generate_text).parameters
        except (TypeError, ValueError):  # pragma: no cover
            return False


def make_refiner(lvlm: object = None) -> Refiner:
    """The LVLM refiner when ``lvlm`` can write text, else the descriptor fallback."""
    if lvlm is not None and callable(getattr(lvlm, "generate_text", None)):
        return LVLMRefiner(lvlm)
    return FallbackRefiner()


__all__ = [
    "CLIP_TOKEN_BUDGET",
    "FallbackRefiner",
    "LVLMRefiner",
    "RefinementResult",
    "Refiner",
    "clean_feedback",
    "clean_prompt",
    "contains_injection",
    "drop_contradicting",
    "estimate_clip_tokens",
    "split_answer",
    "implied_point",
    "make_refiner",
    "split_prompt",
    "subject_words",
]

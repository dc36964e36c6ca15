"""Prompt refinement: measured vs target emotion → short feedback and a rewritten prompt.

Two refiners share one interface (:class:`Refiner`) and one result type (:class:`RefinementResult`):

* :class:`LVLMRefiner` shows the image to the vision-language model with the measured and the
  target valence-arousal (V-A) and asks for one line of feedback (what pulls the emotion the wrong
  way) and a rewritten prompt. The answer is untrusted text (:mod:`.answer_parsing`): it is split,
  sanitised, capped, checked for instruction-injection, JSON debris and a dropped subject; anything
  doubtful falls back to …
* :class:`FallbackRefiner`, weight-free, built on :mod:`..descriptors`: it removes the emotional
  phrases of the previous prompt, keeps the user's subject and composition words, and writes new
  emotional content (mood words, light/colour and motion cues) for a *steer point* that moves
  past the target by a fraction of the measured error (a proportional-integral step: the steer
  point the previous prompt was written for is read back from its own cue phrases).

The prompt text rules (subject words, token budget) live in :mod:`.prompt_text`; the names this
module exported before that split are re-exported here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, runtime_checkable

from ..descriptors import describe_emotion, nearest_emotion_words
from ..emotion_space import VA
from ..images import ImageBatch
from ..text_safety import neutralize_prompt_syntax
from .answer_parsing import (
    cap_text,
    clean_feedback,
    clean_prompt,
    contains_injection,
    has_json_debris,
    sanitize_answer,
    split_answer,
)
from .prompt_text import (
    CLIP_TOKEN_BUDGET,
    MAX_FEEDBACK_CHARS,
    MAX_PROMPT_WORDS,
    count_words,
    drop_contradicting,
    estimate_clip_tokens,
    fit_budget,
    implied_point,
    missing_subject_words,
    split_prompt,
    subject_words,
)

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
        (:func:`.answer_parsing.split_answer`), then normalisation, then checks (see :mod:`.answer_parsing`)."""
        fields = split_answer(answer)
        if isinstance(fields, str):
            return None, "", fields
        feedback_raw, prompt_raw = fields
        if contains_injection(feedback_raw) or contains_injection(prompt_raw):
            return None, "", "the LVLM answer contained instruction-like text"
        # Feedback never enters our prompts, but a user may wire it into a text encoder: no syntax either.
        feedback = clean_feedback(neutralize_prompt_syntax(sanitize_answer(feedback_raw, max_chars=4000), prose=True))
        normalised = sanitize_answer(prompt_raw, max_chars=2000)
        if has_json_debris(normalised):
            return None, feedback, "the LVLM prompt contained JSON or markup"
        prompt = clean_prompt(normalised)
        words = count_words(prompt)
        if words < 2:
            return None, feedback, "the LVLM prompt was empty"
        if words > self.max_words or estimate_clip_tokens(prompt) > self.token_budget:
            return None, feedback, f"the LVLM prompt exceeded the budget ({words} words, ~{estimate_clip_tokens(prompt)} tokens)"
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
                combined = cap_text(f"{result.feedback} LVLM: {feedback}", 3 * MAX_FEEDBACK_CHARS)
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
    "MAX_FEEDBACK_CHARS",
    "MAX_PROMPT_WORDS",
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
"""Emotion descriptors: a valence-arousal point → natural emotion words and visual cues.

Used by the text route of the EmotionConditioner and by the weight-free fallback refiner. Words are
anchored at hand-placed V-A coordinates (circumplex layout, our own placement) and chosen by
distance, so neighbouring points share words and the choice changes gradually across the plane.
Visual cues (light, colour, weather, motion, expression) follow valence and arousal separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .emotion_space import VA

# (word, valence, arousal) on [-3, 3]²; roughly Russell's circumplex, spread to cover the square.
EMOTION_ANCHORS: tuple[tuple[str, float, float], ...] = (
    ("ecstatic", 2.6, 2.8),
    ("exhilarated", 2.0, 2.6),
    ("excited", 1.6, 2.2),
    ("joyful", 2.6, 1.4),
    ("delighted", 2.8, 0.8),
    ("happy", 2.2, 0.6),
    ("cheerful", 1.8, 1.0),
    ("amused", 1.2, 1.2),
    ("hopeful", 1.2, 0.2),
    ("content", 2.0, -0.8),
    ("serene", 2.2, -2.0),
    ("peaceful", 1.6, -2.4),
    ("relaxed", 1.4, -1.6),
    ("calm", 0.8, -2.2),
    ("tender", 1.6, -0.6),
    ("neutral", 0.0, 0.0),
    ("pensive", -0.2, -1.0),
    ("sleepy", 0.2, -2.9),
    ("tired", -0.8, -2.4),
    ("bored", -1.2, -1.8),
    ("melancholic", -1.6, -1.2),
    ("lonely", -2.0, -1.4),
    ("sad", -2.2, -0.8),
    ("gloomy", -1.8, -1.8),
    ("depressed", -2.6, -2.0),
    ("desolate", -2.8, -1.0),
    ("uneasy", -1.0, 1.0),
    ("anxious", -1.6, 1.8),
    ("tense", -1.2, 2.2),
    ("afraid", -2.2, 2.2),
    ("terrified", -2.6, 2.8),
    ("angry", -2.4, 2.0),
    ("furious", -2.8, 2.6),
    ("distressed", -2.6, 1.4),
    ("disgusted", -2.4, 0.6),
    ("surprised", 0.4, 2.4),
    ("alert", 0.4, 1.6),
    ("curious", 0.8, 0.8),
)

# Words users put in a *subject* that carry a mood of their own (weather, light, state of a place):
# rough (valence, arousal) connotations, our own placement. The fallback refiner drops one when it
# contradicts the target ("sunny park" next to "cold grey light"); otherwise it is kept.
CONNOTATIONS: dict[str, tuple[float, float]] = {
    "sunny": (1.5, 0.5), "sunlit": (1.4, 0.3), "sunshine": (1.6, 0.5), "bright": (1.2, 0.5), "golden": (1.3, 0.2),
    "colorful": (1.3, 0.8), "colourful": (1.3, 0.8), "vibrant": (1.3, 1.3), "festive": (1.8, 1.5),
    "blooming": (1.5, 0.3), "flowering": (1.3, 0.2), "warm": (1.0, 0.0), "lush": (1.2, 0.0),
    "dark": (-1.2, 0.0), "grey": (-1.0, -0.5), "gray": (-1.0, -0.5), "rainy": (-1.0, -0.3), "stormy": (-1.2, 2.0),
    "foggy": (-0.6, -1.2), "misty": (-0.3, -1.5), "overcast": (-1.0, -0.5), "dim": (-0.8, -0.8), "cold": (-1.0, -0.2),
    "ruined": (-1.8, 0.0), "abandoned": (-1.6, -0.8), "decaying": (-1.8, -0.5), "derelict": (-1.7, -0.6),
    "empty": (-1.0, -1.0), "deserted": (-1.2, -1.0), "burning": (-1.5, 2.5), "fiery": (-0.5, 2.2),
    "busy": (0.0, 1.2), "crowded": (-0.2, 1.5), "silent": (0.0, -1.8), "still": (0.0, -1.8),
}


def contradicts(word: str, target: VA, strength: float = 0.8, margin: float = 0.75) -> bool:
    """Whether ``word``'s connotation points against ``target`` on an axis (both clearly non-zero)."""
    connotation = CONNOTATIONS.get(word.lower())
    if connotation is None:
        return False
    return any(c * t < 0 and abs(c) >= strength and abs(t) >= margin
               for c, t in zip(connotation, target.as_tuple()))


# Visual cue ladders, from the low end of an axis to the high end. Interpolating a position along a
# ladder (and mixing the two neighbours) keeps cues continuous in V and A.
VALENCE_CUES: tuple[str, ...] = (
    "dark desaturated colours, cold grey light, decay and ruin",
    "muted cold colours, overcast sky, empty surroundings",
    "dim natural light, subdued palette",
    "balanced natural light and colour",
    "soft warm light, gentle pleasant colours",
    "bright warm sunlight, vivid friendly colours, blooming details",
    "radiant golden light, rich joyful colours, smiling faces",
)
AROUSAL_CUES: tuple[str, ...] = (
    "utterly still scene, soft focus, mist, low contrast",
    "quiet and slow, gentle gradients, stillness",
    "relaxed pace, soft shadows",
    "moderate contrast, everyday activity",
    "lively movement, crisp detail",
    "dynamic motion, strong contrast, dramatic lighting",
    "explosive action, harsh high contrast, stormy chaotic energy",
)


@dataclass(frozen=True)
class EmotionDescription:
    """Words and cues for one V-A point; ``phrase`` is ready to weave into a prompt."""

    point: VA
    words: tuple[str, ...]
    intensity: str
    cues: tuple[str, ...] = field(default_factory=tuple)

    @property
    def phrase(self) -> str:
        mood = " and ".join(self.words) if len(self.words) <= 2 else ", ".join(self.words)
        prefix = f"{self.intensity} " if self.intensity else ""
        return f"{prefix}{mood} mood"


def nearest_emotion_words(point: VA, k: int = 3) -> tuple[str, ...]:
    """The ``k`` anchor words closest to ``point`` (Euclidean in V-A), nearest first."""
    if k < 1:
        raise ValueError("k must be at least 1")
    ranked = sorted(
        EMOTION_ANCHORS, key=lambda w: (math.hypot(w[1] - point.valence, w[2] - point.arousal), w[0])
    )
    return tuple(word for word, _, _ in ranked[:k])


def intensity_word(point: VA) -> str:
    """An intensity qualifier from the distance to the neutral centre (0 … 3√2)."""
    radius = math.hypot(point.valence, point.arousal)
    if radius < 0.75:
        return "subtly"
    if radius < 1.75:
        return ""
    if radius < 3.0:
        return "strongly"
    return "intensely"


def ladder_cue(ladder: tuple[str, ...], value: float) -> str:
    """The cue at ``value`` ∈ [-3, 3] along ``ladder`` (nearest rung)."""
    position = (value + 3.0) / 6.0 * (len(ladder) - 1)
    return ladder[int(round(position))]


def ladder_cues(ladder: tuple[str, ...], value: float) -> tuple[str, ...]:
    """The cue(s) at ``value`` along ``ladder`` at half-rung resolution: the nearest rung's cue, or
    both neighbours' cues when ``value`` sits near the middle between two rungs (a generator
    reading both lands in between, so a controller can aim twice as finely as the rungs)."""
    position = (value + 3.0) / 6.0 * (len(ladder) - 1)
    low = min(len(ladder) - 2, int(math.floor(position)))
    fraction = position - low
    if fraction < 0.25:
        return (ladder[low],)
    if fraction >= 0.75:
        return (ladder[low + 1],)
    return (ladder[low], ladder[low + 1])


def describe_emotion(point: VA, k: int = 3, blend: bool = False) -> EmotionDescription:
    """Describe ``point`` with ``k`` emotion words, an intensity word and visual cues: one per axis,
    or with ``blend=True`` one or two per axis (:func:`ladder_cues`, half-rung resolution)."""
    if blend:
        cues = ladder_cues(VALENCE_CUES, point.valence) + ladder_cues(AROUSAL_CUES, point.arousal)
        return EmotionDescription(point=point, words=nearest_emotion_words(point, k), intensity=intensity_word(point), cues=cues)
    cues = (ladder_cue(VALENCE_CUES, point.valence), ladder_cue(AROUSAL_CUES, point.arousal))
    return EmotionDescription(point=point, words=nearest_emotion_words(point, k), intensity=intensity_word(point), cues=cues)


def emotional_prompt(prompt: str, point: VA, strength: float = 1.0) -> str:
    """Weave the description of ``point`` into ``prompt``.

    ``strength`` in [0, 2]: 0 returns the prompt unchanged; up to 1 adds the mood phrase, then the
    visual cues; above 1 the mood phrase is emphasised with ComfyUI/A1111 weight syntax
    ``(phrase:w)``, which CLIP-based encoders in ComfyUI honour and diffusers passes as text.
    """
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"strength must be in [0, 2], got {strength}")
    prompt = prompt.strip()
    if strength == 0.0:
        return prompt
    description = describe_emotion(point, k=2 if strength < 0.5 else 3)
    parts = [prompt] if prompt else []
    mood = description.phrase
    if strength > 1.0:
        mood = f"({mood}:{1.0 + 0.5 * (strength - 1.0):.2f})"
    parts.append(mood)
    if strength >= 0.5:
        parts.extend(description.cues)
    return ", ".join(parts)

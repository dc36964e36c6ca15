"""Seeded toy generators ("plants") and a noisy judge for testing and benchmarking the feedback loop.

Why this exists: a loop tested on a generator that reacts to words exactly as the refiner expects
(the refiner's own inverse) always "works". These plants react to prompt words through a model of
their own, drawn from a seed, so the loop's controller must cope with a generator it does not know:

* **word effects** — every emotional word has a base meaning taken from the descriptor *vocabulary*
  (anchor coordinates; a cue phrase's rung on its ladder), then, per plant, rotated by an angle,
  scaled per axis (arousal usually weaker, as in every published system) and perturbed per word;
  some words are simply ignored by the plant. No function of :mod:`.refiner` is used: the plant
  never reads a prompt back with ``implied_point``;
* **subject prior** — non-emotional words (the subject) pull the image toward a plant-specific
  mood of their own, and a plant-wide bias is added; the more emotional words, the weaker the prior;
* **saturation** — the response flattens near the edges (``L·tanh(x/L)``), so extreme targets may
  be out of reach;
* **per-seed image noise** — each seed's image varies around the prompt's response.

The true emotion of each image is written into its pixels (channel 0 → valence, channel 1 →
arousal, mapped to 0..1), so :func:`true_emotion` reads back the ground truth of any image the loop
picked, and :class:`NoisyJudge` reads the same pixels with its own deterministic per-image error
(a judge is not the truth; best-of-N on a noisy judge picks lucky readings).

Families (:data:`PLANT_FAMILIES`) are parameter ranges; :func:`make_plant` draws one plant from a
family and a seed. Benchmarks tune on some seeds and report on others.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..descriptors import AROUSAL_CUES, EMOTION_ANCHORS, VALENCE_CUES
from ..emotion_space import VA, VA_MAX, VA_MIN, clamp
from ..generation.protocol import GenerationRequest
from ..progress import ProgressCallback
from ..judge.scoring import EmotionReading

_WORD = re.compile(r"[a-z]+")
_NEUTRAL = frozenset(
    "a an the of in on at to and or with without for from by into onto over under near its his her "
    "their our my your is are be very this that these those as it mood moods atmosphere feeling".split()
)
# Intensity adverbs: the plant multiplies the emotional signal by its own factor for each.
_INTENSIFIERS = {"subtly": -1.0, "strongly": 1.0, "intensely": 1.6}


def _stable_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def vocabulary_meanings() -> dict[str, tuple[float, float]]:
    """Base V-A meaning of each emotional word: anchors at their coordinates; each word of a cue
    phrase at its rung on the valence (or arousal) ladder, averaged over the rungs it appears in."""
    sums: dict[str, list[float]] = {}

    def add(word: str, v: float, a: float) -> None:
        entry = sums.setdefault(word, [0.0, 0.0, 0.0])
        entry[0] += v
        entry[1] += a
        entry[2] += 1.0

    for word, v, a in EMOTION_ANCHORS:
        add(word, v, a)
    for ladder, axis in ((VALENCE_CUES, 0), (AROUSAL_CUES, 1)):
        step = (VA_MAX - VA_MIN) / (len(ladder) - 1)
        for rung, phrase in enumerate(ladder):
            value = VA_MIN + rung * step
            for word in set(_WORD.findall(phrase.lower())) - _NEUTRAL:
                add(word, value if axis == 0 else 0.0, value if axis == 1 else 0.0)
    return {w: (s[0] / s[2], s[1] / s[2]) for w, s in sums.items()}


@dataclass(frozen=True)
class PlantFamily:
    """Ranges a plant's parameters are drawn from (uniform unless said otherwise)."""

    name: str
    rotation_deg: float = 30.0  # |angle| ≤ this
    valence_gain: tuple[float, float] = (0.7, 1.3)
    arousal_gain: tuple[float, float] = (0.5, 1.0)
    word_noise: float = 0.45  # std of each word's own deviation (V-A units)
    ignored_words: float = 0.1  # probability the plant ignores a word
    subject_noise: float = 0.8  # std of a subject word's mood
    bias: float = 0.5  # std of the plant-wide bias per axis
    prior_weight: tuple[float, float] = (0.5, 2.0)  # k in ω = n / (n + k)
    saturation: tuple[float, float] = (2.0, 3.2)  # L in L·tanh(x / L)
    seed_noise: tuple[float, float] = (0.25, 0.5)  # std of per-seed image variation
    judge_noise: tuple[float, float] = (0.2, 0.4)  # std of the judge's per-image error
    judge_scale: tuple[float, float] = (0.9, 1.0)  # the judge compresses readings toward 0 by this


PLANT_FAMILIES: dict[str, PlantFamily] = {
    family.name: family
    for family in (
        PlantFamily("rotated"),
        PlantFamily("weak_arousal", rotation_deg=15.0, arousal_gain=(0.3, 0.6)),
        PlantFamily("saturating", saturation=(1.5, 2.2), bias=0.8, valence_gain=(0.8, 1.3)),
        PlantFamily("noisy", seed_noise=(0.45, 0.7), judge_noise=(0.4, 0.6), word_noise=0.6),
    )
}


@dataclass
class PlantParams:
    """One plant's drawn parameters (all of them, so a report can say what the plant was)."""

    family: str
    seed: int
    rotation: float
    gains: tuple[float, float]
    bias: tuple[float, float]
    prior_k: float
    saturation: float
    seed_noise: float
    judge_noise: float
    judge_scale: float
    subject_noise: float = 0.8
    intensity: dict = field(default_factory=dict)
    effects: dict = field(default_factory=dict)  # word → (v, a) effect on this plant
    relevance: dict = field(default_factory=dict)  # word → per-axis weight in the average


def draw_params(family: PlantFamily, seed: int) -> PlantParams:
    rng = random.Random(_stable_seed("plant", family.name, seed))
    u = lambda lo_hi: rng.uniform(*lo_hi)  # noqa: E731 - tiny local helper
    theta = math.radians(rng.uniform(-family.rotation_deg, family.rotation_deg))
    gv, ga = u(family.valence_gain), u(family.arousal_gain)
    cos, sin = math.cos(theta), math.sin(theta)
    effects, relevance = {}, {}
    for word, (v, a) in sorted(vocabulary_meanings().items()):
        relevance[word] = (abs(v) + 0.3, abs(a) + 0.3)
        if rng.random() < family.ignored_words:
            effects[word] = (0.0, 0.0)
            continue
        rv, ra = cos * v - sin * a, sin * v + cos * a
        effects[word] = (gv * rv + rng.gauss(0, family.word_noise), ga * ra + rng.gauss(0, family.word_noise))
    intensity = {word: 1.0 + step * rng.uniform(0.05, 0.25) for word, step in _INTENSIFIERS.items()}
    return PlantParams(
        family=family.name, seed=seed, rotation=math.degrees(theta), gains=(gv, ga),
        bias=(rng.gauss(0, family.bias), rng.gauss(0, family.bias)), prior_k=u(family.prior_weight),
        saturation=u(family.saturation), seed_noise=u(family.seed_noise), judge_noise=u(family.judge_noise),
        judge_scale=u(family.judge_scale), subject_noise=family.subject_noise, intensity=intensity, effects=effects,
        relevance=relevance,
    )


def encode_emotion(points: Sequence[tuple[float, float]], height: int, width: int, seeds: Sequence[int]) -> torch.Tensor:
    """Images whose channel means are the emotions ((v+3)/6, (a+3)/6); channel 2 is seeded texture."""
    images = torch.empty(len(points), height, width, 3)
    for i, ((v, a), seed) in enumerate(zip(points, seeds)):
        images[i, ..., 0] = (v - VA_MIN) / (VA_MAX - VA_MIN)
        images[i, ..., 1] = (a - VA_MIN) / (VA_MAX - VA_MIN)
        g = torch.Generator().manual_seed(int(seed) % (2**63))
        images[i, ..., 2] = torch.rand(height, width, generator=g)
    return images


def true_emotion(images: torch.Tensor) -> list[VA]:
    """The ground truth a toy plant wrote into ``images`` ([B,H,W,3])."""
    v = images[..., 0].mean(dim=(1, 2)) * (VA_MAX - VA_MIN) + VA_MIN
    a = images[..., 1].mean(dim=(1, 2)) * (VA_MAX - VA_MIN) + VA_MIN
    return [VA.clamped(float(x), float(y)) for x, y in zip(v, a)]


class ToyPlant:
    """A :class:`~.generation.Generator` whose images' emotion responds to prompt words by a seeded
    model of its own (see the module docstring). ``response(prompt)`` is the noise-free emotion."""

    def __init__(self, params: PlantParams):
        self.params = params
        self.name = f"toy plant {params.family}#{params.seed}"
        self.calls = 0
        self.requests: list[GenerationRequest] = []

    def _subject_effect(self, word: str) -> tuple[float, float]:
        rng = random.Random(_stable_seed("subject", self.params.family, self.params.seed, word))
        return rng.gauss(0, self.params.subject_noise), rng.gauss(0, self.params.subject_noise)

    def response(self, prompt: str) -> tuple[float, float]:
        p = self.params
        words = _WORD.findall(prompt.lower())
        emotional, subject, scale = [], [], 1.0
        for position, word in enumerate(words):
            if word in _INTENSIFIERS:
                scale *= p.intensity[word]
            elif word in p.effects:
                emotional.append((0.97**position, p.effects[word], p.relevance[word]))
            elif word not in _NEUTRAL:
                subject.append(self._subject_effect(word))
        prior = [p.bias[k] + (sum(s[k] for s in subject) / len(subject) if subject else 0.0) for k in (0, 1)]
        signal = [0.0, 0.0]
        for k in (0, 1):
            # Each word speaks mostly to the axis it means something on: a calm-light word does not
            # dilute the valence its neighbours carry (weights from the word's base meaning).
            total = sum(w * rel[k] for w, _, rel in emotional)
            if total > 0:
                signal[k] = scale * sum(w * rel[k] * e[k] for w, e, rel in emotional) / total
        omega = len(emotional) / (len(emotional) + p.prior_k)
        mixed = [(1 - omega) * prior[k] + omega * signal[k] for k in (0, 1)]
        return tuple(p.saturation * math.tanh(x / p.saturation) for x in mixed)  # type: ignore[return-value]

    def emotion(self, prompt: str, seed: int) -> tuple[float, float]:
        """The true emotion of the image made from ``prompt`` with ``seed``."""
        v, a = self.response(prompt)
        rng = random.Random(_stable_seed("image", self.params.family, self.params.seed, int(seed), prompt))
        return clamp(v + rng.gauss(0, self.params.seed_noise)), clamp(a + rng.gauss(0, self.params.seed_noise))

    def generate(self, request: GenerationRequest, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        self.calls += 1
        self.requests.append(request)
        points = [self.emotion(prompt, seed) for prompt, seed in zip(request.prompts, request.seeds)]
        images = encode_emotion(points, request.height, request.width, request.seeds)
        if progress is not None:
            progress(len(request), len(request))
        return images

    def judge(self) -> "NoisyJudge":
        return NoisyJudge(self.params.judge_noise, self.params.judge_scale, salt=f"{self.params.family}#{self.params.seed}")


class NoisyJudge:
    """An :class:`~.scoring.EmotionScorer` for toy-plant images: the truth, compressed by ``scale``,
    plus a per-image error of std ``noise`` that is a deterministic function of the pixels (the
    same image always gets the same reading, as with a greedy LVLM)."""

    is_heuristic = True

    def __init__(self, noise: float = 0.3, scale: float = 1.0, salt: str = ""):
        self.noise, self.scale, self.salt = noise, scale, salt
        self.name = f"noisy toy judge (σ={noise:.2f})"
        self.calls = 0
        self.batch_sizes: list[int] = []

    def score(self, images: torch.Tensor, *, analysis: bool = False) -> list[EmotionReading]:
        self.calls += 1
        self.batch_sizes.append(int(images.shape[0]))
        readings = []
        for image, truth in zip(images, true_emotion(images)):
            key = hashlib.sha256(image.numpy().tobytes()).hexdigest()
            rng = random.Random(_stable_seed("judge", self.salt, key))
            readings.append(EmotionReading(
                clamp(self.scale * truth.valence + rng.gauss(0, self.noise)),
                clamp(self.scale * truth.arousal + rng.gauss(0, self.noise)),
            ))
        return readings


def make_plant(family: str | PlantFamily, seed: int) -> ToyPlant:
    """Draw one plant from ``family`` (a name in :data:`PLANT_FAMILIES` or a :class:`PlantFamily`)."""
    if isinstance(family, str):
        if family not in PLANT_FAMILIES:
            raise ValueError(f"unknown plant family {family!r}; choose one of {', '.join(PLANT_FAMILIES)}")
        family = PLANT_FAMILIES[family]
    return ToyPlant(draw_params(family, seed))


__all__ = [
    "NoisyJudge",
    "PLANT_FAMILIES",
    "PlantFamily",
    "PlantParams",
    "ToyPlant",
    "make_plant",
    "true_emotion",
    "vocabulary_meanings",
]

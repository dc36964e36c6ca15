"""Fakes for the loop tests: toy plants (generators whose word responses were drawn independently
of the refiner, :mod:`emofeedback2.engines.demo.toy_plants`), a scorer that reads their ground truth
exactly, and a scripted 'LVLM'. Not a fixture module; imported by the loop/node/refiner tests.

Nothing here reads a prompt with the refiner's own inverse (``implied_point``): a loop that
"works" on these fakes works on a generator it was not written for.
"""

from __future__ import annotations

from dataclasses import replace

from emofeedback2.engines.judge.scoring import EmotionReading
from emofeedback2.engines.demo.toy_plants import PLANT_FAMILIES, ToyPlant, draw_params, true_emotion


class PromptResponsiveGenerator(ToyPlant):
    """A toy plant from ``family`` (default ``"rotated"``) and ``seed``; keyword overrides replace
    fields of the family (e.g. ``valence_gain=(0, 0)`` for a plant that ignores emotion words)."""

    def __init__(self, family: str = "rotated", seed: int = 0, **overrides):
        super().__init__(draw_params(replace(PLANT_FAMILIES[family], **overrides), seed))


def ignoring_plant(seed: int = 0) -> PromptResponsiveGenerator:
    """A plant whose images do not depend on the emotional words at all (only subject and seed)."""
    return PromptResponsiveGenerator(seed=seed, valence_gain=(0.0, 0.0), arousal_gain=(0.0, 0.0), word_noise=0.0,
                                     seed_noise=(0.02, 0.02))


def obedient_plant(seed: int = 0) -> PromptResponsiveGenerator:
    """A plant that follows emotion words closely (no rotation, unit gains, little noise)."""
    return PromptResponsiveGenerator(seed=seed, rotation_deg=0.0, valence_gain=(1.0, 1.0), arousal_gain=(1.0, 1.0),
                                     word_noise=0.05, ignored_words=0.0, bias=0.0, subject_noise=0.1,
                                     saturation=(6.0, 6.0), seed_noise=(0.05, 0.05), prior_weight=(0.3, 0.3))


class PixelScorer:
    """Reads a toy plant's ground truth exactly (a noise-free judge); counts its calls."""

    name = "fake pixel scorer"
    is_heuristic = True

    def __init__(self):
        self.calls = 0
        self.batch_sizes = []

    def score(self, images, *, analysis=False):
        self.calls += 1
        self.batch_sizes.append(images.shape[0])
        return [EmotionReading(p.valence, p.arousal) for p in true_emotion(images)]


class ScriptedLVLM:
    """An 'LVLM' whose generate_text returns a fixed answer (to test the refiner's defences)."""

    name = "scripted lvlm"
    is_heuristic = False

    def __init__(self, answer: str):
        self.answer = answer
        self.instructions = []

    def generate_text(self, images, instructions, max_new_tokens=128):
        if isinstance(instructions, str):
            instructions = [instructions]
        self.instructions.extend(instructions)
        return [self.answer for _ in instructions]

    def score(self, images, *, analysis=False):
        return [EmotionReading(0.0, 0.0) for _ in range(images.shape[0])]

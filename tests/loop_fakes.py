"""Fakes for the loop tests: a generator whose emotion follows the prompt's words, and a scorer
that reads it back exactly. Not a fixture module; imported by the loop/node/refiner tests."""

from __future__ import annotations

import torch

from emofeedback2.engines.emotion_space import VA, clamp
from emofeedback2.engines.refiner import implied_point
from emofeedback2.engines.scoring import EmotionReading


class PromptResponsiveGenerator:
    """Encodes an emotion into pixels: channel 0 = valence, channel 1 = arousal (mapped to 0..1).

    The emotion is a *compressed, biased* response to the prompt's emotional words (as a real
    generator under-reacts to mood words), plus per-seed noise: ``e = gain·implied + bias + noise``.
    A loop that steers past the target by the measured error gets closer round after round.
    """

    name = "fake prompt-responsive generator"

    def __init__(self, gain: float = 0.8, bias=(-0.4, -0.6), noise: float = 0.2, fail_on_call: int = 0):
        self.gain, self.bias, self.noise = gain, bias, noise
        self.calls = 0
        self.fail_on_call = fail_on_call
        self.requests = []

    def emotion(self, prompt: str, seed: int) -> tuple[float, float]:
        point = implied_point(prompt) or VA(0.0, 0.0)
        g = torch.Generator().manual_seed(int(seed) % (2**63))
        nv, na = (torch.randn(2, generator=g) * self.noise).tolist()
        return (
            clamp(self.gain * point.valence + self.bias[0] + nv),
            clamp(self.gain * point.arousal + self.bias[1] + na),
        )

    def generate(self, request, progress=None):
        self.calls += 1
        self.requests.append(request)
        images = torch.zeros(len(request), request.height, request.width, 3)
        for i, (prompt, seed) in enumerate(zip(request.prompts, request.seeds)):
            v, a = self.emotion(prompt, seed)
            images[i, ..., 0] = (v + 3) / 6
            images[i, ..., 1] = (a + 3) / 6
            images[i, ..., 2] = 0.5
            if progress is not None:
                progress(i + 1, len(request))
        return images


class PixelScorer:
    """Reads the emotion written by :class:`PromptResponsiveGenerator`; counts its calls."""

    name = "fake pixel scorer"
    is_heuristic = True

    def __init__(self):
        self.calls = 0
        self.batch_sizes = []

    def score(self, images, *, analysis=False):
        self.calls += 1
        self.batch_sizes.append(images.shape[0])
        v = images[..., 0].mean(dim=(1, 2)) * 6 - 3
        a = images[..., 1].mean(dim=(1, 2)) * 6 - 3
        return [EmotionReading(float(x), float(y)) for x, y in zip(v, a)]


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

"""Fakes with known outputs for the evaluation tests (not derived from the evaluation code).

:class:`CellCodeGenerator` paints each image one flat colour that encodes its cell exactly
(R = target index, G = seed, B = prompt index); :class:`CellCodeScorer` decodes the colour and
returns the reading a ``response(prompt_index, seed, target) → (V, A)`` function prescribes. So a
test knows every reading in advance and can hand-compute the metrics.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from emofeedback2.engines.emotion_space import VA
from emofeedback2.engines.images import to_tensor_batch
from emofeedback2.engines.judge.scoring import EmotionReading

Response = Callable[[int, int, VA], tuple[float, float]]


class CellCodeGenerator:
    name = "cell-code fake"

    def __init__(self, prompts: Sequence[str], targets: Sequence[VA], size: int = 16, fail_on_call: int = 0):
        self.prompts, self.targets, self.size = list(prompts), list(targets), size
        self.calls = 0
        self.fail_on_call = fail_on_call  # raise KeyboardInterrupt on this call (1-based): a kill

    def generate(self, request, progress=None) -> torch.Tensor:
        self.calls += 1
        if self.fail_on_call and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated kill")
        out = []
        for prompt, seed, target in zip(request.prompts, request.seeds, request.targets):
            code = (self.targets.index(target), seed, self.prompts.index(prompt))
            out.append(torch.tensor(code, dtype=torch.float32).div(255.0).expand(self.size, self.size, 3))
        return torch.stack(out)


class CellCodeScorer:
    name = "cell-code fake judge"
    is_heuristic = True

    def __init__(self, targets: Sequence[VA], response: Response):
        self.targets, self.response = list(targets), response
        self.images_scored = 0

    def score(self, images, *, analysis: bool = False) -> list[EmotionReading]:
        batch = to_tensor_batch(images)
        readings = []
        for image in batch:
            t, seed, p = (np.round(image[0, 0].numpy() * 255.0)).astype(int).tolist()
            v, a = self.response(p, seed, self.targets[t])
            readings.append(EmotionReading(valence=v, arousal=a))
        self.images_scored += len(readings)
        return readings

"""The embedded default of ``emofeedback2 eval --demo``: the demo pipeline behind the text route.

:func:`..engines.demo.build_demo_components` gives a tiny random SD1.5-like pipeline followed by a
toy mood grade that reacts to the emotion words of the prompt it is given. For an evaluation the
target must reach the generator, so :class:`TextRouteGenerator` weaves each cell's target into its
prompt (:func:`..engines.descriptors.emotional_prompt`, the text route) before generating. With
``text_strength=0`` the target never reaches the generator: the negative control.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from ..engines.descriptors import emotional_prompt
from ..engines.generation.protocol import GenerationRequest
from ..engines.progress import ProgressCallback

DEMO_NOTE = (
    "Demo models are untrained: a tiny random diffusion pipeline (noise-like images) plus a toy colour grade "
    "driven by the emotion words the text route adds for each target, judged by a colour heuristic (brightness "
    "and saturation, Valdez & Mehrabian 1994). The evaluation mechanics are real; the figures describe the toy, "
    "not an emotion model."
)


def demo_note(judge: str, heuristic: bool) -> str:
    """The demo's closing note, naming the judge that actually judged (the colour heuristic unless --lvlm chose one)."""
    if heuristic:
        return DEMO_NOTE
    return (
        "Demo models are untrained: a tiny random diffusion pipeline (noise-like images) plus a toy colour grade "
        f"driven by the emotion words the text route adds for each target, judged by {judge} (the --lvlm you gave). "
        "The evaluation mechanics are real; the figures describe the toy and that judge, not an emotion model."
    )
DEMO_PROMPTS = ("a lighthouse on a rocky coast, wide shot", "a bowl of fruit on a wooden table")


class TextRouteGenerator:
    """Weave each image's target into its prompt, then let ``base`` generate."""

    def __init__(self, base, strength: float = 1.0):
        if not 0.0 <= strength <= 2.0:
            raise ValueError(f"text strength must be in [0, 2], got {strength}")
        self.base = base
        self.strength = float(strength)
        self.name = f"{getattr(base, 'name', 'generator')}, text route {strength:g}"

    def generate(self, request: GenerationRequest, progress: Optional[ProgressCallback] = None):
        if request.targets is not None and self.strength > 0:
            request = replace(request, prompts=[emotional_prompt(p, t, self.strength)
                                                for p, t in zip(request.prompts, request.targets)])
        return self.base.generate(request, progress=progress)

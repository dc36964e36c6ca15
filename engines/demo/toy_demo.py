"""The embedded default components for ``emofeedback2 demo`` and ``emofeedback2 bench loop``.

No downloads, no GPU, no trained weights — and therefore no real emotion judgement. What it is:

* generator: a tiny **random** SD1.5-like diffusers pipeline built into a temporary folder with
  :func:`~emofeedback2.tiny_models.diffusion.build_tiny_pipeline` and loaded with the same
  :func:`~.diffusers_backend.load_diffusers_generator` users run on real weights. Random weights
  ignore the prompt, so its images are followed by a transparent **mood grade** (:class:`MoodGrade`):
  exposure, saturation and a warm/cool tint set by how a seeded toy plant
  (:mod:`.toy_plants`, its own word responses — not the refiner's inverse) reacts to the prompt's
  words, plus that plant's per-seed variation. It stands in for what a trained generator does with
  mood words, so the loop has something to steer that it was not written for; it is a toy, and the
  demo says so;
* scorer: the colour heuristic (:class:`~.color_scorer.ColorHeuristicScorer`, Valdez & Mehrabian
  1994 brightness/saturation weights), not an LVLM;
* refiner: the descriptor :class:`~.refiner.FallbackRefiner` (no LVLM to write feedback).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..emotion_space import VA
from ..generation.protocol import GenerationRequest
from ..progress import ProgressCallback
from ..loop.refiner import FallbackRefiner
from .toy_plants import ToyPlant, make_plant

#: The toy plant whose word responses drive the demo's mood grade (family, seed).
DEMO_PLANT = ("rotated", 7)

DEMO_PROMPT = "a lighthouse on a rocky coast, wide shot"
DEMO_TARGET = VA(2.0, 1.5)

HONESTY_NOTE = (
    "Demo models are untrained: a tiny random diffusion pipeline (its images are noise-like) plus a "
    "toy colour grade driven by a seeded toy plant's response to the prompt's words, judged by a colour heuristic (brightness and "
    "saturation, Valdez & Mehrabian 1994), refined by the descriptor fallback. The loop mechanics are "
    "real; the pictures and readings are not an emotion model's. Use `emofeedback2 loop` with real "
    "weights for real images."
)


@dataclass
class MoodGrade:
    """Colour grade from a toy plant's response to the prompt: a toy response to emotion words.

    For the V-A point ``p`` the plant gives the prompt and seed (:meth:`.toy_plants.ToyPlant.emotion`,
    which includes the plant's per-seed variation), brightness shifts by ``exposure·(V − 0.3·A)/3``,
    chroma scales by ``exp(saturation·(A + 0.3·V)/3)`` and a warm (V ≥ 0, stronger with V) or faint
    cool (V < 0) tint is mixed in.
    """

    exposure: float = 0.3
    saturation: float = 1.1
    tint: float = 0.06
    plant: Optional[ToyPlant] = None

    def __post_init__(self) -> None:
        if self.plant is None:
            self.plant = make_plant(*DEMO_PLANT)

    def __call__(self, images: torch.Tensor, prompts, seeds) -> torch.Tensor:
        out = []
        for image, prompt, seed in zip(images, prompts, seeds):
            point = VA.clamped(*self.plant.emotion(prompt, int(seed)))
            v = point.valence / 3.0
            a = point.arousal / 3.0
            grey = image.mean(dim=-1, keepdim=True)
            colour = grey + (image - grey) * math.exp(self.saturation * (a + 0.3 * v)) + 0.08 * max(0.0, a)
            # A chroma floor so saturation has something to act on even for grey-ish base images.
            hue = torch.tensor([1.0, 0.55, 0.2]) if v >= 0 else torch.tensor([0.25, 0.45, 1.0])
            warmth = self.tint * (1 + 2 * v) if v >= 0 else self.tint * 0.5
            colour = colour + (hue - hue.mean()) * (warmth * math.exp(self.saturation * a))
            colour = colour + self.exposure * (v - 0.3 * a)
            out.append(colour.clamp(0.0, 1.0))
        return torch.stack(out)


class MoodGradedGenerator:
    """A Generator that grades another generator's images with :class:`MoodGrade`."""

    def __init__(self, base, grade: Optional[MoodGrade] = None):
        self.base = base
        self.grade = grade or MoodGrade()
        self.name = f"{getattr(base, 'name', 'generator')} + toy mood grade"

    def generate(self, request: GenerationRequest, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        images = self.base.generate(request, progress=progress)
        return self.grade(images, request.prompts, request.seeds)


@dataclass
class DemoComponents:
    generator: MoodGradedGenerator
    scorer: object
    refiner: FallbackRefiner
    pipeline_dir: Path
    seconds_to_build: float


def quiet_libraries() -> None:
    """Silence load bars and the tiny tokenizer's truncation warnings (the demo prompts exceed its
    byte-level 77-token window; real CLIP tokenizers are word-level)."""
    import logging

    for name in ("transformers", "diffusers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import diffusers
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        diffusers.logging.set_verbosity_error()
        diffusers.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - logging helpers are optional niceties
        pass


def build_demo_components(workdir: Optional[str | Path] = None, seed: int = 0) -> DemoComponents:
    """Build the tiny pipeline in ``workdir`` (a new temporary folder when ``None``) and load all
    three demo components. Takes seconds on a CPU; downloads nothing."""
    import time

    quiet_libraries()
    from ...tiny_models.diffusion import build_tiny_pipeline
    from ..judge.color_scorer import ColorHeuristicScorer
    from ..generation.diffusers_backend import DiffusersGeneratorConfig, load_diffusers_generator

    started = time.perf_counter()
    root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="emofeedback2-demo-"))
    folder = root / "tiny-sd15"
    if not (folder / "model_index.json").is_file():
        build_tiny_pipeline(folder, arch="sd15", seed=seed)
    base = load_diffusers_generator(
        DiffusersGeneratorConfig(model=str(folder), device="cpu", dtype="float32", local_files_only=True)
    )
    return DemoComponents(
        generator=MoodGradedGenerator(base),
        scorer=ColorHeuristicScorer(),
        refiner=FallbackRefiner(),
        pipeline_dir=folder,
        seconds_to_build=time.perf_counter() - started,
    )


#: Sampling settings the demo and the loop benchmark use with the tiny pipeline.
DEMO_SAMPLING = dict(width=32, height=32, steps=2, cfg=1.0)

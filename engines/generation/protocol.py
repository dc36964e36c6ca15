"""The generator protocol: prompts + target V-A + per-image seeds → images.

The feedback loop and the training drive generation through this protocol only. Implementations:
the diffusers backend (:mod:`.diffusers_backend`) and the ComfyUI backend (:mod:`.comfy_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence, runtime_checkable

import torch

from ..emotion_space import VA
from ..progress import ProgressCallback


@dataclass
class GenerationRequest:
    """What to generate. ``prompts``, ``targets`` and ``seeds`` have one entry per image.

    ``targets`` feed the emotion adapter when the generator has one (``None`` = no adapter input).
    Every image gets its own seed, so images of one group differ and a seed reproduces its image.
    """

    prompts: Sequence[str]
    seeds: Sequence[int]
    targets: Optional[Sequence[VA]] = None
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg: float = 7.0
    adapter_strength: float = 1.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.prompts) == 0:
            raise ValueError("GenerationRequest needs at least one prompt")
        if len(self.seeds) != len(self.prompts):
            raise ValueError(f"got {len(self.prompts)} prompts but {len(self.seeds)} seeds: give one seed per image")
        if self.targets is not None and len(self.targets) != len(self.prompts):
            raise ValueError(f"got {len(self.prompts)} prompts but {len(self.targets)} targets: give one per image")
        if self.width % 8 or self.height % 8 or self.width < 8 or self.height < 8:
            raise ValueError(f"width and height must be positive multiples of 8, got {self.width}×{self.height}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")

    def __len__(self) -> int:
        return len(self.prompts)


@runtime_checkable
class Generator(Protocol):
    """Produces a float32 ``[B, H, W, 3]`` image tensor in 0..1 on CPU, one image per request entry."""

    name: str

    def generate(self, request: GenerationRequest, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
        ...

"""What a loop run records: every candidate, every round, the counts, and the result (with ``to_dict``).

A :class:`LoopResult` holds only whole, scored rounds at every moment, so a cancelled run's partial
result is as consistent as a finished one; ``to_dict`` is what ``report.json`` and the node's
history output are made of.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from ..emotion_space import VA
from .loop_config import LoopConfig


@dataclass
class CandidateRecord:
    round: int  # 1-based
    index: int  # 0-based within the round
    prompt: str
    seed: int
    valence: float
    arousal: float
    reward: float
    distance: float
    quality: Optional[float] = None
    score: float = 0.0  # what selection maximises: reward (+ quality_weight × quality)
    image_index: int = 0  # position in LoopResult.images


@dataclass
class RoundRecord:
    round: int
    prompt: str
    candidates: list[CandidateRecord]
    best_index: int  # best of this round
    best_so_far: tuple[int, int]  # (round, index) of the best candidate up to this round
    best_so_far_reward: float
    best_so_far_distance: float
    mean_valence: float
    mean_arousal: float
    mean_distance: float
    seconds: float
    feedback: str = ""
    refined_prompt: Optional[str] = None  # prompt for the next round (None: none was asked for)
    refiner_used_fallback: Optional[bool] = None
    refiner_reason: str = ""
    steer: Optional[tuple[float, float]] = None  # the V-A point this round's prompt was written for, when known


@dataclass
class LoopCounts:
    generator_images: int = 0
    generator_calls: int = 0
    scorer_calls: int = 0
    scorer_images: int = 0
    refiner_calls: int = 0
    refiner_lvlm_images: int = 0  # images the LVLM read while writing feedback (0 for the fallback)

    @property
    def image_evaluations(self) -> int:
        """Images the judge looked at: scored candidates plus images shown to the LVLM refiner."""
        return self.scorer_images + self.refiner_lvlm_images


@dataclass
class LoopResult:
    target: VA
    base_prompt: str
    config: LoopConfig
    rounds: list[RoundRecord] = field(default_factory=list)
    best: Optional[CandidateRecord] = None
    images: Optional[torch.Tensor] = None  # every candidate of the recorded rounds, in order
    final_prompt: str = ""
    stop_reason: str = ""
    cancelled: bool = False
    counts: LoopCounts = field(default_factory=LoopCounts)
    timings: dict = field(default_factory=dict)
    generator_name: str = ""
    scorer_name: str = ""
    refiner_name: str = ""
    scorer_is_heuristic: bool = False

    @property
    def best_image(self) -> Optional[torch.Tensor]:
        if self.best is None or self.images is None:
            return None
        return self.images[self.best.image_index : self.best.image_index + 1]

    @property
    def best_rewards(self) -> list[float]:
        return [r.best_so_far_reward for r in self.rounds]

    def to_dict(self) -> dict:
        counts = asdict(self.counts)
        counts["image_evaluations"] = self.counts.image_evaluations
        return {
            "target": {"valence": self.target.valence, "arousal": self.target.arousal},
            "base_prompt": self.base_prompt,
            "final_prompt": self.final_prompt,
            "stop_reason": self.stop_reason,
            "cancelled": self.cancelled,
            "best": asdict(self.best) if self.best else None,
            "rounds": [asdict(r) for r in self.rounds],
            "counts": counts,
            "timings": dict(self.timings),
            "config": asdict(self.config),
            "components": {
                "generator": self.generator_name,
                "scorer": self.scorer_name,
                "scorer_is_heuristic": self.scorer_is_heuristic,
                "refiner": self.refiner_name,
            },
        }

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


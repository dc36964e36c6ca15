"""The loop's settings: the schedule (rounds × candidates, stop rules, budget), sampling, and seeds.

Defaults are our benchmarked schedule (``emofeedback2 bench loop``); :meth:`LoopConfig.paper` is the
paper's fixed 3 × 8. Candidate seeds are consecutive from the run seed, like ComfyUI's batch seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

SEED_MODULUS = 2**64


def candidate_seed(seed: int, round_index: int, index: int, candidates: int) -> int:
    """Seed of candidate ``index`` in round ``round_index`` (0-based) of a constant schedule:
    consecutive from ``seed``, like ComfyUI's batch seeds, so any candidate can be re-made in a
    plain KSampler (the loop numbers candidates of any schedule consecutively)."""
    return (int(seed) + round_index * candidates + index) % SEED_MODULUS


@dataclass
class LoopConfig:
    """Schedule and sampling settings of one loop run. Defaults are our benchmarked schedule.

    rounds / candidates: at most ``rounds × candidates`` generated images.
    tolerance: stop once the best reading is this close to the target (``va_distance``, 0..6).
    min_improvement: stop when a round brings neither the best distance nor the round's mean
      distance down by this much (0 = never).
    initial_prompt: ``"descriptors"`` adds target mood/light/motion phrases to the user's subject
      for round 1; ``"as_is"`` sends the user's prompt unchanged (the paper's start).
    quality_weight: weight of the optional quality term in the selection score
      ``reward + quality_weight × quality``.
    steer_on: the reading the refiner corrects: ``"mean"`` of the round's candidates (the prompt's
      effect with seed luck averaged out) or the round's ``"best"`` candidate. The refiner always
      sees the round's best image.
    controller: ``"secant"`` (fit the generator's response, aim where it predicts the target) or
      ``"integral"`` (the refiner's fixed-gain step). Only refiners that take a ``steer`` keyword
      (the descriptor fallback) can follow the secant controller; others write their own prompt.
    max_evaluations: most judge evaluations (scored candidates + images shown to an LVLM refiner)
      per run; 0 = no cap beyond ``rounds × candidates``.
    confidence: the tolerance stop needs ``best distance + confidence × σ̂ ≤ tolerance``
      (σ̂: pooled within-round spread of the readings; 0 = trust a single reading).
    """

    rounds: int = 6
    candidates: int = 2
    tolerance: float = 0.4
    min_improvement: float = 0.0
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    width: int = 512
    height: int = 512
    negative_prompt: str = ""
    adapter_strength: float = 1.0
    initial_prompt: str = "descriptors"
    quality_weight: float = 0.0
    steer_on: str = "mean"
    generator_batch_size: int = 0  # 0 = the whole round in one generate call
    controller: str = "secant"
    max_evaluations: int = 0
    confidence: float = 0.5
    schedule: tuple = ()  # per-round candidate counts; when given it replaces rounds × candidates
    noise_aware: bool = True  # the secant step shrinks errors the readings' spread cannot resolve

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1, got {self.candidates}")
        if not 0.0 <= self.tolerance <= 6.0:
            raise ValueError(f"tolerance is a V-A distance in [0, 6], got {self.tolerance}")
        if self.min_improvement < 0:
            raise ValueError(f"min_improvement must be >= 0, got {self.min_improvement}")
        if self.initial_prompt not in ("descriptors", "as_is"):
            raise ValueError(f"initial_prompt must be 'descriptors' or 'as_is', got {self.initial_prompt!r}")
        if self.steer_on not in ("mean", "best"):
            raise ValueError(f"steer_on must be 'mean' or 'best', got {self.steer_on!r}")
        if self.generator_batch_size < 0:
            raise ValueError("generator_batch_size must be >= 0 (0 = whole round)")
        if self.controller not in ("secant", "integral"):
            raise ValueError(f"controller must be 'secant' or 'integral', got {self.controller!r}")
        if self.max_evaluations < 0:
            raise ValueError(f"max_evaluations must be >= 0 (0 = rounds × candidates), got {self.max_evaluations}")
        if self.confidence < 0:
            raise ValueError(f"confidence must be >= 0, got {self.confidence}")
        self.schedule = tuple(int(n) for n in self.schedule)
        if self.schedule:
            if any(n < 1 for n in self.schedule):
                raise ValueError(f"schedule holds candidates per round, each >= 1; got {self.schedule}")
            self.rounds, self.candidates = len(self.schedule), max(self.schedule)

    def candidates_in_round(self, round_index: int) -> int:
        """Candidates planned for round ``round_index`` (0-based), before any budget cut."""
        return self.schedule[round_index] if self.schedule else self.candidates

    @property
    def evaluation_budget(self) -> int:
        """Most candidates the run may score (``max_evaluations`` or ``rounds × candidates``)."""
        full = sum(self.schedule) if self.schedule else self.rounds * self.candidates
        return min(full, self.max_evaluations) if self.max_evaluations else full

    @classmethod
    def paper(cls, **overrides) -> "LoopConfig":
        """The paper's fixed schedule: 3 rounds × 8 candidates, no early stop, the refiner's own
        fixed-gain correction (same first prompt as ours unless ``initial_prompt`` is overridden)."""
        settings = dict(rounds=3, candidates=8, tolerance=0.0, min_improvement=0.0, controller="integral",
                        max_evaluations=0, confidence=0.0)
        settings.update(overrides)
        return cls(**settings)


def progress_units(config: LoopConfig) -> int:
    """Progress units of a full run: per round, one per image plus one for scoring (a node sizes
    its progress bar with this; an early stop shrinks the total to what was done)."""
    images, rounds, planned = config.evaluation_budget, 0, 0
    while planned < images and rounds < config.rounds:
        planned += config.candidates_in_round(rounds)
        rounds += 1
    return images + rounds


"""Run-level statistics for learning tests: seeds from ``EMOFEEDBACK2_SEED_BASE``, verdicts over runs.

A learning test must pass for any seed base, so it compares *independent runs* (one number per run),
never the spread over images inside one run: that spread says nothing about run-to-run luck.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from statistics import fmean, stdev


def seed_base() -> int:
    """The base every learning test derives its seeds from (env ``EMOFEEDBACK2_SEED_BASE``, default 0)."""
    raw = os.environ.get("EMOFEEDBACK2_SEED_BASE", "0")
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"EMOFEEDBACK2_SEED_BASE must be an integer, got {raw!r}") from e


@dataclass(frozen=True)
class RunComparison:
    """Treatment vs control over independent runs (one gain per run)."""

    treatment: tuple[float, ...]
    control: tuple[float, ...]

    @property
    def treatment_mean(self) -> float:
        return fmean(self.treatment)

    @property
    def control_mean(self) -> float:
        return fmean(self.control)

    @staticmethod
    def _se(xs: tuple[float, ...]) -> float:
        return stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.inf

    @property
    def diff_se(self) -> float:
        """Welch standard error of the difference of the two run means."""
        return math.hypot(self._se(self.treatment), self._se(self.control))

    @property
    def t_diff(self) -> float:
        """(treatment mean - control mean) in Welch standard errors."""
        return (self.treatment_mean - self.control_mean) / max(self.diff_se, 1e-12)

    @property
    def t_control(self) -> float:
        """The control's mean gain in its own standard errors (should be near 0)."""
        return self.control_mean / max(self._se(self.control), 1e-12)

    def summary(self) -> str:
        return (
            f"treatment runs {['%+.4f' % x for x in self.treatment]} mean {self.treatment_mean:+.4f}; "
            f"control runs {['%+.4f' % x for x in self.control]} mean {self.control_mean:+.4f}; "
            f"diff {self.treatment_mean - self.control_mean:+.4f} = {self.t_diff:.1f} Welch SE; "
            f"control = {self.t_control:+.1f} SE"
        )

    def assert_learns(self, min_gain: float = 0.005, min_t: float = 2.5) -> None:
        """The verdict every GRPO learning test gives: the treatment raised the reward, beyond the
        control by ``min_t`` Welch SE (one-sided, ~10 degrees of freedom: p < 0.02 that a
        non-learning trainer passes), and the control did not learn (its gain within noise of zero,
        or negligible beside the treatment's)."""
        assert self.treatment_mean > min_gain, f"GRPO did not raise the reward: {self.summary()}"
        assert self.t_diff >= min_t, f"treatment not distinguishable from control over runs: {self.summary()}"
        assert abs(self.t_control) < 3.0 or abs(self.control_mean) < self.treatment_mean / 5, (
            f"the shuffled-advantage control moved the reward: {self.summary()}")


def reward_gain(trainer, targets: list[tuple[float, float]], steps: int, eval_images: int, seed: int) -> float:
    """Mean change of the deterministic-sampler reward on fixed evaluation seeds over ``steps``
    GRPO steps: one number per run. Closes the trainer's reward workers."""
    import torch

    target_rows = torch.tensor(targets * (eval_images // len(targets)), dtype=torch.float32)
    prompts = [trainer.sampler.prompts[i % len(trainer.sampler.prompts)] for i in range(eval_images)]
    eval_seeds = [seed * 1000 + 500_000 + i for i in range(eval_images)]
    before = trainer.evaluate(prompts, target_rows, eval_seeds)["total"]
    for _ in range(steps):
        trainer.train_step()
    after = trainer.evaluate(prompts, target_rows, eval_seeds)["total"]
    trainer.runner.close()
    return float((after - before).mean())

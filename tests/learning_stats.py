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

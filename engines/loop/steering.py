"""Where the next round's prompt should aim: a secant (quasi-Newton) controller for the steer point.

The descriptor refiner writes a prompt *for* a V-A point, the steer point ``s``. A generator answers
a prompt written for ``s`` with images whose mean reading is ``m ≈ J·s + c``: a per-axis gain, some
cross-talk between valence and arousal (``J``) and a bias from the subject (``c``), none of them
known in advance. A fixed integral gain (``s ← s + g·(target − m)``) is right for one ``J`` only and
oscillates or crawls on others. :class:`SecantController` instead fits ``J`` and ``c`` to the rounds
seen so far — ridge regression toward a prior gain, weighting each round by its candidates and
recent rounds more (the response saturates, so the local slope matters) — and solves
``J·s + c = target`` for the next steer point, inside [-3, 3]² and a trust region. With one round
it is the integral step with gain ``1 / prior_gain``; each further round is a secant (Broyden-like)
update that learns the generator's gains and cross-talk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from ..emotion_space import VA, VA_MAX, VA_MIN


@dataclass
class SecantController:
    """Fits ``m ≈ J·s + c`` to (steer, mean reading) pairs and returns the steer point for ``target``.

    prior_gain: ``J``'s prior (``prior_gain × identity``) and the first step's inverse gain.
    prior_strength: how many candidates' worth of evidence the prior counts for.
    recency: weight factor per round of age (1 = all rounds alike).
    min_gain / max_gain: bounds on ``J``'s diagonal (a round that moved nothing must not make the
      next step explode; a generator never amplifies more than ``max_gain``).
    max_step: largest move of the steer point per round, per axis (trust region).
    """

    prior_gain: float = 0.7
    prior_strength: float = 3.0
    recency: float = 0.7
    min_gain: float = 0.2
    max_gain: float = 1.5
    max_step: float = 2.5
    observations: list = field(default_factory=list)  # (steer (v, a), mean reading (v, a), weight)

    def observe(self, steer: VA, mean_reading: VA, candidates: int) -> None:
        self.observations.append((steer.as_tuple(), mean_reading.as_tuple(), float(candidates)))

    def model(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Current estimate (J [2,2], c [2]) by weighted ridge regression on [s, 1] → m."""
        if not self.observations:
            return torch.eye(2, dtype=torch.float64) * self.prior_gain, torch.zeros(2, dtype=torch.float64)
        n = len(self.observations)
        s = torch.tensor([o[0] for o in self.observations], dtype=torch.float64)
        m = torch.tensor([o[1] for o in self.observations], dtype=torch.float64)
        w = torch.tensor([o[2] * self.recency ** (n - 1 - k) for k, o in enumerate(self.observations)], dtype=torch.float64)
        x = torch.cat([s, torch.ones(n, 1, dtype=torch.float64)], dim=1)  # [n, 3]
        # Ridge toward J = prior_gain·I on the slopes; the intercept has only a faint prior.
        penalty = torch.diag(torch.tensor([self.prior_strength, self.prior_strength, 1e-3], dtype=torch.float64))
        prior = torch.tensor([[self.prior_gain, 0.0], [0.0, self.prior_gain], [0.0, 0.0]], dtype=torch.float64)
        # The intercept's prior mean is the first round's offset under the prior gain.
        prior[2] = m[0] - self.prior_gain * s[0]
        xtw = x.T * w
        beta = torch.linalg.solve(xtw @ x + penalty, xtw @ m + penalty @ prior)  # [3, 2]
        jac, bias = beta[:2].T.clone(), beta[2].clone()
        for k in range(2):  # bounded gains keep a flat or noisy round from blowing up the step
            jac[k, k] = jac[k, k].clamp(self.min_gain, self.max_gain)
        for i, j in ((0, 1), (1, 0)):  # cross-talk no larger than the weaker own gain
            bound = 0.8 * min(jac[0, 0], jac[1, 1])
            jac[i, j] = jac[i, j].clamp(-bound, bound)
        return jac, bias

    def next_steer(self, target: VA, current: Optional[VA] = None, noise: float = 0.0) -> VA:
        """The steer point whose predicted mean reading is closest to ``target`` within [-3, 3]²,
        approached from ``current`` by a step limited to ``max_step`` per axis.

        ``noise`` (the readings' per-image standard deviation, 0 = unknown) makes the step
        noise-aware: on each axis the step is scaled by ``e² / (e² + σ²/n)``, where ``e`` is the
        predicted error at ``current`` and n the recency-weighted candidates behind the estimate,
        so an error the readings cannot tell from seed and judge noise moves the prompt little."""
        jac, bias = self.model()
        want = torch.tensor(target.as_tuple(), dtype=torch.float64)
        best = torch.linalg.solve(jac, want - bias)
        if bool(((best < VA_MIN) | (best > VA_MAX)).any()):
            best = self._project(jac, bias, want, best.clamp(VA_MIN, VA_MAX))
        if current is None:
            return VA.clamped(float(best[0]), float(best[1]))
        here = torch.tensor(current.as_tuple(), dtype=torch.float64)
        step = best - here
        if noise > 0 and self.observations:
            n = len(self.observations)
            weight = sum(o[2] * self.recency ** (n - 1 - k) for k, o in enumerate(self.observations))
            variance = noise**2 / max(weight, 1.0)
            error = want - (jac @ here + bias)
            step = step * error**2 / (error**2 + variance)
        steer = (here + step.clamp(-self.max_step, self.max_step)).clamp(VA_MIN, VA_MAX)
        return VA.clamped(float(steer[0]), float(steer[1]))

    @staticmethod
    def _project(jac: torch.Tensor, bias: torch.Tensor, want: torch.Tensor, steer: torch.Tensor) -> torch.Tensor:
        """Improve a clamped solution when the box cuts it: a few projected-gradient steps on
        ``|J·s + c − target|²`` (an unreachable valence should not waste the arousal axis)."""
        lr = 1.0 / float(torch.linalg.matrix_norm(jac, ord=2) ** 2 + 1e-9)
        for _ in range(20):
            grad = jac.T @ (jac @ steer + bias - want)
            steer = (steer - lr * grad).clamp(VA_MIN, VA_MAX)
        return steer


__all__ = ["SecantController"]

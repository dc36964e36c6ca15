"""The one definition of the emotion space: valence/arousal in [-3, 3], checks, conversions, reward.

Everything that handles a valence-arousal (V-A) point — nodes, feedback loop, training rewards,
evaluation — goes through this module, so a range, a clamp or a reward formula exists once.

Convention (EmotiCrafter / EmoFeedback²): valence V and arousal A each lie in [-3, 3];
V = -3 is most unpleasant, +3 most pleasant; A = -3 is calmest, +3 most excited.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

from .errors import UserError

VA_MIN = -3.0
VA_MAX = 3.0
VA_SPAN = VA_MAX - VA_MIN  # 6.0: the largest possible error on one axis


class EmotionValueError(UserError, ValueError):
    """A valence/arousal value is missing, not a number, NaN/inf or outside [-3, 3]."""


def check_component(value: Any, name: str = "valence") -> float:
    """Return ``value`` as a float in [-3, 3] or raise :class:`EmotionValueError` saying what to fix."""
    if isinstance(value, bool) or not isinstance(value, Real):
        # numpy / torch scalars are not always registered as numbers.Real; accept 0-d ones.
        item = getattr(value, "item", None)
        if item is None or getattr(value, "ndim", 0) != 0:
            raise EmotionValueError(
                f"{name} must be a number in [{VA_MIN:g}, {VA_MAX:g}], got {type(value).__name__} {value!r}"
            )
        value = item()
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise EmotionValueError(f"{name} must be a finite number in [{VA_MIN:g}, {VA_MAX:g}], got {value}")
    if not VA_MIN <= value <= VA_MAX:
        raise EmotionValueError(
            f"{name}={value:g} is outside [{VA_MIN:g}, {VA_MAX:g}]. If your labels use another scale, "
            "convert them first: `emofeedback2 convert-scale --from sam V A` (or --from findingemo/emotic, "
            "--range LO HI, --csv IN OUT for a file)."
        )
    return value


@dataclass(frozen=True)
class VA:
    """A validated valence-arousal point in [-3, 3]²."""

    valence: float
    arousal: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "valence", check_component(self.valence, "valence"))
        object.__setattr__(self, "arousal", check_component(self.arousal, "arousal"))

    @classmethod
    def clamped(cls, valence: float, arousal: float) -> "VA":
        """Build a point from possibly out-of-range model output (NaN is still an error)."""
        return cls(clamp(valence, "valence"), clamp(arousal, "arousal"))

    def as_tuple(self) -> tuple[float, float]:
        return (self.valence, self.arousal)

    def __str__(self) -> str:
        return f"(V={self.valence:+.2f}, A={self.arousal:+.2f})"


def clamp(value: float, name: str = "value") -> float:
    value = float(value)
    if math.isnan(value):
        raise EmotionValueError(f"{name} is NaN; cannot clamp it into [{VA_MIN:g}, {VA_MAX:g}]")
    return min(VA_MAX, max(VA_MIN, value))


# --- Converters from other datasets' scales (all linear, all explicit) -----------------------------


def _linear(value: float, src_lo: float, src_hi: float, name: str, scale: str) -> float:
    value = float(value)
    if math.isnan(value) or not src_lo <= value <= src_hi:
        raise EmotionValueError(f"{name}={value} is outside the {scale} range [{src_lo:g}, {src_hi:g}]")
    return VA_MIN + (value - src_lo) * VA_SPAN / (src_hi - src_lo)


def _linear_inverse(value: float, dst_lo: float, dst_hi: float, name: str) -> float:
    value = check_component(value, name)
    return dst_lo + (value - VA_MIN) * (dst_hi - dst_lo) / VA_SPAN


def from_findingemo(valence: float, arousal: float) -> VA:
    """FindingEmo: valence already in [-3, 3], arousal in [0, 6] → shifted by -3."""
    return VA(_linear(valence, -3, 3, "valence", "FindingEmo"), _linear(arousal, 0, 6, "arousal", "FindingEmo"))


def to_findingemo(point: VA) -> tuple[float, float]:
    return (_linear_inverse(point.valence, -3, 3, "valence"), _linear_inverse(point.arousal, 0, 6, "arousal"))


def from_emotic(valence: float, arousal: float) -> VA:
    """EMOTIC: continuous valence/arousal (and dominance) on 1..10 → [-3, 3]."""
    return VA(_linear(valence, 1, 10, "valence", "EMOTIC"), _linear(arousal, 1, 10, "arousal", "EMOTIC"))


def to_emotic(point: VA) -> tuple[float, float]:
    return (_linear_inverse(point.valence, 1, 10, "valence"), _linear_inverse(point.arousal, 1, 10, "arousal"))


def from_sam(valence: float, arousal: float) -> VA:
    """Self-Assessment Manikin / IAPS style ratings on 1..9 → [-3, 3] (5 maps to 0)."""
    return VA(_linear(valence, 1, 9, "valence", "SAM"), _linear(arousal, 1, 9, "arousal", "SAM"))


def to_sam(point: VA) -> tuple[float, float]:
    return (_linear_inverse(point.valence, 1, 9, "valence"), _linear_inverse(point.arousal, 1, 9, "arousal"))


# --- Distance and reward ----------------------------------------------------------------------------


def va_errors(pred: VA, target: VA) -> tuple[float, float]:
    """Per-axis absolute errors (|ΔV|, |ΔA|): the papers' V-Error and A-Error for one image."""
    return abs(pred.valence - target.valence), abs(pred.arousal - target.arousal)


def va_distance(pred: VA, target: VA) -> float:
    """Mean absolute error over the two axes, in V-A units (0 … 6).

    ``d = (|V̂ - V| + |Â - A|) / 2``. This is the average of the V-Error and A-Error metrics, so
    minimising it is minimising what the papers report. The loop's tolerance is in these units.
    """
    dv, da = va_errors(pred, target)
    return 0.5 * (dv + da)


def va_reward(pred: VA, target: VA) -> float:
    """Reward in [0, 1]: ``r = 1 - d / 6`` with ``d`` from :func:`va_distance`.

    1 means the reading equals the target; 0 means opposite corners of the square. Linear in the
    reported error metrics (no threshold), so GRPO gets a signal at every distance.
    """
    return 1.0 - va_distance(pred, target) / VA_SPAN


def va_reward_tensor(pred_v, pred_a, target_v, target_a):
    """Vectorised :func:`va_reward` for tensors/arrays of equal shape (training rewards)."""
    return 1.0 - 0.5 * (abs(pred_v - target_v) + abs(pred_a - target_a)) / VA_SPAN


def grid_targets(n_per_axis: int, lo: float = VA_MIN, hi: float = VA_MAX) -> list[VA]:
    """An ``n × n`` grid of targets over [lo, hi]², valence-major (row = valence)."""
    if n_per_axis < 1:
        raise EmotionValueError("n_per_axis must be at least 1")
    if n_per_axis == 1:
        return [VA(0.0, 0.0)]
    step = (hi - lo) / (n_per_axis - 1)
    return [VA(lo + i * step, lo + j * step) for i in range(n_per_axis) for j in range(n_per_axis)]


def from_likert7(valence: float, arousal: float) -> VA:
    """7-point ratings such as OASIS (1..7, 4 = neutral) → [-3, 3] (4 maps to 0)."""
    return VA(_linear(valence, 1, 7, "valence", "1-7"), _linear(arousal, 1, 7, "arousal", "1-7"))


#: Named rating scales a labelled data set can use, each with its explicit linear converter.
SCALE_CONVERTERS = {
    "va3": VA,  # already [-3, 3] (EmotiCrafter / EmoFeedback² convention)
    "sam9": from_sam,  # SAM / IAPS / NAPS 1..9
    "emotic10": from_emotic,  # EMOTIC 1..10
    "findingemo": from_findingemo,  # FindingEmo V [-3, 3], A [0, 6]
    "likert7": from_likert7,  # OASIS 1..7
}


def convert_scale(valence: float, arousal: float, scale: str = "va3") -> VA:
    """Convert a rating on the named ``scale`` (see :data:`SCALE_CONVERTERS`) to a point in [-3, 3]²."""
    try:
        converter = SCALE_CONVERTERS[scale]
    except KeyError:
        raise EmotionValueError(f"unknown rating scale {scale!r}; use one of {', '.join(SCALE_CONVERTERS)}") from None
    return converter(valence, arousal)

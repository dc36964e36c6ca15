"""The scorer interface: images in, one valence-arousal reading per image out.

Implemented by the LVLM scorer (:mod:`.lvlm_scorer`) and the weight-free colour heuristic
(:mod:`.color_scorer`); used by the nodes, the feedback loop and the training rewards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

from ..emotion_space import VA, va_distance, va_reward
from ..images import ImageBatch


#: a digit-readout judge that puts less probability than this on the scale digits (at either answer
#: prefix) was not really answering: its expected value rests on little mass, so the reading is flagged
LOW_DIGIT_MASS = 0.5
#: readings of a set whose standard deviation (on [-3, 3]) is below this are near-constant: the judge hardly
#: tells the images apart, so correlations, slopes and monotonicity over them measure noise
NEAR_CONSTANT_STD = 0.1
#: fewer readings than this have no meaningful spread to judge
MIN_READINGS_FOR_SPREAD = 3


@dataclass(frozen=True)
class EmotionReading:
    """One image's measured emotion. ``analysis`` is sanitised model text ('' when not asked).

    ``digit_mass`` is the smaller of the two answer positions' probability on the scale digits, for
    judges that read digits (``None`` for the colour heuristic). ``unparsable`` marks a judge that
    writes its answer (a preset, :mod:`.preset_judge`) whose answer could not be read on some axis:
    that axis reads 0 and ``digit_mass`` is 0, so every low-mass flag shows it too.
    """

    valence: float
    arousal: float
    analysis: str = ""
    digit_mass: Optional[float] = None
    unparsable: bool = False

    @property
    def low_digit_mass(self) -> bool:
        return self.digit_mass is not None and self.digit_mass < LOW_DIGIT_MASS

    @property
    def point(self) -> VA:
        return VA.clamped(self.valence, self.arousal)

    def reward(self, target: VA) -> float:
        return va_reward(self.point, target)

    def distance(self, target: VA) -> float:
        return va_distance(self.point, target)


@runtime_checkable
class EmotionScorer(Protocol):
    """Anything that reads valence/arousal from a batch of images."""

    #: short human-readable name, shown in node outputs and reports
    name: str
    #: True for the colour heuristic, so outputs can say the reading is not a learned judgement
    is_heuristic: bool

    def score(self, images: ImageBatch, *, analysis: bool = False) -> list[EmotionReading]:
        """One reading per image, in order. ``analysis=True`` also fills a short explanation."""
        ...


def rewards_against(readings: Sequence[EmotionReading], target: Optional[VA]) -> list[Optional[float]]:
    """Reward of each reading against ``target`` (``None`` entries when there is no target)."""
    return [r.reward(target) if target is not None else None for r in readings]


def reading_rows(readings: Sequence[EmotionReading], target: Optional[VA] = None) -> list[dict]:
    """Plain per-image records (JSON-ready) for node outputs, the CLI and logs."""
    rows = []
    for index, reading in enumerate(readings):
        row = {"index": index, "valence": round(reading.valence, 4), "arousal": round(reading.arousal, 4)}
        if target is not None:
            row["reward"] = round(reading.reward(target), 4)
            row["distance"] = round(reading.distance(target), 4)
        if reading.digit_mass is not None:
            row["digit_mass"] = round(reading.digit_mass, 4)
            row["low_digit_mass"] = reading.low_digit_mass
        if reading.unparsable:
            row["unparsable"] = True
        if reading.analysis:
            row["analysis"] = reading.analysis
        rows.append(row)
    return rows


# --- whether a set of readings can be trusted ---------------------------------------------------------------


def _std(values: Sequence[float]) -> Optional[float]:
    if len(values) < MIN_READINGS_FOR_SPREAD:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@dataclass(frozen=True)
class ReadingTrust:
    """What a set of readings can be trusted for, with the judge that made them (shown by every output)."""

    judge: str
    heuristic: bool
    n: int
    #: share of readings whose digit mass is below LOW_DIGIT_MASS (None: the judge reads no digits)
    low_mass_share: Optional[float] = None
    mean_digit_mass: Optional[float] = None
    #: population std of the readings on [-3, 3] (None: fewer than MIN_READINGS_FOR_SPREAD readings)
    valence_std: Optional[float] = None
    arousal_std: Optional[float] = None
    warnings: tuple[str, ...] = field(default=())
    low_mass_threshold: float = LOW_DIGIT_MASS

    @property
    def near_constant(self) -> dict[str, bool]:
        return {axis: std is not None and std < NEAR_CONSTANT_STD
                for axis, std in (("valence", self.valence_std), ("arousal", self.arousal_std))}

    @property
    def low_digit_mass(self) -> bool:
        return bool(self.low_mass_share)

    @property
    def trusted(self) -> bool:
        return not self.warnings

    def as_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "heuristic": self.heuristic, "n": self.n, "trusted": self.trusted,
                "low_digit_mass": self.low_digit_mass, "low_mass_share": self.low_mass_share,
                "low_mass_threshold": self.low_mass_threshold, "mean_digit_mass": self.mean_digit_mass,
                "valence_std": self.valence_std, "arousal_std": self.arousal_std,
                "near_constant": self.near_constant, "near_constant_std": NEAR_CONSTANT_STD,
                "warnings": list(self.warnings)}


def assess_values(valence: Sequence[float], arousal: Sequence[float], digit_mass: Sequence[Optional[float]] = (),
                  *, judge: str, heuristic: bool = False, low_mass_share: Optional[float] = None,
                  low_mass_threshold: float = LOW_DIGIT_MASS) -> ReadingTrust:
    """Flag low digit mass and near-constant readings. ``digit_mass`` holds one value per reading (the smaller
    of its two answer positions; None for a judge without digits); ``low_mass_share`` may be given instead."""
    masses = [float(m) for m in digit_mass if m is not None]
    if low_mass_share is None and masses:
        low_mass_share = sum(m < low_mass_threshold for m in masses) / len(masses)
    mean_mass = sum(masses) / len(masses) if masses else None
    v_std, a_std = _std(list(valence)), _std(list(arousal))
    warnings = []
    if low_mass_share:
        mean = f"; mean digit mass {mean_mass:.3f}" if mean_mass is not None else ""
        warnings.append(
            f"{low_mass_share:.0%} of the readings rest on low digit mass (< {low_mass_threshold:g}{mean}): {judge} was "
            "barely answering the 1-9 question there, so those values are not judgements. A random or untrained model "
            "reads like this; use an instruction-tuned judge (or check its chat template and answer prefixes)."
        )
    for axis, std in (("valence", v_std), ("arousal", a_std)):
        if std is not None and std < NEAR_CONSTANT_STD:
            warnings.append(
                f"{axis} readings by {judge} are near-constant (std {std:.3f} < {NEAR_CONSTANT_STD:g} on [-3, 3]): "
                f"either the images do not differ in {axis} or the judge cannot tell them apart, so correlations, "
                "slopes, monotonicity and best-of-N choices over them rest on noise."
            )
    return ReadingTrust(judge=judge, heuristic=heuristic, n=len(list(valence)), low_mass_share=low_mass_share,
                        mean_digit_mass=mean_mass, valence_std=v_std, arousal_std=a_std, warnings=tuple(warnings),
                        low_mass_threshold=low_mass_threshold)


def assess_readings(readings: Sequence[EmotionReading], scorer: Any) -> ReadingTrust:
    """:func:`assess_values` for readings made by ``scorer`` (its ``name`` and ``is_heuristic`` are reported)."""
    return assess_values([r.valence for r in readings], [r.arousal for r in readings],
                         [r.digit_mass for r in readings], judge=getattr(scorer, "name", str(scorer)),
                         heuristic=bool(getattr(scorer, "is_heuristic", False)))


class RecordedScorer:
    """An :class:`EmotionScorer` that passes every ``score`` call on and keeps the readings, so a run (the loop)
    can report afterwards whether its readings can be trusted without the engine knowing about it."""

    def __init__(self, scorer: Any):
        self.scorer = scorer
        self.readings: list[EmotionReading] = []

    @property
    def name(self) -> str:
        return self.scorer.name

    @property
    def is_heuristic(self) -> bool:
        return bool(getattr(self.scorer, "is_heuristic", False))

    def score(self, images: ImageBatch, *, analysis: bool = False, **kwargs: Any) -> list[EmotionReading]:
        readings = self.scorer.score(images, analysis=analysis, **kwargs)
        self.readings.extend(readings)
        return readings

    def trust(self) -> ReadingTrust:
        return assess_readings(self.readings, self.scorer)

    def __getattr__(self, name: str) -> Any:  # everything else (residency, generate_text …) is the scorer's
        if name == "scorer":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.scorer, name)

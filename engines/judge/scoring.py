"""The scorer interface: images in, one valence-arousal reading per image out.

Implemented by the LVLM scorer (:mod:`.lvlm_scorer`) and the weight-free colour heuristic
(:mod:`.color_scorer`); used by the nodes, the feedback loop and the training rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, runtime_checkable

from ..emotion_space import VA, va_distance, va_reward
from ..images import ImageBatch


#: a digit-readout judge that puts less probability than this on the scale digits (at either answer
#: prefix) was not really answering: its expected value rests on little mass, so the reading is flagged
LOW_DIGIT_MASS = 0.5


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

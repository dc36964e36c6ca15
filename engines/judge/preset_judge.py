"""A judge read through a preset, as an :class:`~.scoring.EmotionScorer`; and which reading a judge gets.

:class:`GeneratedReadingJudge` wraps a loaded LVLM (:class:`~.lvlm_scorer.LVLMScorer`) so that
``score`` generates and reads answers in a preset's format (:mod:`.generated_reading`) while the
prompt refiner still gets the model's ``generate_text``. The nodes, the loop and the CLI take it
wherever they take the digit-readout scorer.

:func:`choose_reading` decides between the digit readout and a preset: ``auto`` follows the
adapter's training record (a GRPO adapter is read in the paper's format it was trained on, anything
else with the digit readout); an explicit choice that does not match how the adapter was trained
is kept but comes with a warning naming the fix (the generator's training reward refuses it instead).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Union

from ..images import ImageBatch
from ..progress import ProgressCallback
from .adapter_record import GRPO, SOFT_LABEL, adapter_generation_cap, adapter_objective
from .generated_reading import GeneratedReader, GeneratedReading, SamplingSettings
from .presets import AUTO, DIGITS, PAPER, JudgePreset, JudgePresetError, load_preset
from .scoring import EmotionReading

PRESET_FIX = ("read it with the paper preset (--judge-preset paper; reward kind = 'lvlm_reasoning'; "
              "LVLM Loader judge_preset 'paper')")
DIGITS_FIX = ("read it with the digit readout (--judge-preset digits; reward kind = 'lvlm'; "
              "LVLM Loader judge_preset 'digits')")


@dataclass(frozen=True)
class ReadingChoice:
    """The digit readout (``preset is None``) or a preset, why, and a mismatch warning if any."""

    preset: Optional[JudgePreset]
    note: str
    warning: Optional[str] = None
    max_new_tokens: int = 0  # a GRPO adapter's training cap (0: the preset's)


def choose_reading(requested: Optional[str], adapter: Optional[str] = None) -> ReadingChoice:
    """``requested``: ``auto``/empty, ``digits``, a preset name or a preset file path."""
    requested = (requested or AUTO).strip()
    objective = adapter_objective(adapter)
    cap = adapter_generation_cap(adapter)
    if requested == AUTO:
        if objective == GRPO:
            return ReadingChoice(PAPER, f"adapter {adapter} was trained with GRPO on the paper's reasoning format: "
                                        f"reading it in that format (preset 'paper', {cap or PAPER.max_new_tokens} "
                                        "new tokens at most)", max_new_tokens=cap)
        return ReadingChoice(None, "digit readout (expected value of the 1-9 answer digits)")
    if requested == DIGITS:
        warning = None
        if objective == GRPO:
            warning = (f"adapter {adapter} was trained with GRPO to write the paper's reasoning format, not on the "
                       f"digit readout, so its digit readings are untrained: {PRESET_FIX}")
        return ReadingChoice(None, "digit readout (expected value of the 1-9 answer digits)", warning)
    preset = load_preset(requested)
    warning = None
    if objective == SOFT_LABEL:
        warning = (f"adapter {adapter} was trained with soft labels on the digit readout; preset {preset.name!r} "
                   f"asks another question it was not trained on: {DIGITS_FIX}")
    elif objective == GRPO and preset.parser != PAPER.parser:
        warning = (f"adapter {adapter} was trained with GRPO on the paper's format; preset {preset.name!r} asks in "
                   f"another format: {PRESET_FIX}")
    return ReadingChoice(preset, preset.summary(), warning, max_new_tokens=cap if objective == GRPO else 0)


class GeneratedReadingJudge:
    """An LVLM whose readings come from answers it writes in ``preset``'s format (an ``EmotionScorer``)."""

    is_heuristic = False

    def __init__(self, lvlm: Any, preset: JudgePreset, settings: Optional[SamplingSettings] = None):
        if getattr(lvlm, "is_heuristic", False) or not callable(getattr(lvlm, "_chat", None)):
            raise JudgePresetError(f"judge preset {preset.name!r} needs a vision-language model that writes text; "
                                   f"{getattr(lvlm, 'name', type(lvlm).__name__)} does not (pick an LVLM folder)")
        self.lvlm = lvlm
        self.preset = preset
        self.reader = GeneratedReader(lvlm, preset, settings)
        self.name = f"{lvlm.name} [preset {preset.name}]"
        self.last_details: list[GeneratedReading] = []  # of the last ``score`` call: spreads, answers, tokens

    @property
    def settings(self) -> dict[str, Any]:
        """The generation and reading settings, for logs and reports."""
        return self.reader.settings.describe(self.preset)

    def read_details(self, images: ImageBatch, *, progress: Optional[ProgressCallback] = None) -> list[GeneratedReading]:
        return self.reader.read(images, progress=progress)

    def score(self, images: ImageBatch, *, analysis: bool = False,
              progress: Optional[ProgressCallback] = None) -> list[EmotionReading]:
        """One reading per image: the mean over parsed answers; unparsable axes read 0 and are flagged.

        ``analysis=True`` returns the first answer's text (the judge's own reasoning, sanitised).
        """
        out = []
        self.last_details = self.read_details(images, progress=progress)
        for reading in self.last_details:
            valence, arousal = reading.point
            text = reading.texts[0][:400] if analysis and reading.texts else ""
            out.append(EmotionReading(valence=valence, arousal=arousal, analysis=text, digit_mass=reading.digit_mass,
                                      unparsable=reading.unparsable))
        return out

    def generate_text(self, images: Optional[ImageBatch], instructions: Union[list[str], str], max_new_tokens: int = 128,
                      max_chars: int = 600, keep_newlines: bool = False) -> list[str]:
        """The wrapped model's free-text generation (the prompt refiner's), same signature."""
        return self.lvlm.generate_text(images, instructions, max_new_tokens=max_new_tokens, max_chars=max_chars,
                                       keep_newlines=keep_newlines)


def judge_with_reading(scorer: Any, choice: ReadingChoice, settings: Optional[SamplingSettings] = None) -> Any:
    """``scorer`` itself for the digit readout, else wrapped to read through ``choice.preset``."""
    if choice.preset is None:
        return scorer
    settings = settings or SamplingSettings()
    if not settings.max_new_tokens and choice.max_new_tokens:
        settings = replace(settings, max_new_tokens=choice.max_new_tokens)
    return GeneratedReadingJudge(scorer, choice.preset, settings)


__all__ = ["GeneratedReadingJudge", "ReadingChoice", "choose_reading", "judge_with_reading"]

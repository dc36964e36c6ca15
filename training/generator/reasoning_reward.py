"""The reasoning reward (``kind = "lvlm_reasoning"``): the judge writes its answer, the reward reads it.

The paper's pipeline: a judge trained with GRPO to reason and then answer (``train-judge --set
objective.kind=grpo``) becomes the generator's reward, read in the format it was trained on — the
same instruction and strict parser (:mod:`...engines.judge.paper_format`, preset ``paper``). Any
other preset works the same way (``preset = "eemo-logic"`` or a preset file): the engine is
:mod:`...engines.judge.generated_reading`.

Per image, each of the preset's questions is answered ``samples`` times (greedy at ``temperature = 0``,
else sampled). On each axis the reading is the mean of the parsed answers; with ``k`` of ``n`` answers
parsed, the axis's reward is ``k/n · (1 - |mean - target| / 6) + (1 - k/n) · unparsable_reward``, and
the image's reward is the mean over the two axes — with every answer parsed that is exactly
:func:`...engines.emotion_space.va_reward` of the mean reading, the digit reward's formula.

Logged per step (TensorBoard ``reward_info/<name>/…`` and the run's history): the unparsable answers
(count and rate), the readings' spread over samples (mean std per axis, ``samples > 1``), generated
tokens per image and the share of expected-value readings. Settings (preset, decoding, temperature,
max_new_tokens, samples) are printed when the reward is built and saved with the run's config.

Cost per image: one generation of up to ``max_new_tokens`` tokens per question and sample (the
default digit-by-digit expected value reuses the distributions generation computed; ``reading =
"exact_expected"`` adds ten forward rows per number); the digit reward (``kind = "lvlm"``) generates
nothing. ``docs/scoring.md`` has the measured figures.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Sequence

import torch

from ...engines.emotion_space import VA_SPAN
from ...engines.judge.generated_reading import GeneratedReading, SamplingSettings
from ...engines.judge.preset_judge import GeneratedReadingJudge, ReadingChoice, choose_reading
from ...engines.judge.presets import DIGITS, PAPER, JudgePresetError
from ..config_fields import ConfigError

_LOG = logging.getLogger("emofeedback2.rewards")


def reading_choice(spec: Any, index: int = 0) -> ReadingChoice:
    """The reading a reward spec asks for, refused (with the fix) when it does not match its adapter's training."""
    where = f"rewards[{index}]"
    if spec.kind == "lvlm":
        if spec.preset:
            raise ConfigError(f"{where}: preset = {spec.preset!r} generates and parses an answer, which the digit reward "
                              f"(kind = 'lvlm') does not do: set kind = 'lvlm_reasoning' with preset = {spec.preset!r}")
        requested = DIGITS
    else:
        requested = spec.preset or PAPER.name
        if requested == DIGITS:
            raise ConfigError(f"{where}: kind = 'lvlm_reasoning' reads a written answer; for the digit readout "
                              "use kind = 'lvlm'")
    try:
        choice = choose_reading(requested, spec.adapter or None)
    except JudgePresetError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if choice.warning:  # a generator trained on a reading its judge never learnt wastes the whole run: refuse
        raise ConfigError(f"{where}: {choice.warning}")
    return choice


def judge_loading_config(path: str, device: str = "", dtype: str = "float32", offload: bool = False,
                         quantization: str = "none", images_per_pass: int = 0, attention: str = "auto",
                         adapter: str = "", max_pixels: int = 0) -> Any:
    """The ``LVLMConfig`` a reward's judge loads with (both LVLM kinds): placement and kernels, the judge LoRA
    from ``emofeedback2 train-judge`` (``adapter``) and the pixel cap per image (fewer image tokens: less memory
    and time; 0 = the adapter's training limit, which ``load_lvlm`` applies, else the model's own)."""
    from ...engines.judge.placement import judge_config

    config = judge_config(path, device, dtype, offload, quantization, images_per_pass, attention)
    config.adapter = adapter or None
    config.max_pixels = int(max_pixels) or None
    return config


def sampling_settings(spec: Any, index: int = 0, where: str = "") -> SamplingSettings:
    """The decoding settings of a reward spec, refused (naming ``where``, default ``rewards[index]``) when invalid."""
    where = where or f"rewards[{index}]"
    settings = SamplingSettings(samples=spec.samples, temperature=float(spec.temperature),
                                max_new_tokens=spec.max_new_tokens, reading=spec.reading)
    try:
        settings.check()
    except JudgePresetError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not math.isfinite(spec.unparsable_reward) or not -10.0 <= spec.unparsable_reward <= 1.0:
        raise ConfigError(f"{where}.unparsable_reward must be in [-10, 1] (the reward of an answer that "
                          f"cannot be read; 0 = the worst a readable answer gets), got {spec.unparsable_reward!r}")
    return settings


class LVLMReasoningReward:
    """Reward from the judge's written answers (see the module docstring)."""

    name = "lvlm_reasoning"

    def __init__(self, judge: GeneratedReadingJudge, unparsable_reward: float = 0.0):
        self.judge = judge
        self.unparsable_reward = float(unparsable_reward)
        self._lock = threading.Lock()
        self._stats: dict[str, float] = {}

    @classmethod
    def from_spec(cls, spec: Any, device: str = "", index: int = 0) -> "LVLMReasoningReward":
        from ...engines.judge.lvlm_scorer import load_lvlm
        from ...engines.judge.preset_judge import judge_with_reading

        choice = reading_choice(spec, index)
        settings = sampling_settings(spec, index)
        config = judge_loading_config(spec.path, device, spec.dtype, spec.offload, spec.quantization,
                                      spec.images_per_pass, spec.attention, spec.adapter, spec.max_pixels)
        if choice.preset is not None and choice.preset.max_pixels and config.max_pixels is None:
            config.min_pixels, config.max_pixels = choice.preset.min_pixels, choice.preset.max_pixels
        judge = judge_with_reading(load_lvlm(config), choice, settings)
        reward = cls(judge, spec.unparsable_reward)
        settings_text = ", ".join(f"{k}={v}" for k, v in judge.settings.items())
        print(f"[reward {cls.name}] {judge.name}: {settings_text}; an unparsable answer scores "
              f"{reward.unparsable_reward:g}" + (f" ({choice.note})" if choice.preset is not PAPER or spec.adapter else ""))
        return reward

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], targets: torch.Tensor) -> torch.Tensor:
        readings = self.judge.read_details(images.float().cpu())
        t = targets.float().cpu()
        rewards = torch.tensor([self._image_reward(r, t[i]) for i, r in enumerate(readings)], dtype=torch.float32)
        self._record(readings)
        return rewards

    def _image_reward(self, reading: GeneratedReading, target: torch.Tensor) -> float:
        per_axis = []
        for axis, goal in zip(("valence", "arousal"), target.tolist()):
            values = reading.axis(axis)
            n, parsed = len(values.values), values.parsed
            share = len(parsed) / n if n else 0.0
            accuracy = 1.0 - abs(values.mean - goal) / VA_SPAN if parsed else 0.0
            per_axis.append(share * accuracy + (1.0 - share) * self.unparsable_reward)
        return sum(per_axis) / len(per_axis)

    def _record(self, readings: list[GeneratedReading]) -> None:
        answers = sum(len(r.texts) for r in readings)
        bad = sum(r.unparsable_answers for r in readings)
        kinds = [k for r in readings for axis in (r.valence, r.arousal) for k in axis.kinds if k is not None]
        with self._lock:
            s = self._stats
            for key, value in (("images", len(readings)), ("answers", answers), ("unparsable_answers", bad),
                               ("generated_tokens", sum(r.generated_tokens for r in readings)),
                               ("expected_readings", sum(k == "expected" for k in kinds)), ("read", len(kinds)),
                               ("valence_std", sum(r.valence.std for r in readings)),
                               ("arousal_std", sum(r.arousal.std for r in readings))):
                s[key] = s.get(key, 0.0) + float(value)
        if bad:
            _LOG.warning("reward %s: %d of %d judge answers unparsable in the format of preset %r (each scores %g)",
                         self.name, bad, answers, self.judge.preset.name, self.unparsable_reward)

    def pop_stats(self) -> dict[str, float]:
        """Diagnostics since the last call: unparsable answers, spread over samples, tokens, expected-value share."""
        with self._lock:
            s, self._stats = self._stats, {}
        images = max(s.get("images", 0.0), 1.0)
        if not s:
            return {}
        return {
            "unparsable_answers": s["unparsable_answers"],
            "unparsable_rate": s["unparsable_answers"] / max(s["answers"], 1.0),
            "valence_std": s["valence_std"] / images,
            "arousal_std": s["arousal_std"] / images,
            "generated_tokens_per_image": s["generated_tokens"] / images,
            "expected_value_rate": s["expected_readings"] / max(s["read"], 1.0),
        }


__all__ = ["LVLMReasoningReward", "judge_loading_config", "reading_choice", "sampling_settings"]

"""Reading V-A from an answer the judge writes: generate in a preset's format, parse, read, average.

One engine for every generate-then-read judge (the preset says what differs, :mod:`.presets`): the
paper's GRPO-trained judge (``paper``: reasoning, then ``<answer>V, A</answer>``), EEmo-Logic
(``eemo-logic``: one question per axis, ``<answer>Valence: 0.6523</answer>``), or a user's preset file.

Per image, every question of the preset is asked ``samples`` times in one left-padded batch
(``max_images_per_pass`` rows per pass). Decoding is greedy (``temperature = 0``: the checkpoint's own
generation config, as the released judges' scripts run it) or sampled from the full tempered
distribution (``temperature > 0``: no top-k/top-p/repetition penalty, the distribution a GRPO-trained
judge was trained on), seeded. Vision and other special tokens are suppressed in generation (an
image-pad token in an answer would corrupt a later forward pass; the same rule as GRPO sampling,
:mod:`.completion_tokens`); generation stops at the end token.

Each answer is parsed by the preset's parser (:mod:`.answer_parsing`); where the preset allows it and
the answer is a decimal number, the reading is the expected value of its digits
(:mod:`.digit_expectation`: digit by digit from the distributions generation already computed, or, on
request, exact to the second decimal with ten extra rows per number), else the parsed number.
Numbers map linearly onto [-3, 3]. An image's
reading is the mean over its parsed samples (their standard deviation is the spread); an axis with
no parsable answer is *unparsable*: its value is 0 and it is flagged, counted and (as a reward)
penalised — never a silent score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..emotion_space import VA_MAX, VA_MIN
from ..images import ImageBatch, to_pil_list
from ..progress import ProgressCallback, report
from ..text_safety import sanitize_model_text
from .answer_parsing import parse_answer
from .completion_tokens import blocked_token_ids, end_token_ids
from .digit_expectation import (
    DigitScores, NumberSite, digit_by_digit, digit_token_ids, expected_numbers, locate_site,
)
from .presets import AXES, BOTH, JudgePreset, JudgePresetError

READINGS = ("expected", "exact_expected", "parsed")
MAX_SAMPLES = 64
TEXT_CHARS = 2000  # of each answer kept for display and logs (sanitised)


@dataclass(frozen=True)
class SamplingSettings:
    """How answers are generated and read; recorded with every result (``describe``)."""

    #: answers per question and image; their mean is the reading, their std its spread (> 1 needs temperature > 0)
    samples: int = 1
    #: 0 = greedy (the checkpoint's generation config); > 0 = sample the full tempered distribution
    temperature: float = 0.0
    #: cap on generated tokens per answer; 0 = the preset's (or a GRPO adapter's training cap)
    max_new_tokens: int = 0
    #: "expected" (digit-by-digit expected value where the format allows it, else the parsed number; free),
    #: "exact_expected" (exact to the second decimal: ten extra rows per number) or "parsed" (the number as written)
    reading: str = "expected"
    #: base seed of sampled decoding (each call adds its call count)
    seed: int = 0

    def check(self) -> None:
        if not (isinstance(self.samples, int) and 1 <= self.samples <= MAX_SAMPLES):
            raise JudgePresetError(f"samples must be a whole number in [1, {MAX_SAMPLES}], got {self.samples!r}")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 10.0):
            raise JudgePresetError(f"temperature must be in [0, 10] (0 = greedy), got {self.temperature!r}")
        if self.samples > 1 and self.temperature == 0:
            raise JudgePresetError(f"samples = {self.samples} with greedy decoding gives {self.samples} identical "
                                   "answers: set temperature > 0 (e.g. 1.0) or samples = 1")
        if not (isinstance(self.max_new_tokens, int) and 0 <= self.max_new_tokens <= 8192):
            raise JudgePresetError(f"max_new_tokens must be in [0, 8192] (0 = the preset's), got {self.max_new_tokens!r}")
        if self.reading not in READINGS:
            raise JudgePresetError(f"reading must be one of {list(READINGS)}, got {self.reading!r}")

    def new_tokens(self, preset: JudgePreset) -> int:
        return self.max_new_tokens or preset.max_new_tokens

    def describe(self, preset: JudgePreset) -> dict[str, Any]:
        return {"preset": preset.name, "decoding": "sampled" if self.temperature > 0 else "greedy",
                "temperature": self.temperature, "samples": self.samples,
                "max_new_tokens": self.new_tokens(preset), "reading": self.reading,
                "expected_value_allowed": preset.expected_value, "seed": self.seed}


@dataclass
class AxisReading:
    """One axis of one image: per sample the value on [-3, 3] (``None``: unparsable) and how it was read."""

    values: list[Optional[float]] = field(default_factory=list)
    kinds: list[Optional[str]] = field(default_factory=list)  # "expected", "parsed" or None
    masses: list[Optional[float]] = field(default_factory=list)

    @property
    def parsed(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def mean(self) -> Optional[float]:
        values = self.parsed
        return sum(values) / len(values) if values else None

    @property
    def std(self) -> float:
        values = self.parsed
        if len(values) < 2:
            return 0.0
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@dataclass
class GeneratedReading:
    """One image's reading: both axes over all samples, the answers and the tokens generated."""

    valence: AxisReading = field(default_factory=AxisReading)
    arousal: AxisReading = field(default_factory=AxisReading)
    texts: list[str] = field(default_factory=list)
    generated_tokens: int = 0
    unparsable_answers: int = 0  # answers (texts) the preset's parser could not read

    def axis(self, name: str) -> AxisReading:
        return self.valence if name == "valence" else self.arousal

    @property
    def unparsable(self) -> bool:
        """An axis without any parsable answer (its value is then 0, flagged)."""
        return self.valence.mean is None or self.arousal.mean is None

    @property
    def point(self) -> tuple[float, float]:
        return (self.valence.mean if self.valence.mean is not None else 0.0,
                self.arousal.mean if self.arousal.mean is not None else 0.0)

    @property
    def digit_mass(self) -> Optional[float]:
        """Smallest digit mass over the expected-value readings; 0 when unparsable; None when only parsed."""
        if self.unparsable:
            return 0.0
        masses = [m for axis in (self.valence, self.arousal) for m in axis.masses if m is not None]
        return min(masses) if masses else None


class GeneratedReader:
    """Generate answers in ``preset``'s format for a batch of images and read V-A from them."""

    def __init__(self, lvlm: Any, preset: JudgePreset, settings: Optional[SamplingSettings] = None):
        self.lvlm = lvlm
        self.preset = preset
        self.settings = settings or SamplingSettings()
        self.settings.check()
        self.end_ids = end_token_ids(lvlm.model, lvlm.tokenizer)
        self.suppress = blocked_token_ids(lvlm.model, lvlm.tokenizer)
        use_digits = self.settings.reading != "parsed" and preset.expected_value
        self.digit_ids = digit_token_ids(lvlm.tokenizer) if use_digits else None
        self.extra_processors: list[Any] = []  # run after the digit recorder (tests force scripted answers here)
        self.calls = 0

    def read(self, images: ImageBatch, *, progress: Optional[ProgressCallback] = None) -> list[GeneratedReading]:
        pil = to_pil_list(images)
        s = self.settings
        rows = [(i, q) for i in range(len(pil)) for q in self.preset.question_keys for _ in range(s.samples)]
        prompts = {q: self.lvlm._chat(self.preset.questions[q]) for q in self.preset.question_keys}
        readings = [GeneratedReading() for _ in pil]
        size = self.lvlm.config.max_images_per_pass or len(rows)
        chunks = [rows[start:start + size] for start in range(0, len(rows), size)]
        report(progress, 0, len(chunks))
        seed = s.seed + self.calls
        self.calls += 1
        devices = [self.lvlm.device] if self.lvlm.device.type == "cuda" else []
        # sampled answers are seeded (seed + call count) without touching the caller's random stream; greedy
        # decoding draws nothing, so it forks nothing (a reward on a worker thread stays out of the way)
        with self.lvlm._on_device(), torch.random.fork_rng(devices=devices, enabled=s.temperature > 0):
            torch.manual_seed(seed)
            for done, chunk in enumerate(chunks, 1):
                self._read_chunk(chunk, prompts, pil, readings)
                report(progress, done, len(chunks))
        return readings

    def _generate(self, texts: list[str], images: list[Any]) -> tuple[torch.Tensor, Optional[DigitScores]]:
        """Completion ids ``[rows, T]`` and, when digits are read, the digit scores of every step."""
        from transformers import LogitsProcessorList

        s = self.settings
        encoded = self.lvlm._encode(texts, images)
        sampling: dict[str, Any] = {"do_sample": False}
        if s.temperature > 0:  # the full tempered distribution, whatever the checkpoint's defaults say
            sampling = {"do_sample": True, "temperature": s.temperature, "top_k": 0, "top_p": 1.0, "min_p": None,
                        "typical_p": 1.0, "repetition_penalty": 1.0}
        recorder = DigitScores(self.digit_ids) if self.digit_ids is not None else None
        processors = LogitsProcessorList(([recorder] if recorder else []) + self.extra_processors)
        generated = self.lvlm.model.generate(
            **encoded, max_new_tokens=s.new_tokens(self.preset), num_beams=1, suppress_tokens=self.suppress or None,
            pad_token_id=self.lvlm.tokenizer.pad_token_id, logits_processor=processors, **sampling)
        return generated[:, encoded["input_ids"].shape[1]:].cpu(), recorder

    def _read_chunk(self, chunk: list[tuple[int, str]], prompts: dict[str, str], pil: list[Any],
                    readings: list[GeneratedReading]) -> None:
        tokenizer = self.lvlm.tokenizer
        completions, recorder = self._generate([prompts[q] for _, q in chunk], [pil[i] for i, _ in chunk])
        digits = recorder.digits() if recorder is not None else None
        norms = recorder.log_norm() if recorder is not None else None
        sites, targets = [], []
        for r, ((image, question), row) in enumerate(zip(chunk, completions.tolist())):
            ended = [k for k, token in enumerate(row) if token in self.end_ids]
            kept = row[:ended[0]] if ended else row
            text = tokenizer.decode(kept, skip_special_tokens=True)
            reading = readings[image]
            reading.generated_tokens += len(kept) + (1 if ended else 0)
            reading.texts.append(sanitize_model_text(text, max_chars=TEXT_CHARS, keep_newlines=True))
            answer = parse_answer(self.preset, question, text)
            reading.unparsable_answers += answer is None
            for axis in (AXES if question == BOTH else (question,)):
                number = answer.numbers[axis] if answer is not None else None
                target = reading.axis(axis)
                target.values.append(None if number is None else self._to_va(number.value))
                target.kinds.append(None if number is None else "parsed")
                target.masses.append(None)
                if number is None or self.digit_ids is None:
                    continue
                token = locate_site(tokenizer, kept, text, number, self.digit_ids)
                if token is None:
                    continue
                if self.settings.reading == "expected":
                    self._store(target, len(target.values) - 1, digit_by_digit(number, token, digits[r], norms[r]))
                else:
                    sites.append(NumberSite(prompts[question], pil[image], kept, token, number))
                    targets.append((target, len(target.values) - 1))
        size = self.lvlm.config.max_images_per_pass or len(sites)
        for start in range(0, len(sites), max(1, size)):  # ten rows per number: keep a pass's rows bounded
            batch = sites[start:start + max(1, size)]
            for (target, k), expected in zip(targets[start:start + len(batch)],
                                             expected_numbers(self.lvlm, batch, self.digit_ids)):
                self._store(target, k, expected)

    def _store(self, target: AxisReading, k: int, expected: Any) -> None:
        low, high = self.preset.scale
        target.values[k] = self._to_va(min(max(expected.value, low), high))
        target.kinds[k] = "expected"
        target.masses[k] = expected.digit_mass

    def _to_va(self, value: float) -> float:
        return min(VA_MAX, max(VA_MIN, self.preset.to_va(value)))


__all__ = ["AxisReading", "GeneratedReader", "GeneratedReading", "READINGS", "SamplingSettings"]

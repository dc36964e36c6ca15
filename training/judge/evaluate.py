"""Evaluate a judge on a labelled manifest: per-axis MAE, PLCC, SRCC, accuracy within ε, beside the
MAE of a constant predictor (the training set's mean); scatter plots; share of low digit-mass readings and,
for a judge read through a preset (it writes its answer), the share of unparsable answers.

A judge that does not beat the constant predictor has learnt nothing about the images, whatever its
MAE looks like on its own; PLCC/SRCC say whether it orders images right. Readings come from the
scorer's normal path (:meth:`LVLMScorer.score_details` for the digit readout, ``score`` for a preset
judge, e.g. a GRPO adapter read in the paper's format), so this measures what the loop and the rewards
get. An unparsable answer reads 0 on its axis and counts in the metrics as such (never dropped).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ...engines.emotion_space import VA_MAX, VA_MIN
from .data import JudgeSample, load_images
from ...engines.judge.scoring import LOW_DIGIT_MASS

AXES = ("valence", "arousal")
DEFAULT_EPS = 0.5
DEFAULT_LOW_MASS = LOW_DIGIT_MASS  # one threshold for eval-judge, the score CLI and the nodes


def pearson(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Pearson correlation; None when either side is constant (undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) < 2 or a.std() < 1e-12 or b.std() < 1e-12:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman needs)."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values), dtype=np.float64)
    sorted_vals = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end - 1) / 2.0
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    return pearson(_ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64)))


@dataclass
class AxisMetrics:
    mae: float
    plcc: Optional[float]
    srcc: Optional[float]
    acc_within_eps: float
    mae_constant: float
    constant: float
    low_mass_share: float

    @property
    def beats_constant(self) -> bool:
        return self.mae < self.mae_constant


@dataclass
class JudgeEvaluation:
    n: int
    eps: float
    valence: AxisMetrics
    arousal: AxisMetrics
    low_mass_share: float
    low_mass_threshold: float
    constant_source: str
    predictions: dict = field(default_factory=dict, repr=False)  # axis -> (pred list, true list)
    unparsable_share: float = 0.0  # preset judges: images whose answer could not be read on some axis
    reading: Optional[dict] = None  # preset judges: preset and generation settings

    def to_dict(self) -> dict:
        return {"n": self.n, "eps": self.eps, "valence": asdict(self.valence), "arousal": asdict(self.arousal),
                "low_mass_share": self.low_mass_share, "low_mass_threshold": self.low_mass_threshold,
                "constant_source": self.constant_source, "unparsable_share": self.unparsable_share,
                "reading": self.reading}

    def mean(self, name: str) -> Optional[float]:
        values = [getattr(getattr(self, axis), name) for axis in AXES]
        return None if any(v is None for v in values) else float(sum(values) / len(values))


def axis_metrics(pred: Sequence[float], true: Sequence[float], constant: float, eps: float,
                 mass: Sequence[float], low_mass: float) -> AxisMetrics:
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    err = np.abs(p - t)
    return AxisMetrics(
        mae=float(err.mean()),
        plcc=pearson(p, t),
        srcc=spearman(p, t),
        acc_within_eps=float((err <= eps).mean()),
        mae_constant=float(np.abs(constant - t).mean()),
        constant=float(constant),
        low_mass_share=float((np.asarray(mass) < low_mass).mean()),
    )


def evaluate_judge(scorer: Any, samples: Sequence[JudgeSample], *, constant: tuple[float, float],
                   constant_source: str = "training set mean", eps: float = DEFAULT_EPS,
                   low_mass: float = DEFAULT_LOW_MASS, batch_size: int = 16, progress: bool = False) -> JudgeEvaluation:
    """Score ``samples`` with ``scorer`` (an :class:`LVLMScorer`) and compute the metrics."""
    if not samples:
        raise ValueError("no images to evaluate on")
    pred = {axis: [] for axis in AXES}
    mass = {axis: [] for axis in AXES}
    unparsable = 0
    chunks = range(0, len(samples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="eval-judge")
    digits = callable(getattr(scorer, "score_details", None))
    for start in chunks:
        images = load_images(samples[start:start + batch_size])
        if digits:
            details = scorer.score_details(images)
            pred["valence"] += details.valence.float().cpu().tolist()
            pred["arousal"] += details.arousal.float().cpu().tolist()
            mass["valence"] += details.digit_mass_valence.float().cpu().tolist()
            mass["arousal"] += details.digit_mass_arousal.float().cpu().tolist()
            continue
        for reading in scorer.score(images):  # a preset judge: digit mass of its expected-value readings (nan: none)
            pred["valence"].append(reading.valence)
            pred["arousal"].append(reading.arousal)
            for axis in AXES:
                mass[axis].append(math.nan if reading.digit_mass is None else reading.digit_mass)
            unparsable += bool(getattr(reading, "unparsable", False))
    true = {"valence": [s.valence for s in samples], "arousal": [s.arousal for s in samples]}
    per_axis = {axis: axis_metrics(pred[axis], true[axis], constant[i], eps, mass[axis], low_mass)
                for i, axis in enumerate(AXES)}
    all_mass = np.asarray(mass["valence"] + mass["arousal"])
    return JudgeEvaluation(n=len(samples), eps=eps, valence=per_axis["valence"], arousal=per_axis["arousal"],
                           low_mass_share=float((all_mass < low_mass).mean()), low_mass_threshold=low_mass,
                           constant_source=constant_source,
                           predictions={axis: (pred[axis], true[axis]) for axis in AXES},
                           unparsable_share=unparsable / len(samples),
                           reading=dict(getattr(scorer, "settings", None) or {}) or None)


# --- scatter plots --------------------------------------------------------------------------------


def scatter_plot(pred: Sequence[float], true: Sequence[float], axis: str, metrics: Optional[AxisMetrics] = None,
                 size: int = 480, title: str = ""):
    """Predicted-vs-true scatter on [-3, 3]² with the identity line and the constant predictor (PIL only)."""
    from PIL import Image, ImageDraw

    from ...engines.loop.trajectory_plot import ROUND_COLOURS, _font

    scale = size / 480.0
    font, small = _font(max(10, int(14 * scale))), _font(max(9, int(12 * scale)))
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    left, right = int(60 * scale), size - int(20 * scale)
    top, bottom = int(40 * scale), size - int(60 * scale)

    def xy(t: float, p: float) -> tuple[float, float]:
        t, p = min(VA_MAX, max(VA_MIN, t)), min(VA_MAX, max(VA_MIN, p))
        return (left + (t - VA_MIN) / (VA_MAX - VA_MIN) * (right - left),
                bottom - (p - VA_MIN) / (VA_MAX - VA_MIN) * (bottom - top))

    for tick in range(int(VA_MIN), int(VA_MAX) + 1):
        x, _ = xy(tick, 0)
        _, y = xy(0, tick)
        colour = (150, 150, 150) if tick == 0 else (228, 228, 228)
        draw.line([(x, top), (x, bottom)], fill=colour)
        draw.line([(left, y), (right, y)], fill=colour)
        label = f"{tick:+d}" if tick else "0"
        draw.text((x, bottom + 6 * scale), label, fill="black", font=small, anchor="mt")
        draw.text((left - 6 * scale, y), label, fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.line([xy(VA_MIN, VA_MIN), xy(VA_MAX, VA_MAX)], fill=(120, 120, 120), width=max(1, int(scale)))
    if metrics is not None:
        draw.line([xy(VA_MIN, metrics.constant), xy(VA_MAX, metrics.constant)], fill=(213, 94, 0), width=max(1, int(scale)))
    colour = ROUND_COLOURS[0]
    radius = 3.5 * scale
    for p, t in zip(pred, true):
        x, y = xy(t, p)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline="white")
    draw.text(((left + right) / 2, bottom + 26 * scale), f"true {axis}", fill="black", font=font, anchor="mt")
    draw.text((left + 4 * scale, top + 4 * scale), f"predicted {axis}", fill="black", font=small, anchor="la")
    if metrics is not None and not title:
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        title = (f"{axis}: MAE {metrics.mae:.2f} (constant {metrics.mae_constant:.2f}) "
                 f"PLCC {fmt(metrics.plcc)} SRCC {fmt(metrics.srcc)}")
    if title:
        draw.text(((left + right) / 2, top / 2), title, fill="black", font=small, anchor="mm")
    return image


def write_scatter_plots(evaluation: JudgeEvaluation, out_dir: str | Path, prefix: str = "judge") -> list[Path]:
    """One ``<prefix>_<axis>_scatter.png`` per axis in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis in AXES:
        pred, true = evaluation.predictions[axis]
        path = out / f"{prefix}_{axis}_scatter.png"
        scatter_plot(pred, true, axis, getattr(evaluation, axis)).save(path)
        paths.append(path)
    return paths


def finite_or_none(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else value

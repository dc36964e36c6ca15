"""The emotion-following metrics, as pure functions of ``images.csv`` rows.

For one axis (valence or arousal) with targets ``t_i`` and readings ``m_i`` over N images:

* ``error``          = mean_i |m_i − t_i|                       (the papers' V-Error / A-Error)
* ``error_constant`` = mean_i |t_i − mean_j m_j|                 (what a generator that ignores the
  target and always lands on the run's mean reading scores on the same targets)
* ``error_ratio``    = error / error_constant                     (< 1: better than ignoring the
  target; a target-blind generator scores ≥ 1 in expectation, by Jensen's inequality)
* ``pearson``        = cov(t, m) / (sd(t) · sd(m))
* ``spearman``       = Pearson of the ranks (ties get their average rank)
* ``slope``          = cov(t, m) / var(t), least squares of m on t (1 = the asked change arrives in
  full, 0 = none of it)
* ``monotonicity``   = over every grid line (same prompt, seed and other-axis target, cells sorted by
  this axis' target), the share of neighbouring steps whose reading strictly rises with the target.

A metric that is undefined on the data (no spread, no grid line) is ``None``, and the reason is kept.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .records import ImageRecord

AXES = ("valence", "arousal")


@dataclass
class Values:
    """Metric values plus, for each ``None``, the reason it could not be computed."""

    values: dict[str, Optional[float]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Optional[float], reason: str = "") -> None:
        self.values[key] = None if value is None else value if isinstance(value, int) else float(value)
        if value is None:
            self.reasons[key] = reason or "not computed"

    def update(self, other: "Values") -> None:
        self.values.update(other.values)
        self.reasons.update(other.reasons)


def mean_abs_error(measured: Sequence[float], target: Sequence[float]) -> float:
    return float(np.mean(np.abs(np.asarray(measured, float) - np.asarray(target, float))))


def constant_baseline(measured: Sequence[float], target: Sequence[float]) -> float:
    """Error of a generator whose every reading is the mean reading: mean |t − mean(m)|."""
    return float(np.mean(np.abs(np.asarray(target, float) - float(np.mean(np.asarray(measured, float))))))


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[Optional[float], str]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return None, "fewer than two images"
    # spread tested on the values themselves: x − mean(x) of equal values can be 1e-16, not 0
    if float(np.ptp(x)) == 0.0:
        return None, "the targets do not vary"
    if float(np.ptp(y)) == 0.0:
        return None, "the readings do not vary (every image read the same)"
    dx, dy = x - x.mean(), y - y.mean()
    sx, sy = float(np.sqrt((dx * dx).sum())), float(np.sqrt((dy * dy).sum()))
    return float((dx * dy).sum() / (sx * sy)), ""


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..N, ties sharing their average rank (the convention of Spearman's rho)."""
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), float)
    sorted_x = x[order]
    start = 0
    while start < len(x):
        stop = start
        while stop + 1 < len(x) and sorted_x[stop + 1] == sorted_x[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[Optional[float], str]:
    if len(x) < 2:
        return None, "fewer than two images"
    return pearson(average_ranks(x), average_ranks(y))


def slope(target: Sequence[float], measured: Sequence[float]) -> tuple[Optional[float], str]:
    t, m = np.asarray(target, float), np.asarray(measured, float)
    if len(t) < 2 or float(np.ptp(t)) == 0.0:
        return None, "the targets do not vary"
    dt = t - t.mean()
    return float((dt * (m - m.mean())).sum() / (dt * dt).sum()), ""


def grid_lines(records: Sequence[ImageRecord], axis: str) -> dict[tuple, list[ImageRecord]]:
    """Lines along ``axis``: cells of one prompt and seed sharing the other axis' target, sorted by
    this axis' target. Key: (prompt_index, seed, other-axis target)."""
    other = "target_arousal" if axis == "valence" else "target_valence"
    own = f"target_{axis}"
    lines: dict[tuple, list[ImageRecord]] = defaultdict(list)
    for record in records:
        lines[(record.prompt_index, record.seed, getattr(record, other))].append(record)
    return {key: sorted(cells, key=lambda r: getattr(r, own)) for key, cells in sorted(lines.items()) if len(cells) >= 2}


def neighbour_pairs(records: Sequence[ImageRecord], axis: str) -> list[tuple[ImageRecord, ImageRecord]]:
    """Neighbouring cells along every grid line of ``axis`` (lower target first)."""
    return [(a, b) for cells in grid_lines(records, axis).values() for a, b in zip(cells, cells[1:])]


def monotonicity(records: Sequence[ImageRecord], axis: str) -> tuple[Optional[float], list[dict], str]:
    """Share of neighbouring steps along ``axis`` whose reading strictly rises, and each line's share."""
    lines = grid_lines(records, axis)
    if not lines:
        return None, [], f"no two cells share a prompt, seed and {'arousal' if axis == 'valence' else 'valence'} target"
    rises = steps = 0
    per_line = []
    other = "arousal" if axis == "valence" else "valence"
    for (prompt_index, seed, fixed), cells in lines.items():
        up = sum(1 for a, b in zip(cells, cells[1:]) if getattr(b, axis) > getattr(a, axis))
        rises += up
        steps += len(cells) - 1
        per_line.append({"prompt_index": prompt_index, "seed": seed, f"target_{other}": fixed,
                         "steps": len(cells) - 1, "rising": up, "share": up / (len(cells) - 1)})
    return rises / steps, per_line, ""


def emotion_metrics(records: Sequence[ImageRecord]) -> tuple[Values, dict[str, list[dict]]]:
    """Every emotion metric over ``records`` (see the module docstring) and the per-line details."""
    out = Values()
    lines: dict[str, list[dict]] = {}
    out.set("n_images", len(records))
    if not records:
        for axis in AXES:
            for name in ("error", "error_constant", "error_ratio", "pearson", "spearman", "slope", "monotonicity"):
                out.set(f"{axis}_{name}", None, "no images")
        return out, lines
    for axis in AXES:
        target = [getattr(r, f"target_{axis}") for r in records]
        measured = [getattr(r, axis) for r in records]
        error, constant = mean_abs_error(measured, target), constant_baseline(measured, target)
        out.set(f"{axis}_error", error)
        out.set(f"{axis}_error_constant", constant)
        out.set(f"{axis}_error_ratio", error / constant if constant > 0 else None,
                "the constant baseline is 0 (a single target equal to the mean reading)")
        out.set(f"{axis}_mean_measured", float(np.mean(measured)))
        out.set(f"{axis}_sd_measured", float(np.std(measured)))
        for name, fn in (("pearson", pearson), ("spearman", spearman)):
            value, reason = fn(target, measured)
            out.set(f"{axis}_{name}", value, reason)
        value, reason = slope(target, measured)
        out.set(f"{axis}_slope", value, reason)
        value, per_line, reason = monotonicity(records, axis)
        out.set(f"{axis}_monotonicity", value, reason)
        lines[axis] = per_line
        masses = [getattr(r, f"digit_mass_{axis}") for r in records]
        if all(m is not None for m in masses):
            out.set(f"{axis}_digit_mass", float(np.mean(masses)))
        else:
            out.set(f"{axis}_digit_mass", None, "the judge reports no digit mass (not an LVLM digit readout)")
    return out, lines

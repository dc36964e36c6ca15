"""Training data: prompts and target valence-arousal points, sampled per step from (seed, step).

Deriving every draw from ``(seed, step)`` (not from a running RNG) makes a resumed run draw exactly
what the uninterrupted run would have drawn. Targets are uniform over [-3, 3]² or rows of a
CSV/JSONL file (``valence,arousal[,prompt]``; a row's prompt, when given, replaces the drawn one).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..engines.emotion_space import VA, VA_MAX, VA_MIN, EmotionValueError

DEFAULT_PROMPTS = Path(__file__).with_name("data") / "neutral_prompts.txt"


def load_prompts(path: str | Path = "") -> list[str]:
    path = Path(path) if path else DEFAULT_PROMPTS
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found; set data.prompts_file to a text file, one prompt per line")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompts (empty lines and '#' comments are skipped)")
    return prompts


def load_targets(path: str | Path) -> list[tuple[VA, Optional[str]]]:
    """Rows of (VA, optional prompt) from CSV (header with valence, arousal[, prompt]) or JSONL."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"targets file {path} not found; set data.targets to 'uniform' or a CSV/JSONL file")
    rows: list[dict] = []
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    out = []
    for i, row in enumerate(rows):
        try:
            point = VA(float(row["valence"]), float(row["arousal"]))
        except (KeyError, TypeError, ValueError, EmotionValueError) as exc:
            raise ValueError(f"{path.name} row {i + 1}: need valence and arousal in [-3, 3] ({exc})") from exc
        prompt = (row.get("prompt") or "").strip() or None
        out.append((point, prompt))
    if not out:
        raise ValueError(f"targets file {path} has no rows")
    return out


def quadrant(valence: float, arousal: float) -> str:
    """Region label for logging: the sign quadrant of (V, A), e.g. 'V+A-'."""
    return ("V+" if valence >= 0 else "V-") + ("A+" if arousal >= 0 else "A-")


@dataclass
class StepBatch:
    """One process's share of a step: ``groups`` (prompt, target) pairs, each repeated ``group_size`` times."""

    prompts: list[str]
    targets: np.ndarray  # [N, 2]
    group_ids: np.ndarray  # [N], globally unique across processes
    seeds: list[int]  # [N], distinct per sample


class PromptTargetSampler:
    """Draws each step's groups; a group's members share prompt and target but not the seed."""

    def __init__(self, prompts: Sequence[str], targets: str | Path = "uniform", seed: int = 0):
        self.prompts = list(prompts)
        self.table = None if str(targets) == "uniform" else load_targets(targets)
        self.seed = int(seed)

    def sample(self, step: int, groups: int, group_size: int, rank: int = 0, num_processes: int = 1) -> StepBatch:
        rng = np.random.default_rng([self.seed, step])
        total = groups * num_processes
        prompt_idx = rng.integers(0, len(self.prompts), size=total)
        if self.table is None:
            va = rng.uniform(VA_MIN, VA_MAX, size=(total, 2))
            row_prompts: list[Optional[str]] = [None] * total
        else:
            rows = rng.integers(0, len(self.table), size=total)
            va = np.array([self.table[r][0].as_tuple() for r in rows])
            row_prompts = [self.table[r][1] for r in rows]
        mine = range(rank * groups, (rank + 1) * groups)
        prompts, targets, gids, seeds = [], [], [], []
        base = (self.seed * 1_000_003 + step * 7_919) * total * group_size
        for g in mine:
            prompt = row_prompts[g] or self.prompts[prompt_idx[g]]
            for k in range(group_size):
                prompts.append(prompt)
                targets.append(va[g])
                gids.append(g)
                seeds.append(int((base + g * group_size + k) % (2**63 - 1)))
        return StepBatch(prompts, np.asarray(targets, dtype=np.float32), np.asarray(gids), seeds)

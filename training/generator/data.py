"""Training data: prompts and target valence-arousal points, sampled per step from (seed, step).

Deriving every draw from ``(seed, step)`` (not from a running RNG) makes a resumed run draw exactly
what the uninterrupted run would have drawn. Targets are uniform over [-3, 3]² or rows of a
CSV/JSONL file (``valence,arousal[,prompt]``; a row's prompt, when given, replaces the drawn one).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ...engines.emotion_space import VA, VA_MAX, VA_MIN
from ...engines.errors import UserError

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "neutral_prompts.txt"
JSON_SUFFIXES = (".jsonl", ".json")
MAX_PROMPT_CHARS = 2000


class DataError(UserError, ValueError):
    """A prompts or targets file is missing, not UTF-8, or holds a row that cannot be used."""


def _read_text(path: Path, what: str, setting: str) -> str:
    if not path.is_file():
        hint = "a folder" if path.is_dir() else "not found"
        raise DataError(f"{what} file {path} is {hint}; set {setting} to an existing file")
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: a BOM from Excel/Notepad is not part of the text
    except UnicodeDecodeError as exc:
        raise DataError(f"{what} file {path} ({setting}) is not UTF-8 text (bad byte at offset {exc.start}); "
                        "re-save it as UTF-8") from exc


def load_prompts(path: str | Path = "", setting: str = "data.prompts_file") -> list[str]:
    """One prompt a line (``#`` comments); ``setting`` names the config field in messages."""
    path = Path(path) if str(path).strip() else DEFAULT_PROMPTS
    if path.suffix.lower() in (".json", ".jsonl", ".csv", ".tsv", ".toml", ".yaml", ".yml"):
        # read as text, a JSON list or a CSV row would silently become a "prompt" of brackets and quotes
        raise DataError(f"{setting} = {str(path)!r} looks like structured data ({path.suffix}); prompts files are "
                        "plain text, one prompt a line (e.g. prompts.txt)")
    text = _read_text(path, "prompts", setting)
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise DataError(f"prompts file {path} holds no prompts (empty lines and '#' comments are skipped)")
    for i, prompt in enumerate(prompts):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise DataError(f"prompts file {path}: prompt {i + 1} has {len(prompt)} characters; "
                            f"keep prompts under {MAX_PROMPT_CHARS}")
    return prompts


def _json_rows(path: Path, text: str) -> list:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
        if isinstance(data, dict) and isinstance(data.get("targets"), list):
            data = data["targets"]
        if not isinstance(data, list):
            raise DataError(f"{path.name} must hold a list of {{\"valence\": v, \"arousal\": a}} objects")
        return data
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name} line {n} is not a JSON object: {exc.msg}") from exc
    return rows


def _csv_rows(text: str) -> list:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames:  # " Valence " and "valence" are the same column
        reader.fieldnames = [(name or "").strip().lower() for name in reader.fieldnames]
    return list(reader)


def load_targets(path: str | Path) -> list[tuple[VA, Optional[str]]]:
    """Rows of (VA, optional prompt) from CSV (header with valence, arousal[, prompt]), JSONL or JSON."""
    path = Path(path)
    text = _read_text(path, "targets", "data.targets ('uniform' or a CSV/JSONL/JSON file)")
    rows = _json_rows(path, text) if path.suffix.lower() in JSON_SUFFIXES else _csv_rows(text)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path.name} row {i + 1}: need an object with valence and arousal, got {row!r:.60}")
        row = {str(k).strip().lower(): v for k, v in row.items()}
        try:
            point = VA(_value(row["valence"]), _value(row["arousal"]))
        except (KeyError, TypeError, ValueError) as exc:
            detail = f"missing column {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DataError(f"{path.name} row {i + 1}: need valence and arousal in [-3, 3] ({detail}); "
                            "convert other scales with `emofeedback2 convert-scale`") from exc
        prompt = row.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise DataError(f"{path.name} row {i + 1}: prompt must be text, got {prompt!r:.60}")
        prompt = (prompt or "").strip() or None
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise DataError(f"{path.name} row {i + 1}: prompt longer than {MAX_PROMPT_CHARS} characters")
        out.append((point, prompt))
    if not out:
        raise DataError(f"targets file {path} has no rows")
    return out


def _value(raw) -> float:
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"got {raw!r}")
    return float(raw.strip() if isinstance(raw, str) else raw)


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

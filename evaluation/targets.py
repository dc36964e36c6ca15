"""What an evaluation asks for: the V-A targets (an evenly spaced grid or a file) and the prompts."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from ..engines.emotion_space import VA, VA_MAX, VA_MIN, EmotionValueError
from ..engines.errors import UserError

MAX_GRID = 9


class EvalInputError(UserError, ValueError):
    """A prompts or targets file is missing, empty or malformed; the message names the file and line."""


def grid_values(n: int) -> list[float]:
    """``n`` evenly spaced values over [-3, 3] (``n=5`` → -3, -1.5, 0, 1.5, 3)."""
    if not 2 <= n <= MAX_GRID:
        raise EvalInputError(f"--grid must be in 2..{MAX_GRID} (values per axis), got {n}")
    return [round(float(x), 6) for x in np.linspace(VA_MIN, VA_MAX, n)]


def grid_targets(n: int) -> list[VA]:
    """The ``n × n`` grid, valence fastest: (V0, A0), (V1, A0), … — every pair once."""
    values = grid_values(n)
    return [VA(v, a) for a in values for v in values]


def read_targets(path: str | Path) -> list[VA]:
    """Targets from a file: one ``valence, arousal`` pair per line (comma, tab or spaces); ``#``
    comments, blank lines and one header line (e.g. ``valence,arousal``) are skipped."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"--targets file not found: {path}")
    targets: list[VA] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = [p for p in text.replace(",", " ").replace("\t", " ").split() if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            if not targets and number <= 2:  # a header line
                continue
            raise EvalInputError(f"{path}:{number}: {line.strip()!r} is not 'valence, arousal'") from None
        if len(values) != 2:
            raise EvalInputError(f"{path}:{number}: expected two numbers 'valence, arousal', got {len(values)}")
        try:
            targets.append(VA(*values))
        except EmotionValueError as exc:
            raise EvalInputError(f"{path}:{number}: {exc}") from None
    if not targets:
        raise EvalInputError(f"{path} holds no targets: write one 'valence, arousal' pair per line")
    if len(set(targets)) != len(targets):
        raise EvalInputError(f"{path} lists a target twice; list each V-A pair once (use --seeds for repeats)")
    return targets


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file, one per line; blank lines and lines starting with ``#`` are skipped.
    A ``.csv`` file uses its ``prompt`` column (or its first column)."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"--prompts file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        column = 0
        if rows and "prompt" in [c.strip().lower() for c in rows[0]]:
            column = [c.strip().lower() for c in rows[0]].index("prompt")
            rows = rows[1:]
        prompts = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    else:
        prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EvalInputError(f"{path} holds no prompts: write one prompt per line")
    if len(set(prompts)) != len(prompts):
        raise EvalInputError(f"{path} repeats a prompt; list each prompt once (use --seeds for repeats)")
    return prompts

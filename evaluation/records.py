"""``OUT/images.csv``: one row per generated image, appended (and flushed) as each image is made.

The file is the evaluation's source of truth: metrics are computed from it alone, a checker can
recompute them from it, and a killed run resumes from it. Floats are written with ``repr`` so they
read back bit for bit; an empty digit-mass cell means the judge has none (the colour heuristic).
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Optional

COLUMNS = ("file", "prompt_index", "prompt", "seed", "target_index", "target_valence", "target_arousal",
           "valence", "arousal", "digit_mass_valence", "digit_mass_arousal")


@dataclass(frozen=True)
class ImageRecord:
    """One evaluated image: where it is (relative to OUT), what was asked, what the judge read."""

    file: str
    prompt_index: int
    prompt: str
    seed: int
    target_index: int
    target_valence: float
    target_arousal: float
    valence: float
    arousal: float
    digit_mass_valence: Optional[float] = None
    digit_mass_arousal: Optional[float] = None

    @property
    def key(self) -> tuple[int, int, int]:
        """(prompt, seed, target) — what identifies a cell of the evaluation."""
        return (self.prompt_index, self.seed, self.target_index)

    def to_row(self) -> list[str]:
        out = []
        for name in COLUMNS:
            value = getattr(self, name)
            out.append("" if value is None else repr(value) if isinstance(value, float) else str(value))
        return out

    @classmethod
    def from_row(cls, row: dict[str, str]) -> "ImageRecord":
        def number(name: str) -> Optional[float]:
            text = row[name].strip()
            return float(text) if text else None

        return cls(
            file=row["file"], prompt_index=int(row["prompt_index"]), prompt=row["prompt"], seed=int(row["seed"]),
            target_index=int(row["target_index"]), target_valence=float(row["target_valence"]),
            target_arousal=float(row["target_arousal"]), valence=float(row["valence"]), arousal=float(row["arousal"]),
            digit_mass_valence=number("digit_mass_valence"), digit_mass_arousal=number("digit_mass_arousal"),
        )


assert tuple(f.name for f in fields(ImageRecord)) == COLUMNS  # one definition of the columns


def read_records(path: str | Path) -> list[ImageRecord]:
    """Every complete row of ``images.csv`` (a row cut short by a kill is dropped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                records.append(ImageRecord.from_row(row))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue  # the last line of a killed run may be half written
    return records


def rewrite_records(path: str | Path, records: Iterable[ImageRecord]) -> None:
    """Replace ``images.csv`` atomically (used on resume to drop a half-written last line)."""
    path = Path(path)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for record in records:
            writer.writerow(record.to_row())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RecordWriter:
    """Appends rows to ``images.csv``, flushing each so a kill loses at most the image in hand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            rewrite_records(self.path, [])
        self._handle = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)

    def write(self, record: ImageRecord) -> None:
        self._writer.writerow(record.to_row())
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def record_dicts(records: Iterable[ImageRecord]) -> list[dict]:
    return [asdict(r) for r in records]

"""The judge's labelled-image manifest: one row per image with valence, arousal, scale and split.

Format (CSV with a header, or JSONL with one object per line):

========  =========================================================================================
column    meaning
========  =========================================================================================
image     image file, relative to the manifest's folder (absolute paths also work)
valence   the valence rating on ``scale``
arousal   the arousal rating on ``scale``
scale     optional: ``va3`` ([-3, 3], the default), ``sam9`` (1..9), ``emotic10`` (1..10),
          ``findingemo`` (V [-3, 3], A [0, 6]) or ``likert7`` (1..7, OASIS)
split     optional: ``train``, ``val``, ``test`` (any word); rows without one belong to every split
========  =========================================================================================

Ratings are converted to [-3, 3] through :func:`..engines.emotion_space.convert_scale` (the one
emotion-space module). A bad row raises :class:`ManifestError` naming the file and line; with
``skip_bad=True`` bad rows are skipped and counted instead. Discrete-label sets (EmoSet's eight
categories) carry no valence/arousal and are refused with a message.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ...engines.emotion_space import SCALE_CONVERTERS, EmotionValueError, convert_scale
from ...engines.errors import UserError

COLUMNS = ("image", "valence", "arousal", "scale", "split")
DISCRETE_COLUMNS = ("emotion", "label", "category", "class", "emotion_category")
DISCRETE_REFUSAL = (
    "carries discrete emotion categories but no valence/arousal ratings (EmoSet-style); the judge is trained "
    "on continuous V-A. Use a V-A-rated set (FindingEmo, EMOTIC, OASIS/NAPS/IAPS norms) or add valence and "
    "arousal columns yourself"
)


class ManifestError(UserError, ValueError):
    """A manifest (or a source table being imported) is missing, malformed or has a bad row."""


@dataclass(frozen=True)
class JudgeSample:
    """One labelled image: absolute path, V-A in [-3, 3], split ('' = none) and its manifest line."""

    image: Path
    valence: float
    arousal: float
    split: str = ""
    line: int = 0


@dataclass
class Manifest:
    """The rows of a manifest that passed the checks, plus what was skipped (with ``skip_bad``)."""

    path: Path
    samples: list[JudgeSample]
    skipped: list[str] = field(default_factory=list)

    def split(self, name: Optional[str]) -> list[JudgeSample]:
        """Rows of split ``name`` plus rows with no split; ``None`` or '' = every row."""
        if not name:
            return list(self.samples)
        return [s for s in self.samples if s.split in ("", name)]

    @property
    def splits(self) -> set[str]:
        return {s.split for s in self.samples if s.split}

    def label_means(self, split: Optional[str] = None) -> tuple[float, float]:
        rows = self.split(split) or self.samples
        return (sum(s.valence for s in rows) / len(rows), sum(s.arousal for s in rows) / len(rows))


def _read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row dict) pairs from CSV or JSONL."""
    text_rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".jsonl":
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                text_rows.append((line_no, {"__error__": f"not valid JSON ({exc.msg})"}))
                continue
            text_rows.append((line_no, row if isinstance(row, dict) else {"__error__": "a JSON object is needed"}))
        return text_rows
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip().lower() for h in reader.fieldnames or []]
        reader.fieldnames = header
        _check_header(path, header)
        for row in reader:
            text_rows.append((reader.line_num, row))
    return text_rows


def _check_header(path: Path, header: Sequence[str]) -> None:
    missing = [c for c in ("image", "valence", "arousal") if c not in header]
    if not missing:
        return
    if any(c in header for c in DISCRETE_COLUMNS) and ("valence" in missing or "arousal" in missing):
        raise ManifestError(f"{path} {DISCRETE_REFUSAL}.")
    raise ManifestError(
        f"{path} has no {', '.join(missing)} column(s) (header: {', '.join(header) or 'empty'}); a judge manifest "
        "needs image, valence, arousal and optionally scale, split"
    )


def _parse_row(row: dict, root: Path, check_images: bool) -> JudgeSample:
    if "__error__" in row:
        raise ValueError(row["__error__"])
    row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
    if ("valence" not in row or "arousal" not in row) and any(c in row for c in DISCRETE_COLUMNS):
        raise ValueError(DISCRETE_REFUSAL)
    for column in ("image", "valence", "arousal"):
        if row.get(column) in (None, ""):
            raise ValueError(f"{column} is empty")
    scale = str(row.get("scale") or "va3").strip().lower()
    if scale not in SCALE_CONVERTERS:
        raise ValueError(f"scale {scale!r} is unknown; use one of {', '.join(SCALE_CONVERTERS)}")
    values = []
    for column in ("valence", "arousal"):
        try:
            values.append(float(row[column]))
        except (TypeError, ValueError):
            raise ValueError(f"{column}={row[column]!r} is not a number") from None
    try:
        point = convert_scale(values[0], values[1], scale)
    except EmotionValueError as exc:
        raise ValueError(f"{exc} (scale {scale})") from None
    image = Path(os.path.expanduser(str(row["image"]).strip()))
    image = image if image.is_absolute() else root / image
    if check_images and not image.is_file():
        raise ValueError(f"image {image} does not exist")
    split = str(row.get("split") or "").strip().lower()
    return JudgeSample(image=image, valence=point.valence, arousal=point.arousal, split=split)


def read_manifest(path: str | Path, *, skip_bad: bool = False, check_images: bool = True) -> Manifest:
    """Read and validate a manifest; see the module docstring for the format."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found; write a CSV/JSONL with image,valence,arousal[,scale][,split] "
                            "or make one with `emofeedback2 judge-data import ...`")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ManifestError(f"manifest {path} must be a .csv or .jsonl file")
    samples: list[JudgeSample] = []
    skipped: list[str] = []
    for line, row in _read_rows(path):
        try:
            sample = _parse_row(row, path.parent, check_images)
        except ValueError as exc:
            where = f"{path} line {line}"
            if not skip_bad:
                raise ManifestError(f"{where}: {exc}. Fix the row, or pass --skip-bad to skip bad rows") from None
            skipped.append(f"{where}: {exc}")
            continue
        samples.append(JudgeSample(sample.image, sample.valence, sample.arousal, sample.split, line))
    if not samples:
        detail = f" ({len(skipped)} bad rows skipped, first: {skipped[0]})" if skipped else ""
        raise ManifestError(f"manifest {path} has no usable rows{detail}")
    return Manifest(path=path, samples=samples, skipped=skipped)


def write_manifest(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows (dicts with the manifest columns) as CSV or JSONL; ``image`` paths are made relative
    to the manifest's folder where possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    prepared = []
    for row in rows:
        image = Path(row["image"])
        try:
            rel = os.path.relpath(image.resolve(), root)
        except ValueError:  # another drive on Windows
            rel = str(image.resolve())
        prepared.append({"image": Path(rel).as_posix(), "valence": row["valence"], "arousal": row["arousal"],
                         "scale": row.get("scale", "va3"), "split": row.get("split", "")})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".jsonl":
            for row in prepared:
                handle.write(json.dumps(row) + "\n")
        else:
            writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
            writer.writeheader()
            writer.writerows(prepared)
    os.replace(tmp, path)
    return path


def load_images(samples: Sequence[JudgeSample]) -> list:
    """PIL RGB images of ``samples``; an unreadable file is a :class:`ManifestError` naming it."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for sample in samples:
        try:
            with Image.open(sample.image) as image:
                images.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ManifestError(f"line {sample.line}: {sample.image} is not a readable image ({exc})") from exc
    return images

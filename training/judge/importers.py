"""Importers that turn public V-A-rated image sets into a judge manifest (:mod:`.judge_data`).

Each reads the set's *published* annotation layout and writes rows on the set's own scale (the
manifest's ``scale`` column), so the conversion to [-3, 3] happens once, in ``emotion_space``:

* **FindingEmo** (Mertens et al., NeurIPS 2024): ``annotations_single.ann``, a CSV with the header
  ``user,image_path,reject,tag,age,valence,arousal,emotion,dec_factors,ambiguity,fmri_candidate,
  datetime``; ``image_path`` is like ``/Run_1/Loving/xyz.jpg`` under the folder the download script
  filled; valence in [-3, 3], arousal in [0, 6]; rows with ``reject`` set are not labelled.
* **EMOTIC** (Kosti et al.): the per-person CSVs ``annot_arrs_{train,val,test}.csv`` written from
  ``Annotations.mat`` by the widely used PyTorch conversion (columns ``Folder, Filename, Image Size,
  BBox, Categorical_Labels, Continuous_Labels, Gender, Age``; ``Continuous_Labels`` = ``[V, A, D]``
  on 1..10). EMOTIC rates *people in context*; an image's label is the mean over its annotated
  people (the judge rates whole images). The split comes from the file name.
* **SAM / Likert norm tables** (IAPS, NAPS, OASIS style): one row per picture with an id column and
  mean valence/arousal columns (e.g. OASIS ``Theme, Valence_mean, Arousal_mean`` on 1..7; NAPS
  ``ID, Valence_M, Arousal_M`` on 1..9). Images are found as ``<images>/<id>.<ext>``.
* **EmoSet** has eight discrete categories and no V-A: refused with a message.
"""

from __future__ import annotations

import ast
import csv
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from .data import DISCRETE_REFUSAL, ManifestError, write_manifest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
FINDINGEMO_COLUMNS = ("image_path", "reject", "valence", "arousal")
EMOTIC_COLUMNS = ("Folder", "Filename", "Continuous_Labels")
NORM_ID_COLUMNS = ("theme", "id", "image", "filename", "file", "picture", "iaps", "name")
NORM_VALENCE_COLUMNS = ("valence_mean", "valence_m", "valence", "val_mn", "valmn", "v_mean", "mean_valence")
NORM_AROUSAL_COLUMNS = ("arousal_mean", "arousal_m", "arousal", "aro_mn", "aromn", "a_mean", "mean_arousal")


@dataclass
class ImportResult:
    """What an importer wrote: the manifest, the number of images, and the skipped rows (with reasons)."""

    manifest: Path
    images: int
    skipped: list[str] = field(default_factory=list)
    scale: str = ""  # the rating scale the rows were read on


def _open_table(path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    if not path.is_file():
        raise ManifestError(f"annotation file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        rows = [(reader.line_num, row) for row in reader]
    return header, rows


def _require(path: Path, header: Sequence[str], columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in header]
    if missing:
        raise ManifestError(f"{path} is not {what}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")


def _bad(path: Path, line: int, reason: str, skip_bad: bool, skipped: list[str]) -> None:
    where = f"{path} line {line}"
    if not skip_bad:
        raise ManifestError(f"{where}: {reason}. Fix the row, or pass --skip-bad to skip bad rows")
    skipped.append(f"{where}: {reason}")


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "y", "t")


def _assign_splits(rows: list[dict], test_fraction: float, seed: int) -> None:
    """Give rows without a split a deterministic train/test split (``test_fraction`` of them test)."""
    if test_fraction <= 0:
        return
    if not 0 < test_fraction < 1:
        raise ManifestError(f"test fraction must be in (0, 1), got {test_fraction}")
    free = [r for r in rows if not r.get("split")]
    order = list(range(len(free)))
    random.Random(seed).shuffle(order)
    n_test = int(round(test_fraction * len(free)))
    for rank, index in enumerate(order):
        free[index]["split"] = "test" if rank < n_test else "train"


def _mean_rows(groups: "OrderedDict[Path, list[tuple[float, float]]]", scale: str, split: dict) -> list[dict]:
    return [
        {"image": image, "valence": sum(v for v, _ in vals) / len(vals), "arousal": sum(a for _, a in vals) / len(vals),
         "scale": scale, "split": split.get(image, "")}
        for image, vals in groups.items()
    ]


def _finish(out: Path, rows: list[dict], skipped: list[str], test_fraction: float, seed: int, source: Path) -> ImportResult:
    if not rows:
        raise ManifestError(f"{source}: no usable rows" + (f" ({len(skipped)} skipped; first: {skipped[0]})" if skipped else ""))
    _assign_splits(rows, test_fraction, seed)
    return ImportResult(manifest=write_manifest(out, rows), images=len(rows), skipped=skipped)


def _number(row: dict, column: str) -> float:
    try:
        return float(row[column])
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"{column}={row.get(column)!r} is not a number") from None


def import_findingemo(annotations: str | Path, images_root: str | Path, out: str | Path, *, skip_bad: bool = False,
                      check_images: bool = True, test_fraction: float = 0.0, seed: int = 0) -> ImportResult:
    """FindingEmo ``annotations_single.ann`` → manifest (scale ``findingemo``); rejected rows are left out."""
    path, root = Path(annotations), Path(images_root)
    header, rows = _open_table(path)
    _require(path, header, FINDINGEMO_COLUMNS, "a FindingEmo annotation file (annotations_single.ann)")
    groups: "OrderedDict[Path, list[tuple[float, float]]]" = OrderedDict()
    skipped: list[str] = []
    for line, row in rows:
        if _truthy(row.get("reject", "")):
            continue  # the annotator rejected the image: it has no valid rating
        try:
            valence, arousal = _number(row, "valence"), _number(row, "arousal")
            if not (-3 <= valence <= 3 and 0 <= arousal <= 6):
                raise ValueError(f"valence={valence:g}, arousal={arousal:g} outside FindingEmo's V [-3, 3], A [0, 6]")
            rel = str(row.get("image_path") or "").strip().lstrip("/\\")
            if not rel:
                raise ValueError("image_path is empty")
            image = root / rel
            if check_images and not image.is_file():
                raise ValueError(f"image {image} does not exist (is --images the folder the download filled?)")
        except ValueError as exc:
            _bad(path, line, str(exc), skip_bad, skipped)
            continue
        groups.setdefault(image, []).append((valence, arousal))
    return _finish(Path(out), _mean_rows(groups, "findingemo", {}), skipped, test_fraction, seed, path)


def _emotic_split(path: Path) -> str:
    name = path.stem.lower()
    for split in ("train", "val", "test"):
        if split in name:
            return split
    return ""


def import_emotic(annotation_files: Sequence[str | Path], images_root: str | Path, out: str | Path, *,
                  skip_bad: bool = False, check_images: bool = True, test_fraction: float = 0.0, seed: int = 0) -> ImportResult:
    """EMOTIC per-person CSVs → manifest (scale ``emotic10``), one row per image (mean over its people)."""
    root = Path(images_root)
    groups: "OrderedDict[Path, list[tuple[float, float]]]" = OrderedDict()
    splits: dict[Path, str] = {}
    skipped: list[str] = []
    for file in annotation_files:
        path = Path(file)
        if path.suffix.lower() == ".mat":
            raise ManifestError(
                f"{path}: read EMOTIC's Annotations.mat into the per-person CSVs first (annot_arrs_train/val/test.csv, "
                "columns Folder, Filename, ..., Continuous_Labels) and pass those; MATLAB files need scipy"
            )
        header, rows = _open_table(path)
        _require(path, header, EMOTIC_COLUMNS, "an EMOTIC per-person annotation CSV")
        split = _emotic_split(path)
        for line, row in rows:
            try:
                labels = ast.literal_eval(str(row["Continuous_Labels"]).strip())
                if not isinstance(labels, (list, tuple)) or len(labels) < 2:
                    raise ValueError(f"Continuous_Labels={row['Continuous_Labels']!r} is not a [V, A, D] list")
                valence, arousal = float(labels[0]), float(labels[1])
                if not (1 <= valence <= 10 and 1 <= arousal <= 10):
                    raise ValueError(f"valence={valence:g}, arousal={arousal:g} outside EMOTIC's 1..10")
                image = root / str(row["Folder"]).strip() / str(row["Filename"]).strip()
                if check_images and not image.is_file():
                    raise ValueError(f"image {image} does not exist (is --images the EMOTIC folder with emodb_small/, mscoco/, ...?)")
            except (ValueError, SyntaxError) as exc:
                _bad(path, line, str(exc), skip_bad, skipped)
                continue
            groups.setdefault(image, []).append((valence, arousal))
            splits.setdefault(image, split)
    return _finish(Path(out), _mean_rows(groups, "emotic10", splits), skipped, test_fraction, seed, Path(annotation_files[0]))


def _pick(header: Sequence[str], wanted: Optional[str], candidates: Sequence[str], role: str, path: Path) -> str:
    if wanted:
        if wanted not in header:
            raise ManifestError(f"{path} has no column {wanted!r} for the {role} (header: {', '.join(header)})")
        return wanted
    lower = {h.lower(): h for h in header}
    for name in candidates:
        if name in lower:
            return lower[name]
    raise ManifestError(f"{path}: cannot tell which column holds the {role} (header: {', '.join(header)}); "
                        f"name it with --{role.split()[0]}-column")


def _find_image(folder: Path, stem: str) -> Optional[Path]:
    direct = folder / stem
    if direct.suffix.lower() in IMAGE_EXTENSIONS and direct.is_file():
        return direct
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def norm_table_scale(header: list[str]) -> str:
    """The rating scale a norm table's layout implies: OASIS (its picture-name column is ``Theme``)
    rates on 1..7, IAPS/NAPS-style tables on SAM 1..9. Guessing wrong would be silent (1..7
    values fit inside 1..9), so the layout decides, not the values."""
    return "likert7" if any(h.lower() == "theme" for h in header) else "sam9"


def import_norm_table(table: str | Path, images_dir: str | Path, out: str | Path, *, scale: Optional[str] = None,
                      id_column: Optional[str] = None, valence_column: Optional[str] = None,
                      arousal_column: Optional[str] = None, skip_bad: bool = False, test_fraction: float = 0.0,
                      seed: int = 0) -> ImportResult:
    """A SAM (1..9, IAPS/NAPS) or 1..7 (OASIS, ``scale='likert7'``) norm table → manifest.
    ``scale=None`` takes it from the table's layout (:func:`norm_table_scale`)."""
    if scale not in (None, "sam9", "likert7"):
        raise ManifestError(f"norm tables are on 'sam9' (1..9, IAPS/NAPS) or 'likert7' (1..7, OASIS); got {scale!r}")
    path, folder = Path(table), Path(images_dir)
    header, rows = _open_table(path)
    scale = scale or norm_table_scale(header)
    if not any(h.lower() in NORM_VALENCE_COLUMNS for h in header) and any(h.lower() in ("emotion", "label", "category") for h in header) \
            and not valence_column:
        raise ManifestError(f"{path} {DISCRETE_REFUSAL}.")
    id_col = _pick(header, id_column, NORM_ID_COLUMNS, "id (picture name)", path)
    v_col = _pick(header, valence_column, NORM_VALENCE_COLUMNS, "valence mean", path)
    a_col = _pick(header, arousal_column, NORM_AROUSAL_COLUMNS, "arousal mean", path)
    hi = 9.0 if scale == "sam9" else 7.0
    out_rows: list[dict] = []
    skipped: list[str] = []
    for line, row in rows:
        try:
            valence, arousal = _number(row, v_col), _number(row, a_col)
            if not (1 <= valence <= hi and 1 <= arousal <= hi):
                raise ValueError(f"valence={valence:g}, arousal={arousal:g} outside 1..{hi:g} (scale {scale})")
            stem = str(row.get(id_col) or "").strip()
            if not stem:
                raise ValueError(f"{id_col} is empty")
            image = _find_image(folder, stem)
            if image is None:
                raise ValueError(f"no image named {stem}.<{'|'.join(e[1:] for e in IMAGE_EXTENSIONS)}> in {folder}")
        except ValueError as exc:
            _bad(path, line, str(exc), skip_bad, skipped)
            continue
        out_rows.append({"image": image, "valence": valence, "arousal": arousal, "scale": scale, "split": ""})
    result = _finish(Path(out), out_rows, skipped, test_fraction, seed, path)
    result.scale = scale
    return result


def refuse_emoset(*_args, **_kwargs) -> ImportResult:
    """EmoSet labels images with eight discrete emotions; there is nothing to train a V-A judge on."""
    raise ManifestError(f"EmoSet {DISCRETE_REFUSAL}.")


IMPORTERS = {
    "findingemo": "FindingEmo annotations_single.ann (+ the downloaded image folder)",
    "emotic": "EMOTIC per-person CSVs annot_arrs_{train,val,test}.csv (+ the EMOTIC image folder)",
    "norms": "a SAM 1..9 (IAPS/NAPS) or 1..7 (OASIS) norm table (+ the picture folder)",
    "emoset": "refused: EmoSet has discrete categories, no valence/arousal",
}

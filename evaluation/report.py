"""``report.json`` / ``report.md`` from ``images.csv`` and the saved images, and the comparison table.

Top-level metric keys of ``report.json`` are over all images; ``per_prompt`` repeats them for each
prompt; ``null_reasons`` says why a metric is ``null``. Quality metrics are computed from the saved
PNG files, so a report rebuilt from a folder (``--resume`` after a kill) is the report of the run.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from .metrics import AXES, Values, emotion_metrics, neighbour_pairs
from .records import ImageRecord

DEFINITIONS = {
    "valence_error": "mean |measured V − target V| (V-Error)",
    "arousal_error": "mean |measured A − target A| (A-Error)",
    "valence_error_constant": "mean |target V − mean measured V|: the error of a generator that ignores the target",
    "arousal_error_constant": "mean |target A − mean measured A|: the error of a generator that ignores the target",
    "valence_error_ratio": "valence_error / valence_error_constant (< 1: better than ignoring the target)",
    "arousal_error_ratio": "arousal_error / arousal_error_constant (< 1: better than ignoring the target)",
    "valence_pearson": "Pearson r between target V and measured V",
    "arousal_pearson": "Pearson r between target A and measured A",
    "valence_spearman": "Spearman rho (average ranks for ties) between target V and measured V",
    "arousal_spearman": "Spearman rho (average ranks for ties) between target A and measured A",
    "valence_slope": "least-squares slope of measured V on target V",
    "arousal_slope": "least-squares slope of measured A on target A",
    "valence_monotonicity": "share of neighbouring steps along valence lines (same prompt, seed, target A) whose measured V rises",
    "arousal_monotonicity": "share of neighbouring steps along arousal lines (same prompt, seed, target V) whose measured A rises",
    "clip_score": "mean over images of 100 · max(cos(CLIP image, CLIP prompt), 0)",
    "clip_iqa": "mean over images of softmax(100 · cos to 'Good photo.' / 'Bad photo.')[good]",
    "lpips_continuous": "mean LPIPS between neighbouring grid cells (both axes)",
    "lpips_continuous_valence": "mean LPIPS between neighbours along valence",
    "lpips_continuous_arousal": "mean LPIPS between neighbours along arousal",
}

#: columns of report.md and of ``eval --compare``: (key, header, digits)
TABLE = (
    ("n_images", "images", 0),
    ("valence_error", "V-Err", 3), ("valence_error_constant", "V-Err const", 3), ("valence_error_ratio", "V ratio", 2),
    ("arousal_error", "A-Err", 3), ("arousal_error_constant", "A-Err const", 3), ("arousal_error_ratio", "A ratio", 2),
    ("valence_pearson", "V r", 2), ("arousal_pearson", "A r", 2),
    ("valence_spearman", "V rho", 2), ("arousal_spearman", "A rho", 2),
    ("valence_slope", "V slope", 2), ("arousal_slope", "A slope", 2),
    ("valence_monotonicity", "V mono", 2), ("arousal_monotonicity", "A mono", 2),
    ("clip_score", "CLIPScore", 2), ("clip_iqa", "CLIP-IQA", 3), ("lpips_continuous", "LPIPS-C", 3),
)


def _open(out: Path, record: ImageRecord) -> Image.Image:
    with Image.open(out / record.file) as image:
        return image.convert("RGB")


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


class QualityScores:
    """Per-image CLIP values and per-pair LPIPS values, computed once and aggregated per scope."""

    def __init__(self, records: Sequence[ImageRecord], out: Path, clip=None, lpips=None,
                 clip_reason: str = "", lpips_reason: str = ""):
        self.clip_reason = clip_reason or "no --clip folder given"
        self.lpips_reason = lpips_reason or "no --lpips folder given"
        self.clip_score: dict[tuple, float] = {}
        self.clip_iqa: dict[tuple, float] = {}
        self.lpips: dict[str, dict[tuple, float]] = {axis: {} for axis in AXES}
        self.has_clip, self.has_lpips = clip is not None, lpips is not None
        if clip is not None and records:
            images = [_open(out, r) for r in records]
            for r, s, q in zip(records, clip.clip_scores(images, [r.prompt for r in records]), clip.clip_iqa(images)):
                self.clip_score[r.key] = s
                self.clip_iqa[r.key] = q
        if lpips is not None:
            import torch

            for axis in AXES:
                pairs = neighbour_pairs(records, axis)
                tensors = [tuple(torch.from_numpy(np.asarray(_open(out, r), dtype=np.float32) / 255.0) for r in pair)
                           for pair in pairs]
                for (a, b), value in zip(pairs, lpips.pairs(tensors)):
                    self.lpips[axis][(a.key, b.key)] = value

    def values(self, records: Sequence[ImageRecord]) -> Values:
        out = Values()
        keys = {r.key for r in records}
        for name, table in (("clip_score", self.clip_score), ("clip_iqa", self.clip_iqa)):
            if not self.has_clip:
                out.set(name, None, self.clip_reason)
            else:
                out.set(name, _mean([table[k] for k in keys if k in table]), "no images")
        if not self.has_lpips:
            for name in ("lpips_continuous", "lpips_continuous_valence", "lpips_continuous_arousal"):
                out.set(name, None, self.lpips_reason)
            return out
        every = []
        for axis in AXES:
            picked = [v for (a, b), v in self.lpips[axis].items() if a in keys and b in keys]
            every += picked
            out.set(f"lpips_continuous_{axis}", _mean(picked), f"no neighbouring cells along {axis}")
        out.set("lpips_continuous", _mean(every), "no neighbouring grid cells")
        return out


def reading_trust(records: Sequence[ImageRecord], run: dict[str, Any]) -> dict[str, Any]:
    """Low digit mass and near-constant readings over all images (:func:`..engines.judge.scoring.assess_values`)."""
    from ..engines.judge.scoring import assess_values

    masses = [None if r.digit_mass_valence is None else min(r.digit_mass_valence, r.digit_mass_arousal)
              for r in records]
    trust = assess_values([r.valence for r in records], [r.arousal for r in records], masses,
                          judge=str(run.get("judge", "the judge")), heuristic=bool(run.get("judge_is_heuristic")))
    return trust.as_dict()


def build_report(records: Sequence[ImageRecord], out: Path, prompts: Sequence[str], quality: QualityScores,
                 run: dict[str, Any]) -> dict[str, Any]:
    """The whole report: overall metrics at the top level, then per prompt, lines, definitions, and whether the
    readings can be trusted at all (``reading_trust``)."""
    overall, lines = emotion_metrics(records)
    overall.update(quality.values(records))
    per_prompt = []
    groups: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in records:
        groups[r.prompt_index].append(r)
    for index in sorted(groups):
        values, _ = emotion_metrics(groups[index])
        values.update(quality.values(groups[index]))
        per_prompt.append({"prompt_index": index, "prompt": prompts[index], **values.values, "null_reasons": values.reasons})
    return {
        **overall.values,
        "null_reasons": overall.reasons,
        "per_prompt": per_prompt,
        "monotonicity_lines": lines,
        "definitions": DEFINITIONS,
        "reading_trust": reading_trust(records, run),
        "run": run,
    }


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    if digits == 0:
        return str(int(value))
    return f"{value:.{digits}f}"


def markdown_table(rows: Sequence[tuple[str, dict[str, Any]]], first: str = "run") -> str:
    header = [first] + [title for _, title, _ in TABLE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in rows:
        lines.append("| " + " | ".join([label.replace("|", "/")] + [_cell(values.get(k), d) for k, _, d in TABLE]) + " |")
    return "\n".join(lines)


def report_markdown(report: dict[str, Any]) -> str:
    run = report.get("run", {})
    parts = [
        "# Emotion evaluation",
        "",
        f"Generator: {run.get('generator', '?')}; judge: {run.get('judge', '?')}"
        + (" (a heuristic, not a learned judgement)" if run.get("judge_is_heuristic") else "") + ".",
        f"{report.get('n_images', 0)} images: {len(run.get('prompts', []))} prompt(s) × {len(run.get('seeds', []))} seed(s) × "
        f"{len(run.get('targets', []))} target(s).",
        "",
    ]
    warnings = report.get("reading_trust", {}).get("warnings", [])
    if warnings:
        parts += ["## Readings that cannot be trusted", ""] + [f"- **{w}**" for w in warnings] + [
            "", "The figures below are computed from these readings; read them with that in mind.", ""]
    parts += [
        "## Overall",
        "",
        markdown_table([("all prompts", report)], first="scope"),
        "",
        "An error ratio near or above 1 means the generator did no better than one that ignores the target.",
        "",
        "## Per prompt",
        "",
        markdown_table([(f"{p['prompt_index']}: {p['prompt'][:60]}", p) for p in report.get("per_prompt", [])], first="prompt"),
        "",
    ]
    if report.get("null_reasons"):
        parts += ["## Not computed", ""] + [f"- `{k}`: {v}" for k, v in sorted(report["null_reasons"].items())] + [""]
    parts += ["## Definitions", ""] + [f"- `{k}`: {v}" for k, v in report.get("definitions", {}).items()] + [""]
    files = report.get("files", {})
    if files:
        parts += ["## Pictures", ""]
        for name in [files.get("scatter"), files.get("heatmap"), *files.get("grids", [])[:4]]:
            if name:
                parts.append(f"![{name}]({name})")
        parts.append("")
    return "\n".join(parts)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: dict[str, Any], out: Path) -> None:
    _atomic_write(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    _atomic_write(out / "report.md", report_markdown(report))


def compare_table(folders: Sequence[str | Path]) -> str:
    """One Markdown table, a row per evaluation folder (its ``report.json``)."""
    from ..engines.errors import UserError

    rows = []
    for folder in folders:
        path = Path(folder) / "report.json"
        if not path.is_file():
            raise UserError(f"--compare: {path} not found; run `emofeedback2 eval --out {folder}` first")
        report = json.loads(path.read_text(encoding="utf-8"))
        label = report.get("run", {}).get("label") or Path(folder).name
        rows.append((label, report))
    # last column: can the run's readings be trusted (low digit mass, near-constant)? its report.md says why not
    verdicts = [{True: "yes", False: "NO"}.get(r.get("reading_trust", {}).get("trusted"), "—") for _, r in rows]
    lines = markdown_table(rows).splitlines()
    lines[0] += " readings trusted |"
    lines[1] += "---|"
    return "\n".join(lines[:2] + [line + f" {v} |" for line, v in zip(lines[2:], verdicts)])

"""The evaluation's pictures, drawn with PIL only (the style of :mod:`..engines.trajectory_plot`).

* ``grids/p<prompt>_s<seed>.png``: the V × A grid of one prompt and seed with labelled axes (the
  sweep figure of :mod:`..engines.sweep`, built from the saved images);
* ``heatmap_error.png``: mean |measured − target| per target cell, valence and arousal side by side;
* ``scatter.png``: measured against target per axis, with the identity line (perfect following),
  the per-target mean reading, and the constant baseline (the run's mean reading).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..engines.emotion_space import VA_MAX, VA_MIN
from ..engines.generation.sweep import SweepLayout, labelled_grid
from .records import ImageRecord

POINT = (0, 114, 178)
MEAN = (213, 94, 0)
IDENTITY = (120, 120, 120)
BASELINE = (0, 158, 115)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


def _fmt(value: float) -> str:
    return f"{value:+g}" if value else "0"


def prompt_seed_grid(records: Sequence[ImageRecord], out: Path, title: str = "") -> Optional[Image.Image]:
    """The labelled grid of one prompt and seed, or ``None`` when its targets are not a full lattice."""
    valences = sorted({r.target_valence for r in records})
    arousals = sorted({r.target_arousal for r in records})
    cells = {(r.target_valence, r.target_arousal): r for r in records}
    if len(cells) != len(valences) * len(arousals) or len(valences) < 2 or len(arousals) < 2:
        return None
    layout = SweepLayout.from_values(valences, arousals)
    tensors = []
    for target in layout.targets():
        with Image.open(out / cells[(target.valence, target.arousal)].file) as image:
            tensors.append(torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0))
    grid = labelled_grid(torch.stack(tensors), layout, title=title)
    return Image.fromarray((grid[0].numpy() * 255.0).round().astype(np.uint8))


def _heat(value: float, top: float = 3.0) -> tuple[int, int, int]:
    """White (0) to deep red (``top`` or more)."""
    x = max(0.0, min(1.0, value / top))
    return (255 - int(55 * x), int(255 * (1 - x) ** 1.2), int(255 * (1 - x) ** 1.2))


def error_heatmap(records: Sequence[ImageRecord], cell: int = 56) -> Image.Image:
    """Mean |ΔV| and |ΔA| per target cell (over prompts and seeds); colour 0 → 3, value written in."""
    valences = sorted({r.target_valence for r in records})
    arousals = sorted({r.target_arousal for r in records}, reverse=True)
    errors: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        errors[(r.target_valence, r.target_arousal)].append((abs(r.valence - r.target_valence), abs(r.arousal - r.target_arousal)))
    font, small = _font(14), _font(11)
    left, top, gap = 60, 50, 40
    panel_w = cell * len(valences)
    width = left + 2 * panel_w + gap + 20
    height = top + cell * len(arousals) + 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for panel, name in enumerate(("valence", "arousal")):
        x0 = left + panel * (panel_w + gap)
        draw.text((x0 + panel_w / 2, 18), f"|measured - target| {name}", fill="black", font=font, anchor="mm")
        for row, a in enumerate(arousals):
            for col, v in enumerate(valences):
                box = [x0 + col * cell, top + row * cell, x0 + (col + 1) * cell - 1, top + (row + 1) * cell - 1]
                values = errors.get((v, a))
                if not values:
                    draw.rectangle(box, outline=(200, 200, 200))
                    continue
                mean = float(np.mean([e[panel] for e in values]))
                draw.rectangle(box, fill=_heat(mean), outline="white")
                draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), f"{mean:.2f}", fill="black", font=small, anchor="mm")
        for col, v in enumerate(valences):
            draw.text((x0 + col * cell + cell / 2, top + len(arousals) * cell + 6), f"V {_fmt(v)}", fill="black", font=small, anchor="mt")
        if panel == 0:
            for row, a in enumerate(arousals):
                draw.text((x0 - 6, top + row * cell + cell / 2), f"A {_fmt(a)}", fill="black", font=small, anchor="rm")
    draw.text((left, height - 16), "target valence: left to right, target arousal: bottom to top; colour scale 0 (white) to 3 (red)",
              fill="dimgray", font=small, anchor="lm")
    return image


def _scatter_panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], records: Sequence[ImageRecord], axis: str) -> None:
    left, top, right, bottom = box
    font, small = _font(14), _font(11)

    def xy(t: float, m: float) -> tuple[float, float]:
        t, m = min(VA_MAX, max(VA_MIN, t)), min(VA_MAX, max(VA_MIN, m))
        return (left + (t - VA_MIN) / (VA_MAX - VA_MIN) * (right - left), bottom - (m - VA_MIN) / (VA_MAX - VA_MIN) * (bottom - top))

    for tick in range(int(VA_MIN), int(VA_MAX) + 1):
        x, _ = xy(tick, 0)
        _, y = xy(0, tick)
        colour = (160, 160, 160) if tick == 0 else (230, 230, 230)
        draw.line([(x, top), (x, bottom)], fill=colour)
        draw.line([(left, y), (right, y)], fill=colour)
        draw.text((x, bottom + 6), _fmt(tick), fill="black", font=small, anchor="mt")
        draw.text((left - 6, y), _fmt(tick), fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.line([xy(VA_MIN, VA_MIN), xy(VA_MAX, VA_MAX)], fill=IDENTITY, width=2)  # identity: measured = target
    measured = [getattr(r, axis) for r in records]
    if measured:
        mean = float(np.mean(measured))
        x_a, y_a = xy(VA_MIN, mean)
        x_b, _ = xy(VA_MAX, mean)
        for x in range(int(x_a), int(x_b), 10):  # dashed: the constant baseline
            draw.line([(x, y_a), (min(x + 5, x_b), y_a)], fill=BASELINE, width=2)
    by_target: dict[float, list[float]] = defaultdict(list)
    for n, r in enumerate(records):
        t = getattr(r, f"target_{axis}")
        by_target[t].append(getattr(r, axis))
        jitter = ((n * 0.618034) % 1.0 - 0.5) * 0.25  # deterministic spread so stacked points show
        x, y = xy(t + jitter, getattr(r, axis))
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=POINT)
    for t, values in by_target.items():
        x, y = xy(t, float(np.mean(values)))
        draw.rectangle([x - 6, y - 6, x + 6, y + 6], outline=MEAN, width=3)
    draw.text(((left + right) / 2, bottom + 24), f"target {axis}", fill="black", font=font, anchor="mt")
    draw.text(((left + right) / 2, top - 16), f"measured {axis} vs target", fill="black", font=font, anchor="mm")


def scatter(records: Sequence[ImageRecord], size: int = 360) -> Image.Image:
    """Two panels (valence, arousal) of measured against target with the identity line."""
    margin = 56
    image = Image.new("RGB", (2 * (size + margin) + margin, size + 2 * margin + 30), "white")
    draw = ImageDraw.Draw(image)
    for panel, axis in enumerate(AXES_ORDER):
        x0 = margin + panel * (size + margin)
        _scatter_panel(draw, (x0, margin, x0 + size, margin + size), records, axis)
    small = _font(11)
    y = size + 2 * margin + 12
    items = [("image", POINT), ("mean per target", MEAN), ("identity (perfect)", IDENTITY), ("constant baseline", BASELINE)]
    x = margin
    for text, colour in items:
        draw.rectangle([x, y - 4, x + 8, y + 4], fill=colour)
        draw.text((x + 12, y), text, fill="black", font=small, anchor="lm")
        x += 24 + int(draw.textlength(text, font=small))
    return image


AXES_ORDER = ("valence", "arousal")


def write_pictures(records: Sequence[ImageRecord], out: Path, prompts: Sequence[str]) -> dict[str, object]:
    """Write every picture into ``out``; returns their paths (relative to ``out``) and skip notes."""
    files: dict[str, object] = {"grids": []}
    groups: dict[tuple[int, int], list[ImageRecord]] = defaultdict(list)
    for r in records:
        groups[(r.prompt_index, r.seed)].append(r)
    (out / "grids").mkdir(exist_ok=True)
    for (p, seed), cells in sorted(groups.items()):
        grid = prompt_seed_grid(cells, out, title=f"{prompts[p]} · seed {seed}")
        if grid is None:
            files["grids_note"] = "targets are not a full V × A lattice: no grid pictures"
            continue
        name = f"grids/p{p:03d}_s{seed}.png"
        grid.save(out / name)
        files["grids"].append(name)
    error_heatmap(records).save(out / "heatmap_error.png")
    scatter(records).save(out / "scatter.png")
    files["heatmap"] = "heatmap_error.png"
    files["scatter"] = "scatter.png"
    return files

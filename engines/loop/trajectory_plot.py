"""The V-A trajectory plot of a loop run, drawn with PIL only (no matplotlib dependency).

The [-3, 3]² plane with ticks at every integer and axis labels "valence" (x) and "arousal" (y),
the target as a red cross in a ring, every candidate as a dot coloured by its round, and the best
candidate so far after each round as a ringed marker joined by a line, so one can see the loop
walk toward the target.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..emotion_space import VA_MAX, VA_MIN

# Colour-blind-friendly palette (Okabe-Ito), cycled for rounds.
ROUND_COLOURS = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (120, 120, 120),
)
TARGET_COLOUR = (200, 0, 0)
BEST_COLOUR = (20, 20, 20)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def plot_trajectory(
    result=None,
    *,
    rounds: Optional[Sequence[Sequence[tuple[float, float]]]] = None,
    best_path: Optional[Sequence[tuple[float, float]]] = None,
    best_rounds: Optional[Sequence[int]] = None,
    target: Optional[tuple[float, float]] = None,
    size: int = 512,
    title: str = "",
) -> Image.Image:
    """Draw a loop run. Pass a :class:`~.feedback_loop.LoopResult`, or the raw points:
    ``rounds`` (per round, each candidate's (V, A)), ``best_path`` (best so far after each round)
    and ``target`` (V, A); ``best_rounds`` (0-based) colours each best marker by the round it came
    from (default: its position)."""
    if result is not None:
        rounds = [[(c.valence, c.arousal) for c in r.candidates] for r in result.rounds]
        best_path, best_rounds = [], []
        for r in result.rounds:
            ri, ci = r.best_so_far
            cand = result.rounds[ri - 1].candidates[ci]
            best_path.append((cand.valence, cand.arousal))
            best_rounds.append(ri - 1)
        target = result.target.as_tuple()
        if not title:
            title = f"target V={target[0]:+.1f} A={target[1]:+.1f}"
            if result.best is not None:
                title += f" · best d={result.best.distance:.2f}"
    rounds = rounds or []
    best_path = best_path or []
    if size < 256:
        raise ValueError(f"plot size must be at least 256 pixels, got {size}")

    scale = size / 512.0
    font = _font(max(10, int(14 * scale)))
    small = _font(max(9, int(12 * scale)))
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    left, right = int(64 * scale), size - int(24 * scale)
    top, bottom = int(34 * scale), size - int(86 * scale)

    def xy(v: float, a: float) -> tuple[float, float]:
        v = min(VA_MAX, max(VA_MIN, v))
        a = min(VA_MAX, max(VA_MIN, a))
        return (
            left + (v - VA_MIN) / (VA_MAX - VA_MIN) * (right - left),
            bottom - (a - VA_MIN) / (VA_MAX - VA_MIN) * (bottom - top),
        )

    # Grid, zero lines, frame and ticks.
    for t in range(int(VA_MIN), int(VA_MAX) + 1):
        x, _ = xy(t, 0)
        _, y = xy(0, t)
        colour = (150, 150, 150) if t == 0 else (228, 228, 228)
        draw.line([(x, top), (x, bottom)], fill=colour, width=1)
        draw.line([(left, y), (right, y)], fill=colour, width=1)
        draw.line([(x, bottom), (x, bottom + 5 * scale)], fill="black", width=1)
        draw.line([(left - 5 * scale, y), (left, y)], fill="black", width=1)
        label = f"{t:+d}" if t else "0"
        draw.text((x, bottom + 7 * scale), label, fill="black", font=small, anchor="mt")
        draw.text((left - 8 * scale, y), label, fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline="black", width=max(1, int(scale)))
    draw.text(((left + right) / 2, bottom + 24 * scale), "valence (unpleasant to pleasant)", fill="black", font=font, anchor="mt")
    # Rotated y label.
    label = "arousal (calm to excited)"
    box = draw.textbbox((0, 0), label, font=font)
    label_img = Image.new("RGBA", (box[2] - box[0] + 4, box[3] - box[1] + 4), (255, 255, 255, 0))
    ImageDraw.Draw(label_img).text((2 - box[0], 2 - box[1]), label, fill="black", font=font)
    label_img = label_img.rotate(90, expand=True)
    image.paste(label_img, (int(6 * scale), int((top + bottom) / 2 - label_img.height / 2)), label_img)
    if title:
        draw.text(((left + right) / 2, top / 2), title, fill="black", font=font, anchor="mm")

    # Candidates, coloured by round.
    radius = 4 * scale
    for r, points in enumerate(rounds):
        colour = ROUND_COLOURS[r % len(ROUND_COLOURS)]
        for v, a in points:
            x, y = xy(v, a)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline="white")

    # Best-so-far path.
    if best_path:
        path = [xy(v, a) for v, a in best_path]
        if len(path) > 1:
            draw.line(path, fill=BEST_COLOUR, width=max(2, int(2 * scale)), joint="curve")
        sources = list(best_rounds) if best_rounds is not None else list(range(len(path)))
        for r, (x, y) in enumerate(path):
            ring = 7 * scale
            colour = ROUND_COLOURS[sources[r] % len(ROUND_COLOURS)]
            draw.ellipse([x - ring, y - ring, x + ring, y + ring], outline=BEST_COLOUR, width=max(2, int(2 * scale)), fill=colour)

    # Target on top.
    if target is not None:
        x, y = xy(*target)
        arm = 9 * scale
        width = max(2, int(3 * scale))
        draw.line([(x - arm, y - arm), (x + arm, y + arm)], fill=TARGET_COLOUR, width=width)
        draw.line([(x - arm, y + arm), (x + arm, y - arm)], fill=TARGET_COLOUR, width=width)
        draw.ellipse([x - 1.6 * arm, y - 1.6 * arm, x + 1.6 * arm, y + 1.6 * arm], outline=TARGET_COLOUR, width=max(1, int(2 * scale)))

    # Legend under the axis label.
    lx, ly = left, bottom + 50 * scale
    items: list[tuple[str, str, tuple]] = [("target", "cross", TARGET_COLOUR)]
    for r in range(len(rounds)):
        items.append((f"round {r + 1}", "dot", ROUND_COLOURS[r % len(ROUND_COLOURS)]))
    if best_path:
        items.append(("best so far", "ring", BEST_COLOUR))
    for text, kind, colour in items:
        if kind == "cross":
            draw.line([(lx, ly - 5 * scale), (lx + 10 * scale, ly + 5 * scale)], fill=colour, width=2)
            draw.line([(lx, ly + 5 * scale), (lx + 10 * scale, ly - 5 * scale)], fill=colour, width=2)
        elif kind == "dot":
            draw.ellipse([lx + 1 * scale, ly - 4 * scale, lx + 9 * scale, ly + 4 * scale], fill=colour)
        else:
            draw.line([(lx - 4 * scale, ly), (lx + 14 * scale, ly)], fill=colour, width=2)
            draw.ellipse([lx, ly - 5 * scale, lx + 10 * scale, ly + 5 * scale], outline=colour, width=2, fill="white")
        draw.text((lx + 14 * scale, ly), text, fill="black", font=small, anchor="lm")
        lx += 14 * scale + draw.textlength(text, font=small) + 14 * scale
        if lx > right - 60 * scale:
            lx, ly = left, ly + 16 * scale
    return image


def plot_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL plot as a ComfyUI IMAGE tensor ``[1, H, W, 3]`` float32 in 0..1."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).unsqueeze(0)

"""Continuity sweeps: one prompt and seed over a grid of valence-arousal targets, as one labelled image.

The figure emotion-control papers show: valence grows left to right, arousal grows bottom to top,
every cell made from the same prompt and seed so only the target changes. This module parses the
axis values, orders the targets, runs them through any :class:`~.generation.Generator` and draws the
labelled grid; the EmotionSweepGrid node and scripts share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..emotion_space import VA, check_component
from .protocol import GenerationRequest, Generator
from ..images import check_image_tensor
from ..progress import ProgressCallback
from ..errors import UserError

DEFAULT_AXIS_VALUES = "-3, -1.5, 0, 1.5, 3"
MAX_AXIS_VALUES = 9


class SweepValueError(UserError, ValueError):
    """The axis-value list cannot be parsed or lies outside the emotion range."""


def parse_axis_values(text: str, name: str = "values") -> list[float]:
    """``"-3, -1.5, 0, 1.5, 3"`` → ``[-3.0, -1.5, 0.0, 1.5, 3.0]`` (comma or space separated).

    Values must be distinct numbers in [-3, 3]; at most :data:`MAX_AXIS_VALUES` per axis.
    """
    parts = [p for p in str(text).replace(";", ",").replace(",", " ").split() if p]
    if not parts:
        raise SweepValueError(f"{name} is empty: give numbers in [-3, 3], e.g. {DEFAULT_AXIS_VALUES!r}")
    values = []
    for part in parts:
        try:
            number = float(part)
        except ValueError:
            raise SweepValueError(f"{name}: {part!r} is not a number; write e.g. {DEFAULT_AXIS_VALUES!r}") from None
        values.append(check_component(number, name))
    if len(set(values)) != len(values):
        raise SweepValueError(f"{name} repeats a value ({text!r}); list each value once")
    if len(values) > MAX_AXIS_VALUES:
        raise SweepValueError(f"{name} has {len(values)} values; at most {MAX_AXIS_VALUES} per axis fit a readable grid")
    return values


@dataclass(frozen=True)
class SweepLayout:
    """Row-major cell order: row 0 = highest arousal (top), column 0 = lowest valence (left)."""

    valences: tuple[float, ...]
    arousals: tuple[float, ...]

    @classmethod
    def from_values(cls, valences: Sequence[float], arousals: Sequence[float]) -> "SweepLayout":
        return cls(tuple(sorted(valences)), tuple(sorted(arousals, reverse=True)))

    @property
    def rows(self) -> int:
        return len(self.arousals)

    @property
    def cols(self) -> int:
        return len(self.valences)

    def targets(self) -> list[VA]:
        return [VA(v, a) for a in self.arousals for v in self.valences]


def run_sweep(
    generator: Generator,
    layout: SweepLayout,
    prompt: str,
    seed: int,
    negative_prompt: str = "",
    width: int = 512,
    height: int = 512,
    steps: int = 20,
    cfg: float = 7.0,
    adapter_strength: float = 1.0,
    progress: Optional[ProgressCallback] = None,
) -> torch.Tensor:
    """Images ``[rows*cols, H, W, 3]`` in layout order, all from the same prompt and seed."""
    targets = layout.targets()
    request = GenerationRequest(
        prompts=[prompt] * len(targets), seeds=[int(seed)] * len(targets), targets=targets,
        negative_prompt=negative_prompt, width=width, height=height, steps=steps, cfg=cfg,
        adapter_strength=adapter_strength,
    )  # fmt: skip
    return generator.generate(request, progress=progress)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fmt(value: float) -> str:
    return f"{value:+g}" if value else "0"


def labelled_grid(images: torch.Tensor, layout: SweepLayout, title: str = "", gap: int = 4) -> torch.Tensor:
    """Assemble a sweep batch into one IMAGE ``[1, H', W', 3]`` with V/A axis labels.

    Column headers give valence, row headers arousal; ``title`` (e.g. the prompt) goes on top.
    """
    images = check_image_tensor(images, "images")
    if images.shape[0] != layout.rows * layout.cols:
        raise SweepValueError(
            f"got {images.shape[0]} images for a {layout.rows}×{layout.cols} grid; "
            "connect the batch the sweep produced, in its order"
        )
    h, w = int(images.shape[1]), int(images.shape[2])
    font_size = max(10, min(28, w // 6))
    font = _font(font_size)
    margin_left = font_size * 5
    margin_top = font_size * 9 // 2 if title else font_size * 3
    width = margin_left + layout.cols * w + (layout.cols - 1) * gap + gap
    height = margin_top + layout.rows * h + (layout.rows - 1) * gap + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    arrays = (images[..., :3].detach().float().clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    if images.shape[-1] == 1:
        arrays = np.repeat(arrays, 3, axis=-1)
    for index, array in enumerate(arrays):
        row, col = divmod(index, layout.cols)
        x = margin_left + col * (w + gap)
        y = margin_top + row * (h + gap)
        canvas.paste(Image.fromarray(array), (x, y))
    header_y = margin_top - font_size // 2
    for col, valence in enumerate(layout.valences):
        x = margin_left + col * (w + gap) + w // 2
        draw.text((x, header_y), f"V {_fmt(valence)}", fill="black", font=font, anchor="mb")
    for row, arousal in enumerate(layout.arousals):
        y = margin_top + row * (h + gap) + h // 2
        draw.text((margin_left - font_size // 2, y), f"A {_fmt(arousal)}", fill="black", font=font, anchor="rm")
    axis_note = "valence: left to right, arousal: bottom to top"
    if title:
        draw.text((margin_left, font_size // 2), title[:120], fill="black", font=font, anchor="lt")
    note_y = font_size * 2 if title else font_size // 2
    draw.text((margin_left, note_y), axis_note, fill="dimgray", font=_font(max(9, font_size * 3 // 4)), anchor="lt")
    out = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)
    return out.unsqueeze(0)

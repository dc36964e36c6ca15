"""A weight-free *heuristic* emotion scorer from colour statistics (Valdez & Mehrabian, 1994).

Valdez & Mehrabian regressed pleasure and arousal ratings of colour samples on standardised
brightness and saturation and reported (their Eq. for Munsell colours)::

    Pleasure ≈  0.69 · Brightness + 0.22 · Saturation
    Arousal  ≈ -0.31 · Brightness + 0.60 · Saturation

We apply those weights to whole images. This is a **heuristic**, not a learned judgement of image
content: it knows nothing about faces, scenes or events. It powers the offline demo, toy training
rewards and sanity checks, and every reading it returns says so (``is_heuristic = True``).

How an image becomes two numbers (all steps differentiable, see :meth:`ColorHeuristicScorer.score_tensor`):

1. per pixel, brightness = Rec.601 luma ``0.299 R + 0.587 G + 0.114 B`` (a lightness proxy for
   Munsell value) and saturation = chroma ``max(R,G,B) - min(R,G,B)`` (stable for dark pixels,
   unlike HSV saturation); both in 0..1; averaged over the image;
2. standardised against reference statistics of ordinary photographs, :data:`REFERENCE_STATS`
   (our own round figures for 8-bit sRGB photos: brightness mean 0.45, sd 0.20; chroma mean 0.25,
   sd 0.15 — chosen so that typical photos land near 0 and a flat mid-grey reads slightly calm);
3. combined with the weights above into ``P`` and ``Ar`` (in standard-deviation units);
4. mapped into the emotion space with ``V = 3·tanh(P / 2)``, ``A = 3·tanh(Ar / 2)``: monotone,
   smooth (useful as a reward gradient) and always inside [-3, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..emotion_space import VA_MAX
from ..images import ImageBatch, ImageBatchError, check_image_tensor, to_pil_list, to_tensor_batch
from .scoring import EmotionReading

PLEASURE_WEIGHTS = (0.69, 0.22)  # (brightness, saturation) — Valdez & Mehrabian (1994)
AROUSAL_WEIGHTS = (-0.31, 0.60)  # (brightness, saturation) — Valdez & Mehrabian (1994)
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


@dataclass(frozen=True)
class ReferenceStats:
    """Mean and standard deviation of image-mean brightness and chroma used to standardise."""

    brightness_mean: float = 0.45
    brightness_std: float = 0.20
    saturation_mean: float = 0.25
    saturation_std: float = 0.15
    #: divisor inside tanh: how many standardised units reach ~76% of the [-3, 3] half-range
    squash: float = 2.0


REFERENCE_STATS = ReferenceStats()


def colour_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image-mean brightness (luma) and saturation (chroma) of a ``[B,H,W,3]`` 0..1 tensor."""
    rgb = images[..., :3]
    weights = torch.tensor(LUMA_WEIGHTS, dtype=rgb.dtype, device=rgb.device)
    brightness = (rgb * weights).sum(dim=-1).mean(dim=(1, 2))
    chroma = (rgb.amax(dim=-1) - rgb.amin(dim=-1)).mean(dim=(1, 2))
    return brightness, chroma


class ColorHeuristicScorer:
    """Valence/arousal from brightness and saturation — a heuristic stand-in for an LVLM judge."""

    name = "colour heuristic (Valdez & Mehrabian 1994)"
    is_heuristic = True

    def __init__(self, stats: ReferenceStats = REFERENCE_STATS):
        if stats.brightness_std <= 0 or stats.saturation_std <= 0 or stats.squash <= 0:
            raise ValueError("reference standard deviations and squash must be positive")
        self.stats = stats

    def standardised(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z-scores of brightness and saturation against :attr:`stats`."""
        brightness, chroma = colour_statistics(images)
        s = self.stats
        return (brightness - s.brightness_mean) / s.brightness_std, (chroma - s.saturation_mean) / s.saturation_std

    def score_tensor(self, images: torch.Tensor, layout: str = "BHWC") -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable ``(valence[B], arousal[B])`` for images in 0..1 (``[B,H,W,3]`` or ``layout="BCHW"``).

        Keeps device and floating dtype (computed in float32 at least) so it can serve as a
        training reward; gradients flow to ``images``.
        """
        if not isinstance(images, torch.Tensor):
            raise ImageBatchError(f"images must be a torch tensor, got {type(images).__name__}")
        if layout == "BCHW":
            if images.ndim != 4:
                raise ImageBatchError(f"images with layout BCHW must be 4-D, got shape {tuple(images.shape)}")
            images = images.permute(0, 2, 3, 1)
        elif layout != "BHWC":
            raise ValueError(f"layout must be 'BHWC' or 'BCHW', got {layout!r}")
        images = check_image_tensor(images)
        if images.shape[-1] == 1:
            images = images.expand(-1, -1, -1, 3)
        if not images.is_floating_point():
            raise ImageBatchError(f"images must be floating point in 0..1, got {images.dtype}")
        work = images if images.dtype in (torch.float32, torch.float64) else images.float()
        zb, zs = self.standardised(work.clamp(0, 1))
        pleasure = PLEASURE_WEIGHTS[0] * zb + PLEASURE_WEIGHTS[1] * zs
        arousal = AROUSAL_WEIGHTS[0] * zb + AROUSAL_WEIGHTS[1] * zs
        squash = self.stats.squash
        return VA_MAX * torch.tanh(pleasure / squash), VA_MAX * torch.tanh(arousal / squash)

    @torch.no_grad()
    def score(self, images: ImageBatch, *, analysis: bool = False) -> list[EmotionReading]:
        """One reading per image; ``analysis=True`` states the colour statistics behind it."""
        if isinstance(images, torch.Tensor):
            batches = [to_tensor_batch(images)]
        else:  # PIL images may differ in size: score each on its own
            batches = [to_tensor_batch([image]) for image in to_pil_list(images)]
        readings: list[EmotionReading] = []
        for batch in batches:
            valence, arousal = self.score_tensor(batch)
            zb, zs = self.standardised(batch)
            for v, a, b, s in zip(valence.tolist(), arousal.tolist(), zb.tolist(), zs.tolist()):
                text = ""
                if analysis:
                    text = (
                        f"Colour heuristic, not a content judgement: brightness {b:+.2f} sd and "
                        f"saturation {s:+.2f} sd from typical photos give valence {v:+.2f}, "
                        f"arousal {a:+.2f} (Valdez & Mehrabian 1994)."
                    )
                readings.append(EmotionReading(valence=v, arousal=a, analysis=text))
        return readings

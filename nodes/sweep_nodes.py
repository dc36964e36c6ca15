"""EmoFeedback2 Sweep Grid: the continuity figure (one prompt and seed over a V×A grid) as one ComfyUI node.

Thin: parses the axis lists, builds a :class:`~..engines.comfy_backend.ComfyGenerator` on the
connected MODEL/CLIP/VAE (each cell made exactly as CLIPTextEncode/EmotionConditioner → KSampler →
VAEDecode would), runs :func:`~..engines.sweep.run_sweep` and draws :func:`~..engines.sweep.labelled_grid`.
One node instead of 25 conditioner/sampler chains keeps the shipped workflow small.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from ..engines.generation.comfy_backend import ComfyGenerator
from ..engines.generation.emotion_adapter import EmotionAdapter
from ..engines.generation.sweep import DEFAULT_AXIS_VALUES, SweepLayout, labelled_grid, parse_axis_values, run_sweep
from . import comfy_bridge
from .errors import clean_errors
from .common import (
    category, cfg_widget, display_name, latent_multiple, negative_widget, node_id, size_widget, steps_widget,
)

NAME = "Sweep Grid"
NODE_ID, DISPLAY_NAME = node_id(NAME), display_name(NAME)
AXIS_TOOLTIP = (
    "Comma-separated {axis} values in [-3, 3], one grid {line} each (at most 9), e.g. '-3, -1.5, 0, 1.5, 3'."
)


class EmotionSweepGrid:
    """MODEL + CLIP + VAE + prompt + seed → one labelled grid over valence × arousal targets."""

    CATEGORY = category("sampling")
    FUNCTION = "sweep"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("grid", "images", "targets_json")
    OUTPUT_TOOLTIPS = (
        "One image: the cells with valence labels on top (left = unpleasant) and arousal labels at the side (top = excited).",
        "The cells as a batch, row by row from the top-left cell.",
        "JSON list of the [valence, arousal] target of every cell, in batch order.",
    )
    DESCRIPTION = (
        "Continuity sweep: generates the same prompt with the same seed at every valence × arousal target "
        "and assembles one labelled grid, to see how smoothly the emotion control moves the image. Each "
        "cell is sampled like EmoFeedback2 Conditioner → KSampler → VAEDecode."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        samplers, schedulers = comfy_bridge.sampler_and_scheduler_names()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (after any LoRA loader)."}),
                "clip": ("CLIP", {"tooltip": "The CLIP (text encoder) from your checkpoint loader."}),
                "vae": ("VAE", {"tooltip": "The VAE that decodes the samples."}),
                "prompt": ("STRING", {"multiline": True, "default": "a quiet harbour town at dusk",
                                      "tooltip": "The prompt shared by every cell."}),
                "negative_prompt": negative_widget("Negative prompt shared by every cell."),
                "valences": ("STRING", {"default": DEFAULT_AXIS_VALUES,
                                        "tooltip": AXIS_TOOLTIP.format(axis="valence", line="column")}),
                "arousals": ("STRING", {"default": DEFAULT_AXIS_VALUES,
                                        "tooltip": AXIS_TOOLTIP.format(axis="arousal", line="row")}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "The one seed every cell uses, so only the target changes."}),
                "steps": steps_widget("Sampling steps per cell, as in KSampler."),
                "cfg": cfg_widget(),
                "sampler_name": (samplers, {"tooltip": "Sampler, as in KSampler."}),
                "scheduler": (schedulers, {"tooltip": "Noise schedule, as in KSampler."}),
                "width": size_widget("Cell width"),
                "height": size_widget("Cell height"),
                "text_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                            "tooltip": "Emotion words woven into the prompt, as in the Conditioner (0 = none)."}),
            },
            "optional": {
                "emotion_adapter": ("EMOTION_ADAPTER", {"tooltip": "Optional trained emotion adapter from the Weights Loader."}),
                "adapter_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                               "tooltip": "How far the adapter moves the conditioning (1 = as trained, 0 = off)."}),
            },
        }  # fmt: skip

    @clean_errors
    def sweep(
        self, model: Any, clip: Any, vae: Any, prompt: str, negative_prompt: str, valences: str, arousals: str,
        seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, width: int, height: int,
        text_strength: float, emotion_adapter: Optional[EmotionAdapter] = None, adapter_strength: float = 1.0,
    ) -> tuple:  # fmt: skip
        layout = SweepLayout.from_values(parse_axis_values(valences, "valences"), parse_axis_values(arousals, "arousals"))
        generator = ComfyGenerator(
            model, clip, vae, sampler_name=sampler_name, scheduler=scheduler, adapter=emotion_adapter,
            text_strength=float(text_strength),
        )  # fmt: skip
        cells = layout.rows * layout.cols
        images = run_sweep(
            generator, layout, prompt, seed, negative_prompt=negative_prompt, width=latent_multiple(width), height=latent_multiple(height), steps=steps,
            cfg=cfg, adapter_strength=float(adapter_strength), progress=comfy_bridge.make_progress(cells * steps),
        )  # fmt: skip
        grid = labelled_grid(images, layout, title=prompt.strip().splitlines()[0] if prompt.strip() else "")
        targets = json.dumps([[t.valence, t.arousal] for t in layout.targets()])
        return (grid, images, targets)


NODE_CLASS_MAPPINGS: dict[str, type] = {NODE_ID: EmotionSweepGrid}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {NODE_ID: DISPLAY_NAME}

"""The LVLM judge's working memory in one reward forward pass, estimated from its config and the images' size.

For a pass over ``images`` images (``images_per_pass``, else all of the call's images):

- **image tokens from the real resolution and pixel limits**: the processor resizes each image to a
  multiple of ``patch × merge`` pixels (``smart_resize``: rounded to the multiple, then scaled into
  ``[min_pixels, max_pixels]``) and every ``merge × merge`` block of patches becomes one token.
  Qwen2/2.5-VL: 14-px patches merged 2×2, so one token per 28×28 px — a 1024² image is 37² = 1,369
  tokens, a 512² image 18² = 324. Patch and merge sizes come from the model's vision config, the pixel
  limits from ``rewards[i].max_pixels`` or the model's preprocessor config (:data:`PIXEL_LIMITS`).
  Judges whose vision encoder takes a fixed size (Gemma 3, InternVL, LLaVA-OneVision, SmolVLM; no
  ``spatial_merge_size``) are counted as one image at that size with the tokens their config names
  (``mm_tokens_per_image``, ``image_seq_length``, or the patches pooled by ``scale_factor``²); the
  extra tiles a tiling processor adds are not counted;
- **the vision encoder's activations** (no grad): the fp32 pixel patches, one block's tensors over
  all patches (hidden states in and out, q/k/v and attention output, the MLP's gate/up/activation; a
  fused SDPA kernel, no patch×patch matrix) and the merged embeddings handed to the language model;
- **the language model's prefix pass**: the key/value cache of all layers over every token, held
  twice — the shared-prefix path repeats it for the two answer prefixes (valence, arousal) — plus one
  decoder layer's tensors over all tokens.

Figures are estimates (labelled so in the plan); a GPU measurement replaces them where one exists.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

GIB = 1024**3
TEXT_TOKENS = 96  # chat template, question and answer prefix around the image (Qwen2.5-VL chat format)
#: (min_pixels, max_pixels) of each judge family's processor when neither the reward spec nor a local
#: preprocessor_config.json says otherwise: the values in the hub repos' preprocessor_config.json
PIXEL_LIMITS = {
    "qwen2_vl": (3136, 12845056),
    "qwen2_5_vl": (3136, 12845056),
}
DEFAULT_PIXEL_LIMITS = (56 * 56, 28 * 28 * 1280)  # transformers' Qwen2VLImageProcessor defaults


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The processor's resize: sides rounded to multiples of ``factor``, area scaled into the pixel limits."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageGrid:
    """How one image enters the judge: its resized side, patches and tokens."""

    side: tuple[int, int]
    patches: int
    tokens: int


def _first(value) -> int:
    """A size given as ``n`` or ``[n, n]`` (InternVL writes both sides)."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def image_grid(model: nn.Module, resolution: int, max_pixels: int = 0, folder: Optional[str] = None) -> ImageGrid:
    """Patches and tokens of one ``resolution``² image for ``model`` (see the module docstring)."""
    vision = getattr(model.config, "vision_config", None)
    patch = _first(getattr(vision, "patch_size", 14))
    if vision is not None and not hasattr(vision, "spatial_merge_size"):  # a fixed-size encoder (one tile)
        side = _first(getattr(vision, "image_size", resolution))
        patches = (side // patch) ** 2
        config = model.config
        tokens = (getattr(config, "mm_tokens_per_image", None) or getattr(config, "image_seq_length", None)
                  or patches // int(getattr(config, "scale_factor", 1)) ** 2)
        return ImageGrid((side, side), patches, int(tokens))
    merge = int(getattr(vision, "spatial_merge_size", 2))
    low, high = processor_pixel_limits(getattr(model.config, "model_type", ""), folder)
    if max_pixels:
        high = int(max_pixels)
    h, w = smart_resize(resolution, resolution, patch * merge, low, high)
    patches = (h // patch) * (w // patch)
    return ImageGrid((h, w), patches, patches // (merge * merge))


def processor_pixel_limits(model_type: str, folder: Optional[str] = None) -> tuple[int, int]:
    """(min_pixels, max_pixels) from a local ``preprocessor_config.json``, else the family's known values."""
    if folder:
        path = Path(folder).expanduser() / "preprocessor_config.json"
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            size = data.get("size") or {}
            low = data.get("min_pixels", size.get("shortest_edge"))
            high = data.get("max_pixels", size.get("longest_edge"))
            if low and high:
                return int(low), int(high)
    return PIXEL_LIMITS.get(model_type, DEFAULT_PIXEL_LIMITS)


def judge_working_bytes(model: nn.Module, images: int, dtype_bytes: int, grid: ImageGrid,
                        text_tokens: int = TEXT_TOKENS, answers: int = 2) -> tuple[int, str]:
    """Bytes one reward forward pass over ``images`` images holds at once, with how they were counted."""
    text = getattr(model.config, "text_config", model.config)
    layers, hidden = text.num_hidden_layers, text.hidden_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", heads)
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    tokens = images * (grid.tokens + text_tokens)
    kv = 2 * layers * kv_heads * head_dim * tokens * dtype_bytes * answers
    layer = tokens * (3 * text.intermediate_size + 4 * hidden) * dtype_bytes
    vision = vision_working_bytes(model, images * grid.patches, dtype_bytes)
    merged = images * grid.tokens * hidden * dtype_bytes
    total = kv + layer + vision + merged
    how = (f"estimate: {images} image(s) of {grid.side[0]}x{grid.side[1]} px = {grid.tokens} image tokens each "
           f"(+{text_tokens} text): vision encoder {vision / GIB:.3f} GiB, KV cache x{answers} (shared prefix, "
           f"one per answer) {kv / GIB:.3f} GiB, one decoder layer {layer / GIB:.3f} GiB, "
           f"image embeddings {merged / GIB:.3f} GiB")
    return total, how


def vision_working_bytes(model: nn.Module, patches: int, dtype_bytes: int) -> int:
    """Live bytes of the vision encoder's no-grad forward over ``patches`` patches (one block at a time)."""
    vision = getattr(model.config, "vision_config", None)
    if vision is None:
        return 0
    width = int(getattr(vision, "hidden_size", getattr(vision, "embed_dim", 0)))
    inner = int(getattr(vision, "intermediate_size", 4 * width))
    channels = int(getattr(vision, "in_chans", getattr(vision, "in_channels", 3)))
    patch = _first(getattr(vision, "patch_size", 14))
    temporal = int(getattr(vision, "temporal_patch_size", 1))  # Qwen-VL stacks 2 frames per patch; the others 1
    pixels = patches * channels * temporal * patch * patch * 4  # fp32 pixel patches from the processor
    block = patches * (6 * width + 3 * inner) * dtype_bytes  # in/out states, q/k/v + attention out, MLP
    return pixels + block

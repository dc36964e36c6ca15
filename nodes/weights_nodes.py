"""EmoFeedback2 Weights Loader: trained generator weights → MODEL (+ CLIP) with the LoRA, and the EMOTION_ADAPTER.

The LoRA goes through ComfyUI's own machinery, exactly like the stock LoraLoader
(``comfy.utils.load_torch_file(safe_load=True)`` + ``comfy.sd.load_lora_for_models``, kohya keys) —
but first every LoRA layer in the file is checked against the layers ComfyUI can map for this MODEL
(``comfy.lora.model_lora_keys_unet`` / ``model_lora_keys_clip``). ComfyUI itself only logs "lora key
not loaded" and carries on; this node refuses instead, so a LoRA made for another base model (or a
diffusers/PEFT file whose attention layers ComfyUI would drop) never loads partially.

Adapter files are looked up in ``models/emotion_adapters`` (registered here, keeping paths from
extra_model_paths.yaml) and, prefixed ``loras/``, in the ``loras`` folder.

Without a CLIP input the ``clip`` output is a :class:`NoClipConnected` placeholder, not ``None``: a
node that uses it (core's CLIPTextEncode, a LoRA loader, our conditioner) stops with this pack's
:class:`NoClipError` saying which input to connect, instead of core's "your checkpoint does not
contain a valid clip", which sends the user after a checkpoint that is fine. (A V1 node cannot
drop an output when an input is unwired, so the output stays and explains itself.)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..engines.generation.emotion_adapter import (
    ARCH_NAMES, AdapterArchitectureError, is_emotion_adapter_file, load_emotion_adapter, read_adapter_metadata,
)
from . import comfy_bridge
from .errors import clean_errors
from .common import category, display_name, node_id
from .conditioner_nodes import EMOTION_ADAPTER_TYPE
from ..engines.errors import UserError
from .errors import display_class

ADAPTER_FOLDER = "emotion_adapters"
LORA_FOLDER = "loras"
LORA_PREFIX = "loras/"
NONE = "none"

# ComfyUI supported_models class names → our architecture names.
COMFY_MODEL_ARCH = {"SD15": "sd15", "SDXL": "sdxl", "SD3": "sd3", "Flux": "flux", "FluxSchnell": "flux",
                    "QwenImage": "qwen_image", "Flux2": "flux2_klein", "ZImage": "z_image"}
TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "lora_clip", "text_encoders.")
_LOG = logging.getLogger("EmoFeedback2")
_LORA_SUFFIXES = (
    ".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale", ".lora_A.weight", ".lora_B.weight",
    ".lora.down.weight", ".lora.up.weight", ".lora_mid.weight",
)


NAME = "Weights Loader"
NODE_ID, DISPLAY_NAME = node_id(NAME), display_name(NAME)


class LoraMismatchError(UserError, ValueError):
    """A LoRA file's layers do not all exist in the MODEL/CLIP it is applied to."""


class NoClipError(UserError, AttributeError):
    """A node used the Weights Loader's clip output while nothing was connected to its clip input.

    An AttributeError too, so ``getattr(clip, name, default)`` probes still get their default.
    """


NO_CLIP_MESSAGE = (
    f"no CLIP reached this node: the {DISPLAY_NAME}'s clip output is empty because nothing is connected to its "
    "clip input. Connect your checkpoint loader's CLIP to the Weights Loader's clip input (that also applies the "
    "LoRA's text-encoder layers), or wire the checkpoint loader's CLIP straight to this node."
)


class NoClipConnected:
    """The clip output when no CLIP was wired in: any use raises :class:`NoClipError` naming the fix."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle/introspection probes: plain "no such attribute"
            raise AttributeError(name)
        raise display_class(NoClipError)(NO_CLIP_MESSAGE)

    def __repr__(self) -> str:
        return "<no CLIP connected to the EmoFeedback2 Weights Loader>"


def _list(folder: str) -> list[str]:
    try:
        if folder == ADAPTER_FOLDER:
            comfy_bridge.ensure_model_folder(ADAPTER_FOLDER)
        return [f for f in comfy_bridge.filename_list(folder) if f.lower().endswith((".safetensors", ".sft"))]
    except (ImportError, KeyError):  # outside ComfyUI (CLI, docs, convention tests): nothing to list
        return []


_ADAPTER_CHECKS: dict[tuple[str, int, int], bool] = {}


def _is_adapter(path: str) -> bool:
    """Whether the file's safetensors metadata says emotion adapter (header only; cached per mtime/size)."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    key = (os.path.realpath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _ADAPTER_CHECKS:
        _ADAPTER_CHECKS[key] = is_emotion_adapter_file(path)
    return _ADAPTER_CHECKS[key]


def adapter_choices() -> list[str]:
    """``none``, then every emotion adapter file once: ``models/emotion_adapters`` first, then ``loras/…``.

    Only files whose metadata marks them as emotion adapters are listed (ordinary LoRAs in
    ``models/loras`` are not); a file reachable from both folders appears once.
    """
    choices, seen = [NONE], set()
    for folder, prefix in ((ADAPTER_FOLDER, ""), (LORA_FOLDER, LORA_PREFIX)):
        for name in _list(folder):
            try:
                path = comfy_bridge.full_path(folder, name)
            except (ImportError, KeyError):
                path = None
            if path is None or not _is_adapter(path):
                continue
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            choices.append(prefix + name)
    return choices


def resolve_adapter_path(name: str) -> str:
    """Full path of a dropdown entry: ``emotion_adapters`` first, then ``loras/…`` in the loras folder."""
    comfy_bridge.ensure_model_folder(ADAPTER_FOLDER)
    try:
        return comfy_bridge.full_path_or_raise(ADAPTER_FOLDER, name)
    except FileNotFoundError:
        if name.startswith(LORA_PREFIX):
            return comfy_bridge.full_path_or_raise(LORA_FOLDER, name[len(LORA_PREFIX):])
        raise FileNotFoundError(
            f"emotion adapter {name!r} not found in models/{ADAPTER_FOLDER}; put the .safetensors file there "
            "and refresh the page"
        ) from None


def model_arch(model: Any) -> Optional[str]:
    """Our family name (``sd15`` … ``z_image``) from ComfyUI's detected model config, or None for other families."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return COMFY_MODEL_ARCH.get(type(config).__name__) if config is not None else None


def lora_layer_names(lora: dict) -> set[str]:
    """The layer prefixes a LoRA state dict patches (``…lora_down.weight`` → ``…``)."""
    names = set()
    for key in lora:
        for suffix in _LORA_SUFFIXES:
            if key.endswith(suffix):
                names.add(key[: -len(suffix)])
                break
    return names


@dataclass
class LoraFit:
    """What of a LoRA file applies: the layers ComfyUI maps, and text-encoder layers left out."""

    layers: int
    skipped_text_layers: list[str] = field(default_factory=list)

    def model_part(self, lora: dict) -> dict:
        """``lora`` without the skipped text-encoder layers (so ComfyUI logs no unloaded keys)."""
        if not self.skipped_text_layers:
            return lora
        skipped = set(self.skipped_text_layers)
        return {k: v for k, v in lora.items() if _layer_of(k) not in skipped}


def _layer_of(key: str) -> str:
    for suffix in _LORA_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def check_lora_fits(lora: dict, model: Any, clip: Any, lora_name: str) -> LoraFit:
    """Raise :class:`LoraMismatchError` unless every LoRA layer maps onto MODEL (or CLIP).

    Without a CLIP input the text-encoder layers cannot apply: like the stock LoraLoaderModelOnly,
    the model part is applied and those layers are reported as skipped (``LoraFit.skipped_text_layers``).
    """
    import comfy.lora
    import comfy.lora_convert

    key_map: dict[str, str] = {}
    key_map = comfy.lora.model_lora_keys_unet(model.model, key_map)
    if clip is not None:
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
    layers = lora_layer_names(comfy.lora_convert.convert_lora(lora))
    if not layers:
        raise LoraMismatchError(
            f"{lora_name} holds no LoRA layers (no lora_down/lora_up keys). If it is an emotion adapter, "
            "choose it under adapter_name instead."
        )
    unmapped = sorted(layer for layer in layers if layer not in key_map)
    text_layers = [u for u in unmapped if u.startswith(TEXT_ENCODER_PREFIXES)]
    if clip is None and text_layers and len(text_layers) == len(unmapped):
        return LoraFit(layers=len(layers) - len(text_layers), skipped_text_layers=text_layers)
    if unmapped:
        arch = model_arch(model)
        family = ARCH_NAMES.get(arch, "this") if arch else "this"
        hint = (
            " Its keys are in diffusers/PEFT format, which ComfyUI loads only partly: export kohya keys with "
            "`emofeedback2 export`."
            if any(".lora_A" in k or ".lora_B" in k for k in lora)
            else " It was probably made for another base model; use the LoRA trained for this one."
        )
        raise LoraMismatchError(
            f"{lora_name}: {len(unmapped)} of {len(layers)} LoRA layers do not exist in {family} model "
            f"(e.g. {', '.join(unmapped[:3])}). Refusing a partial load.{hint}"
        )
    return LoraFit(layers=len(layers))


class EmotionWeightsLoader:
    """Apply an EmoFeedback2-trained LoRA to MODEL/CLIP and load its emotion adapter."""

    CATEGORY = category("loaders")
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", EMOTION_ADAPTER_TYPE, "STRING")
    RETURN_NAMES = ("model", "clip", "emotion_adapter", "report")
    OUTPUT_TOOLTIPS = (
        "The model with the emotion LoRA applied (unchanged if lora_name is none).",
        "The CLIP with the LoRA's text-encoder layers applied. With no CLIP connected it is empty: a node that "
        "uses it stops with an error saying to connect CLIP here.",
        "The emotion adapter for the EmoFeedback2 Conditioner (None if adapter_name is none).",
        "What was loaded: LoRA layers applied, text-encoder layers skipped for want of a CLIP input, the adapter.",
    )
    DESCRIPTION = (
        "Loads the generator weights trained by EmoFeedback2: a LoRA (from models/loras, kohya keys, applied "
        "through ComfyUI's LoRA loader) and an emotion adapter (from models/emotion_adapters). Without a CLIP "
        "input only the LoRA's diffusion-model part is applied (like LoraLoaderModelOnly), the report says "
        "so and the clip output stays empty (take CLIP from your checkpoint loader). A LoRA whose layers do not match this model is refused with an explanation instead of loading partially."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base model the weights were trained on."}),
                "lora_name": ([NONE] + _list(LORA_FOLDER), {
                    "tooltip": "LoRA file from models/loras trained by EmoFeedback2 (none = keep the model as is)."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                             "tooltip": "LoRA strength on the diffusion model (1 = as trained)."}),
                "adapter_name": (adapter_choices(), {
                    "tooltip": "Emotion adapter file trained by EmoFeedback2, from models/emotion_adapters (entries "
                               "starting loras/ are adapter files in models/loras; ordinary LoRAs are not listed). "
                               "none = no adapter."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Connect to also apply the LoRA's text-encoder layers (if any) and to use "
                                            "the clip output. Left unconnected, only the diffusion-model part is "
                                            "applied and the clip output is empty."}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                            "tooltip": "LoRA strength on the text encoder (1 = as trained)."}),
            },
        }

    @clean_errors
    def load(
        self, model: Any, lora_name: str, strength_model: float, adapter_name: str,
        clip: Any = None, strength_clip: float = 1.0,
    ):
        if model is None:
            raise ValueError("the model input is empty: connect your checkpoint loader's MODEL output")
        if isinstance(clip, NoClipConnected):  # chained after a Weights Loader that had no CLIP either
            clip = None
        notes: list[str] = []
        if lora_name and lora_name != NONE:
            import comfy.sd
            import comfy.utils

            path = comfy_bridge.full_path_or_raise(LORA_FOLDER, lora_name)
            lora = comfy.utils.load_torch_file(path, safe_load=True)
            fit = check_lora_fits(lora, model, clip, lora_name)
            if fit.skipped_text_layers:
                import comfy.lora_convert

                lora = fit.model_part(comfy.lora_convert.convert_lora(lora))
                note = (
                    f"{lora_name}: applied {fit.layers} diffusion-model LoRA layers; skipped its "
                    f"{len(fit.skipped_text_layers)} text-encoder layers because no CLIP is connected "
                    "(connect CLIP to apply them too)"
                )
                _LOG.warning("[EmoFeedback2] %s", note)
                notes.append(note)
            else:
                notes.append(f"{lora_name}: applied {fit.layers} LoRA layers")
            if strength_model != 0 or (clip is not None and strength_clip != 0):
                model, clip = comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)
        else:
            notes.append("no LoRA")
        adapter = None
        if adapter_name and adapter_name != NONE:
            path = resolve_adapter_path(adapter_name)
            meta = read_adapter_metadata(path)  # clear error for non-adapter files (e.g. a LoRA)
            arch = model_arch(model)
            if arch is not None and meta.get("architecture") != arch:
                raise AdapterArchitectureError(
                    f"{Path(path).name} is an emotion adapter for {ARCH_NAMES.get(meta.get('architecture'), '?')}, "
                    f"but the connected model is {ARCH_NAMES[arch]}. Pick the adapter trained for this base model."
                )
            adapter = load_emotion_adapter(path, expected_arch=arch)
            notes.append(f"emotion adapter {adapter_name} ({ARCH_NAMES.get(meta.get('architecture'), '?')})")
        else:
            notes.append("no emotion adapter")
        if clip is None:
            notes.append("clip output empty (no CLIP connected)")
            clip = NoClipConnected()
        return (model, clip, adapter, "; ".join(notes))


NODE_CLASS_MAPPINGS: dict[str, type] = {NODE_ID: EmotionWeightsLoader}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {NODE_ID: DISPLAY_NAME}

"""Loading the judge's weights: model folder or hub id, safetensors only, optional peft adapter, pixel limits.

Every failure ends in an :class:`~.lvlm_config.LVLMLoadError` that names the folder to fix.

Pixel limits travel with a trained adapter: ``train-judge`` records the limits its images were
read at in the adapter's ``judge_training.json``, and :func:`apply_pixel_limits` (called by every
load) applies them unless the caller set its own, in which case one log line says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import SafetensorError

from .. import devices
from .adapter_record import read_adapter_record
from .lvlm_config import _HUB_ID, MODELS_LLM_HINT, LVLMConfig, LVLMLoadError
from .options import quantization_kwargs

logger = logging.getLogger(__name__)

PIXEL_FIELDS = ("min_pixels", "max_pixels")


def resolve_device(device: str = "auto") -> torch.device:
    return devices.resolve_device(device, error=LVLMLoadError)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    return devices.resolve_dtype(dtype, device, auto_cuda=torch.bfloat16, error=LVLMLoadError)


def _looks_like_hub_id(model: str) -> bool:
    """``owner/name`` with no leading ``.``/``~``/``/`` and no backslash: a Hugging Face hub id."""
    return (
        not os.path.isabs(model)
        and not model.startswith((".", "~"))
        and "\\" not in model
        and _HUB_ID.match(model) is not None
    )


def resolve_model_source(model: str) -> tuple[str, bool]:
    """Return ``(source, is_local)``: an existing folder with config.json, or a hub id.

    Raises :class:`LVLMLoadError` naming the folder (and ComfyUI's ``models/LLM``) when a path is
    given that does not exist or is not a model folder.
    """
    if not isinstance(model, str) or not model.strip():
        raise LVLMLoadError(f"model must be a model folder or a hub id, got {model!r}. {MODELS_LLM_HINT}.")
    model = model.strip()
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        if (path / "model_index.json").is_file():
            raise LVLMLoadError(
                f"{path} is a diffusion pipeline folder (it has model_index.json), not a vision-language judge: pass it "
                "as the generator (--pipeline / the checkpoint), and give the judge a vision-language model folder "
                f"such as Qwen2.5-VL-7B-Instruct. {MODELS_LLM_HINT}."
            )
        if not (path / "config.json").is_file():
            raise LVLMLoadError(
                f"{path} is not a Hugging Face model folder (no config.json in it). Put the whole model "
                f"folder there (config.json, *.safetensors, tokenizer and processor files). {MODELS_LLM_HINT}."
            )
        return str(path), True
    if path.exists():
        raise LVLMLoadError(f"{path} is a file; the LVLM must be a model folder with config.json. {MODELS_LLM_HINT}.")
    if not _looks_like_hub_id(model):
        raise LVLMLoadError(
            f"LVLM model folder not found: {path}. Check the path, or download the model into that folder. "
            f"{MODELS_LLM_HINT}."
        )
    return model, False


def _check_image_text_model(config: Any, source: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return
    if "AutoModelForImageTextToText" in (getattr(config, "auto_map", None) or {}):
        return
    if getattr(config, "vision_config", None) is None:
        raise LVLMLoadError(
            f"{source} is a text-only model (model_type {model_type!r}); the emotion scorer needs a "
            f"vision-language (image-text-to-text) chat model such as {JUDGE_FAMILIES_HINT}."
        )
    raise LVLMLoadError(
        f"{source} (model_type {model_type!r}) is not an image-text-to-text model this transformers knows; "
        f"use one such as {JUDGE_FAMILIES_HINT} (newer families may need a newer transformers), or set "
        "trust_remote_code if its repo ships the code."
    )


#: families the judge is tested on (tiny random versions of each; see docs/scoring.md)
JUDGE_FAMILIES_HINT = ("Qwen2.5-VL-7B-Instruct, Qwen2-VL, Qwen3-VL, Qwen3.5, Gemma 3/4, InternVL 3.5 (-HF), "
                       "LLaVA-OneVision or SmolVLM")


def _sizes_by_area(image_processor: Any) -> bool:
    """Whether the image processor limits images by pixel *area* (``min_pixels``/``max_pixels``, Qwen-VL style);
    others size by edge length, fixed squares or token budgets, where a pixel count means nothing."""
    import typing

    valid = getattr(image_processor, "valid_kwargs", None)
    try:
        hints = typing.get_type_hints(valid) if valid is not None else {}
    except Exception:  # an unusual kwargs class: fall back to the attribute
        hints = {}
    return "max_pixels" in hints or hasattr(image_processor, "max_pixels")


def _apply_pixel_limits(processor: Any, min_pixels: Optional[int], max_pixels: Optional[int]) -> None:
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or (min_pixels is None and max_pixels is None):
        return
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LVLMLoadError(f"{name} must be a positive integer number of pixels, got {value!r}")
    if not _sizes_by_area(image_processor):
        return  # e.g. SmolVLM's size.longest_edge is an edge in pixels, Gemma 3 a fixed square: keep the model's own
    size = dict(getattr(image_processor, "size", None) or {})
    if "longest_edge" in size or "shortest_edge" in size:
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        if size.get("shortest_edge", 0) > size.get("longest_edge", float("inf")):
            raise LVLMLoadError(f"min_pixels ({size['shortest_edge']}) is larger than max_pixels ({size['longest_edge']})")
        image_processor.size = size
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and hasattr(image_processor, name):
            setattr(image_processor, name, value)


def processor_pixel_limits(processor: Any) -> dict[str, Optional[int]]:
    """The pixel limits the processor applies now, in the fields :func:`_apply_pixel_limits` sets.

    Only processors that size images by area have pixel limits: SmolVLM's ``size.longest_edge`` is an
    edge length, not a pixel count, so it gives ``None`` for both (nothing to record with an adapter).
    """
    image_processor = getattr(processor, "image_processor", None)
    limits: dict[str, Optional[int]] = {name: None for name in PIXEL_FIELDS}
    if image_processor is None or not _sizes_by_area(image_processor):
        return limits
    size = dict(getattr(image_processor, "size", None) or {})
    for name, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        value = getattr(image_processor, name, None)
        value = value if value is not None else size.get(key)
        limits[name] = int(value) if isinstance(value, (int, float)) and value > 0 else None
    return limits


def adapter_pixel_limits(adapter: Optional[str]) -> dict[str, int]:
    """The pixel limits an adapter was trained at (from its ``judge_training.json``), or ``{}``.

    The record is a file in a downloaded folder: anything but positive integers is ignored.
    """
    record = read_adapter_record(adapter)
    pixels = record.get("pixels") if record else None
    if not isinstance(pixels, dict):
        return {}
    return {name: pixels[name] for name in PIXEL_FIELDS
            if isinstance(pixels.get(name), int) and not isinstance(pixels[name], bool) and pixels[name] > 0}


def apply_pixel_limits(processor: Any, config: LVLMConfig) -> dict[str, Optional[int]]:
    """Apply ``config``'s pixel limits, falling back to those its adapter was trained at; returns what applies.

    An explicit ``min_pixels``/``max_pixels`` wins over the adapter's and is logged as an override: the
    judge then reads images at another resolution than it was trained at.
    """
    trained = adapter_pixel_limits(config.adapter)
    chosen = {name: getattr(config, name) for name in PIXEL_FIELDS}
    overrides = [f"{name}={chosen[name]} (trained at {trained[name]})" for name in PIXEL_FIELDS
                 if chosen[name] is not None and name in trained and chosen[name] != trained[name]]
    if overrides:
        logger.warning("judge adapter %s: %s set explicitly overrides the pixel limits it was trained at; leave "
                       "the setting empty (0 in the LVLM loader node) to read images as in training",
                       Path(config.adapter).name, ", ".join(overrides))
    limits = {name: chosen[name] if chosen[name] is not None else trained.get(name) for name in PIXEL_FIELDS}
    _apply_pixel_limits(processor, limits["min_pixels"], limits["max_pixels"])
    return limits


def _load_adapter(model: Any, adapter: str) -> Any:
    folder = Path(os.path.expanduser(adapter))
    if not folder.is_dir():
        raise LVLMLoadError(
            f"LoRA adapter folder not found: {folder}. Point 'adapter' at the folder training wrote "
            "(it contains adapter_config.json and adapter_model.safetensors), or leave it empty."
        )
    if not (folder / "adapter_config.json").is_file():
        raise LVLMLoadError(f"{folder} has no adapter_config.json; it is not a peft LoRA adapter folder.")
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as exc:  # peft raises various errors for mismatched adapters
        raise LVLMLoadError(f"could not apply the LoRA adapter in {folder} to this model: {exc}") from exc


def load_lvlm_weights(config: LVLMConfig, source: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The model (with its adapter) in eval mode; quantised models are placed on ``device`` here."""
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    kwargs.update(quantization_kwargs(config.quantization, device, dtype))
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except SafetensorError as exc:  # truncated or overwritten weights file
        raise LVLMLoadError(
            f"the weights in {source} are damaged ({exc}): download the *.safetensors files of the model again"
        ) from exc
    except (OSError, ValueError, ImportError) as exc:
        raise LVLMLoadError(
            f"could not load the model from {source}: {exc}. The folder needs *.safetensors weights "
            f"(no .bin), config.json, tokenizer and processor files. {MODELS_LLM_HINT}."
        ) from exc
    if config.adapter:
        model = _load_adapter(model, config.adapter)
    model.eval()
    return model


def _module_bytes(model: Any) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.nelement() * t.element_size() for t in tensors)

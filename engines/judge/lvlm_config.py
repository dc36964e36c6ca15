"""What the LVLM judge is asked and how it is loaded: the config, the questions, the reading's tensors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import UserError

MODELS_LLM_HINT = "ComfyUI users: put the model folder under ComfyUI/models/LLM/<name> and pick <name> in the LVLM loader node"

#: The rating scale the questions ask for; digits map linearly to [-3, 3] (5 → 0).
SCALE_DIGITS = tuple(str(d) for d in range(1, 10))
_SCALE_LO, _SCALE_HI = 1.0, 9.0

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class LVLMLoadError(UserError, RuntimeError):
    """The LVLM (or its adapter/processor) cannot be loaded; the message says what to fix."""


@dataclass(frozen=True)
class ScoringPrompts:
    """The two questions and their answer prefixes. A prefix ends with a space: the digit follows (the loaded
    judge drops that space where its tokenizer joins a space and a digit into one token; see digit_readout)."""

    question: str = (
        "Rate the feeling this image evokes on two 1-9 scales. Valence: 1 very unpleasant, 5 neutral, "
        "9 very pleasant. Arousal: 1 very calm, 5 moderate, 9 very excited. Answer with one digit per scale."
    )
    valence_prefix: str = "Valence: "
    arousal_prefix: str = "Arousal: "
    analysis_instruction: str = (
        "In one or two short sentences, say which visual elements of this image (colour, light, subject, "
        "expression, composition) make it feel pleasant or unpleasant, and calm or excited."
    )


@dataclass
class LVLMConfig:
    """How to load and run the judge model. Every field has a safe default except ``model``."""

    #: local model folder (with config.json) or a Hugging Face hub id such as "Qwen/Qwen2.5-VL-7B-Instruct"
    model: str
    #: "auto" (bfloat16 on a GPU that supports it, else float32), "float32", "bfloat16" or "float16"
    dtype: str = "auto"
    #: "auto" (cuda, then mps, then cpu), or a torch device string such as "cuda:1" or "cpu"
    device: str = "auto"
    #: None = transformers' default; or "sdpa", "eager", "flash_attention_2" (CUDA + flash-attn only)
    attn_implementation: Optional[str] = None
    #: "none", "8bit" or "4bit": bitsandbytes weight quantisation (needs bitsandbytes; CUDA in practice).
    #: A quantised model cannot be moved between devices: offloading frees it and it reloads when needed.
    quantization: str = "none"
    #: a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors), e.g. from training
    adapter: Optional[str] = None
    #: allow model code from the model folder/hub repo to run; off unless you trust the source
    trust_remote_code: bool = False
    #: cap on pixels per image fed to the vision encoder (speed/memory); None keeps the processor's
    max_pixels: Optional[int] = None
    #: floor on pixels per image; None keeps the processor's
    min_pixels: Optional[int] = None
    #: move the model to ``offload_device`` after every call (frees GPU memory between uses)
    offload_after_use: bool = False
    offload_device: str = "cpu"
    #: on the full-row path, run each image through the vision tower once and reuse its features for
    #: both questions (models that accept transformers' ``mm_encoder_outputs`` and whose image processor
    #: reports per-image patch grids: the Qwen families); False repeats the image per row
    share_vision: bool = True
    #: run the prompt (and image) once per image and only the short answer prefixes per question,
    #: on the prompt's key/value cache (any model that returns a cache); False runs a full sequence per question
    share_prefix: bool = True
    #: images per forward pass; 0 = all images of a call in one pass (the default)
    max_images_per_pass: int = 0
    #: length cap of the optional per-image explanation, in generated tokens
    analysis_max_new_tokens: int = 64
    prompts: ScoringPrompts = field(default_factory=ScoringPrompts)


@dataclass
class ScoreDetails:
    """Tensors behind a batch of readings. ``digit_mass`` is the probability the model put on any
    scale digit at the answer position (near 1 = the model was answering the question; a low value
    flags a reading that rests on little probability mass)."""

    valence: torch.Tensor
    arousal: torch.Tensor
    digit_mass_valence: torch.Tensor
    digit_mass_arousal: torch.Tensor

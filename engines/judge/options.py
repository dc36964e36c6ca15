"""Loading options of the LVLM judge that depend on the machine: attention kernel and quantisation.

Both are checked before any weights are read, so a wrong choice fails in a second with a message
that names the fix (``sdpa`` instead of flash-attention on a CPU; ``pip install bitsandbytes``), not
after minutes of loading or deep inside transformers. The module imports no torch at import time,
so the command line can offer the choices and still start instantly.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Optional

from ..errors import UserError

if TYPE_CHECKING:
    import torch

ATTENTION_CHOICES = ("sdpa", "eager", "flash_attention_2")
#: What a config file may say: "auto" = transformers' default kernel (``attn_implementation=None``).
ATTENTION_SETTINGS = ("auto", *ATTENTION_CHOICES)


def attention_setting(value: str) -> Optional[str]:
    """A config's ``attention`` value as ``LVLMConfig.attn_implementation`` ("auto" → None)."""
    return None if value in (None, "", "auto") else value


QUANTIZATION_CHOICES = ("none", "8bit", "4bit")


class LVLMOptionError(UserError, ValueError):
    """An attention or quantisation choice this machine or this install cannot run."""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_attention(attn_implementation: Optional[str], device: torch.device) -> None:
    """Refuse an attention kernel the device or the install cannot run, saying what to pick instead."""
    if attn_implementation in (None, "auto"):
        return
    if attn_implementation not in ATTENTION_CHOICES:
        raise LVLMOptionError(
            f"attn_implementation={attn_implementation!r}; use None (transformers' default) or one of "
            f"{', '.join(ATTENTION_CHOICES)}"
        )
    if attn_implementation != "flash_attention_2":
        return
    if device.type != "cuda":
        raise LVLMOptionError(
            f"flash_attention_2 needs a CUDA GPU and the flash-attn package, but the judge runs on {device.type}. "
            "Choose attention 'sdpa' (fast on every device) or 'eager'."
        )
    if not _installed("flash_attn"):
        raise LVLMOptionError(
            "flash_attention_2 needs the flash-attn package, which is not installed in this Python "
            "(pip install flash-attn, built for your torch and CUDA). Or choose attention 'sdpa'."
        )


def normalise_quantization(quantization: Optional[str]) -> str:
    """``"none"``, ``"8bit"`` or ``"4bit"``; None and ``""`` mean ``"none"``."""
    value = (quantization or "none").strip().lower()
    if value not in QUANTIZATION_CHOICES:
        raise LVLMOptionError(f"quantization={quantization!r}; use one of {', '.join(QUANTIZATION_CHOICES)}")
    return value


def quantization_kwargs(quantization: Optional[str], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Extra ``from_pretrained`` arguments for bitsandbytes 8-bit/4-bit loading (empty for ``"none"``).

    A quantised model is placed on ``device`` while it loads (``device_map``) and cannot be moved
    afterwards; callers free it by dropping it and load it again when needed.
    """
    kind = normalise_quantization(quantization)
    if kind == "none":
        return {}
    import torch

    if not _installed("bitsandbytes"):
        raise LVLMOptionError(
            f"quantization={kind!r} needs the bitsandbytes package, which is not installed in this Python "
            "(pip install bitsandbytes). Or choose quantization 'none'."
        )
    if device.type == "mps":
        raise LVLMOptionError(f"bitsandbytes {kind} loading does not run on Apple MPS; choose quantization 'none'.")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        compute = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    return {"quantization_config": config, "device_map": {"": str(device)}}


def is_quantized(model: Any) -> bool:
    """Whether ``model`` holds bitsandbytes weights (which ``.to(device)`` cannot move)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(
        getattr(base, "is_loaded_in_8bit", False)
        or getattr(base, "is_loaded_in_4bit", False)
        or getattr(base, "hf_quantizer", None) is not None
    )

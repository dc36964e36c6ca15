"""A quantised frozen denoiser under the LoRA (``model.quantization``): QLoRA for the big transformers.

The base weights never train, so they can sit in 8 or 4 bits while the LoRA and the emotion adapter
stay fp32 (peft wraps bitsandbytes' and torchao's quantised Linear layers with its own LoRA layers).
Loading goes through diffusers' own ``quantization_config`` at ``from_pretrained``
(:class:`diffusers.PipelineQuantizationConfig` mapping the denoiser to a ``BitsAndBytesConfig`` or a
``TorchAoConfig``), so the weights are quantised as they load and the full-precision model is
never resident.

- ``bitsandbytes`` (default): ``8bit`` = LLM.int8 weights, ``4bit`` = NF4 with double quantisation,
  computing in ``model.dtype``. Needs a CUDA GPU.
- ``torchao``: ``8bit`` = int8 weight-only (per-row scales), which also runs on CPU; torchao's 4-bit
  layouts have no peft LoRA layer, so ``4bit`` is refused there.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from ..config_fields import ConfigError

QUANTIZATIONS = ("none", "8bit", "4bit")
BACKENDS = ("bitsandbytes", "torchao")
PACKAGES = {"bitsandbytes": "bitsandbytes>=0.45", "torchao": "torchao>=0.16"}


def check_quantization(model: Any, device: str) -> None:
    """Refuse a quantised base the chosen backend cannot give on ``device`` ("cpu", "cuda" or "auto": the
    config's value when validating, the device the run got when the trainer starts). Imports nothing."""
    q, backend = model.quantization, model.quantization_backend
    if q not in QUANTIZATIONS:
        raise ConfigError(f"model.quantization must be one of {', '.join(QUANTIZATIONS)}, got {q!r}")
    if backend not in BACKENDS:
        raise ConfigError(f"model.quantization_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if q == "none":
        return
    if backend == "bitsandbytes" and device == "cpu":
        raise ConfigError(
            f"model.quantization = \"{q}\" with bitsandbytes needs a CUDA GPU, and this run is on the CPU; "
            "set model.quantization_backend = \"torchao\" (8bit, runs on CPU) or model.quantization = \"none\"")
    if backend == "torchao" and q == "4bit":
        raise ConfigError(
            "model.quantization = \"4bit\" with torchao has no LoRA layer in peft (it wraps torchao's int8 "
            "weight-only only); use quantization = \"8bit\", or model.quantization_backend = \"bitsandbytes\" "
            "for NF4 on a GPU")


def denoiser_component(pretrained: str) -> str:
    """``unet`` or ``transformer``: which component of the pipeline folder is the denoiser."""
    index = Path(pretrained).expanduser() / "model_index.json"
    if index.is_file():
        names = json.loads(index.read_text(encoding="utf-8"))
        if names.get("unet", [None])[0] is not None:
            return "unet"
    return "transformer"  # hub ids: the transformer families are the ones worth quantising


def _backend_config(backend: str, quantization: str, dtype: Any) -> Any:
    if importlib.util.find_spec(backend) is None:
        raise ConfigError(f"model.quantization = \"{quantization}\" needs the {backend} package: "
                          f"pip install \"{PACKAGES[backend]}\" (or set model.quantization = \"none\")")
    if backend == "torchao":
        from diffusers import TorchAoConfig
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    from diffusers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def from_pretrained_kwargs(model: Any, dtype: Any) -> dict[str, Any]:
    """Extra ``DiffusionPipeline.from_pretrained`` arguments that quantise the denoiser ({} for "none")."""
    if model.quantization == "none":
        return {}
    from diffusers import PipelineQuantizationConfig

    config = _backend_config(model.quantization_backend, model.quantization, dtype)
    return {"quantization_config": PipelineQuantizationConfig(
        quant_mapping={denoiser_component(model.pretrained): config})}

"""Real-size models on the ``meta`` device (shapes only, no weights): the pipeline's parts and the reward models.

A local folder's ``config.json`` files are read when there is one; otherwise :mod:`.real_configs`
holds the configs of the hub ids the shipped recipes name.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ...engines.errors import UserError
from . import real_configs

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PlanError(UserError, ValueError):
    """The plan cannot be computed (a model's configs are not available locally)."""


def _import(library: str, name: str):
    return getattr(importlib.import_module(library), name)


def _meta_module(library: str, cls_name: str, config: dict | str | Path) -> nn.Module:
    """``cls`` built from a config dict or a folder holding ``config.json``, on the meta device."""
    cls = _import(library, cls_name)
    with torch.device("meta"):
        if library == "diffusers":
            cfg = cls.load_config(str(config)) if isinstance(config, (str, Path)) else dict(config)
            return cls.from_config(cfg)
        config_cls = cls.config_class
        cfg = config_cls.from_pretrained(str(config)) if isinstance(config, (str, Path)) else config_cls(**config)
        return cls(cfg)


def pipeline_components(pretrained: str) -> dict[str, nn.Module]:
    """The pipeline's denoiser, VAE and text encoders on the meta device, from a local folder or a known id."""
    folder = Path(pretrained).expanduser()
    modules: dict[str, nn.Module] = {}
    if folder.is_dir() and (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        for name in ("transformer", "unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            entry = index.get(name)
            if not entry or entry[0] is None or not (folder / name / "config.json").is_file():
                continue
            modules[name] = _meta_module(entry[0], entry[1], folder / name)
        return modules
    known = real_configs.PIPELINES.get(pretrained)
    if known is None:
        raise PlanError(
            f"model.pretrained={pretrained!r} is neither a local diffusers folder nor a model the plan knows "
            f"({', '.join(real_configs.PIPELINES)}); download the pipeline folder (the plan reads only its "
            "config.json files) and point model.pretrained at it"
        )
    return {name: _meta_module(lib, cls, cfg) for name, (lib, cls, cfg) in known.items()}


def reward_model(kind: str, path: str) -> Optional[nn.Module]:
    """The reward's model on the meta device (None for weight-free rewards)."""
    if kind not in ("lvlm", "lvlm_reasoning", "clip_quality"):
        return None
    folder = Path(path).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        if kind != "clip_quality":
            from transformers import AutoConfig, AutoModelForImageTextToText

            with torch.device("meta"):
                return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(folder)))
        return _meta_module("transformers", "CLIPModel", folder)
    known = real_configs.known_reward_config(path)
    if known is None:
        raise PlanError(f"reward model {path!r} is neither a local folder with config.json nor a model the plan "
                        f"knows ({', '.join(real_configs.REWARD_MODELS)}); download it (config.json suffices)")
    config_cls, cfg = known
    if config_cls == "CLIPConfig":
        from transformers import CLIPConfig, CLIPModel

        with torch.device("meta"):
            return CLIPModel(CLIPConfig(**cfg))
    from transformers import AutoModelForImageTextToText

    config = _import("transformers", config_cls)(**cfg)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def count_params(module: nn.Module, predicate=None) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if predicate is None or predicate(n, p))


def quantized_bytes(module: nn.Module, dtype_bytes: int, quantization: str) -> tuple[int, str]:
    """bitsandbytes layout: Linear weights at 1 byte (+ fp32 row scale) or 4 bits (+ fp32 absmax per 64)."""
    if quantization == "none":
        n = count_params(module)
        return n * dtype_bytes, f"{n:,d} params x {dtype_bytes} B"
    linear_w = other = 0
    rows = 0
    skip = ("lm_head",)  # transformers keeps the output head unquantised
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and not name.endswith(skip):
            linear_w += sub.weight.numel()
            rows += sub.weight.shape[0]
    n = count_params(module)
    other = n - linear_w
    if quantization == "8bit":
        total = linear_w + 4 * rows + other * dtype_bytes
        how = f"{linear_w:,d} Linear weights x 1 B + {rows:,d} fp32 row scales + {other:,d} params x {dtype_bytes} B"
    else:
        total = linear_w // 2 + 4 * math.ceil(linear_w / 64) + other * dtype_bytes
        how = f"{linear_w:,d} Linear weights x 0.5 B + fp32 absmax per 64 + {other:,d} params x {dtype_bytes} B"
    return total, f"{n:,d} params: {how}"


class _ArchProbe:
    """Enough of a pipeline for ``detect_arch`` (which looks at its transformer / unet)."""

    def __init__(self, components: dict[str, nn.Module]):
        self.transformer = components.get("transformer")
        self.unet = components.get("unet")

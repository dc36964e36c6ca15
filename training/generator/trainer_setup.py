"""Setting up a GRPO run: the pipeline loaded and frozen, LoRA on the denoiser, the emotion adapter, AdamW.

:func:`denoiser_of` asks the model family (:mod:`.families`) which pipeline attribute holds the
denoiser; the rest takes the denoiser it returns. A quantised base (``model.quantization``) is
quantised as it loads; under FSDP the pipeline loads on the CPU and only its unsharded parts move
to the GPU (:mod:`.sharding`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import sharding
from .config import TrainConfig
from .families import family_for
from .policies import DiffusionPolicy
from .policy_net import PolicyNet, add_lora

FROZEN_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "vae")


def denoiser_of(pipe: Any, arch: str) -> nn.Module:
    """The pipeline's denoiser: the family's transformer, or the UNet (SD1.5/SDXL)."""
    return family_for(arch).denoiser(pipe)


def load_base(config: TrainConfig, device: torch.device, dtype: torch.dtype, pipe: Any = None,
              sharded: bool = False) -> tuple[Any, str]:
    """The pipeline (loaded from ``model.pretrained`` unless given) with every part frozen, and its arch.

    ``sharded`` (FSDP): the pipeline loads on the CPU and only the text encoders and VAE move to
    ``device``; accelerate's ``prepare`` moves each denoiser shard, so no GPU holds the whole base.
    """
    from ...engines.generation.diffusers_backend import DiffusersGeneratorConfig, detect_arch, load_pipeline
    from .quantized_base import check_quantization, from_pretrained_kwargs

    check_quantization(config.model, device.type)  # bitsandbytes on the CPU this run got: refused
    if pipe is None:  # a quantised base (model.quantization) is quantised as it loads
        load_on = torch.device("cpu") if sharded else device
        pipe = load_pipeline(DiffusersGeneratorConfig(
            model=config.model.pretrained, dtype=config.model.dtype, device=str(load_on),
            extra_from_pretrained=from_pretrained_kwargs(config.model, dtype)), load_on, dtype)
        if sharded:
            sharding.place_unsharded_parts(pipe, device)  # text encoders and VAE stay whole
    arch = detect_arch(pipe) if config.model.arch == "auto" else config.model.arch
    vae_config = getattr(getattr(pipe, "vae", None), "config", None)
    if dtype == torch.float16 and getattr(vae_config, "force_upcast", False):
        pipe.vae.to(torch.float32)  # the SD/SDXL VAEs overflow in fp16 (diffusers upcasts them too)
    for name in FROZEN_PARTS:
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    return pipe, arch


def build_policy_net(pipe: Any, arch: str, config: TrainConfig, dtype: torch.dtype,
                     device: torch.device, sharded: bool = False) -> PolicyNet:
    """The trained network: the denoiser with a fresh fp32 LoRA (seeded) and the emotion adapter, on
    ``device`` (under FSDP left where it is: accelerate moves the shards)."""
    m = config.model
    family = family_for(arch)
    denoiser = family.denoiser(pipe)
    torch.manual_seed(config.seed)  # LoRA init is random (gaussian A, zero B)
    add_lora(denoiser, arch, m.lora_rank, m.lora_alpha, m.lora_targets)
    if m.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
    adapter = build_adapter(pipe, arch, config, dtype, device) if m.train_adapter or m.adapter_init else None
    net = PolicyNet(arch, denoiser, adapter, dtype, guidance_mode=family.guidance_mode(pipe))
    if not sharded:  # under FSDP the full denoiser never sits on one GPU
        net = net.to(device)
    if adapter is not None and not m.train_adapter:
        adapter.requires_grad_(False)
    return net


def build_adapter(pipe: Any, arch: str, config: TrainConfig, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The emotion adapter: loaded from ``model.adapter_init``, or a fresh identity one sized from an encoded prompt."""
    from ...engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, load_emotion_adapter

    m = config.model
    if m.adapter_init:
        adapter = load_emotion_adapter(m.adapter_init, expected_arch=arch)
    else:
        policy = DiffusionPolicy(pipe, arch, PolicyNet(arch, denoiser_of(pipe, arch), None, dtype),
                                 resolution=config.sampling.resolution, device=device)
        cond = policy.encode(["a"], "", False)
        extra = {"hidden_dim": m.adapter_hidden} if m.adapter_hidden else {}
        adapter = EmotionAdapter(EmotionAdapterConfig.from_conditioning(arch, cond.context, cond.pooled, **extra))
    return adapter.float().train()


def build_optimizer(trainable: list[tuple[str, nn.Parameter]], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the LoRA (``optim.lr``) and the adapter (``optim.adapter_lr``, default ``lr``) as two groups."""
    o = config.optim
    groups = [{"params": [p for n, p in trainable if n.startswith("denoiser.")], "lr": o.lr}]
    adapter_params = [p for n, p in trainable if n.startswith("adapter.")]
    if adapter_params:
        groups.append({"params": adapter_params, "lr": o.adapter_lr if o.adapter_lr is not None else o.lr})
    return torch.optim.AdamW(groups, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def trainable_parameters(net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in net.named_parameters() if p.requires_grad]


def count_trainable(trainable: list[tuple[str, nn.Parameter]], prefix: str) -> int:
    return sum(p.numel() for n, p in trainable if n.startswith(prefix))


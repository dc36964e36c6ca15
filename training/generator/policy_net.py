"""The trained network: the denoiser (with its peft LoRA) and the emotion adapter as one module.

:class:`PolicyNet` bundles both in one ``nn.Module`` so DDP sees every trainable parameter in one
forward; :func:`adapters_disabled` gives the frozen base model (the KL reference).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn


@dataclass
class Conditioning:
    """Encoded prompts for one micro-batch (positive; negative only when CFG is on)."""

    context: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    neg_context: Optional[torch.Tensor] = None
    neg_pooled: Optional[torch.Tensor] = None

    def index(self, idx: torch.Tensor | slice) -> "Conditioning":
        def pick(t):
            return None if t is None else t[idx]

        return Conditioning(pick(self.context), pick(self.pooled), pick(self.neg_context), pick(self.neg_pooled))


class PolicyNet(nn.Module):
    """Denoiser (+ peft LoRA) and the emotion adapter; ``forward`` returns the guided model output.

    The adapter changes the positive conditioning only (the unconditional branch stays plain, as in
    the EmotionConditioner node). ``use_adapters=False`` gives the frozen base model (KL reference).
    """

    def __init__(self, arch: str, denoiser: nn.Module, adapter: Optional[nn.Module], dtype: torch.dtype):
        super().__init__()
        self.arch = arch
        self.denoiser = denoiser
        self.adapter = adapter
        self.base_dtype = dtype
        self.time_ids: Optional[torch.Tensor] = None  # SDXL micro-conditioning, set by the policy

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
        va: torch.Tensor,
        guidance_scale: float = 1.0,
        adapter_strength: float = 1.0,
    ) -> torch.Tensor:
        context, pooled = cond.context, cond.pooled
        if self.adapter is not None and adapter_strength != 0.0:
            context, pooled = self.adapter(context, pooled, va, adapter_strength)
        cfg = guidance_scale != 1.0
        if cfg:
            if cond.neg_context is None:
                raise ValueError("guidance_scale != 1 needs negative conditioning")
            context = torch.cat([cond.neg_context, context])
            pooled = None if pooled is None else torch.cat([cond.neg_pooled, pooled])
            x_in = torch.cat([latents, latents])
        else:
            x_in = latents
        x_in = x_in.to(self.base_dtype)
        context = context.to(self.base_dtype)
        pooled = None if pooled is None else pooled.to(self.base_dtype)
        t = timestep.expand(x_in.shape[0]) if timestep.ndim else timestep.repeat(x_in.shape[0])
        if self.arch == "sd3":
            out = self.denoiser(
                hidden_states=x_in, timestep=t, encoder_hidden_states=context, pooled_projections=pooled, return_dict=False
            )[0]
        else:
            kwargs = {}
            if self.arch == "sdxl":
                time_ids = self.time_ids.to(x_in.device, self.base_dtype).expand(x_in.shape[0], -1)
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            out = self.denoiser(x_in, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
        out = out.float()
        if cfg:
            uncond, text = out.chunk(2)
            out = uncond + guidance_scale * (text - uncond)
        return out


@contextlib.contextmanager
def adapters_disabled(net: PolicyNet) -> Iterator[None]:
    """Run the frozen base model: peft LoRA layers off (``disable_adapters``), emotion adapter bypassed."""
    denoiser = net.denoiser
    adapter = net.adapter
    has_lora = bool(getattr(denoiser, "peft_config", None))
    if has_lora:
        denoiser.disable_adapters()
    net.adapter = None
    try:
        yield
    finally:
        net.adapter = adapter
        if has_lora:
            denoiser.enable_adapters()


DEFAULT_LORA_TARGETS = {
    "sd15": ["to_q", "to_k", "to_v", "to_out.0"],
    "sdxl": ["to_q", "to_k", "to_v", "to_out.0"],
    "sd3": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"],
}


def add_lora(denoiser: nn.Module, arch: str, rank: int, alpha: float, targets: Sequence[str] = ()) -> None:
    """Freeze ``denoiser`` and add a peft LoRA (default adapter) whose parameters are fp32."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=list(targets) or DEFAULT_LORA_TARGETS[arch],
    )
    try:
        denoiser.add_adapter(config)
    except ValueError as exc:  # peft: no module of this denoiser matches a target name
        from .config import ConfigError

        raise ConfigError(
            f"model.lora_targets {sorted(config.target_modules)!r} match no module of this {arch} denoiser ({exc}); "
            f"leave it empty for the defaults ({', '.join(DEFAULT_LORA_TARGETS[arch])}) or name its attention "
            "projections") from exc
    from diffusers.training_utils import cast_training_params

    for name, param in denoiser.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
    cast_training_params(denoiser, dtype=torch.float32)  # the trainable (LoRA) parameters only


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in module.named_parameters() if "lora_" in n]

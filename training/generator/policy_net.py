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

from .families import FAMILIES, family_for


@dataclass
class Conditioning:
    """Encoded prompts for one micro-batch (positive; negative only when CFG is on).

    ``mask`` / ``neg_mask`` ([B, L] bool, True = real token) are set when the rows have different
    lengths (Qwen-Image, Z-Image); the padded positions hold zeros and the denoiser ignores them.
    """

    context: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    neg_context: Optional[torch.Tensor] = None
    neg_pooled: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    neg_mask: Optional[torch.Tensor] = None

    def index(self, idx: torch.Tensor | slice) -> "Conditioning":
        def pick(t):
            return None if t is None else t[idx]

        return Conditioning(pick(self.context), pick(self.pooled), pick(self.neg_context), pick(self.neg_pooled),
                            pick(self.mask), pick(self.neg_mask))


class PolicyNet(nn.Module):
    """Denoiser (+ peft LoRA) and the emotion adapter; ``forward`` returns the guided model output.

    The adapter changes the positive conditioning only (the unconditional branch stays plain, as in
    the EmotionConditioner node). ``use_adapters=False`` gives the frozen base model (KL reference).
    What the denoiser call looks like is the family's (:mod:`.families`); ``guidance_mode`` says what
    ``guidance_scale`` means: ``"cfg"`` (a negative branch when ≠ 1), ``"embedded"`` (the input of a
    guidance-distilled model's guidance embedding) or ``"none"`` (step-distilled: ignored).
    """

    def __init__(self, arch: str, denoiser: nn.Module, adapter: Optional[nn.Module], dtype: torch.dtype,
                 guidance_mode: Optional[str] = None):
        super().__init__()
        self.arch = arch
        self.family = family_for(arch)
        self.denoiser = denoiser
        self.adapter = adapter
        self.base_dtype = dtype
        self.guidance_mode = guidance_mode or self.family.guidance_mode(_DenoiserOnly(denoiser))
        if self.guidance_mode not in ("cfg", "embedded", "none"):
            raise ValueError(f"guidance_mode must be cfg, embedded or none, got {self.guidance_mode!r}")
        self.time_ids: Optional[torch.Tensor] = None  # SDXL micro-conditioning, set by the policy
        # accelerate's FSDP wraps each of these blocks as one shard unit (transformer-based auto-wrap)
        self._no_split_modules = list(getattr(denoiser, "_no_split_modules", None) or [])

    def uses_negative(self, guidance_scale: float) -> bool:
        return self.guidance_mode == "cfg" and guidance_scale != 1.0

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
        family, dtype = self.family, self.base_dtype
        embedded = float(guidance_scale) if self.guidance_mode == "embedded" else None

        def run(x, ctx, pool, mask):
            t = timestep.expand(x.shape[0]) if timestep.ndim else timestep.repeat(x.shape[0])
            return family.forward(self, x.to(dtype), t, ctx.to(dtype), None if pool is None else pool.to(dtype),
                                  mask, embedded)

        if not self.uses_negative(guidance_scale):
            return run(latents, context, pooled, cond.mask)
        if cond.neg_context is None:
            raise ValueError("guidance_scale != 1 needs negative conditioning")
        if family.batch_cfg:  # both branches in one call, as the SD pipelines do
            both = run(torch.cat([latents, latents]), torch.cat([cond.neg_context, context]),
                       None if pooled is None else torch.cat([cond.neg_pooled, pooled]), None)
            uncond, text = both.chunk(2)
        else:  # one call per branch, as the Flux / Qwen-Image pipelines do
            text = run(latents, context, pooled, cond.mask)
            uncond = run(latents, cond.neg_context, cond.neg_pooled, cond.neg_mask)
        return family.combine_cfg(uncond, text, guidance_scale)


class _DenoiserOnly:
    """Enough of a pipeline for ``Family.guidance_mode`` when only the denoiser is at hand."""

    def __init__(self, denoiser: nn.Module):
        self.transformer = self.unet = denoiser
        self.config = None


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


DEFAULT_LORA_TARGETS = {arch: family.lora_targets for arch, family in FAMILIES.items()}


def _describe_targets(targets) -> str:
    return targets if isinstance(targets, str) else ", ".join(targets)


def add_lora(denoiser: nn.Module, arch: str, rank: int, alpha: float, targets: Sequence[str] = ()) -> None:
    """Freeze ``denoiser`` and add a peft LoRA (default adapter) whose parameters are fp32."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    default = DEFAULT_LORA_TARGETS[arch]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=list(targets) or (default if isinstance(default, str) else list(default)),
    )
    try:
        denoiser.add_adapter(config)
    except ValueError as exc:  # peft: no module of this denoiser matches a target name
        from .config import ConfigError

        raise ConfigError(
            f"model.lora_targets {list(targets) or default!r} match no module of this {arch} denoiser ({exc}); "
            f"leave it empty for the defaults ({_describe_targets(default)}) or name its attention "
            "projections") from exc
    from diffusers.training_utils import cast_training_params

    for name, param in denoiser.named_parameters():
        param.requires_grad_("lora_" in name)
    cast_training_params(denoiser, dtype=torch.float32)  # the trainable (LoRA) weights only


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in module.named_parameters() if "lora_" in n]

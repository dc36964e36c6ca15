"""Flux.1 (dev / schnell): ``FluxPipeline.__call__`` as pieces.

* Latents: the VAE grid ``[C, h, w]`` (C = 16); the transformer reads it as 2×2 patches
  (``FluxPipeline._pack_latents``) with image ids ``(0, row, col)`` per patch and all-zero text ids.
* Text: T5-XXL's sequence (``encoder_hidden_states``, 512 tokens) + CLIP-L's pooled vector
  (``pooled_projections``); the emotion adapter moves both.
* Timestep: σ (the scheduler's ``t / 1000``).
* Guidance: Flux.1-dev is guidance-distilled — ``guidance_scale`` goes into the guidance embedding
  and there is no negative branch; a transformer without that embedding (schnell) can use true CFG.
* Schedule: ``linspace(1, 1/n, n)`` shifted by ``mu = calculate_shift(image tokens)`` (dynamic shift).
* Decoding: ``latents / scaling_factor + shift_factor``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .base import Family


def flux_pack(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` → ``[B, (h/2)(w/2), 4C]``: the pipeline's own ``_pack_latents``."""
    from diffusers import FluxPipeline

    b, c, h, w = x.shape
    return FluxPipeline._pack_latents(x, b, c, h, w)


def flux_unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`flux_pack` (the pipeline's ``_unpack_latents`` at latent resolution)."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(tokens, h, w, 1)


class FluxFamily(Family):
    arch = "flux"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    pipeline_class = "FluxPipeline"
    comfy_lora_prefix = "lora_transformer_"

    def forward(self, net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: Optional[torch.Tensor], mask: Optional[torch.Tensor], guidance: Optional[float]) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, _, h, w = x.shape
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device, dtype=x.dtype)
        out = net.denoiser(hidden_states=flux_pack(x), timestep=t / 1000, guidance=self.guidance_tensor(guidance, b, x.device),
                           pooled_projections=pooled, encoder_hidden_states=context, txt_ids=txt_ids, img_ids=img_ids,
                           return_dict=False)[0]
        return flux_unpack(out.float(), h, w)

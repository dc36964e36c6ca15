"""Qwen-Image: ``QwenImagePipeline.__call__`` as pieces.

* Latents: the VAE grid ``[C, h, w]`` (C = 16; the video VAE's frame axis of 1 is dropped) read as
  2×2 patches (``QwenImagePipeline._pack_latents``) with ``img_shapes = (1, h/2, w/2)``.
* Text: Qwen2.5-VL's last hidden state after the fixed system template (its first 34 tokens
  dropped), variable length with a token mask; no pooled vector.
* Timestep: σ. Guidance: true CFG (no guidance embedding in the released model) with the
  pipeline's rescale of the combined prediction to the conditional one's norm per token.
* Schedule: ``linspace(1, 1/n, n)``, dynamic shift ``calculate_shift`` up to 8192 tokens,
  stretched so the last sigma is ``shift_terminal`` (0.02).
* Decoding: ``latents · std + mean`` per channel (the VAE's ``latents_mean/std``), first frame.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .base import Family


def qwen_pack(x: torch.Tensor) -> torch.Tensor:
    from diffusers import QwenImagePipeline

    b, c, h, w = x.shape
    return QwenImagePipeline._pack_latents(x, b, c, h, w)


def qwen_unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    from diffusers import QwenImagePipeline

    return QwenImagePipeline._unpack_latents(tokens, h, w, 1).squeeze(2)


class QwenImageFamily(Family):
    arch = "qwen_image"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    llm_encoder = True
    pipeline_class = "QwenImagePipeline"
    comfy_lora_prefix = "transformer."

    def forward(self, net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: Optional[torch.Tensor], mask: Optional[torch.Tensor], guidance: Optional[float]) -> torch.Tensor:
        b, _, h, w = x.shape
        if mask is not None and bool(mask.all()):
            mask = None  # what encode_prompt hands the transformer when no token is padding
        out = net.denoiser(hidden_states=qwen_pack(x), timestep=t / 1000,
                           guidance=self.guidance_tensor(guidance, b, x.device), encoder_hidden_states_mask=mask,
                           encoder_hidden_states=context, img_shapes=[[(1, h // 2, w // 2)]] * b,
                           return_dict=False)[0]
        return qwen_unpack(out.float(), h, w)

    def combine_cfg(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """True CFG, then each token rescaled to the conditional prediction's norm (in the packed layout)."""
        h, w = cond.shape[2], cond.shape[3]
        pos, neg = qwen_pack(cond), qwen_pack(uncond)
        comb = neg + scale * (pos - neg)
        comb = comb * (torch.norm(pos, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return qwen_unpack(comb, h, w)

    def vae_input(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        config = pipe.vae.config
        mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        return latents.unsqueeze(2) * std + mean

    def decode(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        return vae.decode(self.vae_input(pipe, latents).to(vae.dtype), return_dict=False)[0][:, :, 0]

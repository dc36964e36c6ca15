"""Z-Image (Turbo): ``ZImagePipeline.__call__`` as pieces.

* Latents: the VAE grid ``[C, h, w]`` (C = 16); the transformer takes a *list* of ``[C, 1, h, w]``
  and patchifies inside.
* Text: Qwen3's second-to-last hidden state of the real tokens only (the chat template with
  thinking on): one variable-length ``[L_i, 2560]`` tensor per prompt; no pooled vector.
* Timestep: the transformer counts time the other way, ``(1000 − t) / 1000`` = 1 − σ, and predicts
  ``x0 − ε``: the velocity is its output negated.
* Guidance: Z-Image-Turbo is distilled to run without CFG (``guidance_scale=0`` in its pipeline,
  cfg 1 here); the base model's CFG ``pos + g·(pos − neg)`` is classical CFG at ``g + 1``.
* Schedule: ``linspace(1, 1/n, n)`` with the scheduler's fixed shift (3.0 for Turbo).
* Decoding: ``latents / scaling_factor + shift_factor``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .base import Family


class ZImageFamily(Family):
    arch = "z_image"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    llm_encoder = True
    pipeline_class = "ZImagePipeline"
    comfy_lora_prefix = "transformer."

    def guidance_mode(self, pipe: Any) -> str:
        return "cfg"

    def latent_channels(self, denoiser: Any) -> int:
        return int(denoiser.config.in_channels)

    def forward(self, net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: Optional[torch.Tensor], mask: Optional[torch.Tensor], guidance: Optional[float]) -> torch.Tensor:
        from ....engines.generation.pipeline_families import unpad

        captions = unpad(context, mask)
        images = list(x.unsqueeze(2).unbind(0))
        out = net.denoiser(images, (1000 - t) / 1000, captions, return_dict=False)[0]
        return -torch.stack([o.float() for o in out]).squeeze(2)

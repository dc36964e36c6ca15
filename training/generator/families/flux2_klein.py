"""Flux.2 Klein (4B / 9B): ``Flux2KleinPipeline.__call__`` as pieces.

* Latents: already patchified — ``[4C, h/2, w/2]`` (C = 32), drawn that way by the pipeline; the
  transformer reads them as a token per cell with 4-axis ids ``(t=0, row, col, l=0)``.
* Text: Qwen3's hidden states of layers 9, 18 and 27 stacked per token (``[L, 3·hidden]``, 512
  tokens after the chat template with thinking off) and ids ``(0, 0, 0, position)``; no pooled vector.
* Timestep: σ. Guidance: the released Klein models are step-distilled (``is_distilled``): no
  guidance at all; the undistilled "base" checkpoints use true CFG with the empty negative prompt.
* Schedule: ``linspace(1, 1/n, n)`` shifted by ``mu = compute_empirical_mu(image tokens, n)`` — the
  shift depends on the step count too.
* Decoding: undo the VAE's batch-norm statistics (``bn.running_mean/var``), unpatchify, decode.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .base import Family


class Flux2KleinFamily(Family):
    arch = "flux2_klein"
    # double blocks: the separate q/k/v/out projections; single blocks: the fused qkv+MLP input and output
    # (a regular expression: the double blocks' ``attn.to_out`` is a ModuleList, the single blocks' a Linear)
    lora_targets = (r".*transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj"
                    r"|to_add_out|to_qkv_mlp_proj)|.*single_transformer_blocks\.\d+\.attn\.to_out")
    llm_encoder = True
    pipeline_class = "Flux2KleinPipeline"
    comfy_lora_prefix = "lora_transformer_"

    def guidance_mode(self, pipe: Any) -> str:
        return "none" if bool(getattr(getattr(pipe, "config", None), "is_distilled", False)) else "cfg"

    def latent_channels(self, denoiser: Any) -> int:
        return int(denoiser.config.in_channels)  # patchified: 4 × the VAE's channels

    def latent_shape(self, pipe: Any, denoiser: Any, resolution: int) -> tuple[int, int, int]:
        channels, side, _ = super().latent_shape(pipe, denoiser, resolution)
        return (channels, side // 2, side // 2)

    def image_seq_len(self, shape: tuple[int, int, int]) -> int:
        return shape[1] * shape[2]

    def mu(self, scheduler: Any, image_seq_len: int, steps: int) -> Optional[float]:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        return compute_empirical_mu(image_seq_len=image_seq_len, num_steps=steps)

    def forward(self, net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: Optional[torch.Tensor], mask: Optional[torch.Tensor], guidance: Optional[float]) -> torch.Tensor:
        from diffusers import Flux2KleinPipeline as P

        latent_ids = P._prepare_latent_ids(x).to(x.device)
        tokens = P._pack_latents(x)
        out = net.denoiser(hidden_states=tokens, timestep=t / 1000, guidance=None, encoder_hidden_states=context,
                           txt_ids=P._prepare_text_ids(context).to(x.device), img_ids=latent_ids,
                           return_dict=False)[0]
        out = out[:, : tokens.shape[1]].float()
        return P._unpack_latents_with_ids(out, latent_ids, x.shape[2], x.shape[3])

    def vae_input(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        from diffusers import Flux2KleinPipeline as P

        vae = pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents.device,
                                                                                                latents.dtype)
        return P._unpatchify_latents(latents * std + mean)

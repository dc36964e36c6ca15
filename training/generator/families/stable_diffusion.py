"""SD1.5 and SDXL (UNet, DDIM with η > 0) and SD3.x (MMDiT, flow matching with a fixed shift).

SD3.x's latents are the VAE grid itself (its transformer patchifies inside), its timestep is the
scheduler's (σ·1000) and its sigmas come from ``set_timesteps(steps)`` with the static shift of its
scheduler config, as ``StableDiffusion3Pipeline`` does. Their two guidance branches share one
batched call, as in their pipelines.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .base import Family


class SD3Family(Family):
    arch = "sd3"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
    batch_cfg = True
    pipeline_class = "StableDiffusion3Pipeline"
    comfy_lora_prefix = "lora_transformer_"

    def guidance_mode(self, pipe: Any) -> str:
        return "cfg"

    def latent_channels(self, denoiser: Any) -> int:
        return int(denoiser.config.in_channels)

    def latent_shape(self, pipe: Any, denoiser: Any, resolution: int) -> tuple[int, int, int]:
        side = resolution // self.vae_scale(pipe)
        return (self.latent_channels(denoiser), side, side)

    def set_timesteps(self, scheduler: Any, steps: int, image_seq_len: int) -> None:
        scheduler.set_timesteps(steps, device="cpu")

    def forward(self, net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: Optional[torch.Tensor], mask: Optional[torch.Tensor], guidance: Optional[float]) -> torch.Tensor:
        return net.denoiser(hidden_states=x, timestep=t, encoder_hidden_states=context, pooled_projections=pooled,
                            return_dict=False)[0].float()


class SD15Family(SD3Family):
    arch = "sd15"
    flow = False
    denoiser_attr = "unet"
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0")
    pipeline_class = "StableDiffusionPipeline"
    comfy_lora_prefix = "lora_unet_"

    def set_timesteps(self, scheduler: Any, steps: int, image_seq_len: int) -> None:
        scheduler.set_timesteps(steps, device="cpu")

    def vae_input(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        return latents / pipe.vae.config.scaling_factor  # the SD VAEs have no shift

    def forward(self, net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: Optional[torch.Tensor], mask: Optional[torch.Tensor], guidance: Optional[float]) -> torch.Tensor:
        kwargs = {}
        if self.arch == "sdxl":
            time_ids = net.time_ids.to(x.device, x.dtype).expand(x.shape[0], -1)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return net.denoiser(x, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0].float()


class SDXLFamily(SD15Family):
    arch = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"

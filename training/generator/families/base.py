"""The shape of a model family: the small, named pieces in which families differ.

The policy (:mod:`..policies`) and the trained network (:mod:`..policy_net`) are written once; a
family answers, from its diffusers pipeline's ``__call__``:

* ``latent_shape`` — the per-image latent the policy steps (channels × grid), and ``pack`` /
  ``unpack`` inside ``forward`` — the token layout the transformer reads (2×2 patches, ids);
* ``set_timesteps`` — the sigmas, with the pipeline's resolution-dependent shift (``mu``);
* ``forward`` — one denoiser call returning the *velocity* ``v = ε − x0`` (or the UNet's output),
  with the family's timestep scale and guidance embedding;
* ``combine_cfg`` — how the guided output is formed from the two branches;
* ``decode`` — latents → the VAE's image in [-1, 1].

Text encoding is the generation engine's (:mod:`emofeedback2.engines.generation.pipeline_families`):
training reuses it, so prompts are encoded the same way in the loop and in training.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch


class Family:
    """Defaults shared by the flow-matching transformer families (velocity prediction, Euler SDE)."""

    arch: ClassVar[str] = ""
    #: a flow-matching model (Flow-GRPO SDE) rather than a DDIM-sampled UNet
    flow: ClassVar[bool] = True
    denoiser_attr: ClassVar[str] = "transformer"
    #: peft ``target_modules``: a list of module-name suffixes or one regular expression
    lora_targets: ClassVar[Sequence[str] | str] = ("to_q", "to_k", "to_v", "to_out.0")
    #: the text encoder is a language model (the prompt-embedding cache is then mandatory)
    llm_encoder: ClassVar[bool] = False
    #: branches of classifier-free guidance share one batched denoiser call (else one call each)
    batch_cfg: ClassVar[bool] = False
    #: the diffusers pipeline class whose ``save_lora_weights`` writes the diffusers-format LoRA copy
    pipeline_class: ClassVar[str] = ""
    #: how ComfyUI's LoraLoader names this family's LoRA modules (see :mod:`..export`)
    comfy_lora_prefix: ClassVar[str] = "lora_transformer_"

    # --- structure ------------------------------------------------------------------------------------
    def denoiser(self, pipe: Any):
        return getattr(pipe, self.denoiser_attr)

    def guidance_mode(self, pipe: Any) -> str:
        """``"cfg"`` (a negative branch at guidance ≠ 1), ``"embedded"`` (guidance is an input), or ``"none"``."""
        config = getattr(self.denoiser(pipe), "config", None)
        return "embedded" if getattr(config, "guidance_embeds", False) else "cfg"

    @staticmethod
    def vae_scale(pipe: Any) -> int:
        """Pixels per latent cell: the pipeline's own ``vae_scale_factor`` (block count for bare stand-ins)."""
        scale = getattr(pipe, "vae_scale_factor", None)
        return int(scale) if scale else 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    def latent_channels(self, denoiser: Any) -> int:
        return int(denoiser.config.in_channels) // 4  # the transformer reads 2×2 patches of C channels

    def latent_shape(self, pipe: Any, denoiser: Any, resolution: int) -> tuple[int, int, int]:
        """(channels, height, width) of one image's latent, as the policy stores and steps it."""
        scale = self.vae_scale(pipe)
        if resolution % (2 * scale):
            raise ValueError(f"sampling.resolution {resolution} must be a multiple of {2 * scale} for {self.arch} "
                             "(the VAE's factor times the transformer's 2×2 patches)")
        side = resolution // scale
        return (self.latent_channels(denoiser), side, side)

    def image_seq_len(self, shape: tuple[int, int, int]) -> int:
        """Image tokens the transformer sees for a latent of ``shape`` (what ``mu`` is computed from)."""
        return (shape[1] // 2) * (shape[2] // 2)

    # --- schedule -------------------------------------------------------------------------------------
    def mu(self, scheduler: Any, image_seq_len: int, steps: int) -> Optional[float]:
        """The dynamic-shift exponent the pipeline passes (``calculate_shift`` of the image tokens)."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        c = scheduler.config
        return calculate_shift(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                               c.get("base_shift", 0.5), c.get("max_shift", 1.15))

    def set_timesteps(self, scheduler: Any, steps: int, image_seq_len: int) -> None:
        """As the pipeline does: sigmas ``linspace(1, 1/steps, steps)``, shifted by the scheduler with ``mu``."""
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if scheduler.config.get("use_flow_sigmas", False):
            sigmas = None
        scheduler.set_timesteps(sigmas=sigmas, device="cpu", mu=self.mu(scheduler, image_seq_len, steps))

    # --- the denoiser -----------------------------------------------------------------------------------
    def forward(self, net: Any, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                pooled: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                guidance: Optional[float]) -> torch.Tensor:
        """Velocity ``[B, *latent_shape]`` (fp32) for latents ``x`` at scheduler timestep ``t`` ([B])."""
        raise NotImplementedError

    def combine_cfg(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        return uncond + scale * (cond - uncond)

    @staticmethod
    def guidance_tensor(guidance: Optional[float], batch: int, device: Any) -> Optional[torch.Tensor]:
        """The guidance-embedding input (fp32, one per sample), as the Flux / Qwen pipelines build it."""
        if guidance is None:
            return None
        return torch.full([batch], float(guidance), device=device, dtype=torch.float32)

    # --- images -----------------------------------------------------------------------------------------
    def vae_input(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """Latents → what ``vae.decode`` takes (the family's scaling, shift or normalisation undone)."""
        config = pipe.vae.config
        z = latents / config.scaling_factor
        shift = getattr(config, "shift_factor", None)
        return z + shift if shift is not None else z

    def decode(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's images ``[B, 3, H, W]`` in [-1, 1] (the caller post-processes)."""
        vae = pipe.vae
        return vae.decode(self.vae_input(pipe, latents).to(vae.dtype), return_dict=False)[0]

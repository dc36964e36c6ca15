"""What the memory plan needs to know of each flow-matching transformer family (issue 23).

The plan builds the real-size denoiser on the ``meta`` device and runs one training forward on it
(:mod:`.memory_plan` counts what autograd saves). The pieces that differ between families live
here, one small function per family, each written against that family's diffusers pipeline
``__call__`` (0.42): how the latents are shaped and packed, the position ids, which conditioning
the denoiser reads (LLM hidden states, pooled vector or not), guidance as an embedding versus a
negative branch, and what the VAE decodes. The ``families`` engineer's training-time family objects
do the same for real tensors; the two can become one after the merge.

Shapes only: the values (timestep scaling, shifts) do not change what is saved for backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from . import real_configs

Inputs = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Family:
    """One family's facts the plan uses."""

    arch: str  # the trainer's arch name (``model.arch``)
    denoiser_class: str  # the diffusers class of ``pipe.transformer``: how the family is detected
    text_tokens: int  # length of the conditioning sequence the pipeline's encode_prompt returns
    true_cfg: bool  # False: guidance-distilled, no negative branch whatever guidance_scale says
    latent: Callable[[nn.Module, int], tuple[int, ...]]  # (denoiser, latent side) -> one sample's model input
    decoded: Callable[[nn.Module, int], tuple[int, ...]]  # (vae, latent side) -> one sample's VAE input
    inputs: Inputs  # builds the denoiser's keyword arguments


# --- FLUX.1 (FluxPipeline): 2x2-packed 16-channel latents, 3-axis ids, CLIP pooled + T5 sequence ------

def vae_scale(vae: nn.Module) -> int:
    """Pixels per latent cell: 8 for every real family (the tiny test VAEs have fewer blocks)."""
    if hasattr(vae, "temperal_downsample"):  # Qwen-Image's video VAE
        return 2 ** len(vae.temperal_downsample)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _flux_latent(denoiser: nn.Module, side: int) -> tuple[int, ...]:
    return ((side // 2) ** 2, denoiser.config.in_channels)  # 2x2 packing


def _flux_inputs(denoiser, x, t, context, pooled, guidance):
    side = int(x.shape[1] ** 0.5)
    img_ids = torch.zeros(side, side, 3, device=x.device)  # (0, row, col) as _prepare_latent_image_ids
    img_ids[..., 1] += torch.arange(side, device=x.device)[:, None]
    img_ids[..., 2] += torch.arange(side, device=x.device)[None, :]
    embedded = None
    if denoiser.config.guidance_embeds:  # FLUX.1-dev: guidance is an input, not a second pass
        embedded = torch.full((x.shape[0],), float(guidance), device=x.device)
    return dict(hidden_states=x, timestep=t / 1000, guidance=embedded, pooled_projections=pooled,
                encoder_hidden_states=context, txt_ids=torch.zeros(context.shape[1], 3, device=x.device),
                img_ids=img_ids.reshape(-1, 3))


# --- FLUX.2 Klein (Flux2KleinPipeline): 32 channels patchified to 128, 4-axis (t, h, w, l) ids --------

def _flux2_inputs(denoiser, x, t, context, pooled, guidance):
    batch, tokens = x.shape[0], x.shape[1]
    side = int(tokens ** 0.5)
    on = dict(device=x.device)
    zero = torch.arange(1, **on)
    img_ids = torch.cartesian_prod(zero, torch.arange(side, **on), torch.arange(side, **on), zero)
    txt_ids = torch.cartesian_prod(zero, zero, zero, torch.arange(context.shape[1], **on))
    return dict(hidden_states=x, encoder_hidden_states=context, timestep=t / 1000, guidance=None,
                img_ids=img_ids.unsqueeze(0).expand(batch, -1, -1),
                txt_ids=txt_ids.unsqueeze(0).expand(batch, -1, -1))


def _flux2_decoded(vae: nn.Module, side: int) -> tuple[int, ...]:
    return (vae.config.latent_channels, side, side)  # unpatchified (2x2 out of the channels) before decode


# --- Qwen-Image (QwenImagePipeline): 2x2-packed latents, img_shapes, LLM states, true CFG -------------

def _qwen_inputs(denoiser, x, t, context, pooled, guidance):
    side = int(x.shape[1] ** 0.5)
    return dict(hidden_states=x, timestep=t / 1000, guidance=None, encoder_hidden_states=context,
                encoder_hidden_states_mask=None, img_shapes=[[(1, side, side)]] * x.shape[0])


def _qwen_decoded(vae: nn.Module, side: int) -> tuple[int, ...]:
    return (vae.config.z_dim, 1, side, side)  # a causal video VAE: one frame


# --- Z-Image (ZImagePipeline): lists of (C, F=1, H, W) latents and of (tokens, 2560) caption states -----

def _zimage_latent(denoiser: nn.Module, side: int) -> tuple[int, ...]:
    return (denoiser.config.in_channels, 1, side, side)


def _zimage_inputs(denoiser, x, t, context, pooled, guidance):
    return dict(x=list(x.unbind(0)), t=t, cap_feats=list(context.unbind(0)))


def _vae_latent(vae: nn.Module, side: int) -> tuple[int, ...]:
    return (vae.config.latent_channels, side, side)


FAMILIES: dict[str, Family] = {
    "flux": Family("flux", "FluxTransformer2DModel", real_configs.FLUX1_T5_TOKENS, False,
                   _flux_latent, _vae_latent, _flux_inputs),
    # the step-distilled Klein (the recipe's); the undistilled klein-base models use true CFG, which the
    # transformer's config does not tell apart (the pipeline's is_distilled does)
    "flux2_klein": Family("flux2_klein", "Flux2Transformer2DModel", real_configs.FLUX2_KLEIN_TOKENS, False,
                          _flux_latent, _flux2_decoded, _flux2_inputs),
    "qwen_image": Family("qwen_image", "QwenImageTransformer2DModel", real_configs.LLM_PROMPT_TOKENS, True,
                         _flux_latent, _qwen_decoded, _qwen_inputs),
    # Z-Image: classic CFG when guidance != 1 (the base model); Turbo's recipe runs at 1, so no branch
    "z_image": Family("z_image", "ZImageTransformer2DModel", real_configs.LLM_PROMPT_TOKENS, True,
                      _zimage_latent, _vae_latent, _zimage_inputs),
}


def family_of(denoiser: Optional[nn.Module]) -> Optional[Family]:
    """The family whose diffusers class ``denoiser`` is, or None (SD1.5/SDXL/SD3 and unknown models)."""
    name = type(denoiser).__name__ if denoiser is not None else ""
    return next((f for f in FAMILIES.values() if f.denoiser_class == name), None)


def conditioning_dims(family: Family, denoiser: nn.Module) -> tuple[int, int, Optional[int]]:
    """(tokens, context width, pooled width or None) of what the family's encode_prompt returns."""
    cfg = denoiser.config
    if family.arch == "flux":
        return family.text_tokens, cfg.joint_attention_dim, cfg.pooled_projection_dim
    if family.arch == "z_image":
        return family.text_tokens, cfg.cap_feat_dim, None
    return family.text_tokens, cfg.joint_attention_dim, None


def uses_negative_branch(family: Optional[Family], guidance: float) -> bool:
    """Whether training runs an unconditional half: never for guidance-distilled families."""
    return guidance != 1.0 and (family is None or family.true_cfg)


def latent_values(family: Family, denoiser: nn.Module, vae: nn.Module, resolution: int) -> int:
    """Values of one sample's latent as the policy stores it (packed or not: the same count)."""
    return int(torch.Size(family.latent(denoiser, resolution // vae_scale(vae))).numel())


class FamilyNet(nn.Module):
    """Adapter + (CFG) + denoiser of one family: the training forward the plan counts.

    Mirrors :class:`~.policy_net.PolicyNet`: the emotion adapter moves the positive conditioning only;
    with a true-CFG family and ``guidance != 1`` the batch is doubled with the negative branch.
    """

    def __init__(self, family: Family, denoiser: nn.Module, adapter: Optional[nn.Module], dtype: torch.dtype):
        super().__init__()
        self.family, self.denoiser, self.adapter, self.base_dtype = family, denoiser, adapter, dtype

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: Optional[torch.Tensor],
                va: torch.Tensor, guidance: float) -> torch.Tensor:
        if self.adapter is not None:
            context, pooled = self.adapter(context, pooled, va, 1.0)
        if uses_negative_branch(self.family, guidance):
            context = torch.cat([torch.zeros_like(context), context])
            pooled = None if pooled is None else torch.cat([torch.zeros_like(pooled), pooled])
            x = torch.cat([x, x])
        dt = self.base_dtype
        kwargs = self.family.inputs(self.denoiser, x.to(dt), t.expand(x.shape[0]).to(dt), context.to(dt),
                                    None if pooled is None else pooled.to(dt), guidance)
        out = self.denoiser(**kwargs, return_dict=False)[0]
        out = torch.stack(out) if isinstance(out, (list, tuple)) else out  # Z-Image returns a list
        out = out.float()
        if uses_negative_branch(self.family, guidance):
            uncond, cond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        return out


def plan_forward(family: Family, denoiser: nn.Module, adapter: Optional[nn.Module], vae: nn.Module, *, batch: int,
                 resolution: int, dtype: torch.dtype, guidance: float, tokens: int, context_dim: int,
                 pooled_dim: Optional[int], device: str = "meta"):
    """(net, training forward, VAE decode) for one micro-batch of ``family`` at ``resolution``."""
    net = FamilyNet(family, denoiser, adapter, dtype)
    on = dict(device=device)
    side = resolution // vae_scale(vae)
    x = torch.randn(batch, *family.latent(denoiser, side), **on)
    context = torch.randn(batch, tokens, context_dim, **on)
    pooled = None if pooled_dim is None else torch.randn(batch, pooled_dim, **on)
    va = torch.zeros(batch, 2, **on)
    t = torch.tensor(500.0, **on)
    latents = torch.randn(batch, *family.decoded(vae, side), **on)

    def forward() -> torch.Tensor:
        return net(x, t, context, pooled, va, guidance)

    def decode() -> Any:
        return vae.decode(latents.to(vae.dtype), return_dict=False)

    return net, forward, decode


"""What differs between the diffusers pipeline families on the generation side, each read off its ``__call__``.

Seven families: SD1.5, SDXL, SD3.x (CLIP/T5 encoders, classifier-free guidance), Flux.1 (CLIP-L
pooled + T5 sequence; Flux.1-dev feeds guidance to an embedding), Flux.2 Klein (Qwen3 hidden states
9/18/27 stacked; the distilled models take no guidance at all), Qwen-Image (Qwen2.5-VL last hidden
state after the system template, masked; "true" CFG with the norm rescale) and Z-Image (Qwen3's
second-to-last hidden state, one variable-length tensor per prompt; its ``guidance_scale`` g means
``pos + g·(pos − neg)``, i.e. CFG at ``g + 1``).

Here: :func:`detect_arch` (from the pipeline and denoiser classes), :func:`conditioning_dims`,
:func:`encode_prompts` (the pipeline's own ``encode_prompt``, in one layout for every family:
``[B, L, D]`` embeddings, optional pooled vector, optional token mask) and :func:`call_kwargs` (the
embeddings and guidance in the form that family's ``__call__`` takes). ``cfg`` means classical
guidance everywhere in this project (1 = off); the family functions translate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL", "sd3": "SD3.x", "flux": "Flux.1", "flux2_klein": "Flux.2 Klein",
              "qwen_image": "Qwen-Image", "z_image": "Z-Image"}
ARCHES = tuple(ARCH_NAMES)
#: families whose text encoder is a language model (Qwen3 4-8B, Qwen2.5-VL 7B)
LLM_ENCODER_ARCHES = ("flux2_klein", "qwen_image", "z_image")
_TRANSFORMER_ARCH = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux",
                     "Flux2Transformer2DModel": "flux2_klein", "QwenImageTransformer2DModel": "qwen_image",
                     "ZImageTransformer2DModel": "z_image"}
_UNSUPPORTED_PIPELINES = {
    "Flux2Pipeline": "Flux.2 [dev] (Mistral-3 24B text encoder) is not supported; the Flux.2 Klein models are",
}


def detect_arch(pipe: Any) -> str:
    """The family of a pipeline (or of anything with a ``transformer`` / ``unet``), from its classes."""
    reason = _UNSUPPORTED_PIPELINES.get(type(pipe).__name__)
    if reason:
        raise ValueError(reason)
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None and type(transformer).__name__ in _TRANSFORMER_ARCH:
        return _TRANSFORMER_ARCH[type(transformer).__name__]
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return "sdxl" if getattr(unet.config, "addition_embed_type", None) == "text_time" else "sd15"
    raise ValueError(f"{type(pipe).__name__} is not a pipeline of a supported family "
                     f"({', '.join(ARCH_NAMES.values())})")


def conditioning_dims(pipe: Any, arch: Optional[str] = None) -> tuple[int, Optional[int]]:
    """(context width, pooled width or None) of the conditioning this pipeline's denoiser reads."""
    arch = arch or detect_arch(pipe)
    if arch == "sd15":
        return int(pipe.unet.config.cross_attention_dim), None
    if arch == "sdxl":
        return int(pipe.unet.config.cross_attention_dim), int(pipe.text_encoder_2.config.projection_dim)
    config = pipe.transformer.config
    if arch in ("sd3", "flux"):
        return int(config.joint_attention_dim), int(config.pooled_projection_dim)
    if arch == "z_image":
        return int(config.cap_feat_dim), None
    return int(config.joint_attention_dim), None


def uses_negative(pipe: Any, arch: str, cfg: float) -> bool:
    """Whether sampling at ``cfg`` runs a negative (unconditional) branch in this family.

    Guidance-distilled models have none: Flux.1-dev reads ``cfg`` through its guidance embedding,
    the step-distilled Flux.2 Klein ignores it; Z-Image-Turbo is simply run at cfg 1.
    """
    if cfg <= 1.0:
        return False
    if arch in ("flux", "qwen_image"):
        return not bool(pipe.transformer.config.guidance_embeds)
    if arch == "flux2_klein":
        return not bool(pipe.config.is_distilled)
    return True


@dataclass
class EncodedPrompts:
    """Prompt embeddings in one layout for every family (negative ones only when guidance runs a negative branch).

    ``prompt_mask`` ([B, L] bool, True = a real token) is set where the family's embeddings have
    a variable length (Qwen-Image, Z-Image); padded positions hold zeros.
    """

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: Optional[torch.Tensor]
    pooled_prompt_embeds: Optional[torch.Tensor] = None
    negative_pooled_prompt_embeds: Optional[torch.Tensor] = None
    prompt_mask: Optional[torch.Tensor] = None
    negative_prompt_mask: Optional[torch.Tensor] = None

    def pipeline_kwargs(self) -> dict[str, torch.Tensor]:
        """The SD1.5 / SDXL / SD3 ``__call__`` keywords (see :func:`call_kwargs` for every family)."""
        kwargs = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds}
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


def pad_sequences(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length ``[L_i, D]`` rows → zero-padded ``[B, L_max, D]`` and a ``[B, L_max]`` bool mask."""
    longest = max(int(r.shape[0]) for r in rows)
    out = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
    mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=rows[0].device)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
        mask[i, : row.shape[0]] = True
    return out, mask


def unpad(embeds: torch.Tensor, mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """The inverse of :func:`pad_sequences`: one ``[L_i, D]`` tensor per row (all rows when no mask)."""
    if mask is None:
        return list(embeds.unbind(0))
    return [row[m] for row, m in zip(embeds, mask.to(embeds.device))]


@torch.no_grad()
def encode_prompts(pipe: Any, arch: str, prompts: Sequence[str], negative_prompt: str = "", negative: bool = False,
                   max_sequence_length: Optional[int] = None, device: Any = None) -> EncodedPrompts:
    """The pipeline's own ``encode_prompt`` for ``prompts`` (and ``negative_prompt`` when ``negative``).

    ``max_sequence_length=None`` keeps the pipeline's default (what its ``__call__`` uses).
    """
    prompts = list(prompts)
    negs = [negative_prompt] * len(prompts)
    device = device if device is not None else pipe._execution_device
    msl = {} if max_sequence_length is None else {"max_sequence_length": int(max_sequence_length)}
    if arch == "sd15":
        pe, npe = pipe.encode_prompt(prompts, device, 1, negative, negative_prompt=negs)
        return EncodedPrompts(pe, npe if negative else None)
    if arch in ("sdxl", "sd3"):
        extra = {"prompt_2": None, "prompt_3": None, **msl} if arch == "sd3" else {}
        pe, npe, pooled, npooled = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=negative,
            negative_prompt=negs, **extra)
        return EncodedPrompts(pe, npe if negative else None, pooled, npooled if negative else None)
    if arch == "z_image":
        pos, neg = pipe.encode_prompt(prompt=prompts, device=device, do_classifier_free_guidance=negative,
                                      negative_prompt=negs, **msl)
        pe, mask = pad_sequences(pos)
        npe, nmask = pad_sequences(neg) if negative else (None, None)
        return EncodedPrompts(pe, npe, prompt_mask=mask, negative_prompt_mask=nmask)

    def one(texts: list[str]) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        if arch == "flux":
            embeds, pooled, _text_ids = pipe.encode_prompt(prompt=texts, prompt_2=None, device=device, **msl)
            return embeds, pooled, None
        if arch == "flux2_klein":
            return pipe.encode_prompt(prompt=texts, device=device, **msl)[0], None, None
        if arch == "qwen_image":
            embeds, mask = pipe.encode_prompt(prompt=texts, device=device, **msl)
            return embeds, None, None if mask is None else mask.bool()
        raise ValueError(f"unknown arch {arch!r}; one of {', '.join(ARCHES)}")

    pe, pooled, mask = one(prompts)
    npe = npooled = nmask = None
    if negative:
        npe, npooled, nmask = one(negs)
    return EncodedPrompts(pe, npe, pooled, npooled, mask, nmask)


def call_kwargs(pipe: Any, arch: str, encoded: EncodedPrompts, cfg: float) -> dict[str, Any]:
    """The embeddings and guidance of ``encoded`` in the keywords this family's ``__call__`` takes."""
    negative = encoded.negative_prompt_embeds is not None
    if arch in ("sd15", "sdxl", "sd3"):
        return {**encoded.pipeline_kwargs(), "guidance_scale": cfg}
    if arch == "z_image":  # Z-Image's g: pred = pos + g·(pos − neg)
        kwargs = {"prompt_embeds": unpad(encoded.prompt_embeds, encoded.prompt_mask),
                  "guidance_scale": max(cfg - 1.0, 0.0) if negative else 0.0}
        if negative:
            kwargs["negative_prompt_embeds"] = unpad(encoded.negative_prompt_embeds, encoded.negative_prompt_mask)
        return kwargs
    kwargs: dict[str, Any] = {"prompt_embeds": encoded.prompt_embeds}
    if negative:
        kwargs["negative_prompt_embeds"] = encoded.negative_prompt_embeds
    if arch == "flux":
        kwargs["pooled_prompt_embeds"] = encoded.pooled_prompt_embeds
        if negative:
            kwargs["negative_pooled_prompt_embeds"] = encoded.negative_pooled_prompt_embeds
        kwargs.update(guidance_scale=cfg, true_cfg_scale=cfg if negative else 1.0)
    elif arch == "flux2_klein":
        kwargs["guidance_scale"] = cfg
    elif arch == "qwen_image":  # an all-true mask where encode_prompt gave None: the pipeline then says nothing
        kwargs.update(prompt_embeds_mask=_mask_or_ones(encoded.prompt_embeds, encoded.prompt_mask),
                      true_cfg_scale=cfg if negative else 1.0)
        if negative:
            kwargs["negative_prompt_embeds_mask"] = _mask_or_ones(encoded.negative_prompt_embeds,
                                                                  encoded.negative_prompt_mask)
        if pipe.transformer.config.guidance_embeds:
            kwargs["guidance_scale"] = cfg
    return kwargs


def _mask_or_ones(embeds: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    return mask if mask is not None else torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)

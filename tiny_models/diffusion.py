"""Tiny random diffusers pipelines of every supported family, built offline for tests and benchmarks.

SD1.5, SDXL and SD3 live here; Flux.1, Flux.2 Klein, Qwen-Image and Z-Image in :mod:`.flow_pipelines`.

The pipelines have the real classes and the real component layout (tokenizers, CLIP text encoders,
UNet / SD3 transformer, VAE, scheduler) at toy sizes, and are written with ``save_pretrained`` so the
code under test loads them with the same ``from_pretrained`` call users run on real checkpoints.
The SD3-like pipeline has no T5 encoder (``text_encoder_3=None, tokenizer_3=None``); diffusers then
feeds zeros in T5's place, as it does for users who drop T5 to save memory.

Sizes (hidden widths) mirror the real models' *ratios* only loosely; what matters for the code under
test is the layout: SD1.5 conditioning is one context tensor, SDXL adds a pooled vector and time ids,
SD3 has a joint context plus a pooled vector from two CLIP encoders.
"""

from __future__ import annotations

from pathlib import Path

import torch

# the tiny CLIP text encoders and tokenizer live with the other tiny text encoders (re-exported here:
# tiny_models.clip and tests import them from this module)
from .text_encoders import (  # noqa: F401
    TEXT_HIDDEN,
    TEXT_PROJECTION,
    TOKENIZER_MAX_LENGTH,
    _text_encoder,
    _tokenizer,
    _vocab,
    write_tiny_clip_tokenizer,
)

ARCHES = ("sd15", "sdxl", "sd3", "flux", "flux2_klein", "qwen_image", "z_image")

SD3_JOINT_DIM = 2 * TEXT_HIDDEN  # the CLIP pair concatenated (real SD3: 768+1280 → padded to 4096)


def _vae(sd3: bool):
    from diffusers import AutoencoderKL

    extra = (
        dict(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
        if sd3
        else dict(scaling_factor=0.18215)
    )
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=32,
        sample_size=32,
        **extra,
    ).eval()


def _sd_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _build_sd15():
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()
    return StableDiffusionPipeline(
        vae=_vae(sd3=False),
        text_encoder=_text_encoder(with_projection=False),
        tokenizer=_tokenizer(),
        unet=unet,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl():
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    time_embed_dim = 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        transformer_layers_per_block=(1, 1),
        # six time ids (original size, crop, target size) + the pooled text vector
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_PROJECTION,
        cross_attention_dim=2 * TEXT_HIDDEN,
        norm_num_groups=32,
    ).eval()
    return StableDiffusionXLPipeline(
        vae=_vae(sd3=False),
        text_encoder=_text_encoder(with_projection=False),
        text_encoder_2=_text_encoder(with_projection=True),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        unet=unet,
        scheduler=_sd_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


def _build_sd3():
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=SD3_JOINT_DIM,
        pooled_projection_dim=2 * TEXT_PROJECTION,
        out_channels=4,
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(sd3=True),
        text_encoder=_text_encoder(with_projection=True),
        tokenizer=_tokenizer(),
        text_encoder_2=_text_encoder(with_projection=True),
        tokenizer_2=_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )


def _builders() -> dict:
    from .flow_pipelines import BUILDERS

    return {"sd15": _build_sd15, "sdxl": _build_sdxl, "sd3": _build_sd3, **BUILDERS}


def build_tiny_pipeline(out_dir: str | Path, arch: str = "sd15", seed: int = 0) -> Path:
    """Build a tiny random pipeline of ``arch`` and ``save_pretrained`` it into ``out_dir``.

    Deterministic given ``seed`` (weights are drawn under a forked RNG, so the caller's global torch
    RNG is untouched). Load it back with the ordinary ``<PipelineClass>.from_pretrained(out_dir)``
    (for ``sd3`` pass ``text_encoder_3=None, tokenizer_3=None``) or with
    :func:`emofeedback2.engines.generation.diffusers_backend.load_diffusers_generator`.
    """
    builders = _builders()
    if arch not in builders:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}; got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = builders[arch]()
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def build_real_size_pipeline(arch: str = "sd15", device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A pipeline with the real SD1.5, SDXL or SD3.5-Medium architecture and random weights, in memory.

    For speed/memory figures on a GPU (no weights are downloaded): real-size UNet/MMDiT, CLIP text
    encoders and VAE; the character-level tokenizer stands in for CLIP's BPE (same 77-token length).
    SD3.5 is built without T5, as users do to save memory. Weights are created directly on ``device``.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clip_config(hidden: int, layers: int, heads: int, projection: int) -> CLIPTextConfig:
        vocab = _vocab()
        return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                              num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                              projection_dim=projection, hidden_act="quick_gelu",
                              bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                              pad_token_id=vocab["<|endoftext|>"])

    vae_blocks = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                      down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        if arch == "sd15":
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(latent_channels=4, sample_size=512, scaling_factor=0.18215, **vae_blocks),
                text_encoder=CLIPTextModel(clip_config(768, 12, 12, 768)),
                tokenizer=_tokenizer(),
                unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768),
                scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
        elif arch == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(latent_channels=4, sample_size=1024, scaling_factor=0.13025, **vae_blocks),
                text_encoder=CLIPTextModel(clip_config(768, 12, 12, 768)),
                text_encoder_2=CLIPTextModelWithProjection(clip_config(1280, 32, 20, 1280)),
                tokenizer=_tokenizer(),
                tokenizer_2=_tokenizer(),
                unet=UNet2DConditionModel(
                    sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=2816, cross_attention_dim=2048,
                ),
                scheduler=_sd_scheduler(),
            )
        elif arch == "sd3":
            pipe = StableDiffusion3Pipeline(
                transformer=SD3Transformer2DModel(
                    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                    dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
                ),
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                vae=AutoencoderKL(latent_channels=16, sample_size=1024, shift_factor=0.0609, scaling_factor=1.5305,
                                  use_quant_conv=False, use_post_quant_conv=False, **vae_blocks),
                text_encoder=CLIPTextModelWithProjection(clip_config(768, 12, 12, 768)),
                tokenizer=_tokenizer(),
                text_encoder_2=CLIPTextModelWithProjection(clip_config(1280, 32, 20, 1280)),
                tokenizer_2=_tokenizer(),
                text_encoder_3=None, tokenizer_3=None,
            )
        else:
            raise ValueError(f"real-size builds exist for sd15, sdxl and sd3 (SD3.5 Medium); got {arch!r}")
    return pipe.to(device=device, dtype=dtype)


def main() -> None:  # pragma: no cover - convenience for humans: python -m emofeedback2.tiny_models.diffusion DIR
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", choices=ARCHES, default="sd15")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_pipeline(args.out_dir, args.arch, args.seed))


if __name__ == "__main__":  # pragma: no cover
    main()

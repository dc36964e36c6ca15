"""Tiny random Flux.1, Flux.2 Klein, Qwen-Image and Z-Image pipelines (diffusers 0.42 classes).

Each is the family's real pipeline class with its real component classes (transformer, VAE, text
encoder, tokenizer) at toy widths, and the family's *released* scheduler config, so the code under
test meets the same packing, position ids, text encoding, guidance and timestep shift as on the
real model. Widths only need to agree with each other: the transformer's text width is the text
encoder's output width, its ``in_channels`` the (packed) VAE latent width, and its rotary axes add
up to its head width.

Latents are 4 channels (real: 16 for Flux.1 / Z-Image / Qwen-Image, 32 for Flux.2), so a 32 px
image is an 8×8 grid of 2×2 patches: 2 steps of any family take well under a second on a CPU.
"""

from __future__ import annotations

from .text_encoders import (
    QWEN3_HIDDEN,
    T5_HIDDEN,
    TEXT_HIDDEN,
    _text_encoder,
    _tokenizer,
    build_tiny_tokenizer,
    qwen3_causal_lm,
    qwen3_model,
    qwen3_tokenizer,
    qwen25_vl_encoder,
    t5_encoder,
    t5_tokenizer,
)

LATENT_CHANNELS = 4
QWEN25_VL_HIDDEN = 32  # tiny_models.lvlm's Qwen2.5-VL text width

# The scheduler configs of the released checkpoints (scheduler/scheduler_config.json), keys that
# change the schedule only. Flux.1-dev: resolution-dependent ("dynamic") shift between 0.5 and 1.15;
# Flux.2 Klein: dynamic (exponential), its pipeline sets mu empirically from resolution and step count,
# so the base/max shift keys do not matter;
# Qwen-Image: dynamic 0.5..0.9 up to 8192 tokens, stretched so the last sigma is 0.02;
# Z-Image-Turbo: a fixed shift of 3.
FLUX1_DEV_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                           num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)
FLUX2_KLEIN_SCHEDULER = dict(num_train_timesteps=1000, use_dynamic_shifting=True, time_shift_type="exponential")
QWEN_IMAGE_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9,
                            num_train_timesteps=1000, shift=1.0, shift_terminal=0.02, time_shift_type="exponential",
                            use_dynamic_shifting=True)
Z_IMAGE_TURBO_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def _scheduler(config: dict):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def _flux_vae():
    """Flux.1 / Z-Image's ``AutoencoderKL`` layout: no quant convs, shift and scaling factors."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=32, sample_size=32, shift_factor=0.1159, scaling_factor=0.3611,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def build_flux():
    """Flux.1-dev-like: CLIP-L (pooled) + T5 (sequence), guidance embedding, 2×2 packed latents."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_HIDDEN, pooled_projection_dim=TEXT_HIDDEN,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    ).eval()
    tokenizer_2 = t5_tokenizer()
    return FluxPipeline(
        scheduler=_scheduler(FLUX1_DEV_SCHEDULER), vae=_flux_vae(), text_encoder=_text_encoder(with_projection=False),
        tokenizer=_tokenizer(), text_encoder_2=t5_encoder(len(tokenizer_2)), tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def build_flux2_klein():
    """Flux.2 Klein-like (step-distilled): Qwen3 hidden states 9/18/27 stacked, no guidance, BN-normalised latents."""
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel

    vae = AutoencoderKLFlux2(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=LATENT_CHANNELS, norm_num_groups=32,
        sample_size=32, layers_per_block=1,
    ).eval()
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * QWEN3_HIDDEN, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    ).eval()
    return Flux2KleinPipeline(scheduler=_scheduler(FLUX2_KLEIN_SCHEDULER), vae=vae, text_encoder=qwen3_causal_lm(),
                              tokenizer=qwen3_tokenizer(), transformer=transformer, is_distilled=True)


def build_qwen_image():
    """Qwen-Image-like: Qwen2.5-VL last hidden state (template dropped, masked), true CFG, Wan-style 3D VAE."""
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel

    vae = AutoencoderKLQwenImage(
        base_dim=32, z_dim=LATENT_CHANNELS, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.05, 0.3], latents_std=[1.5, 2.0, 1.2, 2.5],
    ).eval()
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=4 * LATENT_CHANNELS, out_channels=LATENT_CHANNELS, num_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=QWEN25_VL_HIDDEN, axes_dims_rope=(4, 6, 6),
    ).eval()
    return QwenImagePipeline(scheduler=_scheduler(QWEN_IMAGE_SCHEDULER), vae=vae, text_encoder=qwen25_vl_encoder(),
                             tokenizer=build_tiny_tokenizer(), transformer=transformer)


def build_z_image():
    """Z-Image-Turbo-like: Qwen3 second-to-last hidden state (masked tokens only), variable-length captions."""
    from diffusers import ZImagePipeline, ZImageTransformer2DModel

    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=LATENT_CHANNELS, dim=32, n_layers=1,
        n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=QWEN3_HIDDEN, axes_dims=[4, 6, 6],
        axes_lens=[256, 64, 64],
    ).eval()
    return ZImagePipeline(scheduler=_scheduler(Z_IMAGE_TURBO_SCHEDULER), vae=_flux_vae(), text_encoder=qwen3_model(),
                          tokenizer=qwen3_tokenizer(), transformer=transformer)


BUILDERS = {"flux": build_flux, "flux2_klein": build_flux2_klein, "qwen_image": build_qwen_image,
            "z_image": build_z_image}

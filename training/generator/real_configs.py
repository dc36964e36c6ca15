"""Architecture configs of the real models the shipped recipe names, for building them on the ``meta`` device.

The memory plan reads a model's ``config.json`` files from its local folder when there is one; these
are the same configs written out for the hub ids of the recipe, so a plan can be printed before
anything is downloaded. Only shapes live here (no weights), written from the public ``config.json``
of each repository; the plan prints the parameter count each one gives on the meta device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

# SD3.5 Medium (stabilityai/stable-diffusion-3.5-medium): MMDiT-X transformer, 16-channel VAE, and
# CLIP-L + CLIP-G + T5-XXL text encoders.
SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD3_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False,
)
CLIP_L_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu")
CLIP_G_TEXT = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, max_position_embeddings=77, projection_dim=1280, hidden_act="gelu")
T5_XXL_ENCODER = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False)

#: pipeline hub id → {component: (library, class name, config dict)}
PIPELINES: dict[str, dict[str, tuple[str, str, dict]]] = {
    "stabilityai/stable-diffusion-3.5-medium": {
        "transformer": ("diffusers", "SD3Transformer2DModel", SD35_MEDIUM_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", SD3_VAE),
        "text_encoder": ("transformers", "CLIPTextModelWithProjection", CLIP_L_TEXT),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", CLIP_G_TEXT),
        "text_encoder_3": ("transformers", "T5EncoderModel", T5_XXL_ENCODER),
    },
}
# --- SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0), for the shipped SDXL recipe's plan -----------
# UNet (2,567,463,684 params), the SD VAE with SDXL's scaling (kept fp32 in fp16 runs: force_upcast), and the
# CLIP-L (no projection) + OpenCLIP bigG (with projection) text encoders, from the repo's config.json files.
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], transformer_layers_per_block=[1, 2, 10],
    attention_head_dim=[5, 10, 20], cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    act_fn="silu", norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, sample_size=1024,
    scaling_factor=0.13025, force_upcast=True,
)
PIPELINES["stabilityai/stable-diffusion-xl-base-1.0"] = {
    "unet": ("diffusers", "UNet2DConditionModel", SDXL_UNET),
    "vae": ("diffusers", "AutoencoderKL", SDXL_VAE),
    "text_encoder": ("transformers", "CLIPTextModel", CLIP_L_TEXT),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", CLIP_G_TEXT),
}

#: T5 sequence length SD3 pipelines encode to (max_sequence_length) and the CLIP length
SD3_T5_TOKENS = 256
CLIP_TOKENS = 77

QWEN25_VL_7B = {
    "model_type": "qwen2_5_vl", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                      "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2},
}
# PickScore_v1 is a CLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K) fine-tune
CLIP_VIT_H_14 = {
    "projection_dim": 1024,
    "text_config": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu"},
    "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "gelu"},
}
#: reward model id (or the last part of a folder name) → (config class name, config dict)
REWARD_MODELS: dict[str, tuple[str, dict]] = {
    "Qwen/Qwen2.5-VL-7B-Instruct": ("Qwen2_5_VLConfig", QWEN25_VL_7B),
    "qwen2.5-vl-7b": ("Qwen2_5_VLConfig", QWEN25_VL_7B),
    "yuvalkirstain/PickScore_v1": ("CLIPConfig", CLIP_VIT_H_14),
    "PickScore_v1": ("CLIPConfig", CLIP_VIT_H_14),
}


def known_reward_config(path: str) -> Optional[tuple[str, dict]]:
    """The built-in config for a reward model id, or for a folder named like one (``models/PickScore_v1``)."""
    if path in REWARD_MODELS:
        return REWARD_MODELS[path]
    return REWARD_MODELS.get(Path(path).name)

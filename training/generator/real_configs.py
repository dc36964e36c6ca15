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
#: T5 sequence length SD3 pipelines encode to (max_sequence_length) and the CLIP length
SD3_T5_TOKENS = 256
CLIP_TOKENS = 77

# --- the 2026 generator families (issue 23) ----------------------------------------------------------
# Each dict is the public ``config.json`` of that repository's component folder, without the
# ``_class_name``/``_diffusers_version`` bookkeeping (class names sit in PIPELINES below).

# black-forest-labs/FLUX.1-dev: transformer/config.json (guidance-distilled: guidance_embeds), the
# 16-channel VAE of vae/config.json, CLIP-L (text_encoder, CLIPTextModel) + T5-XXL (text_encoder_2).
FLUX1_DEV_TRANSFORMER = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
FLUX1_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu",
    norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, force_upcast=True,
    use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True,
)
#: FluxPipeline encodes T5 to max_sequence_length=512 (its default); CLIP-L gives the pooled 768
FLUX1_T5_TOKENS = 512

# black-forest-labs/FLUX.2-klein-4B: transformer/config.json (the step-distilled 4B; klein-base-4B has the
# same file, and diffusers' scripts/convert_flux2_to_diffusers.py has the same values as "klein-4b"),
# the FLUX.2 VAE (vae/config.json, shared by every FLUX.2 model: 32 latent channels, 2x2 patchified
# to 128 at 1/16 of the image side), and Qwen/Qwen3-4B as text_encoder (Qwen3ForCausalLM; the
# pipeline concatenates hidden states 9, 18, 27: 3 x 2560 = 7680).
FLUX2_KLEIN_4B_TRANSFORMER = dict(
    patch_size=1, in_channels=128, out_channels=None, num_layers=5, num_single_layers=20, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=7680, timestep_guidance_channels=256, mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6, guidance_embeds=False,
)
FLUX2_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=32, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, act_fn="silu",
    norm_num_groups=32, sample_size=1024, use_quant_conv=True, use_post_quant_conv=True,  # (no force_upcast argument)
    mid_block_add_attention=True, batch_norm_eps=1e-4, batch_norm_momentum=0.1, patch_size=(2, 2),
)
# Qwen/Qwen3-4B config.json (tied embeddings: 4,022,468,096 parameters), the text encoder of Klein 4B and Z-Image
QWEN3_4B = dict(
    vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=40960, rms_norm_eps=1e-6,
    rope_theta=1000000.0, tie_word_embeddings=True, attention_bias=False,
)
#: Flux2KleinPipeline pads every prompt to max_sequence_length=512 tokens
FLUX2_KLEIN_TOKENS = 512

# Qwen/Qwen-Image: transformer/config.json (60 dual-stream blocks, true CFG, no pooled vector),
# vae/config.json (AutoencoderKLQwenImage, a Wan-style causal 3D VAE used on single frames), and
# Qwen2.5-VL-7B-Instruct as text_encoder (the last hidden state, chat template dropped).
QWEN_IMAGE_TRANSFORMER = dict(
    patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128, num_attention_heads=24,
    joint_attention_dim=3584, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
)
QWEN_IMAGE_VAE = dict(
    base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0,
    latents_mean=[-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
                  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    latents_std=[2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
                 1.6382, 1.1253, 2.8251, 1.916],
)

# Tongyi-MAI/Z-Image-Turbo: transformer/config.json (single-stream S3-DiT, 30 layers of width 3840),
# the FLUX.1 VAE (vae/config.json is the same 16-channel AutoencoderKL), Qwen3-4B as text_encoder
# (Qwen3Model; the second-to-last hidden state of the prompt's real tokens).
Z_IMAGE_TURBO_TRANSFORMER = dict(
    all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
    n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
    axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
)
#: Qwen-Image and Z-Image keep only a prompt's real tokens (no padding to a fixed length): the plan
#: assumes 128, above the chat template plus the longest shipped training prompt
LLM_PROMPT_TOKENS = 128

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
# Other judge families at their common size. Shapes only (what decides memory), written from the public
# config.json of each model or a verbatim copy of it; docs/scoring.md names the source of each.
QWEN3_VL_8B = {  # Qwen/Qwen3-VL-8B-Instruct
    "text_config": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                        "mrope_interleaved": True}},
    "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                      "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]},
    "tie_word_embeddings": False,
}
QWEN3_5_9B = {  # Qwen/Qwen3.5-9B: 32 layers, every 4th full attention, the others Gated DeltaNet
    "text_config": {"vocab_size": 248320, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
                    "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
                    "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
                    "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
                    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
                                        "mrope_interleaved": True, "partial_rotary_factor": 0.25}},
    "vision_config": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
                      "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
                      "num_position_embeddings": 2304},
    "tie_word_embeddings": False,
}
QWEN3_5_9B["text_config"]["layer_types"] = QWEN3_5_9B["text_config"]["layer_types"] * 8
GEMMA3_12B = {  # google/gemma-3-12b-it: SigLIP-So400m at 896 px pooled to 256 soft tokens per image
    "text_config": {"vocab_size": 262208, "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
                    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "query_pre_attn_scalar": 256,
                    "sliding_window": 1024,
                    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 8},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 896,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
                      "vision_use_head": False},
    "mm_tokens_per_image": 256, "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
}
INTERNVL3_5_8B = {  # OpenGVLab/InternVL3_5-8B(-HF): InternViT-300M at 448 px tiles + Qwen3-8B
    "text_config": {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
                    "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                      "image_size": [448, 448], "patch_size": [14, 14]},
    "downsample_ratio": 0.5, "image_seq_length": 256, "tie_word_embeddings": False,
}
LLAVA_ONEVISION_7B = {  # llava-hf/llava-onevision-qwen2-7b-ov-hf: SigLIP (26 layers used) + Qwen2-7B, any-resolution grid
    "text_config": {"model_type": "qwen2", "vocab_size": 152128, "hidden_size": 3584, "intermediate_size": 18944,
                    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4},
    "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152, "image_size": 384,
                      "intermediate_size": 4304, "num_attention_heads": 16, "num_hidden_layers": 26, "patch_size": 14,
                      "vision_use_head": False},
    "image_grid_pinpoints": [[h, w] for h in range(384, 2305, 384) for w in range(384, 2305, 384)],
    "image_token_index": 151646, "video_token_index": 151647, "vision_feature_select_strategy": "full",
    "vision_feature_layer": -1, "tie_word_embeddings": False,
}
SMOLVLM_2B = {  # HuggingFaceTB/SmolVLM-Instruct (Idefics3 layout; SmolVLM2 keeps it): SigLIP at 384 px + SmolLM2-1.7B
    "text_config": {"model_type": "llama", "vocab_size": 49155, "hidden_size": 2048, "intermediate_size": 8192,
                    "num_hidden_layers": 24, "num_attention_heads": 32, "num_key_value_heads": 32, "head_dim": 64,
                    "max_position_embeddings": 16384},
    "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304, "num_attention_heads": 16,
                      "num_hidden_layers": 27, "patch_size": 14},
    "scale_factor": 3, "image_token_id": 49153, "tie_word_embeddings": False,
}

#: judge short name (``--judge-real-size``) → hub id; REWARD_MODELS holds the configs under both names
REAL_JUDGES: dict[str, str] = {
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen3.5-9b": "Qwen/Qwen3.5-9B",
    "gemma-3-12b": "google/gemma-3-12b-it",
    "internvl3.5-8b": "OpenGVLab/InternVL3_5-8B-HF",
    "llava-onevision-7b": "llava-hf/llava-onevision-qwen2-7b-ov-hf",
    "smolvlm-2b": "HuggingFaceTB/SmolVLM-Instruct",
}

# PickScore_v1 is a CLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K) fine-tune
CLIP_VIT_H_14 = {
    "projection_dim": 1024,
    "text_config": {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu"},
    "vision_config": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                      "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "hidden_act": "gelu"},
}

# --- which components each known pipeline id is built from ---------------------------------------------
#: pipeline hub id → {component: (library, class name, config dict)}
PIPELINES: dict[str, dict[str, tuple[str, str, dict]]] = {
    "stabilityai/stable-diffusion-3.5-medium": {
        "transformer": ("diffusers", "SD3Transformer2DModel", SD35_MEDIUM_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", SD3_VAE),
        "text_encoder": ("transformers", "CLIPTextModelWithProjection", CLIP_L_TEXT),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", CLIP_G_TEXT),
        "text_encoder_3": ("transformers", "T5EncoderModel", T5_XXL_ENCODER),
    },
    "black-forest-labs/FLUX.1-dev": {
        "transformer": ("diffusers", "FluxTransformer2DModel", FLUX1_DEV_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", FLUX1_VAE),
        "text_encoder": ("transformers", "CLIPTextModel", CLIP_L_TEXT),
        "text_encoder_2": ("transformers", "T5EncoderModel", T5_XXL_ENCODER),
    },
    "black-forest-labs/FLUX.2-klein-4B": {
        "transformer": ("diffusers", "Flux2Transformer2DModel", FLUX2_KLEIN_4B_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKLFlux2", FLUX2_VAE),
        "text_encoder": ("transformers", "Qwen3ForCausalLM", QWEN3_4B),
    },
    "Qwen/Qwen-Image": {
        "transformer": ("diffusers", "QwenImageTransformer2DModel", QWEN_IMAGE_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKLQwenImage", QWEN_IMAGE_VAE),
        "text_encoder": ("transformers", "Qwen2_5_VLForConditionalGeneration", QWEN25_VL_7B),  # the judge's model
    },
    "stabilityai/stable-diffusion-xl-base-1.0": {
        "unet": ("diffusers", "UNet2DConditionModel", SDXL_UNET),
        "vae": ("diffusers", "AutoencoderKL", SDXL_VAE),
        "text_encoder": ("transformers", "CLIPTextModel", CLIP_L_TEXT),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", CLIP_G_TEXT),
    },
    "Tongyi-MAI/Z-Image-Turbo": {
        "transformer": ("diffusers", "ZImageTransformer2DModel", Z_IMAGE_TURBO_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", FLUX1_VAE),
        "text_encoder": ("transformers", "Qwen3Model", QWEN3_4B),
    },
}

#: reward model id (or the last part of a folder name) → (config class name, config dict)
_JUDGE_CONFIGS: dict[str, tuple[str, dict]] = {
    "qwen2.5-vl-7b": ("Qwen2_5_VLConfig", QWEN25_VL_7B),
    "qwen3-vl-8b": ("Qwen3VLConfig", QWEN3_VL_8B),
    "qwen3.5-9b": ("Qwen3_5Config", QWEN3_5_9B),
    "gemma-3-12b": ("Gemma3Config", GEMMA3_12B),
    "internvl3.5-8b": ("InternVLConfig", INTERNVL3_5_8B),
    "llava-onevision-7b": ("LlavaOnevisionConfig", LLAVA_ONEVISION_7B),
    "smolvlm-2b": ("Idefics3Config", SMOLVLM_2B),
}
REWARD_MODELS: dict[str, tuple[str, dict]] = {
    **_JUDGE_CONFIGS,
    **{REAL_JUDGES[name]: config for name, config in _JUDGE_CONFIGS.items()},
    "yuvalkirstain/PickScore_v1": ("CLIPConfig", CLIP_VIT_H_14),
    "PickScore_v1": ("CLIPConfig", CLIP_VIT_H_14),
}


def known_reward_config(path: str) -> Optional[tuple[str, dict]]:
    """The built-in config for a reward model id, or for a folder named like one (``models/PickScore_v1``)."""
    if path in REWARD_MODELS:
        return REWARD_MODELS[path]
    return REWARD_MODELS.get(Path(path).name)

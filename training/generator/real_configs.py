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

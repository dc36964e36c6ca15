"""The slim SD1.5 checkpoint's diffusers→LDM mapping and weight layouts (no ComfyUI needed).

The opt-in tier loads the file in ComfyUI and compares UNet outputs; here the mapping is checked on
every parameter of the slim UNet and on the full SD1.5 layout against well-known LDM names.
"""

from __future__ import annotations

import pytest
import torch

from emofeedback2.tiny_models.comfy_checkpoint import (
    CLIP_L_HIDDEN,
    CLIP_L_VOCAB,
    diffusers_unet_to_ldm,
    random_clip_l_state_dict,
    random_taesd_state_dict,
    slim_sd15_unet_config,
    unet_module_map,
)

SD15_CONFIG = {
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}


def _meta_unet(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**config)


def test_slim_config_is_what_comfyui_detects_as_sd15():
    config = slim_sd15_unet_config()
    assert config["block_out_channels"] == [320] and config["cross_attention_dim"] == 768
    assert config["layers_per_block"] == 1 and config["use_linear_projection"] is False


def test_every_slim_unet_parameter_gets_a_distinct_ldm_name():
    unet = _meta_unet(slim_sd15_unet_config())
    state = unet.state_dict()
    ldm = diffusers_unet_to_ldm(state, slim_sd15_unet_config())
    assert len(ldm) == len(state)
    assert "input_blocks.1.1.proj_in.weight" in ldm and "middle_block.2.out_layers.3.weight" in ldm
    assert "output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in ldm and "out.2.weight" in ldm


def test_full_sd15_layout_maps_to_the_known_ldm_names():
    unet = _meta_unet(SD15_CONFIG)
    state = unet.state_dict()
    ldm = diffusers_unet_to_ldm(state, SD15_CONFIG)
    assert len(ldm) == len(state) == 686  # every SD1.5 UNet tensor, each once
    known = {
        "down_blocks.0.downsamplers.0.conv.weight": "input_blocks.3.0.op.weight",
        "down_blocks.1.attentions.0.proj_in.weight": "input_blocks.4.1.proj_in.weight",
        "down_blocks.1.resnets.0.conv_shortcut.weight": "input_blocks.4.0.skip_connection.weight",
        "down_blocks.3.resnets.1.conv2.weight": "input_blocks.11.0.out_layers.3.weight",
        "up_blocks.0.upsamplers.0.conv.weight": "output_blocks.2.1.conv.weight",
        "up_blocks.1.upsamplers.0.conv.weight": "output_blocks.5.2.conv.weight",
        "up_blocks.3.attentions.2.proj_out.weight": "output_blocks.11.1.proj_out.weight",
        "time_embedding.linear_2.weight": "time_embed.2.weight",
    }
    for diffusers_name, ldm_name in known.items():
        assert ldm[ldm_name] is state[diffusers_name], (diffusers_name, ldm_name)


def test_unknown_parameters_fail_loudly():
    with pytest.raises(KeyError, match="no LDM name"):
        diffusers_unet_to_ldm({"add_embedding.linear_1.weight": torch.zeros(1)}, slim_sd15_unet_config())
    assert "mid_block.attentions.0" in unet_module_map(slim_sd15_unet_config())


def test_clip_l_and_taesd_weights_have_the_shapes_comfyui_builds():
    generator = torch.Generator().manual_seed(0)
    clip = random_clip_l_state_dict(generator)
    assert clip["embeddings.token_embedding.weight"].shape == (CLIP_L_VOCAB, CLIP_L_HIDDEN)
    assert clip["encoder.layers.11.mlp.fc1.weight"].shape == (3072, CLIP_L_HIDDEN)
    assert all(v.dtype == torch.float16 for v in clip.values())
    taesd = random_taesd_state_dict(generator)
    assert taesd["taesd_decoder.1.weight"].shape == (64, 4, 3, 3)  # ComfyUI reads latent channels here
    assert taesd["taesd_encoder.14.weight"].shape == (4, 64, 3, 3)
    assert taesd["taesd_decoder.19.weight"].shape == (3, 64, 3, 3)
    assert "taesd_decoder.7.weight" in taesd and "taesd_decoder.7.bias" not in taesd  # bias-free conv after upsample

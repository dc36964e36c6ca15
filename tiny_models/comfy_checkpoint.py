"""A slim random SD1.5-shaped single-file checkpoint that ComfyUI's CheckpointLoaderSimple loads.

Why: the real-ComfyUI test tier and LoRA checks need a checkpoint ComfyUI *detects as SD1.5*
(``model_channels=320``, ``context_dim=768``, conv ``proj_in``) yet samples in about a second on a
CPU. The UNet is a diffusers ``UNet2DConditionModel`` with one resolution level and one res block
(:func:`slim_sd15_unet_config`), so the same weights exist twice: as a diffusers model (what
``training/`` fine-tunes and exports LoRAs for) and, converted by :func:`diffusers_unet_to_ldm`, as
the LDM layout inside the file. The text encoder is a full-size CLIP-L with random weights (ComfyUI
builds CLIP-L from its own config and ships the tokenizer, so the shapes must be the real ones) in
fp16; the VAE is a random tiny autoencoder with TAESD's layout, which ComfyUI recognises by its keys.

File layout (the keys ComfyUI's SD1.5 loader expects):
``model.diffusion_model.*`` (UNet, LDM names), ``cond_stage_model.transformer.text_model.*``
(CLIP-L), ``first_stage_model.taesd_{encoder,decoder}.*`` (+ ``vae_scale``/``vae_shift``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
VAE_PREFIX = "first_stage_model."

# CLIP ViT-L/14 text encoder shapes (what ComfyUI's sd1_clip_config.json builds).
CLIP_L_HIDDEN = 768
CLIP_L_LAYERS = 12
CLIP_L_FF = 3072
CLIP_L_VOCAB = 49408
CLIP_L_POSITIONS = 77

# TAESD layout: 64-channel blocks, three 2x resolution steps, 4 latent channels.
TAESD_WIDTH = 64
LATENT_CHANNELS = 4


def slim_sd15_unet_config() -> dict[str, Any]:
    """A diffusers ``UNet2DConditionModel`` config that ComfyUI detects as SD1.5.

    SD1.5's width (320), context (768), head count (8, diffusers calls it ``attention_head_dim``)
    and conv projections, but one resolution level with one res block: ~20M parameters.
    """
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D"],
        "block_out_channels": [320],
        "layers_per_block": 1,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "use_linear_projection": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }


def build_slim_unet(seed: int = 0):
    """A randomly initialised diffusers UNet of :func:`slim_sd15_unet_config` (deterministic per seed)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**slim_sd15_unet_config())


# --- diffusers → LDM (ComfyUI) UNet key mapping ------------------------------------------------

_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet(diffusers_prefix: str, ldm_prefix: str) -> dict[str, str]:
    return {f"{diffusers_prefix}.{d}": f"{ldm_prefix}.{l}" for d, l in _RESNET_NAMES.items()}


def unet_module_map(config: dict[str, Any]) -> dict[str, str]:
    """``{diffusers module path: LDM module path}`` for a UNet2DConditionModel config.

    Module paths, not parameter names: attention/transformer internals (``transformer_blocks.*``,
    ``norm``, ``proj_in``, ``proj_out``) carry the same names below both prefixes. Handles any number
    of levels and res blocks, with or without attention per level (SD1.5's full layout included).
    """
    levels = len(config["block_out_channels"])
    n = config["layers_per_block"]
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    mapping = {
        "conv_in": "input_blocks.0.0",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.attentions.0": "middle_block.1",
    }
    mapping.update(_resnet("mid_block.resnets.0", "middle_block.0"))
    mapping.update(_resnet("mid_block.resnets.1", "middle_block.2"))
    for level in range(levels):
        for j in range(n):
            index = 1 + level * (n + 1) + j
            mapping.update(_resnet(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{index}.0"))
            if down_attn[level]:
                mapping[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{index}.1"
        if level < levels - 1:
            index = 1 + level * (n + 1) + n
            mapping[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{index}.0.op"
    for level in range(levels):
        for j in range(n + 1):
            index = level * (n + 1) + j
            mapping.update(_resnet(f"up_blocks.{level}.resnets.{j}", f"output_blocks.{index}.0"))
            if up_attn[level]:
                mapping[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{index}.1"
        if level < levels - 1:
            index = level * (n + 1) + n
            slot = 2 if up_attn[level] else 1
            mapping[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{index}.{slot}.conv"
    return mapping


def diffusers_unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet state dict to LDM (ComfyUI checkpoint) names, without the prefix.

    Raises ``KeyError`` naming the first parameter no module mapping covers, so a layout this
    mapping does not know fails loudly instead of writing a checkpoint with missing weights.
    """
    modules = sorted(unet_module_map(config).items(), key=lambda item: -len(item[0]))
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        for diffusers_module, ldm_module in modules:
            if name.startswith(diffusers_module + "."):
                out[ldm_module + name[len(diffusers_module):]] = tensor
                break
        else:
            raise KeyError(f"no LDM name for diffusers UNet parameter {name!r}")
    return out


# --- CLIP-L and TAESD-shaped random weights ------------------------------------------------------


def _random(shape: tuple[int, ...], generator: torch.Generator, std: float = 0.02) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


def random_clip_l_state_dict(generator: torch.Generator, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Random CLIP-L text-encoder weights under ComfyUI's ``text_model.`` names (no prefix)."""
    d, ff = CLIP_L_HIDDEN, CLIP_L_FF
    sd: dict[str, torch.Tensor] = {
        "embeddings.token_embedding.weight": _random((CLIP_L_VOCAB, d), generator),
        "embeddings.position_embedding.weight": _random((CLIP_L_POSITIONS, d), generator, 0.01),
        "final_layer_norm.weight": torch.ones(d),
        "final_layer_norm.bias": torch.zeros(d),
    }
    for layer in range(CLIP_L_LAYERS):
        p = f"encoder.layers.{layer}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"] = _random((d, d), generator)
            sd[p + f"self_attn.{proj}.bias"] = torch.zeros(d)
        for norm in ("layer_norm1", "layer_norm2"):
            sd[p + f"{norm}.weight"] = torch.ones(d)
            sd[p + f"{norm}.bias"] = torch.zeros(d)
        sd[p + "mlp.fc1.weight"] = _random((ff, d), generator)
        sd[p + "mlp.fc1.bias"] = torch.zeros(ff)
        sd[p + "mlp.fc2.weight"] = _random((d, ff), generator)
        sd[p + "mlp.fc2.bias"] = torch.zeros(d)
    return {k: v.to(dtype) for k, v in sd.items()}


def _conv(sd: dict, name: str, n_in: int, n_out: int, generator: torch.Generator, kernel: int = 3, bias: bool = True) -> None:
    fan_in = n_in * kernel * kernel
    sd[f"{name}.weight"] = _random((n_out, n_in, kernel, kernel), generator, std=(1.0 / fan_in) ** 0.5)
    if bias:
        sd[f"{name}.bias"] = torch.zeros(n_out)


def _block(sd: dict, name: str, width: int, generator: torch.Generator) -> None:
    for i in (0, 2, 4):  # conv, ReLU, conv, ReLU, conv
        _conv(sd, f"{name}.conv.{i}", width, width, generator)


def random_taesd_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights in TAESD's module layout (encoder + decoder), names without prefix.

    Sequential indices follow the TAESD architecture: convs, 64-wide residual blocks, stride-2
    convs (encoder) or upsample+conv (decoder, indices of Upsample/ReLU/Clamp hold no weights).
    """
    w, z = TAESD_WIDTH, LATENT_CHANNELS
    sd: dict[str, torch.Tensor] = {}
    enc = "taesd_encoder"
    _conv(sd, f"{enc}.0", 3, w, generator)
    _block(sd, f"{enc}.1", w, generator)
    for start in (2, 6, 10):
        _conv(sd, f"{enc}.{start}", w, w, generator, bias=False)
        for i in range(1, 4):
            _block(sd, f"{enc}.{start + i}", w, generator)
    _conv(sd, f"{enc}.14", w, z, generator)
    dec = "taesd_decoder"
    _conv(sd, f"{dec}.1", z, w, generator)
    for start in (3, 8, 13):
        for i in range(3):
            _block(sd, f"{dec}.{start + i}", w, generator)
        _conv(sd, f"{dec}.{start + 4}", w, w, generator, bias=False)  # after the Upsample
    _block(sd, f"{dec}.18", w, generator)
    _conv(sd, f"{dec}.19", w, 3, generator)
    sd["vae_scale"] = torch.tensor(1.0)
    sd["vae_shift"] = torch.tensor(0.0)
    return sd


def write_slim_checkpoint(path: str | Path, unet=None, seed: int = 0) -> Path:
    """Write a ComfyUI-loadable SD1.5-shaped ``.safetensors`` checkpoint and return its path.

    ``unet``: a diffusers ``UNet2DConditionModel`` of :func:`slim_sd15_unet_config` (e.g. the twin
    a LoRA was trained on); a fresh random one from ``seed`` when None. The UNet is stored in fp32
    so ComfyUI and diffusers compute with identical weights; CLIP-L (the bulk, ~123M parameters)
    in fp16. About 330 MB.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path.name!r}")
    if unet is None:
        unet = build_slim_unet(seed)
        config = slim_sd15_unet_config()
    else:
        config = dict(unet.config)
    generator = torch.Generator().manual_seed(seed)
    unet_sd = diffusers_unet_to_ldm({k: v.detach().float().cpu() for k, v in unet.state_dict().items()}, config)
    tensors = {UNET_PREFIX + k: v for k, v in unet_sd.items()}
    tensors.update({CLIP_PREFIX + k: v for k, v in random_clip_l_state_dict(generator).items()})
    tensors.update({VAE_PREFIX + k: v for k, v in random_taesd_state_dict(generator).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "emofeedback2": "slim random sd15 checkpoint"})
    return path

"""Stand-ins for ComfyUI's LoRA machinery (v0.3.64), used by the ``comfy_sampling`` fixture.

- ``comfy.lora.model_lora_keys_unet(model, key_map={})`` / ``model_lora_keys_clip(model, key_map={})``
  (kohya ``lora_unet_…``/``lora_te_…`` and diffusers ``unet.….processor.to_q`` names, as the real
  functions derive them) and ``load_lora(lora, to_load, log_missing=True)``;
- ``comfy.sd.load_lora_for_models(model, clip, lora, strength_model, strength_clip)`` (the real
  function's body), over a ``comfy.lora_convert`` module given by the fixture.
"""

from __future__ import annotations

import logging
import types

LORA_CLIP_MAP = {"self_attn.q_proj": "self_attn_q_proj", "self_attn.k_proj": "self_attn_k_proj", "mlp.fc1": "mlp_fc1"}


def make_lora() -> types.ModuleType:
    lora = types.ModuleType("comfy.lora")

    def model_lora_keys_clip(model, key_map={}):
        for k in model.state_dict().keys():
            if not k.endswith(".weight"):
                continue
            for b in range(32):
                for c, d in LORA_CLIP_MAP.items():
                    if k == f"clip_l.transformer.text_model.encoder.layers.{b}.{c}.weight":
                        key_map[f"lora_te_text_model_encoder_layers_{b}_{d}"] = k
                        key_map[f"text_encoder.text_model.encoder.layers.{b}.{c}"] = k
        return key_map

    def model_lora_keys_unet(model, key_map={}):
        for k in model.state_dict().keys():
            if k.startswith("diffusion_model.") and k.endswith(".weight"):
                key_lora = k[len("diffusion_model."):-len(".weight")].replace(".", "_")
                key_map[f"lora_unet_{key_lora}"] = k
                key_map[k[: -len(".weight")]] = k
        for k, ldm in model.diffusers_keys.items():
            unet_key = f"diffusion_model.{ldm}"
            key_map["lora_unet_{}".format(k[: -len(".weight")].replace(".", "_"))] = unet_key
            for p in ("", "unet."):
                dk = "{}{}".format(p, k[: -len(".weight")].replace(".to_", ".processor.to_"))
                if dk.endswith(".to_out.0"):
                    dk = dk[:-2]
                key_map[dk] = unet_key
        return key_map

    def load_lora(lora_sd, to_load, log_missing=True):
        patch_dict, loaded_keys = {}, set()
        for x in to_load:
            up, down = f"{x}.lora_up.weight", f"{x}.lora_down.weight"
            if up in lora_sd and down in lora_sd:
                alpha = lora_sd[f"{x}.alpha"].item() if f"{x}.alpha" in lora_sd else None
                patch_dict[to_load[x]] = ("lora", (lora_sd[up], lora_sd[down], alpha, None, None, None))
                loaded_keys.update({up, down, f"{x}.alpha"})
        if log_missing:
            for x in lora_sd.keys():
                if x not in loaded_keys:
                    logging.warning("lora key not loaded: {}".format(x))
        return patch_dict

    lora.model_lora_keys_clip = model_lora_keys_clip
    lora.model_lora_keys_unet = model_lora_keys_unet
    lora.load_lora = load_lora
    return lora


def make_sd(lora, lora_convert) -> types.ModuleType:
    sd = types.ModuleType("comfy.sd")

    def load_lora_for_models(model, clip, lora_sd, strength_model, strength_clip):
        key_map = {}
        if model is not None:
            key_map = lora.model_lora_keys_unet(model.model, key_map)
        if clip is not None:
            key_map = lora.model_lora_keys_clip(clip.cond_stage_model, key_map)
        lora_sd = lora_convert.convert_lora(lora_sd)
        loaded = lora.load_lora(lora_sd, key_map)
        if model is not None:
            new_modelpatcher = model.clone()
            k = new_modelpatcher.add_patches(loaded, strength_model)
        else:
            k, new_modelpatcher = (), None
        if clip is not None:
            new_clip = clip.clone()
            k1 = new_clip.add_patches(loaded, strength_clip)
        else:
            k1, new_clip = (), None
        for x in loaded:
            if x not in set(k) and x not in set(k1):
                logging.warning("NOT LOADED {}".format(x))
        return (new_modelpatcher, new_clip)

    sd.load_lora_for_models = load_lora_for_models
    return sd

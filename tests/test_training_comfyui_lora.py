"""Opt-in: LoRAs exported by training/generator/export.py, loaded by a real ComfyUI's stock LoRA code.

SD1.5 from a slim checkpoint ComfyUI detects; Flux.1 and Qwen-Image on models ComfyUI builds from
their family config (Flux.2 and Z-Image are newer than ComfyUI v0.3.64: skipped with the reason).

Needs ``COMFYUI_DIR`` (a ComfyUI checkout) and, optionally, ``COMFYUI_PYTHON`` (its interpreter).
Builds engineer E's slim SD1.5 checkpoint from a diffusers UNet, gives the *same* UNet a peft LoRA
(as the trainer does), exports it with kohya keys, then in ComfyUI's own interpreter runs
``comfy.sd.load_checkpoint_guess_config`` + ``comfy.sd.load_lora_for_models`` (what LoraLoader
calls) and checks: zero "lora key not loaded" lines, every LoRA module mapped, and the patched
weights equal base + up@down·alpha/rank (the full delta).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.comfyui

SCRIPT = r'''
import json, logging, sys, io
comfy_dir, checkpoint, lora_file = sys.argv[1:4]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.sd, comfy.utils, comfy.lora
stream = io.StringIO()
handler = logging.StreamHandler(stream)
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(checkpoint, output_vae=True, output_clip=True)[:4]
lora = comfy.utils.load_torch_file(lora_file, safe_load=True)
key_map = comfy.lora.model_lora_keys_unet(model.model, {})
model_lora, _clip = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 0.0)
before = {k: v.detach().clone().float() for k, v in model_lora.model.state_dict().items()}
model_lora.patch_model(device_to=torch.device("cpu"))
after = {k: v.detach().float() for k, v in model_lora.model.state_dict().items()}
modules = sorted({k.rsplit(".", 2)[0] for k in lora if k.endswith(".lora_down.weight")})
mapped, max_err, max_delta = 0, 0.0, 0.0
for name in modules:
    target = key_map.get(name)
    if target is None:
        continue
    mapped += 1
    down, up = lora[name + ".lora_down.weight"].float(), lora[name + ".lora_up.weight"].float()
    alpha = float(lora[name + ".alpha"]) / down.shape[0]
    delta = (up.flatten(1) @ down.flatten(1)).reshape(after[target].shape) * alpha
    got = after[target] - before[target]
    max_err = max(max_err, float((got - delta).abs().max()))
    max_delta = max(max_delta, float(delta.abs().max()))
print(json.dumps({"not_loaded": stream.getvalue().count("lora key not loaded"), "modules": len(modules),
                  "mapped": mapped, "max_err": max_err, "max_delta": max_delta}))
'''


@pytest.fixture
def comfyui_dir() -> Path:
    value = os.environ.get("COMFYUI_DIR")
    if not value:
        pytest.skip("set COMFYUI_DIR to a ComfyUI checkout to run the real-ComfyUI LoRA check")
    path = Path(value)
    if not (path / "comfy" / "sd.py").is_file():
        pytest.fail(f"COMFYUI_DIR={path} is not a ComfyUI checkout (no comfy/sd.py)")
    return path


def test_stock_comfyui_lora_loader_applies_the_exported_lora_in_full(comfyui_dir, tmp_path):
    from emofeedback2.tiny_models.comfy_checkpoint import build_slim_unet, write_slim_checkpoint
    from emofeedback2.training.generator.export import peft_to_kohya
    from emofeedback2.training.generator.policy_net import add_lora, lora_parameters

    checkpoint = write_slim_checkpoint(tmp_path / "slim.safetensors", unet=build_slim_unet(seed=3), seed=3)
    unet = build_slim_unet(seed=3)
    add_lora(unet, "sd15", rank=4, alpha=8.0, targets=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora_parameters(unet):
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    lora_path = tmp_path / "lora.safetensors"
    save_file(peft_to_kohya(get_peft_model_state_dict(unet), "sd15", lora_alpha=8.0), str(lora_path))
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([python, "-c", SCRIPT, str(comfyui_dir), str(checkpoint), str(lora_path)],
                          capture_output=True, text=True, timeout=600, cwd=str(comfyui_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print("ComfyUI LoRA check:", report)
    assert report["not_loaded"] == 0, report
    assert report["mapped"] == report["modules"] > 0, report
    assert report["max_delta"] > 1e-3 and report["max_err"] < 1e-4 * max(1.0, report["max_delta"]), report


# --- the flow-matching families ------------------------------------------------------------------------
# ComfyUI has no detection for toy widths (it derives Flux's heads as hidden // 128, builds Qwen-Image
# at its real width), so the model is built the way ComfyUI builds it from a family config:
# comfy.model_detection.model_config_from_unet_config → get_model, with the tiny widths; the tiny
# diffusers weights go in through ComfyUI's own diffusers converter (convert_diffusers_mmdit) where
# ComfyUI's module names differ (Flux), as they are where they do not (Qwen-Image). Then LoraLoader's
# own calls: comfy.sd.load_lora_for_models, patch, and the delta of every module (or fused-qkv slice).

FAMILY_SCRIPT = r'''
import json, logging, sys, io
comfy_dir, spec_file = sys.argv[1:3]
sys.path.insert(0, comfy_dir)
sys.argv = [sys.argv[0], "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.sd, comfy.utils, comfy.lora, comfy.model_detection, comfy.model_patcher, comfy.supported_models
spec = json.load(open(spec_file))
stream = io.StringIO()
handler = logging.StreamHandler(stream)
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
known = [m.__name__ for m in comfy.supported_models.models]
if spec["comfy_model"] not in known:
    print(json.dumps({"skip": "this ComfyUI has no %s model (supported: %s)" % (spec["comfy_model"], ", ".join(known))}))
    sys.exit(0)
model_config = comfy.model_detection.model_config_from_unet_config(spec["unet_config"])
model_config.set_inference_dtype(torch.float32, None)
model = model_config.get_model({}, "")
sd = comfy.utils.load_torch_file(spec["base"], safe_load=True)
converted = comfy.model_detection.convert_diffusers_mmdit(dict(sd), "") if spec["convert"] else None
model.load_model_weights(converted if converted is not None else sd, "")
patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
lora = comfy.utils.load_torch_file(spec["lora"], safe_load=True)
key_map = comfy.lora.model_lora_keys_unet(model, {})
patched, _ = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)
before = {k: v.detach().clone().float() for k, v in patched.model.state_dict().items()}
patched.patch_model(device_to=torch.device("cpu"))
after = {k: v.detach().float() for k, v in patched.model.state_dict().items()}
modules = sorted({k[: -len(".lora_down.weight")] for k in lora if k.endswith(".lora_down.weight")})
mapped, max_err, max_delta, untouched = 0, 0.0, 0.0, []
for name in modules:
    target = key_map.get(name)
    if target is None:
        continue
    mapped += 1
    down, up = lora[name + ".lora_down.weight"].float(), lora[name + ".lora_up.weight"].float()
    delta = (up @ down) * float(lora[name + ".alpha"]) / down.shape[0]
    if isinstance(target, str):
        got = after[target] - before[target]
    else:
        key, (dim, start, length) = target[0], target[1][:3]
        got = (after[key] - before[key]).narrow(dim, start, length)
    max_err = max(max_err, float((got - delta.reshape(got.shape)).abs().max()))
    max_delta = max(max_delta, float(delta.abs().max()))
log = stream.getvalue()
print(json.dumps({"not_loaded": log.count("lora key not loaded"), "modules": len(modules), "mapped": mapped,
                  "max_err": max_err, "max_delta": max_delta, "unet_missing": log.count("unet missing"),
                  "unet_unexpected": log.count("unet unexpected")}))
'''

# family → (ComfyUI supported_models class, unet_config from the tiny diffusers config, convert diffusers keys)
def _comfy_spec(arch: str, config) -> tuple[str, dict, bool]:
    if arch == "flux":
        hidden = config.num_attention_heads * config.attention_head_dim
        return "Flux", {"image_model": "flux", "in_channels": config.in_channels // 4, "out_channels": config.in_channels // 4,
                        "vec_in_dim": config.pooled_projection_dim, "context_in_dim": config.joint_attention_dim,
                        "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": config.num_attention_heads,
                        "depth": config.num_layers, "depth_single_blocks": config.num_single_layers,
                        "axes_dim": list(config.axes_dims_rope), "theta": 10000, "patch_size": 2, "qkv_bias": True,
                        "guidance_embed": bool(config.guidance_embeds)}, True
    if arch == "qwen_image":
        return "QwenImage", {"image_model": "qwen_image", "in_channels": config.in_channels,
                             "out_channels": config.out_channels, "num_layers": config.num_layers,
                             "attention_head_dim": config.attention_head_dim,
                             "num_attention_heads": config.num_attention_heads,
                             "joint_attention_dim": config.joint_attention_dim,
                             "axes_dims_rope": list(config.axes_dims_rope)}, False
    raise ValueError(f"{arch}: ComfyUI v0.3.64 has no model class for it")


@pytest.mark.parametrize("arch", ["flux", "qwen_image", "flux2_klein", "z_image"])
def test_stock_comfyui_applies_each_family_lora_in_full(comfyui_dir, tmp_path, tiny_pipeline_dirs, arch):
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from emofeedback2.engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline
    from emofeedback2.training.generator.export import peft_to_kohya
    from emofeedback2.training.generator.families import family_for
    from emofeedback2.training.generator.policy_net import add_lora, lora_parameters

    if arch in ("flux2_klein", "z_image"):
        comfy_class = {"flux2_klein": "class Flux2(", "z_image": "class ZImage("}[arch]
        known = comfy_class in (comfyui_dir / "comfy" / "supported_models.py").read_text(encoding="utf-8")
        pytest.skip(f"{arch}: this ComfyUI {'has' if known else 'has no'} {comfy_class[6:-1]} model; "
                    + ("its unet_config is not written here yet" if known else "v0.3.64 predates it")
                    + " — the export follows newer ComfyUI's key rules, checked in tests/test_families_train_export.py")
    config = DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs[arch]), device="cpu", dtype="float32")
    transformer = family_for(arch).denoiser(load_pipeline(config, torch.device("cpu"), torch.float32))
    base = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in transformer.state_dict().items()}, str(base))
    add_lora(transformer, arch, rank=2, alpha=6.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(transformer):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    lora_path = tmp_path / "lora.safetensors"
    save_file(peft_to_kohya(get_peft_model_state_dict(transformer), arch, lora_alpha=6.0), str(lora_path))
    comfy_model, unet_config, convert = _comfy_spec(arch, transformer.config)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"comfy_model": comfy_model, "unet_config": unet_config, "convert": convert,
                                "base": str(base), "lora": str(lora_path)}))
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([python, "-c", FAMILY_SCRIPT, str(comfyui_dir), str(spec)], capture_output=True, text=True,
                          timeout=600, cwd=str(comfyui_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"ComfyUI {arch} LoRA check:", report)
    assert "skip" not in report, report
    assert report["unet_missing"] == 0 and report["unet_unexpected"] == 0, report  # the base weights all went in
    assert report["not_loaded"] == 0, report
    assert report["mapped"] == report["modules"] > 0, report
    assert report["max_delta"] > 1e-3 and report["max_err"] < 1e-4 * max(1.0, report["max_delta"]), report

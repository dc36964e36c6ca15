"""Opt-in: a LoRA exported by training/generator/export.py, loaded by a real ComfyUI's stock LoRA code.

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

"""Helpers for the opt-in real-ComfyUI tier (tests/test_comfyui_*.py): prompts, outputs, test files.

The ``comfy_server`` fixture itself is in tests/fixtures_comfy_server.py.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "workflows" / "api"
OLD_GRAPHS = ROOT / "tests" / "data" / "old_graphs"
WORKFLOWS = sorted(p.stem for p in API_DIR.glob("*.json"))
LOADERS = ("EmoFeedback2LVLMLoader", "EmoLVLMLoader")  # the current node and the alias old graphs name
#: why the Flux workflow is only loaded in the front end here, not run
FLUX_SKIP = (
    "running the Flux workflow needs a checkpoint ComfyUI detects as Flux and its text encoders: ComfyUI builds "
    "T5-XXL from its own fixed config (comfy/text_encoders/t5_config_xxl.json, ~4.7B parameters), so there is no "
    "tiny stand-in that fits this CPU tier; the workflow is checked against ComfyUI's node specs "
    "(tests/test_workflows.py) and loaded in the front end (test_ui_files_load_in_the_comfyui_front_end)"
)

# Sizes that keep every twin to seconds on a CPU; everything else stays as shipped. The sweep runs a
# 2 x 2 grid here (its shipped 5 x 5 axes are checked in tests/test_workflows.py): each cell costs a
# full-size CLIP-L encode plus sampling, about 10 s on a shared 2-core CPU.
SMALL = {"width": 64, "height": 64, "steps": 2, "rounds": 2, "candidates": 2, "valences": "-3, 3", "arousals": "-3, 3"}


def repoint(prompt: dict, server, **overrides) -> dict:
    """A copy of an API prompt pointed at the test models and shrunk to CPU size."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = server.checkpoint_name
        if node["class_type"] in LOADERS:
            inputs.update(model=server.lvlm_name, device="cpu", dtype="float32")
        for key, value in SMALL.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    for (node_id, key), value in overrides.items():
        prompt[node_id]["inputs"][key] = value
    return prompt


def load_twin(name: str, folder: Path = API_DIR) -> dict:
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


def node_id(prompt: dict, class_type: str, title: str | None = None) -> str:
    matches = [k for k, v in prompt.items() if v["class_type"] == class_type and (title is None or v["_meta"]["title"] == title)]
    assert len(matches) == 1, f"expected one {class_type} ({title}) in the prompt, found {matches}"
    return matches[0]


def saved_pixels(run, server, node: str) -> np.ndarray:
    images = run.outputs[node]["images"]
    path = server.output_dir / images[0].get("subfolder", "") / images[0]["filename"]
    return np.asarray(Image.open(path).convert("RGB"))


def assert_success(run) -> None:
    assert run.status_str == "success", f"status {run.status_str!r}; messages: {json.dumps(run.messages)[:3000]}\n{run.log[-3000:]}"


def preview_text(run, node: str) -> str:
    """The text a PreviewAny node showed (``{"text": [...]}`` in /history)."""
    return " ".join(str(t) for t in run.outputs.get(node, {}).get("text", []))


def execution_error(run) -> dict:
    """The ``execution_error`` message of a failed run."""
    errors = [m[1] for m in run.messages if m[0] == "execution_error"]
    assert errors, run.messages
    return errors[0]


def chromium() -> str | None:
    return os.environ.get("CHROMIUM") or next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )


def write_kohya_lora(path: Path, text_encoder_layers: int = 0) -> str:
    """A random peft LoRA on the slim UNet's attention, exported to kohya keys by training/generator/export.py.

    ``text_encoder_layers`` > 0 adds that many CLIP-L ``lora_te_…`` layers, as most kohya LoRAs have.
    """
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    from emofeedback2.tiny_models.comfy_checkpoint import build_slim_unet
    from emofeedback2.training.generator.export import peft_to_kohya

    unet = build_slim_unet(seed=0)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    unet = inject_adapter_in_model(config, unet)
    state = {k: v.detach() for k, v in get_peft_model_state_dict(unet).items()}
    kohya = peft_to_kohya(state, "sd15", lora_alpha=4.0)
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    g = torch.Generator().manual_seed(1)
    for layer in range(text_encoder_layers):
        name = f"lora_te_text_model_encoder_layers_{layer}_self_attn_q_proj"
        kohya[f"{name}.lora_down.weight"] = torch.randn(4, 768, generator=g) * 0.01
        kohya[f"{name}.lora_up.weight"] = torch.randn(768, 4, generator=g) * 0.01
        kohya[f"{name}.alpha"] = torch.tensor(4.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya.items()}, str(path))
    return path.name

"""Opt-in tier: this pack inside a real ComfyUI server (``COMFYUI_DIR=... pytest -m comfyui``).

Uses the ``comfy_server`` fixture (tests/fixtures_comfy_server.py): a slim random SD1.5 checkpoint
and a tiny Qwen2.5-VL, generated at test time. Skipped, with the reason, when COMFYUI_DIR is unset.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from comfy_tier import (
    API_DIR, FLUX_SKIP, OLD_GRAPHS, ROOT, SMALL, WORKFLOWS, assert_success, chromium, load_twin, node_id, repoint,
    saved_pixels, write_kohya_lora,
)
from emofeedback2.nodes import NODE_CLASS_MAPPINGS
from fixtures_comfy_server import PACK_FOLDER_NAME

pytestmark = pytest.mark.comfyui

CORE_NODES = json.loads((ROOT / "tests" / "comfy_core_nodes.json").read_text(encoding="utf-8"))["nodes"]
#: the front end fits a file without a saved view to the page; LiteGraph stops drawing text below 8/14
MIN_FIT_ZOOM = 0.6


def test_object_info_lists_every_node_with_its_inputs(comfy_server):
    info = comfy_server.object_info()
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name in info, f"{name} missing from /object_info; server log tail:\n{comfy_server.log()[-3000:]}"
        declared = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            assert list(info[name]["input"].get(group, {})) == list(declared.get(group, {})), (name, group)
        assert tuple(info[name]["output"]) == tuple(cls.RETURN_TYPES), name


def test_template_listing_shows_the_five_ui_files_only(comfy_server):
    listing = comfy_server.get_json("/workflow_templates")
    ours = [names for pack, names in listing.items() if pack == PACK_FOLDER_NAME]
    assert ours and sorted(ours[0]) == WORKFLOWS  # the API twins in workflows/api/ are not listed


CURRENT_NODES = sorted(k for k, v in NODE_CLASS_MAPPINGS.items() if not getattr(v, "DEPRECATED", False))


def _front_end_reports(server, folder: Path, tmp_path: Path) -> dict:
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium found: install it (e.g. apt-get install chromium) or set CHROMIUM")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run(
        [python, str(ROOT / "tests" / "comfy_frontend_check.py"), server.url, browser, str(folder),
         str(tmp_path / "screenshots"), *CURRENT_NODES],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return {r["workflow"]: r for r in map(json.loads, result.stdout.strip().splitlines())}


@pytest.mark.parametrize("folder", [ROOT / "workflows", OLD_GRAPHS], ids=["shipped", "saved-before-the-renames"])
def test_ui_files_load_in_the_comfyui_front_end_without_warnings(comfy_server, tmp_path, folder):
    """Headless Chromium opens ComfyUI's own front end, loads every UI file and derives its API prompt.

    No missing node types, no warning dialog or toast (the front end validates workflows against its
    schema), and the prompt the front end would queue equals the API twin saved with the file. Graphs
    saved before the renames load through the deprecated aliases; shipped ones (no saved view) are
    fitted to a 1920 x 950 page at a zoom where node text is drawn.
    """
    reports = _front_end_reports(comfy_server, folder, tmp_path)
    # every node's display name fits the width the front end gives a new node of its type
    for node_type, (width, title, kept) in reports.pop("")["default_titles"].items():
        assert title <= width - kept, (node_type, width, title)
    twins = sorted(p.stem for p in (folder / "api").glob("*.json"))
    assert sorted(reports) == twins
    info = comfy_server.object_info()
    fits = {}
    for name, report in reports.items():
        assert report["missing"] == [] and not report["dialog"], (name, report["missing"])
        assert report["toasts"] == [], (name, report["toasts"])
        derived = {}
        for node, entry in report["output"].items():
            declared = {**info[entry["class_type"]]["input"].get("required", {}), **info[entry["class_type"]]["input"].get("optional", {})}
            # the front end adds display-only widgets (e.g. PreviewAny's "preview"); the server ignores them
            derived[node] = {"class_type": entry["class_type"], "inputs": {k: v for k, v in entry["inputs"].items() if k in declared}}
        twin = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in load_twin(name, folder / "api").items()}
        assert derived == twin, name
        if folder == ROOT / "workflows":
            fits[name] = (report["scale"], report["truncated"])
    # shipped files: fitted to the page at a zoom where node text is drawn, every title shown in full
    if fits:
        print("front-end fit (zoom, titles cut short):", json.dumps(fits))
    assert all(scale >= MIN_FIT_ZOOM and not cut for scale, cut in fits.values()), fits


def test_checked_in_core_node_list_matches_the_server(comfy_server):
    """tests/comfy_core_nodes.json (used by the default tier) says what this ComfyUI declares."""
    info = comfy_server.object_info()
    for name, entry in CORE_NODES.items():
        if entry.get("ui_only"):
            assert name not in info, f"{name} is marked UI-only but the server knows it"
            continue
        server_inputs = {**info[name]["input"].get("required", {}), **info[name]["input"].get("optional", {})}
        assert [i["name"] for i in entry["inputs"]] == list(server_inputs), name
        for spec in entry["inputs"]:
            kind, options = server_inputs[spec["name"]][0], (server_inputs[spec["name"]] + [{}])[1]
            if spec["type"] == "COMBO":
                assert isinstance(kind, list) or kind == "COMBO", (name, spec["name"])
                if "choices" in spec:
                    assert spec["choices"] == (kind if isinstance(kind, list) else options.get("options")), (name, spec["name"])
            else:
                assert kind == spec["type"], (name, spec["name"], kind)
            for key in ("min", "max", "default", "step"):
                if key in spec:
                    assert options.get(key) == spec[key], (name, spec["name"], key, options.get(key))
        assert [o["type"] for o in entry["outputs"]] == list(info[name]["output"]), name


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_api_twin_runs_to_success(comfy_server, name):
    if name == "flux_emotion_lora":
        pytest.skip(FLUX_SKIP)
    prompt = repoint(load_twin(name), comfy_server)
    run = comfy_server.run_prompt(prompt)
    assert_success(run)
    saved = [n for n, v in prompt.items() if v["class_type"] == "SaveImage"]
    assert saved, f"{name} saves no image"
    for node in saved:
        assert run.outputs.get(node, {}).get("images"), f"{name}: SaveImage {node} produced nothing"
        assert saved_pixels(run, comfy_server, node).size > 0
    if name == "emotion_sweep_grid":
        grid = saved_pixels(run, comfy_server, node_id(prompt, "SaveImage"))
        assert grid.shape[0] > 2 * SMALL["height"] and grid.shape[1] > 2 * SMALL["width"]
        assert len(json.loads(json.dumps(run.outputs[node_id(prompt, "SaveImage")]["images"]))) == 1  # one image
    if name == "emo_reward_loop":
        plot = saved_pixels(run, comfy_server, node_id(prompt, "SaveImage", "V-A trajectory plot"))
        assert plot.std() > 1.0  # a drawn plot, not a blank image
        judge = " ".join(run.outputs[node_id(prompt, "PreviewAny", "Judge")]["text"])
        assert judge == f"LVLM {comfy_server.lvlm_name}", judge  # which judge judged


def test_strength_zero_conditioner_reproduces_clip_text_encode(comfy_server):
    """The Conditioner at text_strength 0 without adapter gives CLIPTextEncode's image, bit for bit."""
    base = repoint(load_twin("emotion_text_to_image"), comfy_server)
    cond = node_id(base, "EmoFeedback2Conditioner")
    save = node_id(base, "SaveImage")
    text = base[cond]["inputs"]["prompt"]
    plain = copy.deepcopy(base)
    plain[cond] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": base[cond]["inputs"]["clip"]}}
    del plain[node_id(plain, "PreviewAny")]  # it read the conditioner's second output
    zero = copy.deepcopy(base)
    zero[cond]["inputs"]["text_strength"] = 0.0
    steered = copy.deepcopy(base)
    steered[cond]["inputs"]["text_strength"] = 1.0
    images = {}
    for label, prompt in (("plain", plain), ("zero", zero), ("steered", steered)):
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        images[label] = saved_pixels(run, comfy_server, save)
    assert np.array_equal(images["plain"], images["zero"])
    assert not np.array_equal(images["plain"], images["steered"])  # the comparison can tell images apart


def test_generated_adapter_and_lora_load_through_the_weights_loader(comfy_server):
    """Files our code writes load in ComfyUI: an emotion adapter moves the image, a kohya LoRA loads every key."""
    import torch
    from emofeedback2.engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, save_emotion_adapter

    torch.manual_seed(0)
    adapter = EmotionAdapter(EmotionAdapterConfig(arch="sd15", context_dim=768, hidden_dim=32))
    with torch.no_grad():  # leave the identity initialisation so the adapter visibly acts
        for parameter in adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    save_emotion_adapter(adapter, comfy_server.models_dir / "emotion_adapters" / "test_adapter.safetensors")
    lora_name = write_kohya_lora(comfy_server.models_dir / "loras" / "test_lora.safetensors")

    base = repoint(load_twin("emotion_text_to_image"), comfy_server)
    loader, cond = node_id(base, "EmoFeedback2WeightsLoader"), node_id(base, "EmoFeedback2Conditioner")
    save = node_id(base, "SaveImage")
    images = {}
    for label, adapter_name, strength, lora in (
        ("off", "test_adapter.safetensors", 0.0, "none"),
        ("on", "test_adapter.safetensors", 1.0, "none"),
        ("lora", "none", 1.0, lora_name),
    ):
        prompt = copy.deepcopy(base)
        prompt[loader]["inputs"].update(adapter_name=adapter_name, lora_name=lora)
        prompt[cond]["inputs"]["adapter_strength"] = strength
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        assert "lora key not loaded" not in run.log, run.log[-3000:]
        images[label] = saved_pixels(run, comfy_server, save)
    assert not np.array_equal(images["off"], images["on"])
    assert not np.array_equal(images["off"], images["lora"])


# ComfyUI's Python need not have this pack installed: the script imports it through a folder that
# holds only an ``emofeedback2`` link to the pack (argv[3]); a missing dependency is reported, not raised.
COMPARE_PRELUDE = r"""
import sys, json
sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[3])
try:
    import torch, emofeedback2.tiny_models.comfy_checkpoint
except ImportError as exc:
    print(json.dumps({"import_error": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)
"""
COMPARE_SCRIPT = COMPARE_PRELUDE + r"""
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.sd, comfy.utils
from emofeedback2.tiny_models.comfy_checkpoint import build_slim_unet, write_slim_checkpoint, diffusers_unet_to_ldm
unet = build_slim_unet(seed=5)
path = write_slim_checkpoint(sys.argv[2], unet=unet, seed=5)
model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
config = model.model.model_config
theirs = comfy.utils.unet_to_diffusers(config.unet_config)  # ComfyUI's own LDM->diffusers names
ours = diffusers_unet_to_ldm(unet.state_dict(), dict(unet.config))
g = torch.Generator().manual_seed(0)
x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 700.0]), torch.randn(2, 77, 768, generator=g)
with torch.no_grad():
    a = unet(x, t, encoder_hidden_states=ctx).sample
    b = model.model.diffusion_model(x, timesteps=t, context=ctx)
print(json.dumps({
    "model_config": type(config).__name__,
    "ours_not_in_comfy_map": sorted(set(ours) - set(theirs.values())),
    "comfy_map_keys_we_lack": sorted(l for d, l in theirs.items() if d in unet.state_dict() and l not in ours),
    "same_pairs": all(ours[l] is unet.state_dict()[d] or torch.equal(ours[l], unet.state_dict()[d]) for d, l in theirs.items() if l in ours),
    "max_abs_diff": float((a - b).abs().max()), "mean_abs": float(a.abs().mean()),
    "clip_ok": clip is not None, "vae_ok": vae is not None,
}))
"""


def pack_import_path(tmp_path: Path) -> Path:
    """A folder with one entry, ``emofeedback2`` → this pack, to put on another interpreter's path."""
    folder = tmp_path / "pack_path"
    folder.mkdir(exist_ok=True)
    if not (folder / "emofeedback2").exists():
        (folder / "emofeedback2").symlink_to(ROOT, target_is_directory=True)
    return folder


def test_slim_checkpoint_unet_matches_its_diffusers_twin_inside_comfyui(tmp_path):
    """The diffusers→LDM mapping is exact: ComfyUI detects SD1.5 and its UNet computes what diffusers does."""
    if not os.environ.get("COMFYUI_DIR"):
        pytest.skip("real-ComfyUI tier: set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON to its Python)")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    pack_path = pack_import_path(tmp_path)
    result = subprocess.run(
        [python, "-c", COMPARE_SCRIPT, os.environ["COMFYUI_DIR"], str(tmp_path / "twin.safetensors"), str(pack_path)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if "import_error" in report:
        pytest.skip(f"ComfyUI's Python ({python}) cannot import this pack's test models: {report['import_error']}; "
                    "install the pack's requirements there (pip install -r requirements.txt diffusers)")
    assert report["model_config"] == "SD15"
    assert report["ours_not_in_comfy_map"] == [] and report["comfy_map_keys_we_lack"] == []
    assert report["same_pairs"]
    assert report["max_abs_diff"] < 1e-4 * max(1.0, report["mean_abs"]), report
    assert report["clip_ok"] and report["vae_ok"]

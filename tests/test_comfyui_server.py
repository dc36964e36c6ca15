"""Opt-in tier: this pack inside a real ComfyUI server (``COMFYUI_DIR=... pytest -m comfyui``).

Uses the ``comfy_server`` fixture (tests/fixtures_comfy_server.py): a slim random SD1.5 checkpoint
and a tiny Qwen2.5-VL, generated at test time. Skipped, with the reason, when COMFYUI_DIR is unset.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emofeedback2.nodes import NODE_CLASS_MAPPINGS
from fixtures_comfy_server import PACK_FOLDER_NAME

pytestmark = pytest.mark.comfyui

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "workflows" / "api"
CORE_NODES = json.loads((ROOT / "tests" / "comfy_core_nodes.json").read_text(encoding="utf-8"))["nodes"]
WORKFLOWS = sorted(p.stem for p in API_DIR.glob("*.json"))

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
        if node["class_type"] == "EmoLVLMLoader":
            inputs.update(model=server.lvlm_name, device="cpu", dtype="float32")
        for key, value in SMALL.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    for (node_id, key), value in overrides.items():
        prompt[node_id]["inputs"][key] = value
    return prompt


def load_twin(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text(encoding="utf-8"))


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


def test_object_info_lists_every_node_with_its_inputs(comfy_server):
    info = comfy_server.object_info()
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert name in info, f"{name} missing from /object_info; server log tail:\n{comfy_server.log()[-3000:]}"
        declared = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            assert list(info[name]["input"].get(group, {})) == list(declared.get(group, {})), (name, group)
        assert tuple(info[name]["output"]) == tuple(cls.RETURN_TYPES), name


def test_template_listing_shows_the_four_ui_files_only(comfy_server):
    listing = comfy_server.get_json("/workflow_templates")
    ours = [names for pack, names in listing.items() if pack == PACK_FOLDER_NAME]
    assert ours and sorted(ours[0]) == WORKFLOWS  # the API twins in workflows/api/ are not listed


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )


def test_ui_files_load_in_the_comfyui_front_end_without_warnings(comfy_server, tmp_path):
    """Headless Chromium opens ComfyUI's own front end, loads every UI file and derives its API prompt.

    No missing node types, no warning dialog or toast (the front end validates workflows against its
    schema), and the prompt the front end would queue equals the shipped API twin.
    """
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no Chromium found: install it (e.g. apt-get install chromium) or set CHROMIUM")
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    result = subprocess.run(
        [python, str(ROOT / "tests" / "comfy_frontend_check.py"), comfy_server.url, chromium,
         str(ROOT / "workflows"), str(tmp_path / "screenshots")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    reports = {r["workflow"]: r for r in map(json.loads, result.stdout.strip().splitlines())}
    assert sorted(reports) == WORKFLOWS
    info = comfy_server.object_info()
    for name, report in reports.items():
        assert report["missing"] == [] and not report["dialog"], (name, report["missing"])
        assert report["toasts"] == [], (name, report["toasts"])
        derived = {}
        for node, entry in report["output"].items():
            declared = {**info[entry["class_type"]]["input"].get("required", {}), **info[entry["class_type"]]["input"].get("optional", {})}
            # the front end adds display-only widgets (e.g. PreviewAny's "preview"); the server ignores them
            derived[node] = {"class_type": entry["class_type"], "inputs": {k: v for k, v in entry["inputs"].items() if k in declared}}
        twin = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in load_twin(name).items()}
        assert derived == twin, name


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


def test_strength_zero_conditioner_reproduces_clip_text_encode(comfy_server):
    """EmotionConditioner at text_strength 0 without adapter gives CLIPTextEncode's image, bit for bit."""
    base = repoint(load_twin("emotion_text_to_image"), comfy_server)
    cond = node_id(base, "EmotionConditioner")
    save = node_id(base, "SaveImage")
    text = base[cond]["inputs"]["text"]
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


def test_generated_adapter_and_lora_load_through_emotion_weights_loader(comfy_server):
    """Files our code writes load in ComfyUI: an emotion adapter moves the image, a kohya LoRA loads every key."""
    import torch
    from emofeedback2.engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, save_emotion_adapter

    torch.manual_seed(0)
    adapter = EmotionAdapter(EmotionAdapterConfig(arch="sd15", context_dim=768, hidden_dim=32))
    with torch.no_grad():  # leave the identity initialisation so the adapter visibly acts
        for parameter in adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    save_emotion_adapter(adapter, comfy_server.models_dir / "emotion_adapters" / "test_adapter.safetensors")
    lora_name = _write_kohya_lora(comfy_server.models_dir / "loras" / "test_lora.safetensors")

    base = repoint(load_twin("emotion_text_to_image"), comfy_server)
    loader, cond, save = node_id(base, "EmotionWeightsLoader"), node_id(base, "EmotionConditioner"), node_id(base, "SaveImage")
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


def _write_kohya_lora(path: Path, text_encoder_layers: int = 0) -> str:
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



# --- issue 14: the wiring a ComfyUI user tries first, the judge under model management, clean errors ---


def _preview_text(run, node: str) -> str:
    """The text a PreviewAny node showed (``{"text": [...]}`` in /history)."""
    return " ".join(str(t) for t in run.outputs.get(node, {}).get("text", []))


def _without_clip_wiring(server) -> dict:
    """emotion_text_to_image with the weights loader's optional CLIP left unconnected (text encoded by the checkpoint's CLIP)."""
    prompt = repoint(load_twin("emotion_text_to_image"), server)
    loader, cond = node_id(prompt, "EmotionWeightsLoader"), node_id(prompt, "EmotionConditioner")
    negative = node_id(prompt, "CLIPTextEncode")
    checkpoint = node_id(prompt, "CheckpointLoaderSimple")
    del prompt[loader]["inputs"]["clip"]
    prompt[cond]["inputs"]["clip"] = [checkpoint, 1]
    prompt[negative]["inputs"]["clip"] = [checkpoint, 1]
    prompt["90"] = {"class_type": "PreviewAny", "inputs": {"source": [loader, 3]}, "_meta": {"title": "report"}}
    return prompt


def test_a_kohya_lora_with_text_encoder_layers_runs_without_clip_wired(comfy_server):
    """Issue 14.1: the model part applies (like LoraLoaderModelOnly); console and report say what was skipped."""
    name = _write_kohya_lora(comfy_server.models_dir / "loras" / "te_lora.safetensors", text_encoder_layers=2)
    prompt = _without_clip_wiring(comfy_server)
    loader, save = node_id(prompt, "EmotionWeightsLoader"), node_id(prompt, "SaveImage")
    images = {}
    for label, lora in (("none", "none"), ("lora", name)):
        prompt[loader]["inputs"]["lora_name"] = lora
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        images[label] = saved_pixels(run, comfy_server, save)
        report = _preview_text(run, "90")
        if lora != "none":
            assert "skipped its 2 text-encoder layers" in report and "connect CLIP" in report, report
            assert "skipped its 2 text-encoder layers" in run.log, run.log[-3000:]  # the console says it too
            assert "lora key not loaded" not in run.log, run.log[-3000:]
    assert not np.array_equal(images["none"], images["lora"])  # the diffusion-model part was applied


def test_the_adapter_list_holds_only_emotion_adapters_each_once(comfy_server):
    """Issue 14.2: ordinary LoRAs in models/loras are not offered as emotion adapters; each adapter once."""
    from emofeedback2.engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, save_emotion_adapter

    loras = comfy_server.models_dir / "loras"
    plain_lora = _write_kohya_lora(loras / "ordinary_style_lora.safetensors")
    save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig(arch="sd15", context_dim=768, hidden_dim=8)),
                         loras / "adapter_kept_with_loras.safetensors")
    (comfy_server.models_dir / "emotion_adapters").mkdir(exist_ok=True)
    twin = comfy_server.models_dir / "emotion_adapters" / "adapter_linked_twice.safetensors"
    if not twin.exists():
        save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig(arch="sd15", context_dim=768, hidden_dim=8)), twin)
        (loras / "adapter_linked_twice.safetensors").symlink_to(twin)
    spec = comfy_server.object_info()["EmotionWeightsLoader"]["input"]["required"]
    adapters, loras_listed = spec["adapter_name"][0], spec["lora_name"][0]
    assert adapters[0] == "none" and len(adapters) == len(set(adapters)), adapters
    assert "loras/adapter_kept_with_loras.safetensors" in adapters
    assert "adapter_linked_twice.safetensors" in adapters
    assert "loras/adapter_linked_twice.safetensors" not in adapters  # the same file, listed once
    assert not any(plain_lora in a for a in adapters), adapters
    assert plain_lora in loras_listed  # it is still offered where LoRAs go


def test_conditioner_from_conditioning_passes_through_without_an_adapter(comfy_server):
    """Issue 14.3: on a fresh install ('none' in the loader, or nothing wired) the node runs and says why nothing changed."""
    base = repoint(load_twin("emotion_text_to_image"), comfy_server)
    cond, loader, save = node_id(base, "EmotionConditioner"), node_id(base, "EmotionWeightsLoader"), node_id(base, "SaveImage")
    clip = base[cond]["inputs"]["clip"]
    plain = copy.deepcopy(base)
    plain[cond] = {"class_type": "CLIPTextEncode", "inputs": {"text": base[cond]["inputs"]["text"], "clip": clip}}
    del plain[node_id(plain, "PreviewAny")]
    images, notes = {}, {}
    for label, adapter_link in (("plain", None), ("loader none", [loader, 2]), ("unwired", "")):
        prompt = copy.deepcopy(plain)
        if adapter_link is not None:
            ksampler = node_id(prompt, "KSampler")
            inputs = {"conditioning": [cond, 0], "valence": 2.0, "arousal": -1.5, "adapter_strength": 1.0}
            if adapter_link:
                inputs["emotion_adapter"] = adapter_link
            prompt["91"] = {"class_type": "EmotionConditionerFromConditioning", "inputs": inputs}
            prompt["92"] = {"class_type": "PreviewAny", "inputs": {"source": ["91", 1]}}
            prompt[ksampler]["inputs"]["positive"] = ["91", 0]
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        images[label] = saved_pixels(run, comfy_server, save)
        notes[label] = _preview_text(run, "92")
    assert np.array_equal(images["plain"], images["loader none"]) and np.array_equal(images["plain"], images["unwired"])
    for label in ("loader none", "unwired"):
        assert "passed through unchanged" in notes[label] and "adapter_name" in notes[label], notes[label]


def _judge_prompt(server, colour: float) -> dict:
    """LVLM Loader (keep_loaded on) → LVLM Emotion Scorer on a plain image: the judge and nothing else."""
    return {
        "1": {"class_type": "EmoLVLMLoader", "inputs": {
            "model": server.lvlm_name, "dtype": "float32", "device": "cpu", "attention": "auto", "keep_loaded": True,
            "adapter": "none", "max_pixels": 12544, "trust_remote_code": False, "quantization": "none"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": int(colour)}},
        "3": {"class_type": "LVLMEmotionScorer", "inputs": {
            "lvlm": ["1", 0], "images": ["2", 0], "use_target": True, "target_valence": 1.0, "target_arousal": 0.0,
            "analysis": False}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 3]}},
    }


def _wait_for_log(server, text: str, after: int, timeout: float = 30.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = server.log()[after:]
        if text in tail:
            return tail
        time.sleep(0.25)
    pytest.fail(f"{text!r} not in the server log within {timeout:.0f} s; tail:\n{server.log()[after:][-3000:]}")


def test_unload_models_reaches_the_lvlm_judge_and_it_loads_back(comfy_server):
    """Issue 14.8: the judge is registered with comfy.model_management; POST /free {"unload_models": true}
    (the "Unload Models" button) evicts it, and the next run loads it back on demand."""
    first = comfy_server.run_prompt(_judge_prompt(comfy_server, 0x336699))
    assert_success(first)
    assert "Requested to load" in first.log, first.log[-3000:]  # it went through load_models_gpu
    offset = len(comfy_server.log())
    status, _ = comfy_server.post_json("/free", {"unload_models": True})
    assert status == 200
    evicted = _wait_for_log(comfy_server, "[EmoFeedback2] LVLM judge", offset)
    assert "by ComfyUI's model management" in evicted, evicted[-2000:]
    again = comfy_server.run_prompt(_judge_prompt(comfy_server, 0xCC3311))  # a new image: the scorer runs again
    assert_success(again)
    assert "Requested to load" in again.log, again.log[-3000:]
    assert _preview_text(again, "4")  # the scorer ran on the new image with the reloaded judge


def test_node_errors_read_as_a_plain_type_and_a_fix_without_paths(comfy_server):
    """Issue 14.4/14.5: ComfyUI's error shows 'LVLMOptionError', not '<folder>.engines.lvlm_options.LVLMOptionError'."""
    prompt = _judge_prompt(comfy_server, 0x808080)
    prompt["1"]["inputs"]["attention"] = "flash_attention_2"
    run = comfy_server.run_prompt(prompt)
    assert run.status_str == "error"
    errors = [m[1] for m in run.messages if m[0] == "execution_error"]
    assert errors, run.messages
    error = errors[0]
    assert error["exception_type"] == "LVLMOptionError", error["exception_type"]
    assert "/" not in error["exception_type"] and "." not in error["exception_type"]
    message = error["exception_message"]
    assert "CUDA GPU" in message and "flash-attn" in message and "sdpa" in message, message
    assert PACK_FOLDER_NAME not in message and "models/LLM" not in message, message


def test_a_judge_adapter_from_train_judge_loads_in_the_lvlm_loader(comfy_server, tmp_path):
    """Issue 12: the peft folder `train-judge` exports, put under models/LLM, is listed by the LVLM Loader,
    loads on ComfyUI's judge, and changes its readings."""
    import json as _json
    import shutil

    from emofeedback2.bench.judge import judge_run_config, train_judge, write_synthetic_judge_set

    model_dir = comfy_server.models_dir / "LLM" / comfy_server.lvlm_name
    manifest = write_synthetic_judge_set(tmp_path / "data", n_train=8, n_test=0, seed=0, size=56)
    config = judge_run_config(model_dir, manifest, tmp_path / "run", seed=0, steps=3, batch_size=4, pixels=56)
    config.optim.lr, config.optim.warmup_steps = 5e-3, 0  # a few large steps: the adapter must act, not be good
    adapter, _ = train_judge(config)
    name = "emotion-judge-adapter"
    shutil.copytree(adapter, comfy_server.models_dir / "LLM" / name)
    info = comfy_server.get_json("/object_info/EmoLVLMLoader")
    inputs = info["EmoLVLMLoader"]["input"]
    assert name in inputs["optional" if "adapter" in inputs.get("optional", {}) else "required"]["adapter"][0]

    def readings(adapter_name: str) -> list:
        prompt = _judge_prompt(comfy_server, 0x336699)
        prompt["1"]["inputs"]["adapter"] = adapter_name
        prompt["1"]["inputs"]["keep_loaded"] = False
        prompt["4"]["inputs"]["source"] = ["3", 4]  # readings_json
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        return _json.loads(_preview_text(run, "4"))

    plain, adapted = readings("none"), readings(name)
    assert len(plain) == len(adapted) == 1
    assert (plain[0]["valence"], plain[0]["arousal"]) != (adapted[0]["valence"], adapted[0]["arousal"])

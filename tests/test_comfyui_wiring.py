"""Opt-in tier: the wiring a ComfyUI user tries first, the judge under model management, clean errors.

Runs in the real server of tests/fixtures_comfy_server.py (``COMFYUI_DIR=... pytest -m comfyui``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from comfy_tier import (
    assert_success, execution_error, load_twin, node_id, preview_text, repoint, saved_pixels, write_kohya_lora,
)
from fixtures_comfy_server import PACK_FOLDER_NAME

pytestmark = pytest.mark.comfyui


def _without_clip_wiring(server) -> dict:
    """emotion_text_to_image with the weights loader's optional CLIP left unconnected (text encoded by the checkpoint's CLIP)."""
    prompt = repoint(load_twin("emotion_text_to_image"), server)
    loader, cond = node_id(prompt, "EmoFeedback2WeightsLoader"), node_id(prompt, "EmoFeedback2Conditioner")
    negative = node_id(prompt, "CLIPTextEncode")
    checkpoint = node_id(prompt, "CheckpointLoaderSimple")
    del prompt[loader]["inputs"]["clip"]
    prompt[cond]["inputs"]["clip"] = [checkpoint, 1]
    prompt[negative]["inputs"]["clip"] = [checkpoint, 1]
    prompt["90"] = {"class_type": "PreviewAny", "inputs": {"source": [loader, 3]}, "_meta": {"title": "report"}}
    return prompt


def test_a_kohya_lora_with_text_encoder_layers_runs_without_clip_wired(comfy_server):
    """Issue 14.1: the model part applies (like LoraLoaderModelOnly); console and report say what was skipped."""
    name = write_kohya_lora(comfy_server.models_dir / "loras" / "te_lora.safetensors", text_encoder_layers=2)
    prompt = _without_clip_wiring(comfy_server)
    loader, save = node_id(prompt, "EmoFeedback2WeightsLoader"), node_id(prompt, "SaveImage")
    images = {}
    for label, lora in (("none", "none"), ("lora", name)):
        prompt[loader]["inputs"]["lora_name"] = lora
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        images[label] = saved_pixels(run, comfy_server, save)
        report = preview_text(run, "90")
        if lora != "none":
            assert "skipped its 2 text-encoder layers" in report and "connect CLIP" in report, report
            assert "skipped its 2 text-encoder layers" in run.log, run.log[-3000:]  # the console says it too
            assert "lora key not loaded" not in run.log, run.log[-3000:]
    assert not np.array_equal(images["none"], images["lora"])  # the diffusion-model part was applied


def test_the_adapter_list_holds_only_emotion_adapters_each_once(comfy_server):
    """Issue 14.2: ordinary LoRAs in models/loras are not offered as emotion adapters; each adapter once."""
    from emofeedback2.engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, save_emotion_adapter

    loras = comfy_server.models_dir / "loras"
    plain_lora = write_kohya_lora(loras / "ordinary_style_lora.safetensors")
    save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig(arch="sd15", context_dim=768, hidden_dim=8)),
                         loras / "adapter_kept_with_loras.safetensors")
    (comfy_server.models_dir / "emotion_adapters").mkdir(exist_ok=True)
    twin = comfy_server.models_dir / "emotion_adapters" / "adapter_linked_twice.safetensors"
    if not twin.exists():
        save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig(arch="sd15", context_dim=768, hidden_dim=8)), twin)
        (loras / "adapter_linked_twice.safetensors").symlink_to(twin)
    spec = comfy_server.object_info()["EmoFeedback2WeightsLoader"]["input"]["required"]
    adapters, loras_listed = spec["adapter_name"][0], spec["lora_name"][0]
    assert adapters[0] == "none" and len(adapters) == len(set(adapters)), adapters
    assert "loras/adapter_kept_with_loras.safetensors" in adapters
    assert "adapter_linked_twice.safetensors" in adapters
    assert "loras/adapter_linked_twice.safetensors" not in adapters  # the same file, listed once
    assert not any(plain_lora in a for a in adapters), adapters
    assert plain_lora in loras_listed  # it is still offered where LoRAs go


def test_apply_adapter_passes_through_without_an_adapter(comfy_server):
    """Issue 14.3: on a fresh install ('none' in the loader, or nothing wired) the node runs and says why nothing changed."""
    base = repoint(load_twin("emotion_text_to_image"), comfy_server)
    cond, loader, save = node_id(base, "EmoFeedback2Conditioner"), node_id(base, "EmoFeedback2WeightsLoader"), node_id(base, "SaveImage")
    clip = base[cond]["inputs"]["clip"]
    plain = copy.deepcopy(base)
    plain[cond] = {"class_type": "CLIPTextEncode", "inputs": {"text": base[cond]["inputs"]["prompt"], "clip": clip}}
    del plain[node_id(plain, "PreviewAny")]
    images, notes = {}, {}
    for label, adapter_link in (("plain", None), ("loader none", [loader, 2]), ("unwired", "")):
        prompt = copy.deepcopy(plain)
        if adapter_link is not None:
            ksampler = node_id(prompt, "KSampler")
            inputs = {"conditioning": [cond, 0], "valence": 2.0, "arousal": -1.5, "adapter_strength": 1.0}
            if adapter_link:
                inputs["emotion_adapter"] = adapter_link
            prompt["91"] = {"class_type": "EmoFeedback2ApplyAdapter", "inputs": inputs}
            prompt["92"] = {"class_type": "PreviewAny", "inputs": {"source": ["91", 1]}}
            prompt[ksampler]["inputs"]["positive"] = ["91", 0]
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        images[label] = saved_pixels(run, comfy_server, save)
        notes[label] = preview_text(run, "92")
    assert np.array_equal(images["plain"], images["loader none"]) and np.array_equal(images["plain"], images["unwired"])
    for label in ("loader none", "unwired"):
        assert "passed through unchanged" in notes[label] and "adapter_name" in notes[label], notes[label]


def _judge_prompt(server, colour: float) -> dict:
    """LVLM Loader (keep_loaded on) → Scorer on a plain image: the judge and nothing else."""
    return {
        "1": {"class_type": "EmoFeedback2LVLMLoader", "inputs": {
            "model": server.lvlm_name, "dtype": "float32", "device": "cpu", "attention": "auto", "keep_loaded": True,
            "adapter": "none", "max_pixels": 12544, "trust_remote_code": False, "quantization": "none"}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": int(colour)}},
        "3": {"class_type": "EmoFeedback2Scorer", "inputs": {
            "lvlm": ["1", 0], "images": ["2", 0], "use_target": True, "valence": 1.0, "arousal": 0.0,
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
    assert preview_text(again, "4")  # the scorer ran on the new image with the reloaded judge


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
    info = comfy_server.get_json("/object_info/EmoFeedback2LVLMLoader")
    inputs = info["EmoFeedback2LVLMLoader"]["input"]
    assert name in inputs["optional" if "adapter" in inputs.get("optional", {}) else "required"]["adapter"][0]

    def readings(adapter_name: str) -> list:
        prompt = _judge_prompt(comfy_server, 0x336699)
        prompt["1"]["inputs"]["adapter"] = adapter_name
        prompt["1"]["inputs"]["keep_loaded"] = False
        prompt["4"]["inputs"]["source"] = ["3", 4]  # readings_json
        run = comfy_server.run_prompt(prompt)
        assert_success(run)
        return _json.loads(preview_text(run, "4"))

    plain, adapted = readings("none"), readings(name)
    assert len(plain) == len(adapted) == 1
    assert (plain[0]["valence"], plain[0]["arousal"]) != (adapted[0]["valence"], adapted[0]["arousal"])


def test_the_weights_loaders_clip_output_without_clip_says_to_connect_one(comfy_server):
    """Issue 20.3: with nothing on its clip input, a node using its clip output stops with our error
    naming the input to connect, not core's "your checkpoint does not contain a valid clip"."""
    prompt = repoint(load_twin("emotion_text_to_image"), comfy_server)
    loader = node_id(prompt, "EmoFeedback2WeightsLoader")
    del prompt[loader]["inputs"]["clip"]  # the Conditioner and the negative prompt still take its clip output
    run = comfy_server.run_prompt(prompt)
    assert run.status_str == "error"
    error = execution_error(run)
    assert error["exception_type"] == "NoClipError", error["exception_type"]
    message = error["exception_message"]
    assert "clip input" in message and "Weights Loader" in message and "valid clip" not in message, message


def test_the_heuristic_judge_says_so_in_the_scorers_judge_output(comfy_server):
    """Issue 20.3: the loader's weight-free choice is named as such, and the scorer's outputs say no LVLM judged."""
    choices = comfy_server.object_info()["EmoFeedback2LVLMLoader"]["input"]["required"]["model"][0]
    heuristic = choices[-1]
    assert "no LVLM" in heuristic and choices[0] == comfy_server.lvlm_name  # a model, when there is one, comes first
    prompt = _judge_prompt(comfy_server, 0x336699)
    prompt["1"]["inputs"]["model"] = heuristic
    prompt["4"]["inputs"]["source"] = ["3", 5]  # judge
    run = comfy_server.run_prompt(prompt)
    assert_success(run)
    assert "NO LVLM judged" in preview_text(run, "4")

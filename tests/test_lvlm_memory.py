"""The LVLM judge under ComfyUI's model management (fake comfy.model_management with v0.3.64's calls).

What a ComfyUI user relies on: the judge is registered like ComfyUI's own models once it is used;
"Unload Models" (``unload_all_models``) and memory pressure from another model (``free_memory`` inside
``load_models_gpu``) evict it; it is loaded back on demand and reads the same; ``keep_loaded`` off
unloads it right after each use. Plus the loader's quantisation/attention choices fail clearly.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from emofeedback2.engines.judge.options import LVLMOptionError
from emofeedback2.nodes import NODE_CLASS_MAPPINGS, loader_nodes, scorer_nodes
from emofeedback2.nodes.lvlm_memory import JudgePatcher


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 48, 64, 3, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def llm_dir(fake_comfy, tiny_lvlm_dir):
    folder = fake_comfy.models_dir / "LLM"
    shutil.copytree(tiny_lvlm_dir, folder / "tiny-qwen2.5-vl")
    return folder


def _load(**widgets):
    node = NODE_CLASS_MAPPINGS[loader_nodes.NODE_ID]()
    return getattr(node, node.FUNCTION)(**{"model": "tiny-qwen2.5-vl", "device": "cpu", **widgets})[0]


def _readings(lvlm, images) -> list[float]:
    node = NODE_CLASS_MAPPINGS[scorer_nodes.NODE_ID]()
    rows = json.loads(getattr(node, node.FUNCTION)(lvlm=lvlm, images=images)[node.RETURN_NAMES.index("readings_json")])
    return [value for r in rows for value in (r["valence"], r["arousal"])]


def _registered(mm) -> list:
    return [entry.model for entry in mm.current_loaded_models]


class OtherModel:
    """Another managed model (think: the diffusion UNet) with the same patcher interface."""

    def __init__(self, size: int):
        self.size, self.load_device, self.offload_device, self.parent = size, torch.device("cpu"), torch.device("cpu"), None
        self.model = torch.nn.Linear(1, 1)
        self.resident = False

    def model_size(self):
        return self.size

    def loaded_size(self):
        return self.size if self.resident else 0

    def current_loaded_device(self):
        return self.load_device if self.resident else self.offload_device

    def model_dtype(self):
        return torch.float32

    def model_patches_to(self, device):
        pass

    def model_patches_models(self):
        return []

    def is_clone(self, other):
        return other is self

    def partially_load(self, device, extra_memory=0, force_patch_weights=False):
        was, self.resident = self.resident, True
        return 0 if was else self.size

    def partially_unload(self, device, memory_to_free=0):
        freed, self.resident = self.loaded_size(), False
        return freed

    def detach(self, unpatch_all=True):
        self.resident = False
        return self.model


def test_judge_registers_on_first_use_and_unload_models_evicts_it(fake_comfy, llm_dir):
    mm = fake_comfy.model_management
    lvlm = _load(keep_loaded=True)
    patcher = lvlm.residency.patcher
    assert isinstance(patcher, JudgePatcher) and _registered(mm) == []  # loading alone claims no VRAM
    images = _images()
    first = _readings(lvlm, images)
    assert _registered(mm) == [patcher] and patcher.resident
    assert patcher.model_size() == sum(p.numel() * p.element_size() for p in lvlm.model.parameters()) + sum(
        b.numel() * b.element_size() for b in lvlm.model.buffers()
    )
    _readings(lvlm, images)
    assert _registered(mm) == [patcher] and patcher.evictions == 0  # kept loaded between runs
    mm.unload_all_models()  # the "Unload Models" button / POST /free
    assert _registered(mm) == [] and not patcher.resident and patcher.evictions == 1
    again = _readings(lvlm, images)  # loaded back on demand
    assert _registered(mm) == [patcher] and patcher.resident
    assert again == pytest.approx(first, abs=1e-6)


def test_another_model_needing_the_memory_evicts_the_judge_and_back(fake_comfy, llm_dir):
    mm = fake_comfy.model_management
    lvlm = _load(keep_loaded=True)
    patcher = lvlm.residency.patcher
    _readings(lvlm, _images(1))
    fake_comfy.device_memory = patcher.model_size() * 1.5  # room for one of the two models only
    unet = OtherModel(size=patcher.model_size())
    mm.load_models_gpu([unet])
    assert unet.resident and not patcher.resident and patcher.evictions == 1
    _readings(lvlm, _images(1))
    assert patcher.resident and not unet.resident
    # control: with room for both, nobody is evicted
    fake_comfy.device_memory = patcher.model_size() * 10
    mm.load_models_gpu([unet])
    assert unet.resident and patcher.resident and set(map(id, _registered(mm))) == {id(unet), id(patcher)}


def test_keep_loaded_off_unloads_right_after_each_use(fake_comfy, llm_dir):
    mm = fake_comfy.model_management
    lvlm = _load(keep_loaded=False)
    _readings(lvlm, _images(1))
    assert _registered(mm) == [] and not lvlm.residency.patcher.resident and lvlm.residency.patcher.evictions == 1
    assert next(lvlm.model.parameters()).device == torch.device(lvlm.config.offload_device)


def test_a_quantised_judge_is_freed_on_eviction_and_reloaded_from_disk(fake_comfy, llm_dir):
    """bitsandbytes weights cannot move: eviction drops them, the next call loads them again."""
    mm = fake_comfy.model_management
    lvlm = _load(keep_loaded=True)
    lvlm.quantized = True  # behave as a bitsandbytes model would (this machine has no bitsandbytes)
    images = _images()
    first = _readings(lvlm, images)
    mm.unload_all_models()
    assert not lvlm.weights_loaded and _registered(mm) == []
    assert _readings(lvlm, images) == pytest.approx(first, abs=1e-6)
    assert lvlm.weights_loaded and _registered(mm) == [lvlm.residency.patcher]


def test_quantisation_without_bitsandbytes_says_what_to_install(fake_comfy, llm_dir, monkeypatch):
    import emofeedback2.engines.judge.options as options

    real = options._installed
    monkeypatch.setattr(options, "_installed", lambda module: False if module == "bitsandbytes" else real(module))
    with pytest.raises(LVLMOptionError) as info:
        _load(quantization="4bit")
    assert "pip install bitsandbytes" in str(info.value) and "'none'" in str(info.value)


def test_flash_attention_on_cpu_asks_for_a_cuda_gpu_and_suggests_sdpa(fake_comfy, llm_dir):
    with pytest.raises(LVLMOptionError) as info:
        _load(attention="flash_attention_2")
    message = str(info.value)
    assert "CUDA GPU" in message and "flash-attn" in message and "sdpa" in message
    assert "models/LLM" not in message  # no unrelated folder advice


def test_loader_offers_quantisation_and_attention_choices():
    spec = NODE_CLASS_MAPPINGS[loader_nodes.NODE_ID].INPUT_TYPES()
    assert spec["optional"]["quantization"][0] == ["none", "8bit", "4bit"]
    assert spec["optional"]["quantization"][1]["default"] == "none"
    assert spec["required"]["attention"][0] == ["auto", "sdpa", "eager", "flash_attention_2"]

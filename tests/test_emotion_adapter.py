"""The emotion adapter: exact identity at init and strength 0, monotone in strength, files, arch checks."""

from __future__ import annotations

import json

import pytest
import torch

from emofeedback2.engines.generation.emotion_adapter import (
    AdapterArchitectureError,
    EmotionAdapter,
    EmotionAdapterConfig,
    load_emotion_adapter,
    read_adapter_metadata,
    save_emotion_adapter,
)
from emofeedback2.engines.emotion_space import VA

# (tokens, context width, pooled width) of each family's conditioning at real size
REAL_SHAPES = {"sd15": (77, 768, None), "sdxl": (77, 2048, 1280), "sd3": (333, 4096, 2048),
               "flux": (512, 4096, 768), "flux2_klein": (512, 7680, None), "qwen_image": (37, 3584, None),
               "z_image": (29, 2560, None)}
ALL_ARCHES = list(REAL_SHAPES)


def _conditioning(arch: str, batch: int = 2, seed: int = 0):
    tokens, dim, pooled_dim = REAL_SHAPES[arch]
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, dim, generator=g)
    pooled = torch.randn(batch, pooled_dim, generator=g) if pooled_dim else torch.randn(batch, 768, generator=g)
    return context, pooled


def _trained_like(adapter: EmotionAdapter, seed: int = 1) -> EmotionAdapter:
    """Give the zero-initialised output layers random weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".up." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return adapter


@pytest.mark.parametrize("arch", ALL_ARCHES)
def test_fresh_adapter_is_exact_identity_for_real_dims(arch):
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch(arch))
    assert adapter.num_parameters() < 50_000_000
    context, pooled = _conditioning(arch)
    va = torch.tensor([[2.5, -1.0], [-3.0, 3.0]])
    new_context, new_pooled = adapter(context, pooled, va, strength=1.0)
    assert torch.equal(new_context, context)
    assert torch.equal(new_pooled, pooled)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_strength_zero_returns_inputs_unchanged_even_when_trained(arch):
    adapter = _trained_like(EmotionAdapter(EmotionAdapterConfig.for_arch(arch, hidden_dim=32)))
    context, pooled = _conditioning(arch)
    new_context, new_pooled = adapter(context, pooled, VA(3.0, 3.0), strength=0.0)
    assert new_context is context and new_pooled is pooled
    changed, _ = adapter(context, pooled, VA(3.0, 3.0), strength=1.0)
    assert not torch.equal(changed, context)  # the trained adapter does act at strength 1


@pytest.mark.parametrize("arch", ALL_ARCHES)
def test_change_grows_monotonically_with_strength(arch):
    adapter = _trained_like(EmotionAdapter(EmotionAdapterConfig.for_arch(arch, hidden_dim=32)))
    context, pooled = _conditioning(arch, batch=1)
    sizes, pooled_sizes = [], []
    for strength in (0.0, 0.25, 0.5, 1.0, 1.5, 2.0):
        new_context, new_pooled = adapter(context, pooled, VA(-2.0, 2.5), strength=strength)
        sizes.append((new_context - context).norm().item())
        pooled_sizes.append((new_pooled - pooled).norm().item())
    assert sizes[0] == 0.0
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes
    if REAL_SHAPES[arch][2]:
        assert all(b > a for a, b in zip(pooled_sizes, pooled_sizes[1:])), pooled_sizes
    else:  # no pooled input in this family (SD1.5's pooled vector is unused; LLM encoders have none): left alone
        assert pooled_sizes == [0.0] * 6


def test_different_targets_give_different_conditioning():
    adapter = _trained_like(EmotionAdapter(EmotionAdapterConfig.for_arch("sd15", hidden_dim=32)))
    context, pooled = _conditioning("sd15", batch=1)
    happy, _ = adapter(context, pooled, VA(3.0, 1.0))
    sad, _ = adapter(context, pooled, VA(-3.0, -1.0))
    assert (happy - sad).abs().max() > 1e-4
    both, _ = adapter(context.expand(2, -1, -1), pooled.expand(2, -1), [VA(3.0, 1.0), VA(-3.0, -1.0)])
    assert torch.allclose(both[0], happy[0], atol=1e-6) and torch.allclose(both[1], sad[0], atol=1e-6)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    adapter = _trained_like(EmotionAdapter(EmotionAdapterConfig.for_arch("sdxl", hidden_dim=64)))
    path = save_emotion_adapter(adapter, tmp_path / "a.safetensors", metadata={"base_model": "tiny", "steps": 3})
    loaded = load_emotion_adapter(path, expected_arch="sdxl")
    for (k, v), (k2, v2) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    context, pooled = _conditioning("sdxl", batch=1)
    a = adapter(context, pooled, VA(1.0, -2.0))
    b = loaded(context, pooled, VA(1.0, -2.0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    meta = read_adapter_metadata(path)
    assert meta["architecture"] == "sdxl" and meta["context_dim"] == "2048" and meta["pooled_dim"] == "1280"
    assert json.loads(meta["va_range"]) == [-3.0, 3.0] and meta["format_version"] == "1"
    assert meta["base_model"] == "tiny" and meta["steps"] == "3"


def test_loading_for_another_architecture_names_both(tmp_path):
    path = save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig.for_arch("sdxl", hidden_dim=8)), tmp_path / "x.safetensors")
    with pytest.raises(AdapterArchitectureError, match=r"SDXL.*SD1\.5"):
        load_emotion_adapter(path, expected_arch="sd15")
    with pytest.raises(AdapterArchitectureError, match="context 2048"):
        load_emotion_adapter(path, context_dim=4096, pooled_dim=2048)


def test_conditioning_of_another_architecture_is_refused():
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch("sdxl", hidden_dim=8))
    context, pooled = _conditioning("sd15")
    with pytest.raises(AdapterArchitectureError, match=r"made for SDXL.*SD1\.5"):
        adapter(context, pooled, VA(0.0, 0.0))


def test_non_adapter_files_and_bad_targets_are_refused(tmp_path):
    from safetensors.torch import save_file

    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(ValueError, match="not an EmoFeedback2 emotion adapter"):
        load_emotion_adapter(lora)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_emotion_adapter(tmp_path / "missing.safetensors")
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch("sd15", hidden_dim=8))
    context, pooled = _conditioning("sd15", batch=1)
    with pytest.raises(ValueError, match=r"\[-3, 3\]"):
        adapter(context, pooled, torch.tensor([[4.0, 0.0]]))


def test_gradients_reach_every_parameter_for_training():
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch("sdxl", hidden_dim=16))
    context, pooled = _conditioning("sdxl", batch=1)
    new_context, new_pooled = adapter(context, pooled, VA(1.0, 1.0))
    (new_context.square().mean() + new_pooled.square().mean()).backward()
    assert adapter.context_branch.up.weight.grad.abs().sum() > 0
    assert adapter.pooled_branch.up.weight.grad.abs().sum() > 0


# ComfyUI CONDITIONING as each family's text encoder node returns it ([cond, options]): Flux.1 from
# comfy/text_encoders/flux.py (T5 sequence + CLIP-L pooled, FluxGuidance adds "guidance"); Qwen-Image
# from comfy/text_encoders/qwen_image.py (Qwen2.5-VL states after the template, attention mask); Flux.2
# Klein and Z-Image (Qwen3 encoders) exist only in ComfyUI newer than v0.3.64: their widths are diffusers'.
COMFY_OPTIONS = {
    "flux": lambda b: {"pooled_output": torch.randn(b, 768), "guidance": 3.5},
    "qwen_image": lambda b: {"pooled_output": None, "attention_mask": torch.ones(b, REAL_SHAPES["qwen_image"][0])},
    "flux2_klein": lambda b: {"pooled_output": None},
    "z_image": lambda b: {"pooled_output": None},
}


@pytest.mark.parametrize("arch", list(COMFY_OPTIONS))
def test_adapter_moves_each_family_comfyui_conditioning(arch):
    from emofeedback2.engines.generation.comfy_backend import apply_adapter_to_conditioning

    tokens, dim, pooled_dim = REAL_SHAPES[arch]
    adapter = _trained_like(EmotionAdapter(EmotionAdapterConfig.for_arch(arch, hidden_dim=16)))
    options = COMFY_OPTIONS[arch](1)
    conditioning = [[torch.randn(1, tokens, dim), options]]
    moved = apply_adapter_to_conditioning(conditioning, adapter, VA(2.0, -1.0), 1.0)
    cond, new_options = moved[0]
    assert cond.shape == (1, tokens, dim) and not torch.equal(cond, conditioning[0][0])
    for key, value in options.items():  # guidance, masks... pass through; pooled moves where the family has one
        if key == "pooled_output" and pooled_dim:
            assert new_options[key].shape == value.shape and not torch.equal(new_options[key], value)
        elif isinstance(value, torch.Tensor):
            assert torch.equal(new_options[key], value)
        else:
            assert new_options[key] == value
    assert apply_adapter_to_conditioning(conditioning, adapter, VA(2.0, -1.0), 0.0) is conditioning


def test_an_adapter_of_another_family_names_both():
    qwen = EmotionAdapter(EmotionAdapterConfig.for_arch("qwen_image", hidden_dim=8))
    with pytest.raises(AdapterArchitectureError, match="Qwen-Image.*Flux.1"):
        qwen(torch.randn(1, 512, 4096), torch.randn(1, 768), VA(0.0, 0.0))
    klein = EmotionAdapter(EmotionAdapterConfig.for_arch("flux2_klein", hidden_dim=8))
    with pytest.raises(AdapterArchitectureError, match="Z-Image"):
        klein(torch.randn(1, 29, 2560), None, VA(0.0, 0.0))

"""EmotionConditioner nodes against the fake CLIP (same encode call as CLIPTextEncode)."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.engines.generation.emotion_adapter import AdapterArchitectureError, EmotionAdapter, EmotionAdapterConfig
from emofeedback2.engines.emotion_space import EmotionValueError
from emofeedback2.nodes.conditioner_nodes import EmotionConditioner, EmotionConditionerFromConditioning


def _clip_text_encode(clip, text):
    """ComfyUI's CLIPTextEncode.encode body."""
    tokens = clip.tokenize(text)
    return (clip.encode_from_tokens_scheduled(tokens),)


def _trained_adapter(arch="sd15"):
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch(arch, hidden_dim=16))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".up." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return adapter


def _same(a, b):
    assert len(a) == len(b)
    for (ca, da), (cb, db) in zip(a, b):
        assert torch.equal(ca, cb)
        assert da.keys() == db.keys()
        for k in da:
            assert torch.equal(da[k], db[k]) if isinstance(da[k], torch.Tensor) else da[k] == db[k]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("adapter_strength", [None, 0.0])
def test_strength_zero_equals_clip_text_encode_bit_exactly(comfy_sampling, arch, adapter_strength):
    clip = comfy_sampling.clip(arch)
    text = "  a quiet harbour at dawn\n"
    kwargs = {} if adapter_strength is None else dict(emotion_adapter=_trained_adapter(arch), adapter_strength=0.0)
    cond, encoded = EmotionConditioner().encode(clip, text, 2.5, -2.0, text_strength=0.0, **kwargs)
    assert encoded == text and clip.tokenize_calls[-1] == text
    _same(cond, _clip_text_encode(clip, text)[0])


def test_text_route_returns_the_encoded_prompt(comfy_sampling):
    clip = comfy_sampling.clip()
    cond, encoded = EmotionConditioner().encode(clip, "a quiet harbour", -2.5, 2.5, text_strength=1.0)
    assert encoded.startswith("a quiet harbour, ") and len(encoded) > len("a quiet harbour, ")
    assert clip.tokenize_calls[-1] == encoded
    _same(cond, _clip_text_encode(clip, encoded)[0])
    _, calm = EmotionConditioner().encode(clip, "a quiet harbour", 2.5, -2.5, text_strength=1.0)
    assert calm != encoded  # different targets, different words


def test_adapter_moves_conditioning_more_with_strength(comfy_sampling):
    clip = comfy_sampling.clip("sdxl")
    adapter = _trained_adapter("sdxl")
    base = _clip_text_encode(clip, "a field")[0]
    sizes = []
    for strength in (0.5, 1.0, 2.0):
        cond, _ = EmotionConditioner().encode(clip, "a field", 3.0, 3.0, 0.0, adapter, strength)
        sizes.append((cond[0][0] - base[0][0]).norm().item())
        assert cond[0][1]["pooled_output"].shape == base[0][1]["pooled_output"].shape
    assert 0 < sizes[0] < sizes[1] < sizes[2]


def test_from_conditioning_variant(comfy_sampling):
    clip = comfy_sampling.clip()
    base = _clip_text_encode(clip, "a field")[0]
    node = EmotionConditionerFromConditioning()
    adapter = _trained_adapter()
    assert node.apply(base, adapter, 1.0, 1.0, 0.0)[0] is base
    moved = node.apply(base, adapter, 1.0, 1.0, 1.0)[0]
    via_encoder, _ = EmotionConditioner().encode(clip, "a field", 1.0, 1.0, 0.0, adapter, 1.0)
    _same(moved, via_encoder)
    assert "applied at strength 1" in node.apply(base, adapter, 1.0, 1.0, 1.0)[1]


def test_from_conditioning_without_adapter_passes_through_with_a_note(comfy_sampling, caplog):
    """A fresh install has no adapter: the node runs, leaves the conditioning alone and says why."""
    base = _clip_text_encode(comfy_sampling.clip(), "a field")[0]
    spec = EmotionConditionerFromConditioning.INPUT_TYPES()
    assert "emotion_adapter" in spec["optional"] and "emotion_adapter" not in spec["required"]
    assert spec["optional"]["emotion_adapter"][1]["tooltip"].startswith("Required for any effect")
    with caplog.at_level("WARNING"):
        conditioning, note = EmotionConditionerFromConditioning().apply(base, valence=2.0, arousal=-1.0)
    assert conditioning is base
    assert "passed through unchanged" in note and "EmoFeedback2 Weights Loader" in note
    assert any("passed through unchanged" in r.getMessage() for r in caplog.records)


def test_bad_values_and_wrong_adapter_give_clear_errors(comfy_sampling):
    clip = comfy_sampling.clip("sd15")
    with pytest.raises(EmotionValueError, match="valence"):
        EmotionConditioner().encode(clip, "x", 4.0, 0.0)
    with pytest.raises(AdapterArchitectureError, match=r"SDXL.*SD1\.5"):
        EmotionConditioner().encode(clip, "x", 1.0, 0.0, 0.0, _trained_adapter("sdxl"), 1.0)
    with pytest.raises(RuntimeError, match="CLIP"):
        EmotionConditioner().encode(None, "x", 1.0, 0.0)


def test_tooltips_explain_the_scale():
    spec = EmotionConditioner.INPUT_TYPES()
    assert "-3" in spec["required"]["valence"][1]["tooltip"] and "+3" in spec["required"]["arousal"][1]["tooltip"]
    assert spec["optional"]["emotion_adapter"][0] == "EMOTION_ADAPTER"

"""Emotion Weights Loader against fake ComfyUI LoRA machinery (real key-mapping rules)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from emofeedback2.engines.generation.emotion_adapter import (
    AdapterArchitectureError,
    EmotionAdapter,
    EmotionAdapterConfig,
    save_emotion_adapter,
)
from emofeedback2.nodes.weights_nodes import EmotionWeightsLoader, LoraMismatchError, NoClipConnected, adapter_choices

KOHYA_UNET = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
KOHYA_UNET_2 = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_out_0"
KOHYA_TE = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def _kohya(layers, rank=2, width=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for layer in layers:
        sd[f"{layer}.lora_down.weight"] = torch.randn(rank, width, generator=g)
        sd[f"{layer}.lora_up.weight"] = torch.randn(width, rank, generator=g)
        sd[f"{layer}.alpha"] = torch.tensor(float(rank))
    return sd


def _write(folder, name, sd):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / name))
    return name


def test_kohya_lora_applies_to_model_and_clip(comfy_sampling):
    cs = comfy_sampling
    loras = cs.fake.models_dir / "loras"
    name = _write(loras, "emo.safetensors", _kohya([KOHYA_UNET, KOHYA_UNET_2, KOHYA_TE]))
    model, clip = cs.model(), cs.clip()
    new_model, new_clip, adapter, report = EmotionWeightsLoader().load(model, name, 0.8, "none", clip=clip, strength_clip=0.5)
    assert "applied 3 LoRA layers" in report and "skipped" not in report
    assert adapter is None and new_model is not model and new_clip is not clip
    assert len(new_model.patches) == 2 and all(e[0][0] == 0.8 for e in new_model.patches.values())
    assert len(new_clip.patches) == 1 and model.patches == {}  # the input MODEL is left untouched


def test_lora_for_another_model_is_refused_not_partially_loaded(comfy_sampling):
    cs = comfy_sampling
    loras = cs.fake.models_dir / "loras"
    other = "lora_unet_down_blocks_2_attentions_1_transformer_blocks_9_attn2_to_k"  # not in this UNet
    name = _write(loras, "sdxl_emo.safetensors", _kohya([KOHYA_UNET, other]))
    with pytest.raises(LoraMismatchError, match=r"1 of 2 LoRA layers do not exist in SD1\.5.*another base model"):
        EmotionWeightsLoader().load(cs.model(), name, 1.0, "none")


def test_peft_format_lora_is_refused_with_export_hint(comfy_sampling):
    cs = comfy_sampling
    loras = cs.fake.models_dir / "loras"
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    name = _write(loras, "peft.safetensors", {f"{key}.lora_A.weight": torch.zeros(2, 8),
                                              f"{key}.lora_B.weight": torch.zeros(8, 2)})
    with pytest.raises(LoraMismatchError, match="emofeedback2 export"):
        EmotionWeightsLoader().load(cs.model(), name, 1.0, "none")


def test_without_clip_the_model_part_applies_and_the_skip_is_reported(comfy_sampling, caplog):
    """Like LoraLoaderModelOnly: a LoRA with text-encoder layers and no CLIP wired still loads."""
    cs = comfy_sampling
    name = _write(cs.fake.models_dir / "loras", "te.safetensors", _kohya([KOHYA_UNET, KOHYA_UNET_2, KOHYA_TE]))
    model = cs.model()
    with caplog.at_level("WARNING"):
        new_model, new_clip, adapter, report = EmotionWeightsLoader().load(model, name, 0.7, "none")
    assert isinstance(new_clip, NoClipConnected) and adapter is None
    assert len(new_model.patches) == 2 and all(e[0][0] == 0.7 for e in new_model.patches.values())
    assert "applied 2 diffusion-model LoRA layers" in report and "skipped its 1 text-encoder layers" in report
    assert "connect CLIP" in report
    assert any("skipped its 1 text-encoder layers" in r.getMessage() for r in caplog.records)  # console too
    assert not any("lora key not loaded" in r.getMessage() for r in caplog.records)  # nothing silently dropped
    # the same LoRA with CLIP connected applies everything
    _, with_clip, _, report = EmotionWeightsLoader().load(model, name, 0.7, "none", clip=cs.clip())
    assert len(with_clip.patches) == 1 and "skipped" not in report


def test_without_clip_a_foreign_unet_layer_is_still_refused(comfy_sampling):
    cs = comfy_sampling
    name = _write(cs.fake.models_dir / "loras", "mixed.safetensors",
                  _kohya([KOHYA_UNET, KOHYA_TE, "lora_unet_no_such_block_attn1_to_q"]))
    with pytest.raises(LoraMismatchError, match="no_such_block.*Refusing a partial load"):
        EmotionWeightsLoader().load(cs.model(), name, 1.0, "none")


def test_adapter_list_holds_only_emotion_adapters_each_once(comfy_sampling):
    cs = comfy_sampling
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch("sd15", hidden_dim=8))
    models = cs.fake.models_dir
    save_emotion_adapter(adapter, models / "emotion_adapters" / "calm.safetensors")
    save_emotion_adapter(adapter, models / "loras" / "in_loras_adapter.safetensors")
    _write(models / "loras", "style_lora.safetensors", _kohya([KOHYA_UNET]))
    (models / "loras" / "broken.safetensors").write_bytes(b"not a safetensors file")
    # the same folder registered twice (extra_model_paths.yaml pointing loras at emotion_adapters)
    cs.fake.folder_paths.add_model_folder_path("loras", str(models / "emotion_adapters"))
    choices = adapter_choices()
    assert choices == ["none", "calm.safetensors", "loras/in_loras_adapter.safetensors"]
    lora_choices = EmotionWeightsLoader.INPUT_TYPES()["required"]["lora_name"][0]
    assert "style_lora.safetensors" in lora_choices  # ordinary LoRAs stay in the LoRA list


def test_adapter_file_loads_from_its_folder_and_from_loras(comfy_sampling):
    cs = comfy_sampling
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch("sd15", hidden_dim=8))
    save_emotion_adapter(adapter, cs.fake.models_dir / "emotion_adapters" / "happy.safetensors")
    save_emotion_adapter(adapter, cs.fake.models_dir / "loras" / "bundle_adapter.safetensors")
    choices = adapter_choices()
    assert choices[0] == "none" and "happy.safetensors" in choices and "loras/bundle_adapter.safetensors" in choices
    assert EmotionWeightsLoader.INPUT_TYPES()["required"]["adapter_name"][0] == choices
    model = cs.model()
    for name in ("happy.safetensors", "loras/bundle_adapter.safetensors"):
        out_model, out_clip, loaded, report = EmotionWeightsLoader().load(model, "none", 1.0, name)
        assert "emotion adapter" in report and "SD1.5" in report
        assert out_model is model and isinstance(out_clip, NoClipConnected)
        assert loaded.arch == "sd15"
        for k, v in adapter.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v)


def test_adapter_for_another_architecture_is_refused(comfy_sampling):
    cs = comfy_sampling
    save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig.for_arch("sdxl", hidden_dim=8)),
                         cs.fake.models_dir / "emotion_adapters" / "xl.safetensors")
    with pytest.raises(AdapterArchitectureError, match=r"xl\.safetensors.*SDXL.*SD1\.5"):
        EmotionWeightsLoader().load(cs.model("sd15"), "none", 1.0, "xl.safetensors")


def test_a_lora_chosen_as_adapter_is_explained(comfy_sampling):
    cs = comfy_sampling
    _write(cs.fake.models_dir / "emotion_adapters", "oops.safetensors", _kohya([KOHYA_UNET]))
    with pytest.raises(ValueError, match="not an EmoFeedback2 emotion adapter"):
        EmotionWeightsLoader().load(cs.model(), "none", 1.0, "oops.safetensors")
    with pytest.raises(FileNotFoundError, match="emotion_adapters"):
        EmotionWeightsLoader().load(cs.model(), "none", 1.0, "missing.safetensors")


def test_lists_are_empty_but_valid_outside_comfyui():
    spec = EmotionWeightsLoader.INPUT_TYPES()
    assert spec["required"]["lora_name"][0][0] == "none" and spec["required"]["adapter_name"][0][0] == "none"


# --- the clip output when no CLIP is wired in -------------------------------------------------------


def _core_clip_text_encode(clip, text: str):
    """What core's CLIPTextEncode.encode does with its clip input (nodes.py, v0.3.64)."""
    if clip is None:
        raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your "
                           "checkpoint does not contain a valid clip or text encoder model.")
    return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


def test_an_unwired_clip_output_explains_itself_where_it_is_used(comfy_sampling):
    """Core would say "your checkpoint does not contain a valid clip"; the user's fix is a wire, not a file."""
    from emofeedback2.nodes.conditioner_nodes import EmotionConditioner
    from emofeedback2.nodes.weights_nodes import NoClipError
    from test_node_conventions import full_type_name

    _, clip, _, report = EmotionWeightsLoader().load(comfy_sampling.model(), "none", 1.0, "none")
    assert "clip output empty" in report
    for use in (lambda: _core_clip_text_encode(clip, "a field"),
                lambda: EmotionConditioner().encode(clip, "a field", 1.0, 0.0)):
        with pytest.raises(NoClipError) as info:
            use()
        message = str(info.value)
        assert "clip input" in message and "Weights Loader" in message and "valid clip" not in message
        assert full_type_name(type(info.value)) == "NoClipError"  # how ComfyUI's dialog names it
    assert getattr(clip, "tokenize", None) is None  # probes with a default still get it
    # chained: a second loader given the empty output treats it as "no CLIP" (model part only)
    model, clip_again, _, _ = EmotionWeightsLoader().load(comfy_sampling.model(), "none", 1.0, "none", clip=clip)
    assert isinstance(clip_again, NoClipConnected)
    # wired, the real CLIP passes through
    real = comfy_sampling.clip()
    assert EmotionWeightsLoader().load(comfy_sampling.model(), "none", 1.0, "none", clip=real)[1] is real

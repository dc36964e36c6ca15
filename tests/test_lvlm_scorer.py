"""The LVLM scorer on tiny random Qwen-VL models: batched expected-value readings and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from emofeedback2.engines.images import ImageBatchError
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, LVLMLoadError, LVLMScorer, load_lvlm
from emofeedback2.engines.judge.scoring import EmotionScorer


@pytest.fixture(scope="module")
def scorer(tiny_lvlm_dir) -> LVLMScorer:
    return load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu"))


def _images(n: int, seed: int = 0, h: int = 40, w: int = 56) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=generator)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_batch_of_four_gives_four_in_range_readings_for_each_family(tiny_lvlm_dirs, family):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dirs[family]), device="cpu", dtype="float32"))
    assert isinstance(scorer, EmotionScorer) and not scorer.is_heuristic
    readings = scorer.score(_images(4))
    assert len(readings) == 4
    for reading in readings:
        assert -3.0 <= reading.valence <= 3.0 and -3.0 <= reading.arousal <= 3.0
        assert reading.analysis == ""
    # different images → different readings (the reading depends on the pixels)
    assert len({round(r.valence, 6) for r in readings}) > 1


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_batched_equals_one_by_one(tiny_lvlm_dirs, family):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dirs[family]), device="cpu"))
    images = _images(3, seed=1)
    batched = scorer.score_details(images)
    for i in range(3):
        single = scorer.score_details(images[i : i + 1])
        assert abs(batched.valence[i].item() - single.valence[0].item()) < 1e-4
        assert abs(batched.arousal[i].item() - single.arousal[0].item()) < 1e-4


@pytest.mark.parametrize("share_prefix, expected_rows", [(True, [5, 10]), (False, [10])])
def test_all_images_go_through_one_batched_pass(tiny_lvlm_dir, monkeypatch, share_prefix, expected_rows):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", share_prefix=share_prefix))
    scorer.score(_images(1))  # capability checks read forward's signature: run them before patching it
    calls = []
    original = scorer.model.forward

    def counting_forward(*args, **kwargs):
        calls.append((kwargs["input_ids"].shape[0], kwargs["input_ids"].shape[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(scorer.model, "forward", counting_forward)
    scorer.score(_images(5))
    # shared prefix: prompt + image once per image (5 rows), then the 2×5 short answer-prefix rows
    # on its key/value cache; without it: valence and arousal rows of 5 images in one batch
    assert [rows for rows, _ in calls] == expected_rows
    if share_prefix:
        assert calls[1][1] < 16 < calls[0][1]  # the second pass only carries "Valence: "/"Arousal: "


def test_pil_images_of_mixed_sizes_are_scored(scorer):
    from PIL import Image

    readings = scorer.score([Image.new("RGB", (30, 70), (250, 180, 20)), Image.new("RGB", (64, 40), (10, 10, 60))])
    assert len(readings) == 2


def test_readings_are_differentiable_for_training(tiny_lvlm_dir):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu"))
    valence, arousal = scorer.score_tensors(_images(2), grad=True)
    (valence.sum() + arousal.sum()).backward()
    grads = [p.grad for p in scorer.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_lora_adapter_changes_readings_and_loads_from_disk(tiny_lvlm_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(str(tiny_lvlm_dir))
    torch.manual_seed(3)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    adapter_dir = tmp_path / "emotion_lora"
    peft_model.save_pretrained(str(adapter_dir))
    assert (adapter_dir / "adapter_model.safetensors").is_file()

    images = _images(3, seed=2)
    plain = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu")).score_details(images)
    adapted_scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", adapter=str(adapter_dir)))
    adapted = adapted_scorer.score_details(images)
    assert "emotion_lora" in adapted_scorer.name
    assert (adapted.valence - plain.valence).abs().max() > 1e-3 or (adapted.arousal - plain.arousal).abs().max() > 1e-3
    # loading the same adapter again reproduces the readings exactly (it really comes from disk)
    again = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", adapter=str(adapter_dir))).score_details(images)
    assert torch.allclose(again.valence, adapted.valence, atol=1e-6)


def test_analysis_text_is_sanitised_and_short(tiny_lvlm_dir):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", analysis_max_new_tokens=12))
    readings = scorer.score(_images(2), analysis=True)
    for reading in readings:
        assert isinstance(reading.analysis, str) and len(reading.analysis) <= 400
        assert "<|" not in reading.analysis and "\n" not in reading.analysis


def test_generate_text_one_instruction_per_image_or_shared(scorer):
    assert len(scorer.generate_text(_images(3), "Describe the mood.", max_new_tokens=4)) == 3
    assert len(scorer.generate_text(None, ["Rewrite: a cat"], max_new_tokens=4)) == 1
    with pytest.raises(ValueError, match="instructions"):
        scorer.generate_text(_images(2), ["one", "two", "three"], max_new_tokens=2)


@pytest.mark.parametrize("offload", [True, False])
def test_offload_after_use_moves_the_model_back(tiny_lvlm_dir, monkeypatch, offload):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", offload_after_use=offload, offload_device="cpu"))
    moves = []
    original_to = scorer.to
    monkeypatch.setattr(scorer, "to", lambda device: (moves.append(str(device)), original_to(device))[1])
    scorer.score(_images(1))
    assert moves == (["cpu", "cpu"] if offload else ["cpu"])  # to the work device, then back when asked


# --- bad inputs → clear errors ------------------------------------------------------------------


def test_missing_folder_names_the_folder_and_models_llm(tmp_path):
    missing = tmp_path / "models" / "LLM" / "Qwen2.5-VL-7B-Instruct"
    with pytest.raises(LVLMLoadError) as info:
        load_lvlm(LVLMConfig(model=str(missing)))
    assert str(missing) in str(info.value) and "models/LLM" in str(info.value)


def test_folder_without_config_json_is_explained(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(LVLMLoadError, match="config.json"):
        load_lvlm(LVLMConfig(model=str(tmp_path)))


def test_text_only_model_is_refused(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    Qwen2ForCausalLM(config).save_pretrained(str(tmp_path / "text_only"))
    with pytest.raises(LVLMLoadError, match="text-only"):
        load_lvlm(LVLMConfig(model=str(tmp_path / "text_only")))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LVLMLoadError, match="hub id"):
        load_lvlm(LVLMConfig(model="no-such-owner/no-such-vlm-xyz"))


def test_bad_adapter_folder_is_a_clear_error(tiny_lvlm_dir, tmp_path):
    with pytest.raises(LVLMLoadError, match="adapter folder not found"):
        load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", adapter=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LVLMLoadError, match="adapter_config.json"):
        load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", adapter=str(tmp_path / "empty")))


@pytest.mark.parametrize(
    "field, value, match",
    [("dtype", "float8", "dtype"), ("attn_implementation", "magic", "attn_implementation"), ("device", "banana", "device")],
)
def test_bad_options_are_clear_errors(tiny_lvlm_dir, field, value, match):
    with pytest.raises(LVLMLoadError, match=match):
        load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), **{field: value}))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(0, 16, 16, 3), "empty"),
        ([], "empty"),
        (torch.full((2, 16, 16, 3), float("nan")), "NaN"),
        (torch.zeros(2, 16, 16, 7), "channels"),
        (torch.zeros(16, 16), "shape"),
    ],
)
def test_bad_image_batches_are_clear_errors(scorer, bad, match):
    with pytest.raises(ImageBatchError, match=match):
        scorer.score(bad)


def test_max_pixels_option_limits_image_tokens(tiny_lvlm_dir):
    small = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", max_pixels=28 * 28, min_pixels=28 * 28))
    from PIL import Image

    encoded = small._encode([small._chat("x")], [Image.new("RGB", (200, 200))])
    assert encoded["image_grid_thw"].prod().item() == 4  # 2×2 patches = one merged image token
    saved = json.loads((tiny_lvlm_dir / "processor_config.json").read_text())
    assert saved  # the folder on disk is untouched by the option


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_shared_prefix_and_shared_vision_equal_full_rows(tiny_lvlm_dirs, family):
    from PIL import Image

    images = [Image.fromarray((_images(1, seed=4)[0].numpy() * 255).astype("uint8")), Image.new("RGB", (90, 40), (200, 30, 90))]
    folder = str(tiny_lvlm_dirs[family])
    fast = load_lvlm(LVLMConfig(model=folder, device="cpu"))
    rows = load_lvlm(LVLMConfig(model=folder, device="cpu", share_prefix=False))
    plain = load_lvlm(LVLMConfig(model=folder, device="cpu", share_prefix=False, share_vision=False))
    assert fast._shares_vision() and not plain._shares_vision()
    a, b, c = fast.score_details(images), rows.score_details(images), plain.score_details(images)
    for x in (b, c):
        assert torch.allclose(a.valence, x.valence, atol=1e-5) and torch.allclose(a.arousal, x.arousal, atol=1e-5)


def test_the_vision_sharing_check_runs_once_per_judge(tiny_lvlm_dir, monkeypatch):
    """Batching asks the judge's memoised ``_shares_vision``: the signature inspection runs once, not per pass."""
    from emofeedback2.engines.judge import lvlm_batching

    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))
    calls = []
    original = lvlm_batching.shares_vision
    monkeypatch.setattr(lvlm_batching, "shares_vision", lambda judge: (calls.append(1), original(judge))[1])
    for _ in range(3):
        scorer.score_details(_images(1, seed=4))
    assert len(calls) == 1


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_weights_file_is_a_clear_error(tiny_lvlm_dir, tmp_path, damage):
    import shutil

    folder = tmp_path / "judge"
    shutil.copytree(tiny_lvlm_dir, folder)
    weights = next(folder.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 64 + data[64:])
    with pytest.raises(LVLMLoadError, match=r"weights in .* are damaged.*download the \*\.safetensors files"):
        load_lvlm(LVLMConfig(model=str(folder), device="cpu", dtype="float32"))


def test_diffusion_pipeline_folder_is_named_as_one(tmp_path):
    pipeline = tmp_path / "stable-diffusion-3.5-medium"
    (pipeline / "transformer").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "transformer" / "config.json").write_text("{}")
    with pytest.raises(LVLMLoadError, match="diffusion pipeline folder.*model_index.json.*vision-language"):
        load_lvlm(LVLMConfig(model=str(pipeline)))


@pytest.mark.parametrize("family, by_area", [("qwen2_5_vl", True), ("smolvlm", False), ("gemma3", False)])
def test_pixel_limits_apply_only_to_processors_that_size_by_area(tiny_lvlm_dirs, family, by_area):
    from transformers import AutoProcessor

    folder = str(tiny_lvlm_dirs[family])
    before = dict(AutoProcessor.from_pretrained(folder).image_processor.size)
    after = dict(load_lvlm(LVLMConfig(model=folder, device="cpu", max_pixels=401408)).processor.image_processor.size)
    # SmolVLM's longest_edge is an edge length and Gemma 3's size a fixed square: a pixel area must not land there
    assert (after != before) == by_area
    if by_area:
        assert after["longest_edge"] == 401408

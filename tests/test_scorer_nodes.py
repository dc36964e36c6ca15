"""LVLM loader + LVLMEmotionScorer nodes called the way ComfyUI calls them, against fake ComfyUI modules."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from emofeedback2.engines.judge.color_scorer import ColorHeuristicScorer
from emofeedback2.engines.emotion_space import EmotionValueError
from emofeedback2.engines.images import ImageBatchError
from emofeedback2.engines.judge.lvlm_scorer import LVLMLoadError, LVLMScorer
from emofeedback2.nodes import NODE_CLASS_MAPPINGS
from emofeedback2.nodes.loader_nodes import COLOUR_OPTION, LVLMLoader
from emofeedback2.nodes.scorer_nodes import LVLMEmotionScorer


def comfy_images(n: int = 2, h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE: float32 [B, H, W, 3] in 0..1 on CPU."""
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


@pytest.fixture
def llm_dir(fake_comfy, tiny_lvlm_dir):
    """ComfyUI/models/LLM with the tiny Qwen2.5-VL folder in it."""
    folder = fake_comfy.models_dir / "LLM"
    shutil.copytree(tiny_lvlm_dir, folder / "tiny-qwen2.5-vl")
    return folder


def run_loader(**widgets):
    node = NODE_CLASS_MAPPINGS["EmoFeedback2LVLMLoader"]()
    return getattr(node, node.FUNCTION)(**widgets)[0]


def run_scorer(lvlm, images, **widgets):
    node = NODE_CLASS_MAPPINGS["EmoFeedback2Scorer"]()
    return getattr(node, node.FUNCTION)(lvlm=lvlm, images=images, **widgets)


def test_loader_lists_model_folders_from_every_llm_path_then_the_heuristic(fake_comfy, llm_dir, tiny_lvlm_dirs, tmp_path):
    extra = tmp_path / "extra_models" / "LLM"
    shutil.copytree(tiny_lvlm_dirs["qwen3_vl"], extra / "Qwen" / "tiny-qwen3-vl")
    (extra / "not-a-model").mkdir()
    (llm_dir / "my_scorer_lora").mkdir()
    (llm_dir / "my_scorer_lora" / "adapter_config.json").write_text("{}")
    fake_comfy.folder_paths.add_model_folder_path("LLM", str(extra))  # as extra_model_paths.yaml does

    spec = LVLMLoader.INPUT_TYPES()
    options = spec["required"]["model"][0]
    assert options == ["Qwen/tiny-qwen3-vl", "tiny-qwen2.5-vl", COLOUR_OPTION]  # a model is the default
    assert spec["optional"]["adapter"][0] == ["none", "my_scorer_lora"]
    paths = fake_comfy.folder_paths.get_folder_paths("LLM")
    assert paths[0] == str(llm_dir) and str(extra) in paths  # models/LLM registered, extra path kept


def test_colour_option_needs_no_model_and_scores_with_a_target(fake_comfy):
    lvlm = run_loader(model=COLOUR_OPTION)
    assert isinstance(lvlm, ColorHeuristicScorer)
    bright = torch.tensor([1.0, 0.8, 0.1]).expand(1, 16, 16, 3)
    dark = torch.full((1, 16, 16, 3), 0.15)
    valence, arousal, reward, report, rows_json, judge = run_scorer(
        lvlm, torch.cat([bright, dark]), use_target=True, valence=2.0, arousal=1.0
    )
    assert "NO LVLM" in judge and "colour heuristic" in judge  # which judge judged, in its own output
    rows = json.loads(rows_json)
    assert [row["index"] for row in rows] == [0, 1]
    assert rows[0]["valence"] > rows[1]["valence"] and rows[0]["reward"] > rows[1]["reward"]
    assert valence == pytest.approx((rows[0]["valence"] + rows[1]["valence"]) / 2, abs=1e-3)
    assert 0.0 <= reward <= 1.0 and "heuristic" in report
    assert fake_comfy.progress_updates[-1] == (1, 1)


def test_tiny_lvlm_from_models_llm_scores_a_comfy_batch(fake_comfy, llm_dir):
    lvlm = run_loader(model="tiny-qwen2.5-vl", dtype="float32", device="cpu", attention="sdpa", keep_loaded=True)
    assert isinstance(lvlm, LVLMScorer)
    images = comfy_images(4)
    valence, arousal, reward, report, rows_json, judge = run_scorer(lvlm, images)
    rows = json.loads(rows_json)
    assert judge == "LVLM tiny-qwen2.5-vl"  # the model folder that judged, no heuristic warning
    assert len(rows) == 4 and all(-3 <= r["valence"] <= 3 and -3 <= r["arousal"] <= 3 for r in rows)
    assert "reward" not in rows[0] and reward == -1.0
    assert isinstance(valence, float) and isinstance(arousal, float) and isinstance(report, str)
    # the node's numbers are the engine's numbers
    direct = lvlm.score(images)
    assert rows[2]["valence"] == pytest.approx(direct[2].valence, abs=1e-4)
    # a random judge barely answers with digits: each row and report line says the reading is unreliable
    assert all(r["low_digit_mass"] and r["digit_mass"] == pytest.approx(direct[i].digit_mass, abs=1e-4)
               for i, r in enumerate(rows))
    assert report.count("LOW DIGIT MASS") == 4
    assert fake_comfy.progress_updates and fake_comfy.progress_updates[-1][0] == fake_comfy.progress_updates[-1][1]


def test_analysis_toggle_adds_sanitised_text(fake_comfy, llm_dir):
    lvlm = run_loader(model="tiny-qwen2.5-vl", device="cpu")
    _, _, _, report, rows_json, _ = run_scorer(lvlm, comfy_images(2), analysis=True)
    rows = json.loads(rows_json)
    assert sum(line.startswith("image ") for line in report.splitlines()) == 2  # one line per image (+ header, warnings)
    assert all("<|" not in row.get("analysis", "") for row in rows)


def test_adapter_from_models_llm_changes_readings(fake_comfy, llm_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(str(llm_dir / "tiny-qwen2.5-vl")),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(llm_dir / "adapters" / "emo_lora"))
    images = comfy_images(2, seed=5)
    plain = json.loads(run_scorer(run_loader(model="tiny-qwen2.5-vl", device="cpu"), images)[4])
    adapted = json.loads(
        run_scorer(run_loader(model="tiny-qwen2.5-vl", device="cpu", adapter="adapters/emo_lora"), images)[4]
    )
    assert any(abs(p["valence"] - a["valence"]) > 1e-3 or abs(p["arousal"] - a["arousal"]) > 1e-3 for p, a in zip(plain, adapted))


def test_keep_loaded_off_offloads_and_frees_cache(fake_comfy, llm_dir):
    lvlm = run_loader(model="tiny-qwen2.5-vl", device="cpu", keep_loaded=False)
    assert lvlm.config.offload_after_use and lvlm.config.offload_device == "cpu"
    assert fake_comfy.empty_cache_calls >= 1


def test_cancel_stops_the_scorer(fake_comfy, llm_dir):
    lvlm = run_loader(model="tiny-qwen2.5-vl", device="cpu")
    fake_comfy.interrupt_after(0)
    with pytest.raises(fake_comfy.model_management.InterruptProcessingException):
        run_scorer(lvlm, comfy_images(2))


def test_missing_model_folder_names_models_llm(fake_comfy, llm_dir):
    with pytest.raises(LVLMLoadError) as info:
        run_loader(model="Qwen2.5-VL-7B-Instruct")
    assert "models/LLM/Qwen2.5-VL-7B-Instruct" in str(info.value) and str(llm_dir) in str(info.value)


def test_out_of_range_target_is_a_clear_error(fake_comfy):
    lvlm = run_loader(model=COLOUR_OPTION)
    with pytest.raises(EmotionValueError, match="valence=4"):
        run_scorer(lvlm, comfy_images(1), use_target=True, valence=4.0, arousal=0.0)
    # without use_target the target widgets are ignored
    assert run_scorer(lvlm, comfy_images(1), use_target=False, valence=4.0)[2] == -1.0


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(0, 16, 16, 3), "empty"),
        (torch.full((1, 16, 16, 3), float("nan")), "NaN"),
        (torch.zeros(1, 3, 16, 16), "channels"),
    ],
)
def test_bad_image_batches_are_clear_errors(fake_comfy, images, match):
    with pytest.raises(ImageBatchError, match=match):
        run_scorer(run_loader(model=COLOUR_OPTION), images)


def test_wrong_lvlm_input_is_explained(fake_comfy):
    with pytest.raises(TypeError, match="LVLM Loader"):
        run_scorer("not a model", comfy_images(1))


def test_scorer_node_interface_is_wireable():
    assert LVLMEmotionScorer.RETURN_TYPES == ("FLOAT", "FLOAT", "FLOAT", "STRING", "STRING", "STRING")
    assert LVLMEmotionScorer.INPUT_TYPES()["required"]["lvlm"][0] == LVLMLoader.RETURN_TYPES[0] == "LVLM"

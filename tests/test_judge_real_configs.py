"""Real-size configs of every judge family (``bench train --judge-real-size``): each builds with its real
transformers class on the meta device and gives the parameter count its model card publishes."""

from __future__ import annotations

import pytest

from emofeedback2.training.generator.memory_plan import reward_model
from emofeedback2.training.generator.real_configs import REAL_JUDGES

#: published sizes (billions of parameters, as the model pages / GGUF metadata state them)
PUBLISHED_B = {
    "qwen2.5-vl-7b": 8.29,  # Qwen/Qwen2.5-VL-7B-Instruct: 8.29B
    "qwen3-vl-8b": 8.77,  # Qwen/Qwen3-VL-8B-Instruct: 8.77B
    "gemma-3-12b": 12.2,  # google/gemma-3-12b-it: 12.2B
    "internvl3.5-8b": 8.53,  # OpenGVLab/InternVL3_5-8B-HF: 8.53B
    "llava-onevision-7b": 8.03,  # llava-hf/llava-onevision-qwen2-7b-ov-hf: 8.03B
    "smolvlm-2b": 2.25,  # HuggingFaceTB/SmolVLM-Instruct: 2.25B
}


@pytest.mark.parametrize("name", list(REAL_JUDGES))
def test_real_judge_config_builds_at_its_published_size(name):
    model = reward_model("lvlm", REAL_JUDGES[name])
    assert model.config.model_type in type(model).__module__  # the family's own class, not a stand-in
    params = sum(p.numel() for p in model.parameters())
    if name == "qwen3.5-9b":  # the card gives the language model alone: 8.95B with its output head (GGUF metadata)
        text = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
        assert abs(text / 1e9 - 8.95) < 0.01
    else:
        assert abs(params / 1e9 - PUBLISHED_B[name]) / PUBLISHED_B[name] < 0.005, params


def test_short_names_and_hub_ids_give_the_same_config():
    from emofeedback2.training.generator.real_configs import known_reward_config

    for name, hub in REAL_JUDGES.items():
        assert known_reward_config(name) == known_reward_config(hub) is not None
        assert known_reward_config(f"/models/LLM/{name}") == known_reward_config(name)  # a folder named like one


def test_bench_train_plans_a_non_qwen_judge(capsys):
    from emofeedback2.cli import main

    assert main(["bench", "train", "--real-size", "sd3.5-medium", "--judge-real-size", "smolvlm-2b", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "judge SmolVLM-Instruct (8bit)" in out and "2,246,272,880 params" in out
    assert out.strip().splitlines()[-1].startswith("planned_peak_gib=")


# image tokens of one 512² image per judge family: Qwen-VL from smart_resize (Qwen2.5-VL 28-px tokens: 18² = 324;
# Qwen3-VL/3.5 32-px tokens: 16² = 256); fixed-size encoders one tile at their size (Gemma 3: 256 soft tokens;
# InternVL: 256 per 448² tile; LLaVA-OneVision: 27² = 729 patches of the 384² base image; SmolVLM: 27² / 3² = 81)
JUDGE_TOKENS_512 = {"qwen2.5-vl-7b": 324, "qwen3-vl-8b": 256, "qwen3.5-9b": 256, "gemma-3-12b": 256,
                    "internvl3.5-8b": 256, "llava-onevision-7b": 729, "smolvlm-2b": 81}


def test_the_plan_counts_image_tokens_for_every_judge_family():
    from emofeedback2.training.generator.judge_memory import image_grid, judge_working_bytes
    from emofeedback2.training.generator.meta_models import reward_model
    from emofeedback2.training.generator.real_configs import REAL_JUDGES

    assert set(JUDGE_TOKENS_512) == set(REAL_JUDGES)
    for name, hub_id in REAL_JUDGES.items():
        model = reward_model("lvlm", hub_id)
        grid = image_grid(model, 512)
        assert grid.tokens == JUDGE_TOKENS_512[name], name
        work, detail = judge_working_bytes(model, 8, 2, grid)
        assert work > 0 and f"{grid.tokens} image tokens each" in detail

"""LoRA targets for judge training come from each family's module tree, not from a Qwen name list."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from emofeedback2.tiny_models.lvlm import FAMILIES
from emofeedback2.training.judge.config import LANGUAGE_TARGETS, MERGER_TARGETS, JudgeModelConfig, target_modules
from emofeedback2.training.judge.lora_targets import language_model_linears, projector_linears


def _model(tiny_lvlm_dirs, family):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(tiny_lvlm_dirs[family]))


def _matched(model, regex):
    return {name for name, _ in model.named_modules() if re.fullmatch(regex, name)}


@pytest.mark.parametrize("family", FAMILIES)
def test_targets_are_every_language_model_linear_and_the_projector(tiny_lvlm_dirs, family):
    model = _model(tiny_lvlm_dirs, family)
    decoder = model.get_decoder()
    decoder_linears = {id(m) for m in decoder.modules() if isinstance(m, nn.Linear)}
    targets = _matched(model, target_modules(JudgeModelConfig(), model))
    modules = dict(model.named_modules())
    assert {id(modules[name]) for name in targets} >= decoder_linears and decoder_linears
    extra = targets - set(language_model_linears(model))
    assert extra == set(projector_linears(model))
    text_hidden = model.config.get_text_config().hidden_size
    for name in extra:  # the projector: outside the decoder, feeding the text hidden size, not a vision block
        assert ".layers." not in name and ".blocks." not in name and ".encoder." not in name
    if extra:
        assert any(modules[name].out_features == text_hidden for name in extra)
    assert modules.get("lm_head") is None or "lm_head" not in targets
    without = _matched(model, target_modules(JudgeModelConfig(train_merger=False), model))
    assert without == set(language_model_linears(model))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_vl_targets_are_the_ones_the_name_list_gave(tiny_lvlm_dirs, family):
    model = _model(tiny_lvlm_dirs, family)
    old = _matched(model, f"(?:{LANGUAGE_TARGETS})|(?:{MERGER_TARGETS})")
    assert _matched(model, target_modules(JudgeModelConfig(), model)) == old


def test_projector_of_each_layout_is_found_by_its_output_size(tiny_lvlm_dirs):
    expected = {"qwen2_5_vl": "visual.merger", "internvl": "multi_modal_projector",
                "llava_onevision": "multi_modal_projector", "smolvlm": "connector", "gemma3": None}
    for family, part in expected.items():
        names = projector_linears(_model(tiny_lvlm_dirs, family))
        if part is None:  # Gemma 3 projects with a bare weight matrix: nothing linear to adapt
            assert names == []
        else:
            assert names and all(f".{part}." in f".{name}" for name in names)


def test_custom_targets_win_and_the_lora_applies_to_a_non_qwen_family(tiny_lvlm_dirs):
    from peft import LoraConfig, get_peft_model

    model = _model(tiny_lvlm_dirs, "gemma4")
    assert target_modules(JudgeModelConfig(target_modules=r".*\.q_proj"), model) == r".*\.q_proj"
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=target_modules(JudgeModelConfig(), model)))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("embed_vision" in n for n in trainable) and any("language_model" in n for n in trainable)
    assert torch.isfinite(torch.tensor([p.float().sum().item() for p in peft_model.parameters()])).all()


def test_train_judge_on_a_non_qwen_family_writes_an_adapter_the_scorer_loads(tiny_lvlm_dirs, tmp_path):
    from safetensors.torch import load_file

    from emofeedback2.bench.judge import write_synthetic_judge_set
    from emofeedback2.cli import main
    from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm

    folder = tiny_lvlm_dirs["smolvlm"]  # GPT-2-style tokenizer: prefixes without the space, text model "text_model"
    data = write_synthetic_judge_set(tmp_path / "set", n_train=4, n_test=2, seed=1, size=32)
    out = tmp_path / "adapter"
    torch.set_num_threads(1)
    assert main(["train-judge", "--data", str(data), "--model", str(folder), "--out", str(out), "--max-steps", "2",
                 "--set", "optim.batch_size=2", "--set", "model.device=cpu", "--set", "model.dtype=float32",
                 "--set", "optim.lr=0.05", "--set", "progress=false"]) == 0
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(".text_model." in k for k in weights) and any(".connector." in k for k in weights)
    images = [torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    base = load_lvlm(LVLMConfig(model=str(folder), device="cpu", dtype="float32")).score_details(torch.stack(images))
    tuned = load_lvlm(LVLMConfig(model=str(folder), device="cpu", dtype="float32", adapter=str(out)))
    after = tuned.score_details(torch.stack(images))
    assert (after.valence - base.valence).abs().max() > 1e-4 or (after.arousal - base.arousal).abs().max() > 1e-4

"""The judge's soft-label objective: targets, and that training reads exactly what the scorer reads."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, LVLMScorer, load_lvlm
from emofeedback2.training.judge.config import JudgeTrainConfig
from emofeedback2.training.judge.soft_label_objective import (
    digit_to_va,
    readout_logits,
    soft_digit_targets,
    soft_label_loss,
    va_to_digit,
)
from emofeedback2.training.judge.trainer import add_judge_lora


def test_digit_mapping_is_the_scorers_and_inverts():
    values = torch.tensor([-3.0, -1.5, 0.0, 0.75, 3.0])
    assert va_to_digit(values).tolist() == pytest.approx([1.0, 3.0, 5.0, 6.0, 9.0])
    assert digit_to_va(va_to_digit(values)).tolist() == pytest.approx(values.tolist())


def test_soft_targets_are_distributions_centred_on_the_label():
    labels = torch.tensor([0.0, 0.75, -1.2, 3.0])
    target = soft_digit_targets(labels, sigma=0.7)
    assert target.shape == (4, 9)
    assert target.sum(-1).tolist() == pytest.approx([1.0] * 4)
    assert target.argmax(-1).tolist() == [4, 5, 2, 8]  # digits 5, 6, 3(.4) and 9
    expected = (target * torch.arange(1.0, 10.0)).sum(-1)
    assert expected.tolist() == pytest.approx(va_to_digit(labels).tolist(), abs=1e-5)  # the ends too
    narrow = soft_digit_targets(labels, sigma=0.2)
    assert (narrow.max(-1).values[:3] > target.max(-1).values[:3]).all()  # smaller sigma = sharper
    assert narrow[3, -1] == target[3, -1] == pytest.approx(1.0)  # a label at the end is one-hot whatever sigma
    with pytest.raises(ValueError, match="sigma"):
        soft_digit_targets(labels, sigma=0.0)


def test_loss_is_minimal_at_the_soft_target():
    from emofeedback2.training.judge.soft_label_objective import ReadoutLogits

    labels = torch.tensor([[1.0, -2.0]])
    target = soft_digit_targets(labels, 0.7)
    at_target = ReadoutLogits(digits=torch.log(target.clamp_min(1e-30)), log_mass=torch.zeros(1, 2))
    uniform = ReadoutLogits(digits=torch.zeros(1, 2, 9), log_mass=torch.zeros(1, 2))
    best = soft_label_loss(at_target, labels, 0.7)
    assert best.loss < soft_label_loss(uniform, labels, 0.7).loss
    assert best.mae == pytest.approx(0.0, abs=1e-5)  # the target's mean is the label


def _images():
    return [Image.new("RGB", (56, 56), (v, 90, 255 - v)) for v in (10, 120, 240)]


@pytest.mark.parametrize("share_prefix", [True, False])
def test_training_readout_equals_the_scorers_reading(tiny_lvlm_dir, one_thread, share_prefix):
    """train == read: the expected value of the trained distribution is the scorer's reading."""
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32", share_prefix=share_prefix))
    config = JudgeTrainConfig()
    config.model.pretrained = str(tiny_lvlm_dir)
    peft_model = add_judge_lora(scorer.model, config)
    with torch.no_grad():  # make the LoRA non-zero so the adapter's path is exercised
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    trained = LVLMScorer(peft_model, scorer.processor, scorer.config, device=scorer.device, dtype=scorer.dtype)
    images = _images()
    with torch.no_grad():
        readout = readout_logits(trained, images)
    details = trained.score_details(images)
    assert readout.expected_va()[:, 0].tolist() == pytest.approx(details.valence.tolist(), abs=1e-5)
    assert readout.expected_va()[:, 1].tolist() == pytest.approx(details.arousal.tolist(), abs=1e-5)
    assert torch.exp(readout.log_mass[:, 0]).tolist() == pytest.approx(details.digit_mass_valence.tolist(), abs=1e-5)


def test_gradients_reach_language_model_and_merger_lora(tiny_lvlm_dir, one_thread):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))
    config = JudgeTrainConfig()
    peft_model = add_judge_lora(scorer.model, config)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("language_model" in n for n in names) and any("visual.merger" in n for n in names)
    assert not any("visual.blocks" in n for n in names)  # the vision tower itself stays frozen
    trained = LVLMScorer(peft_model, scorer.processor, scorer.config, device=scorer.device, dtype=scorer.dtype)
    loss = soft_label_loss(readout_logits(trained, _images()), torch.tensor([[2.0, -2.0]] * 3), 0.7).loss
    loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    # LoRA B starts at zero, so A has no gradient yet; B must have one in both parts
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "merger" in n and "lora_B" in n)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "language_model" in n and "lora_B" in n)

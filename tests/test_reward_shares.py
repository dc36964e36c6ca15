"""Reward normalisation: one rule for all terms, so the weights set each term's share of the advantage."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.training.generator.config import RewardSpec, TrainConfig
from emofeedback2.training.generator.rewards import build_reward
from emofeedback2.training.generator.trainer import GRPOTrainer
from test_training_cli import _tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(pipeline_dir, lvlm_dir, clip_dir, out, weights, normalize="group") -> GRPOTrainer:
    c = TrainConfig()
    c.model.pretrained = str(pipeline_dir)
    c.model.lora_rank, c.model.lora_alpha, c.model.adapter_hidden = 2, 2.0, 8
    c.sampling.steps, c.sampling.resolution, c.sampling.guidance_scale = 2, 32, 1.0
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size = 4, 2, 4
    # the random tiny judge puts little mass on the digits: keep its readings (flooring them all would leave
    # the emotion term no spread, and no share)
    c.rewards = [RewardSpec(kind="lvlm", path=str(lvlm_dir), weight=weights[0], normalize=normalize,
                            low_digit_mass="keep"),
                 RewardSpec(kind="clip_quality", path=str(clip_dir), weight=weights[1], normalize=normalize)]
    c.output_dir, c.device, c.progress, c.reward_workers, c.max_steps = str(out), "cpu", False, 0, 1
    return GRPOTrainer(c, log=False)


def test_emotion_share_exceeds_quality_share_with_weights_1_and_half(tiny_pipeline_dir, tiny_lvlm_dir, tmp_path):
    clip = _tiny_clip(tmp_path / "clip")
    m = _trainer(tiny_pipeline_dir, tiny_lvlm_dir, clip, tmp_path / "a", (1.0, 0.5)).train_step()
    emotion, quality = m["reward_share/lvlm_va"], m["reward_share/clip_quality"]
    assert emotion + quality == pytest.approx(1.0)
    assert emotion > quality  # ~0.8 vs ~0.2 on the common scale
    flipped = _trainer(tiny_pipeline_dir, tiny_lvlm_dir, clip, tmp_path / "b", (0.5, 1.0)).train_step()
    assert flipped["reward_share/clip_quality"] > flipped["reward_share/lvlm_va"]  # the weights decide


def test_raw_scales_let_the_wider_term_dominate_and_group_rule_fixes_it():
    # the shipped-recipe situation: LVLM reward spread ~0.05, CLIP score spread ~0.5 within groups
    g = torch.Generator().manual_seed(0)
    gids = torch.arange(8).repeat_interleave(4)
    parts = {"lvlm_va": 0.6 + 0.05 * torch.randn(32, generator=g), "clip_quality": 0.2 + 0.5 * torch.randn(32, generator=g)}
    specs = [RewardSpec(kind="color", weight=1.0), RewardSpec(kind="brightness", weight=0.5)]
    for s, rule in ((specs, "none"), (specs, "group")):
        for spec in s:
            spec.normalize = rule
        reward = build_reward(s)
        reward.names = ["lvlm_va", "clip_quality"]
        shares = reward.advantage_shares(parts, gids)
        if rule == "none":
            assert shares["clip_quality"] > 0.9  # raw: quality sets the advantage
        else:
            assert shares["lvlm_va"] == pytest.approx(0.8, abs=0.02)  # 1 / (1 + 0.5^2)

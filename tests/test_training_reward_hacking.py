"""The LVLM reward closes the judge-hijack hole: readings with low digit mass earn nothing, and are counted."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.engines.judge.scoring import LOW_DIGIT_MASS, EmotionReading
from emofeedback2.training.generator.config import ConfigError, derive
from emofeedback2.training.generator.rewards import CompositeReward, FlaggedReward, LVLMVAReward
from emofeedback2.training.generator.trainer import GRPOTrainer

from test_training_trainer import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class HijackedJudge:
    """A judge double: every other image 'hijacks' it (little probability on the digits), yet reads as on-target."""

    name, is_heuristic = "hijacked-judge", False

    def __init__(self, low_mass: float = 0.1):
        self.low_mass = low_mass
        self.calls = 0

    def score(self, images, *, analysis=False):
        self.calls += 1
        return [EmotionReading(valence=2.0, arousal=2.0, digit_mass=self.low_mass if i % 2 else 0.97)
                for i in range(images.shape[0])]


def test_low_digit_mass_readings_get_the_lowest_reward_and_are_flagged():
    targets = torch.full((4, 2), 2.0)
    images = torch.rand(4, 8, 8, 3)
    floored = LVLMVAReward(HijackedJudge())(images, ["p"] * 4, targets)
    assert isinstance(floored, FlaggedReward)
    assert floored.values.tolist() == [1.0, 0.0, 1.0, 0.0]  # the hijacked readings read on-target, earn 0
    assert floored.flags["low_digit_mass"].tolist() == [False, True, False, True]
    kept = LVLMVAReward(HijackedJudge(), low_digit_mass="keep")(images, ["p"] * 4, targets)
    assert kept.values.tolist() == [1.0] * 4 and int(kept.flags["low_digit_mass"].sum()) == 2
    at_threshold = LVLMVAReward(HijackedJudge(low_mass=LOW_DIGIT_MASS))(images, ["p"] * 4, targets)
    assert not at_threshold.flags["low_digit_mass"].any()  # below the threshold, not at it


def test_flags_ride_beside_the_values_and_stay_out_of_the_combined_reward():
    reward = CompositeReward([LVLMVAReward(HijackedJudge())], [1.0], "none")
    parts = reward.score_parts(torch.rand(4, 8, 8, 3), ["p"] * 4, torch.full((4, 2), 2.0))
    assert set(parts) == {"lvlm_va", "lvlm_va/low_digit_mass"}
    assert torch.equal(reward.combine(parts), parts["lvlm_va"])


def test_a_training_step_counts_and_logs_the_flagged_readings(tiny_pipeline_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path)
    judge = HijackedJudge()
    trainer = GRPOTrainer(c, reward=CompositeReward([LVLMVAReward(judge)], [1.0]), log=False)
    collected = []
    collect = trainer.runner.collect
    trainer.runner.collect = lambda: collected.append(collect()) or collected[-1]
    metrics = trainer.train_step()
    samples = derive(c).samples_per_step
    assert judge.calls == 1  # reward_schedule = "step": one judge call for the step's images
    values = collected[0]["lvlm_va"]
    assert torch.equal(values[1::2], torch.zeros(samples // 2)) and (values[0::2] > 0).all()
    assert metrics["reward_flags/lvlm_va/low_digit_mass"] == samples / 2
    assert metrics["reward/lvlm_va"] == pytest.approx(float(values.mean()))
    assert "reward/lvlm_va/low_digit_mass" not in metrics


def test_the_rule_is_a_validated_config_field():
    from emofeedback2.training.generator.config import RewardSpec, TrainConfig, validate

    c = TrainConfig()
    c.rewards = [RewardSpec(kind="lvlm", path="judge", low_digit_mass="ignore")]
    with pytest.raises(ConfigError, match="low_digit_mass must be 'floor' or 'keep'"):
        validate(c)

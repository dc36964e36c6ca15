"""Held-out check: held-out prompts, base images from the disabled adapters, separate figures, a quality judge
that is not trained on, the unguided policy under CFG-free training, a warning on reward hacking."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.training.generator.heldout import HeldoutMonitor, hacking_warning, reward_roles
from emofeedback2.training.generator.rewards import BrightnessReward, CompositeReward
from emofeedback2.training.generator.trainer import GRPOTrainer

from test_training_trainer import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Darkness:
    """A stand-in quality reward that prefers dark images (so brightening 'hacks' the emotion reward)."""

    name = "darkness"
    role = "quality"

    def __call__(self, images, prompts, targets):
        return 1.0 - images.float().mean(dim=(1, 2, 3))


def _trainer(pipeline_dir, out, every=1):
    c = tiny_config(pipeline_dir, out)
    c.heldout.every = every
    c.heldout.num_prompts = 2
    c.heldout.targets = [[3.0, 0.0]]  # brightness reward: brighter is better for valence +3
    c.heldout.steps = 2
    reward = CompositeReward([BrightnessReward(), Darkness()], [1.0, 0.0], ["none", "none"])
    return GRPOTrainer(c, reward=reward, log=False)


def test_hacking_warning_fires_only_when_emotion_rises_and_quality_falls():
    prev = {"emotion": 0.5, "quality": 0.5}
    assert hacking_warning(prev, {"emotion": 0.6, "quality": 0.4}) is not None
    assert hacking_warning(prev, {"emotion": 0.6, "quality": 0.6}) is None
    assert hacking_warning(prev, {"emotion": 0.4, "quality": 0.4}) is None
    assert hacking_warning(prev, {"emotion": 0.6, "quality": 0.45}, tolerance=0.08) is None
    assert hacking_warning({"emotion": 0.5, "quality": None}, {"emotion": 0.9, "quality": None}) is None


def test_reward_roles_by_kind_config_or_attribute():
    reward = CompositeReward([BrightnessReward(), Darkness()], [1.0, 0.0], ["none", "none"])
    assert reward_roles(reward, []) == ["emotion", "quality"]


def test_brightened_images_raise_emotion_lower_quality_move_away_from_base_and_warn(tiny_pipeline_dir, tmp_path):
    trainer = _trainer(tiny_pipeline_dir, tmp_path)
    monitor = trainer.heldout
    assert isinstance(monitor, HeldoutMonitor) and len(monitor.set.prompts) == 2
    first = monitor.run(0)
    assert first["distance_to_base"] == 0.0  # fresh LoRA (B = 0) and identity adapter: the base model
    again = monitor.run(1)  # control: nothing changed, deterministic sampler → same figures, no warning
    assert again["emotion"] == first["emotion"] and again["quality"] == first["quality"]
    assert again["hacking_warning"] == 0.0
    # the "policy" now brightens every image (a shift of the VAE's output bias, same for all seeds)
    with torch.no_grad():
        trainer.pipe.vae.decoder.conv_out.bias += 0.6
    hacked = monitor.run(2)
    assert hacked["emotion"] > again["emotion"] and hacked["quality"] < again["quality"]
    assert hacked["distance_to_base"] > 0.01
    assert hacked["hacking_warning"] == 1.0 and "reward hacking" in monitor.warnings[-1]


def test_base_images_are_made_with_lora_and_adapter_disabled(tiny_pipeline_dir, tmp_path):
    trainer = _trainer(tiny_pipeline_dir, tmp_path)
    base_before = trainer.heldout._images(base=True)
    with torch.no_grad():  # move the trained weights far from the base
        for name, p in trainer.trainable:
            p.add_(0.5 * torch.randn_like(p))
    assert torch.equal(trainer.heldout._images(base=True), base_before)
    record = trainer.heldout.run(0)
    assert record["distance_to_base"] > 0.0


def test_training_runs_the_check_every_n_steps(tiny_pipeline_dir, tmp_path):
    trainer = _trainer(tiny_pipeline_dir, tmp_path, every=2)
    trainer.config.max_steps = 2
    trainer.config.export_at_end = False
    trainer.train()
    assert [r["step"] for r in trainer.heldout.records] == [0.0, 2.0]
    assert all(set(r) >= {"emotion", "quality", "distance_to_base", "heldout/brightness"} for r in trainer.heldout.records)


def test_shipped_heldout_prompts_are_not_training_prompts_and_are_the_default(tiny_pipeline_dir, tmp_path):
    from emofeedback2.training.generator.data import DEFAULT_PROMPTS, load_prompts
    from emofeedback2.training.generator.heldout import HELDOUT_PROMPTS

    heldout, training = load_prompts(HELDOUT_PROMPTS), load_prompts(DEFAULT_PROMPTS)
    assert len(heldout) >= 8 and not set(heldout) & set(training)
    trainer = _trainer(tiny_pipeline_dir, tmp_path)
    assert trainer.heldout.set.prompts == heldout[:2]  # 2 prompts x 1 target
    assert trainer.heldout.notes == []
    # a held-out file that repeats training prompts is named
    c = tiny_config(tiny_pipeline_dir, tmp_path / "overlap")
    c.heldout.every, c.heldout.prompts_file = 1, str(DEFAULT_PROMPTS)
    assert "are training prompts too" in GRPOTrainer(c, log=False).heldout.notes[0]


def test_a_heldout_quality_judge_that_is_not_a_training_reward(tiny_pipeline_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path)
    c.heldout.every, c.heldout.num_prompts, c.heldout.targets, c.heldout.steps = 1, 2, [[3.0, 0.0]], 2
    c.heldout.quality = {"kind": "brightness"}  # stands in for PickScore: scored on held-out images only
    trainer = GRPOTrainer(c, log=False)
    assert trainer.reward.names == ["color_va"]  # never trained on
    record = trainer.heldout.run(0)
    assert record["quality"] == record["heldout/quality_judge/brightness"]
    assert 0.0 < record["quality"] <= 1.0 and "heldout/color_va" in record


def test_with_cfg_free_training_the_check_judges_the_unguided_policy_and_reports_the_guided_one(
        tiny_pipeline_dirs, tmp_path):
    c = tiny_config(tiny_pipeline_dirs["sdxl"], tmp_path)
    c.sampling.guidance_scale, c.sampling.cfg_free_training = 3.0, True
    c.heldout.every, c.heldout.num_prompts, c.heldout.targets, c.heldout.steps = 1, 1, [[2.0, 2.0]], 2
    trainer = GRPOTrainer(c, log=False)
    seen = []
    forward = trainer.raw_net.forward

    def spy(latents, timestep, cond, va, guidance_scale=1.0, adapter_strength=1.0):
        seen.append(guidance_scale)
        return forward(latents, timestep, cond, va, guidance_scale, adapter_strength)

    trainer.raw_net.forward = spy
    record = trainer.heldout.run(0)
    assert record["guidance"] == 1.0 and set(seen) == {1.0, 3.0}
    assert {"emotion", "distance_to_base", "emotion@guided", "distance_to_base@guided"} <= set(record)

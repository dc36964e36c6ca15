"""Held-out check: base images from the disabled adapters, separate figures, a warning on reward hacking."""

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

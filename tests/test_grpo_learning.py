"""Learning test: GRPO on a tiny UNet raises a reward measured with a deterministic sampler; a control does not.

Setup (CPU, ~1-3 min): the tiny random SD1.5-like UNet + peft LoRA (attention + conv_out) + the
emotion adapter; targets drawn from a small V-A table in the pleasant/excited quadrant; reward =
brightness toward the target valence, through the same reward interface as the colour/LVLM rewards.
The tiny random VAE's GroupNorms make every decoded image the same grey (no reward spread, nothing
to learn from), so the test decodes with a fixed linear latent→RGB map — the kind ComfyUI uses for
latent previews. Before/after rewards come from the deterministic sampler on fixed seeds and targets
(a paired design); the treatment must gain many paired standard errors, the control run (advantages
shuffled between samples, everything else identical) must not.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from emofeedback2.training.config import RewardSpec, TrainConfig
from emofeedback2.training.trainer import GRPOTrainer

# single-threaded: tiny models run fastest so on a shared machine
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# SD1.5 latent → RGB preview factors (4 latent channels → 3 colours)
LATENT_RGB = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
TARGETS = [(2.5, 2.5), (3.0, 2.0), (2.0, 3.0), (3.0, 3.0)]


class LinearPreviewDecoder(nn.Module):
    """A fixed linear latent→RGB decoder with the AutoencoderKL attributes the policy uses."""

    def __init__(self, gain: float = 0.1, scaling_factor: float = 0.18215):
        super().__init__()
        self.register_buffer("factors", torch.tensor(LATENT_RGB) * gain)
        self.config = SimpleNamespace(scaling_factor=scaling_factor, shift_factor=None, block_out_channels=[32, 64])

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        rgb = torch.einsum("bchw,cr->brhw", z.float() * self.config.scaling_factor, self.factors)
        return (nn.functional.interpolate(rgb, scale_factor=2, mode="nearest"),)


def _run(pipeline_dir, tmp_path, shuffle: bool, steps: int = 15):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    pipe.vae = LinearPreviewDecoder()
    tmp_path.mkdir(parents=True, exist_ok=True)
    table = tmp_path / "targets.csv"
    table.write_text("valence,arousal\n" + "".join(f"{v},{a}\n" for v, a in TARGETS))
    c = TrainConfig()
    c.model.pretrained = str(pipeline_dir)
    c.model.lora_rank, c.model.lora_alpha, c.model.adapter_hidden = 4, 4.0, 32
    c.model.lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "conv_out"]
    c.sampling.resolution, c.sampling.steps, c.sampling.eval_steps, c.sampling.guidance_scale = 32, 4, 4, 1.0
    c.data.targets = str(table)
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size, c.grpo.updates_per_step = 8, 2, 8, 2
    c.grpo.clip_range, c.grpo.kl_beta, c.grpo.shuffle_advantages = 5e-2, 0.0, shuffle
    c.optim.lr = 3e-2
    c.rewards = [RewardSpec(kind="brightness")]
    c.output_dir, c.device, c.progress, c.max_steps, c.reward_workers = str(tmp_path / "run"), "cpu", False, steps, 1
    trainer = GRPOTrainer(c, pipe=pipe, log=False)
    n = 32
    targets = torch.tensor(TARGETS * (n // len(TARGETS)), dtype=torch.float32)
    prompts = [trainer.sampler.prompts[i % len(trainer.sampler.prompts)] for i in range(n)]
    seeds = list(range(10_000, 10_000 + n))
    before = trainer.evaluate(prompts, targets, seeds)["total"]
    again = trainer.evaluate(prompts, targets, seeds)["total"]
    assert torch.equal(before, again), "the evaluation sampler must be deterministic"
    for _ in range(steps):
        trainer.train_step()
    after = trainer.evaluate(prompts, targets, seeds)["total"]
    diff = after - before
    return float(diff.mean()), float(diff.std() / n**0.5)



def test_grpo_raises_the_reward_and_a_shuffled_advantage_control_does_not(tiny_pipeline_dir, tmp_path):
    gain, se = _run(tiny_pipeline_dir, tmp_path / "treatment", shuffle=False)
    control_gain, control_se = _run(tiny_pipeline_dir, tmp_path / "control", shuffle=True)
    print(f"treatment gain {gain:.5f} (paired se {se:.5f}); control gain {control_gain:.5f} (se {control_se:.5f})")
    assert gain > 6 * se and gain > 0.005, f"GRPO did not raise the reward: gain {gain:.5f}, se {se:.5f}"
    assert control_gain < gain / 3, f"control improved too: {control_gain:.5f} vs treatment {gain:.5f}"

"""Learning test on a guidance-distilled flow family: GRPO raises the reward on a tiny Z-Image(-Turbo)-like
pipeline (flow SDE rollouts, no negative branch, Qwen3 captions from the prompt cache, LoRA + emotion
adapter), measured with the deterministic sampler; a shuffled-advantage control does not.

The statistics are those of tests/test_grpo_learning.py (tests/learning_stats.py): ``RUNS``
independent runs per arm, one number each (mean gain of the deterministic-sampler reward on fixed
evaluation seeds), compared against the run-to-run spread; every seed derives from
``EMOFEEDBACK2_SEED_BASE``. The tiny random VAE decodes everything to one grey (no reward spread), so
images come from a fixed linear latent→RGB map, as ComfyUI's latent previews do.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from emofeedback2.training.generator.config import RewardSpec, TrainConfig
from emofeedback2.training.generator.trainer import GRPOTrainer
from learning_stats import RunComparison, reward_gain, seed_base

pytestmark = [pytest.mark.learning, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ARCH = "z_image"
# latent → RGB preview factors for the 4 tiny latent channels
LATENT_RGB = [[0.35, 0.23, 0.32], [0.33, 0.50, 0.24], [-0.28, 0.18, 0.27], [-0.21, -0.26, -0.72]]
TARGETS = [(2.5, 2.5), (3.0, 2.0), (2.0, 3.0), (3.0, 3.0)]
RUNS = 6
STEPS = 6
EVAL_IMAGES = 16
RESOLUTION = 16  # 8×8 latents: 16 image tokens


class LinearPreviewDecoder(nn.Module):
    """A fixed linear latent→RGB decoder with the AutoencoderKL attributes the Z-Image family reads."""

    def __init__(self, gain: float = 0.5):
        super().__init__()
        self.register_buffer("factors", torch.tensor(LATENT_RGB) * gain)
        self.config = SimpleNamespace(scaling_factor=0.3611, shift_factor=0.1159, block_out_channels=[32, 64])

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def decode(self, z: torch.Tensor, return_dict: bool = False):
        latents = (z.float() - self.config.shift_factor) * self.config.scaling_factor
        rgb = torch.einsum("bchw,cr->brhw", latents, self.factors)
        return (nn.functional.interpolate(rgb, scale_factor=2, mode="nearest"),)


def run_gain(pipeline_dir, out_dir, seed: int, shuffle: bool, steps: int = STEPS, eval_images: int = EVAL_IMAGES) -> float:
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    pipe.vae = LinearPreviewDecoder()
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "targets.csv"
    table.write_text("valence,arousal\n" + "".join(f"{v},{a}\n" for v, a in TARGETS))
    c = TrainConfig()
    c.seed = seed
    c.model.pretrained = str(pipeline_dir)
    c.model.lora_rank, c.model.lora_alpha, c.model.adapter_hidden = 4, 4.0, 32
    c.model.lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]
    c.sampling.resolution, c.sampling.steps, c.sampling.eval_steps = RESOLUTION, 4, 4
    c.sampling.guidance_scale = 1.0  # Turbo: distilled to run without guidance
    c.data.targets = str(table)
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size, c.grpo.updates_per_step = 8, 4, 16, 2
    c.grpo.clip_range, c.grpo.kl_beta, c.grpo.shuffle_advantages = 5e-2, 0.0, shuffle
    c.grpo.train_window = [0, 3]  # the last step ends on sigma 0
    c.optim.lr = 1e-2
    c.rewards = [RewardSpec(kind="brightness")]
    c.output_dir, c.device, c.progress, c.max_steps, c.reward_workers = str(out_dir / "run"), "cpu", False, steps, 0
    trainer = GRPOTrainer(c, pipe=pipe, log=False)
    assert trainer.prompt_cache is not None and trainer.raw_net.guidance_mode == "cfg"
    return reward_gain(trainer, TARGETS, steps, eval_images, seed)


def test_evaluation_sampler_is_deterministic(tiny_pipeline_dirs, tmp_path):
    assert run_gain(tiny_pipeline_dirs[ARCH], tmp_path, seed=seed_base(), shuffle=False, steps=0, eval_images=4) == 0.0


def test_grpo_on_z_image_raises_the_reward_and_a_shuffled_control_does_not(tiny_pipeline_dirs, tmp_path):
    base = seed_base()
    folder = tiny_pipeline_dirs[ARCH]
    treatment = tuple(run_gain(folder, tmp_path / f"t{i}", base + i, shuffle=False) for i in range(RUNS))
    control = tuple(run_gain(folder, tmp_path / f"c{i}", base + i, shuffle=True) for i in range(RUNS))
    cmp = RunComparison(treatment, control)
    print(f"{ARCH} seed base {base}: {cmp.summary()}")
    cmp.assert_learns()

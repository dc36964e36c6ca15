"""Learning test: GRPO on a tiny UNet raises a reward measured with a deterministic sampler; a control does not.

Setup (CPU): the tiny random SD1.5-like UNet + peft LoRA (attention + conv_out) + the emotion
adapter; targets drawn from a small V-A table in the pleasant/excited quadrant; reward = brightness
toward the target valence, through the same reward interface as the colour/LVLM rewards. The tiny
random VAE's GroupNorms make every decoded image the same grey (no reward spread, nothing to learn
from), so the test decodes with a fixed linear latent→RGB map — the kind ComfyUI uses for latent
previews.

Statistics are run-level (tests/learning_stats.py): ``RUNS`` independent treatment runs and as many
control runs (advantages shuffled between samples, everything else identical), each giving ONE
number — the mean gain of the deterministic-sampler reward on fixed evaluation seeds. The verdict
compares the two run means against the run-to-run spread (Welch SE), never the spread over images
inside one run. Every seed derives from ``EMOFEEDBACK2_SEED_BASE``; the test must pass for any base.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from emofeedback2.training.generator.config import RewardSpec, TrainConfig
from emofeedback2.training.generator.trainer import GRPOTrainer
from learning_stats import RunComparison, reward_gain, seed_base

# single-threaded: tiny models run fastest so on a shared machine
pytestmark = [pytest.mark.learning, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# SD1.5 latent → RGB preview factors (4 latent channels → 3 colours)
LATENT_RGB = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]]
TARGETS = [(2.5, 2.5), (3.0, 2.0), (2.0, 3.0), (3.0, 3.0)]
RUNS = 8  # independent runs per arm: treatment gains vary 0.01-0.17 run to run (5 runs gave t_diff 2.4 at base 1000)
STEPS = 8  # GRPO steps per run
EVAL_IMAGES = 16
# with 4 DDIM steps the step std is 0.72, 0.53, 0.045, 0.02: the last two steps' log-prob gradients
# are 15-35x larger and almost pure noise (they barely move the image), so train the first two
TRAIN_WINDOW = [0, 2]
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv_out"]
TRAIN_ADAPTER = True
RESOLUTION = 16  # 8x8 latents: a sample costs less, its reward spread per pixel-mean is larger
GROUPS = 4  # groups of 8 per step
BATCH = 16
UPDATES = 2


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


def run_gain(pipeline_dir, out_dir, seed: int, shuffle: bool, steps: int = STEPS, lr: float = 1e-2,
             eval_images: int = EVAL_IMAGES) -> float:
    """One independent run: mean deterministic-sampler reward gain on fixed seeds after ``steps`` GRPO steps."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    pipe.vae = LinearPreviewDecoder()
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "targets.csv"
    table.write_text("valence,arousal\n" + "".join(f"{v},{a}\n" for v, a in TARGETS))
    c = TrainConfig()
    c.seed = seed  # LoRA init, prompts, targets and every rollout's noise
    c.model.pretrained = str(pipeline_dir)
    c.model.lora_rank, c.model.lora_alpha, c.model.adapter_hidden = 4, 4.0, 32
    c.model.lora_targets = list(LORA_TARGETS)
    c.model.train_adapter = TRAIN_ADAPTER
    c.sampling.resolution, c.sampling.steps, c.sampling.eval_steps, c.sampling.guidance_scale = RESOLUTION, 4, 4, 1.0
    c.data.targets = str(table)
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size, c.grpo.updates_per_step = 8, GROUPS, BATCH, UPDATES
    c.grpo.clip_range, c.grpo.kl_beta, c.grpo.shuffle_advantages = 5e-2, 0.0, shuffle
    c.grpo.train_window = list(TRAIN_WINDOW)
    c.optim.lr = lr
    c.rewards = [RewardSpec(kind="brightness")]
    c.output_dir, c.device, c.progress, c.max_steps, c.reward_workers = str(out_dir / "run"), "cpu", False, steps, 0
    trainer = GRPOTrainer(c, pipe=pipe, log=False)
    return reward_gain(trainer, TARGETS, steps, eval_images, seed)


def test_evaluation_sampler_is_deterministic(tiny_pipeline_dir, tmp_path):
    """The before/after design needs the evaluation sampler to give the same images for the same seeds."""
    gain = run_gain(tiny_pipeline_dir, tmp_path, seed=seed_base(), shuffle=False, steps=0, eval_images=4)
    assert gain == 0.0


def test_grpo_raises_the_reward_and_a_shuffled_advantage_control_does_not(tiny_pipeline_dir, tmp_path):
    base = seed_base()
    # run i of both arms starts from the same seed (same LoRA init, prompts, noise); arms differ only
    # in whether advantages belong to the samples they were computed for
    treatment = tuple(run_gain(tiny_pipeline_dir, tmp_path / f"t{i}", base + i, shuffle=False) for i in range(RUNS))
    control = tuple(run_gain(tiny_pipeline_dir, tmp_path / f"c{i}", base + i, shuffle=True) for i in range(RUNS))
    cmp = RunComparison(treatment, control)
    print(f"seed base {base}: {cmp.summary()}")
    cmp.assert_learns()

"""Every shipped recipe trains: two steps of each config in training/configs/ with its options as shipped.

The options each recipe switches on run exactly as set — the prompt cache, the reward schedule, reward
offloading and images per judge pass, the judge's pixel cap and low-digit-mass rule, CFG-free training, the
held-out check, GRPO-Guard, the EMA, the KL and the export at the end (the test asserts each against the file).
What a tiny CPU run cannot take is swapped, each for a reason:

- the models: tiny local pipelines of the recipe's architecture, the tiny Qwen2.5-VL judge, a tiny CLIP for
  PickScore (the only swap a GPU run makes besides the sizes below);
- the sizes (:data:`TINY_SCALE`): 32 px (the tiny pipelines are random at any size), 3 sampling and 2
  evaluation steps, one group per step and one held-out prompt — the recipes' 10/40 steps and 16-32 images
  per step at 512-1024 px are hours of tiny-model arithmetic on two CPU cores, not more coverage;
- without CUDA: the bitsandbytes 8-bit judge (CUDA only) loads unquantised, and fp16 base weights run in
  float32 (CPU fp16 math is ~8x slower here, and accelerate makes its fp16 grad scaler on GPUs only; the
  scaler path has its own CPU test in test_training_precision.py). A bitsandbytes 8-bit base (FLUX.1-dev)
  loads as torchao's int8 weight-only base instead, which runs on the CPU, so the QLoRA path still runs; a
  4-bit base (Qwen-Image) loads unquantised (peft has no LoRA layer for torchao's 4-bit layouts; the
  4-bit path is bitsandbytes', CUDA only).

The step-distilled FLUX.2 [klein] keeps its own 4 sampling steps, so the run trains all of them but the
last (which lands on sigma = 0), as the recipe does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emofeedback2.training.generator.config import load_config
from emofeedback2.training.generator.trainer import GRPOTrainer
from test_training_cli import _tiny_clip

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
# the training recipes (accelerate_*.yaml are accelerate launch configs)
RECIPES = sorted(p for p in CONFIGS.iterdir() if p.suffix in (".toml", ".yaml", ".yml")
                 and not p.name.startswith("accelerate_"))
ARCH = {"sd15_color_cpu.toml": "sd15", "sdxl_color_lvlm.yaml": "sdxl", "sd35_medium_lvlm.toml": "sd3",
        "flux1_dev_lvlm.toml": "flux", "flux2_klein_4b_lvlm.toml": "flux2_klein", "qwen_image_lvlm.toml": "qwen_image",
        "z_image_turbo_lvlm.toml": "z_image"}


def test_every_shipped_recipe_is_covered():
    assert {p.name for p in RECIPES} == set(ARCH), "add the new recipe to ARCH (its tiny pipeline) in this test"


TINY_SCALE = {"sampling.resolution": 32, "sampling.steps": 3, "sampling.eval_steps": 2, "grpo.groups_per_step": 1,
              "heldout.num_prompts": 1}
#: the distilled model's own step count (its sigmas are what it was distilled on)
OWN_STEPS = {"flux2_klein_4b_lvlm.toml": {"sampling.steps": 4, "sampling.eval_steps": 4}}
#: timesteps trained per sample at those step counts, by hand: int(T·f), at most the window [0, T−1]'s T−1 steps
#: (fraction 1.0: 2 of 3; 0.6: int(1.8) = 1 of 3; Klein 0.75: int(3.0) = 3 of 4)
TRAINED_STEPS = {"sd15_color_cpu.toml": 2, "sdxl_color_lvlm.yaml": 2, "sd35_medium_lvlm.toml": 1, "flux1_dev_lvlm.toml": 1,
                 "flux2_klein_4b_lvlm.toml": 3, "qwen_image_lvlm.toml": 1, "z_image_turbo_lvlm.toml": 1}


def _tiny_run_of(recipe: Path, pipelines, lvlm_dir: Path, tmp_path: Path):
    config = load_config(recipe)
    for key, value in {**TINY_SCALE, **OWN_STEPS.get(recipe.name, {})}.items():
        section, name = key.split(".")
        setattr(getattr(config, section), name, value)
    config.model.pretrained = str(pipelines[ARCH[recipe.name]])
    for spec in config.rewards:
        if spec.kind == "lvlm":
            spec.path = str(lvlm_dir)
        elif spec.kind == "clip_quality":
            spec.path = str(_tiny_clip(tmp_path / "pickscore"))
    config.max_steps, config.output_dir, config.progress = 2, str(tmp_path / "run"), False
    if not torch.cuda.is_available():
        config.device = "cpu"
        if config.model.dtype == "float16":
            config.model.dtype = "float32"
        for spec in config.rewards:
            spec.quantization = "none"  # bitsandbytes runs on CUDA only
        if config.model.quantization == "8bit":  # the QLoRA path on the CPU: torchao's int8 weight-only base
            config.model.quantization_backend = "torchao"
        elif config.model.quantization != "none":
            config.model.quantization = "none"
    return config


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_a_shipped_recipe_trains_two_steps_with_its_options(recipe, tiny_pipeline_dirs, tiny_lvlm_dir, tmp_path):
    shipped = load_config(recipe)
    config = _tiny_run_of(recipe, tiny_pipeline_dirs, tiny_lvlm_dir, tmp_path)
    trainer = GRPOTrainer(config, log=False)
    history = trainer.train()
    assert len(history) == 2 and trainer.step == 2
    assert all(torch.isfinite(p).all() for _, p in trainer.trainable)
    # each option the recipe switches on was on in this run
    assert (trainer.prompt_cache is not None) == shipped.data.cache_prompt_embeddings
    assert trainer.pipe.text_encoder is None if shipped.data.cache_prompt_embeddings else trainer.pipe.text_encoder
    assert (trainer.ema is not None) == shipped.optim.ema
    # CFG-free training drops a negative branch; a guidance-distilled family has none to drop
    cfg_free = shipped.sampling.cfg_free_training and trainer.raw_net.guidance_mode == "cfg"
    assert trainer.train_guidance == (1.0 if cfg_free else shipped.sampling.guidance_scale)
    steps = config.sampling.steps
    assert trainer.derived.trained_timesteps == TRAINED_STEPS[recipe.name]
    assert trainer.update_phase.train_indices(np.random.default_rng(0))[-1] < steps - 1  # the last step: never
    if config.model.quantization != "none":  # the base was loaded quantised (torchao int8 on the CPU)
        assert any(hasattr(p, "qdata") for n, p in trainer._denoiser().named_parameters() if "lora_" not in n)
    assert trainer.config.reward_schedule == shipped.reward_schedule
    if shipped.grpo.kl_beta:  # the KL anchor really ran (it is only computed when kl_beta > 0)
        assert all(row["train/kl"] > 0 for row in history[1:]), [row.get("train/kl") for row in history]
    if shipped.heldout.every:
        assert trainer.heldout is not None and [r["step"] for r in trainer.heldout.records][:1] == [0.0]
    if shipped.grpo.ratio_norm == "grpo_guard":
        assert trainer.sample_step()[0][0].means is not None
    for spec, reward in zip(shipped.rewards, trainer.reward.rewards):
        if spec.kind == "lvlm":
            assert reward.scorer.config.offload_after_use == spec.offload
            assert reward.scorer.config.max_images_per_pass == spec.images_per_pass
            assert (reward.scorer.config.max_pixels or 0) == spec.max_pixels
            assert reward.low_digit_mass == spec.low_digit_mass
            assert "reward_flags/lvlm_va/low_digit_mass" in history[-1]
        if spec.kind == "clip_quality":
            assert reward.offload == spec.offload
    assert (Path(config.output_dir) / "checkpoints" / "latest").is_file()
    if shipped.export_at_end:
        assert (Path(config.output_dir) / "export").is_dir()

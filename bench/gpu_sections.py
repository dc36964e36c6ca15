"""The sections of ``emofeedback2 bench gpu`` (see :mod:`.gpu`): each takes the run's context and prints figures.

Every section runs the project's own code paths — the scorer's expected-value reading, the GRPO trainer
and its phases, the judge trainer — on models built from the real configs with random weights (or, with
``--tiny``, on the tiny models the tests use). Nothing is downloaded and nothing is timed in a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

#: the judge reads 1024² images whole: Qwen2.5-VL resizes to multiples of 28 px, so 1036² = 37² merged
#: patches = 1,369 image tokens per image (the default cap of 1280·28² would shrink them)
REAL_JUDGE_MAX_PIXELS = 37 * 37 * 28 * 28
REAL_IMAGE_SIDE = 1024
TINY_IMAGE_SIDE = 64
JUDGE_BATCH = 8


# --- the judge, built once -------------------------------------------------------------------------


def shared_judge(ctx) -> Any:
    """The judge of every section (the scorer's, the reward's, the one judge training wraps): built once."""
    if "judge" in ctx.shared:
        return ctx.shared["judge"]
    from . import scorer as scorer_bench

    if ctx.tiny:
        args = argparse.Namespace(real_size=None, family="qwen2_5_vl", device=str(ctx.device), dtype="float32",
                                  max_pixels=None)
    else:
        args = argparse.Namespace(real_size="qwen2.5-vl-7b", family="qwen2_5_vl", device=str(ctx.device),
                                  dtype="bfloat16", max_pixels=REAL_JUDGE_MAX_PIXELS)
    started = time.monotonic()
    judge, description = scorer_bench._build_scorer(args, ctx.workdir)
    ctx.emit("judge_model", description)
    ctx.emit("judge_build_seconds", time.monotonic() - started)
    ctx.shared["judge"] = judge
    return judge


def _image_tokens(judge, image) -> int:
    """Image tokens the judge's processor gives one image (merged patches for Qwen-VL)."""
    encoded = judge._encode([judge._chat(judge.prompts.question)], [image])
    grid = encoded.get("image_grid_thw")
    if grid is not None:
        merge = getattr(judge.processor.image_processor, "merge_size", 2)
        return int(grid[0].prod()) // (merge * merge)
    return int(encoded["input_ids"].shape[1])


# --- 1. the scorer ---------------------------------------------------------------------------------


def scorer_section(ctx) -> None:
    from . import scorer as scorer_bench

    judge = shared_judge(ctx)
    side = TINY_IMAGE_SIDE if ctx.tiny else REAL_IMAGE_SIDE
    images = scorer_bench._images(JUDGE_BATCH, side)
    repeats = 2 if ctx.tiny else 5
    ctx.emit("scorer_batch", f"{JUDGE_BATCH} images of {side}x{side}")
    ctx.emit("scorer_image_tokens_per_image", _image_tokens(judge, images[0]))
    paths = {"expected_value": lambda: judge.score_details(images),
             "prefill": lambda: scorer_bench._prefill(judge, images)}
    times = scorer_bench._interleaved_times(paths, repeats, ctx.sync)
    median = {name: statistics.median(t) for name, t in times.items()}
    peaks = {}
    for name, fn in paths.items():  # an untimed call per path for its peak
        ctx.reset_peak()
        fn()
        peaks[name] = ctx.peak_gib()
    ctx.emit("scorer_ev_images_per_s", JUDGE_BATCH / median["expected_value"])
    ctx.emit("scorer_prefill_images_per_s", JUDGE_BATCH / median["prefill"])
    ctx.emit("scorer_ev_peak_gib", peaks["expected_value"])
    ctx.emit("scorer_prefill_peak_gib", peaks["prefill"])
    ctx.emit("ev_over_prefill", median["expected_value"] / median["prefill"])


# --- 3. judge training -----------------------------------------------------------------------------


def judge_train_section(ctx) -> None:
    """One step of each objective on a LoRA over the shared judge, gradient checkpointing on."""
    from ..bench.judge import judge_run_config, write_synthetic_judge_set
    from ..training.judge.trainer import JudgeTrainer

    judge = shared_judge(ctx)
    side = 56 if ctx.tiny else 448
    batch = 4 if ctx.tiny else JUDGE_BATCH
    manifest = write_synthetic_judge_set(f"{ctx.workdir}/judge_data", n_train=batch, n_test=3, seed=0, size=side)
    for objective in ("soft_label", "grpo"):
        config = judge_run_config(judge.source, manifest, f"{ctx.workdir}/judge_{objective}", seed=0, steps=1,
                                  batch_size=batch)
        config.model.device = str(ctx.device)
        config.model.dtype = "float32" if ctx.tiny else "bfloat16"
        config.model.gradient_checkpointing = True
        config.objective.kind = objective
        if not ctx.tiny:
            config.optim.lr = None  # the objective's real-size default (one step: the value does not matter)
        if objective == "grpo":
            config.objective.group_size = 4
            config.objective.max_new_tokens = 16 if ctx.tiny else 128
        ctx.reset_peak()
        trainer = JudgeTrainer(config, manifest=None, log=False, base=judge)
        try:
            started = time.monotonic()
            metrics = trainer.train_step()
            ctx.sync()
            seconds = time.monotonic() - started
            ctx.emit(f"judge_train_{objective}_seconds_per_step", seconds)
            ctx.emit(f"judge_train_{objective}_images_per_step", batch)
            ctx.emit(f"judge_train_{objective}_peak_gib", ctx.peak_gib())
            loss = metrics.get("train/loss", metrics.get("train/cross_entropy", float("nan")))
            ctx.emit(f"judge_train_{objective}_loss_finite", int(loss == loss and abs(loss) != float("inf")))
        finally:
            _unwrap(trainer, judge)


def _unwrap(trainer, judge) -> None:
    """Give the shared judge back without the LoRA and checkpointing the trainer put on it."""
    trainer.close()
    base = trainer.model.unload()  # peft: remove the LoRA layers, the base model object stays
    if hasattr(base, "gradient_checkpointing_disable"):
        base.gradient_checkpointing_disable()
    if hasattr(base, "disable_input_require_grads"):
        base.disable_input_require_grads()
    base.eval()
    judge.model = base



# --- 4. the fp16 path ------------------------------------------------------------------------------


def fp16_section(ctx) -> None:
    """A tiny SD3 pipeline in fp16 with accelerate's grad scaler (a CPU stand-in off CUDA); an overflow
    forced into the second update must be skipped, and the run must go on."""
    import torch

    from ..training.generator.precision import cpu_accelerator_with_grad_scaler
    from ..training.generator.trainer import GRPOTrainer

    from ..engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline
    from ..tiny_models.diffusion import build_tiny_pipeline
    from ..training.generator.config import RewardSpec, TrainConfig

    folder = build_tiny_pipeline(f"{ctx.workdir}/fp16_sd3", "sd3")
    pipe = load_pipeline(DiffusersGeneratorConfig(model=str(folder), dtype="float16", device=str(ctx.device)),
                         ctx.device, torch.float16)
    c = TrainConfig()
    c.model.pretrained, c.model.dtype, c.model.lora_rank, c.model.adapter_hidden = str(folder), "float16", 4, 16
    c.sampling.resolution, c.sampling.steps, c.sampling.guidance_scale = 32, 3, 1.0
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size = 2, 2, 2
    c.rewards = [RewardSpec(kind="brightness")]
    c.device = "cuda" if ctx.cuda else "cpu"
    c.output_dir, c.reward_workers, c.max_steps = f"{ctx.workdir}/fp16_run", 0, 3
    c.save_every, c.export_at_end, c.progress = 3, False, False
    accelerator = None if ctx.cuda else cpu_accelerator_with_grad_scaler()
    trainer = GRPOTrainer(c, pipe=pipe, accelerator=accelerator, log=False)
    scaler = trainer.accelerator.scaler
    original = trainer.update_phase.timestep_loss
    forced_step = 1

    def overflowing(*args, **kwargs):  # the update of step 1: gradients overflow fp16 under the loss scale
        loss, parts = original(*args, **kwargs)
        return (loss * 1e30 if trainer.step == forced_step else loss), parts

    trainer.update_phase.timestep_loss = overflowing
    try:
        scale_before = float(scaler.get_scale()) if scaler is not None else float("nan")
        history = trainer.train()
    finally:
        del trainer.update_phase.timestep_loss
    ctx.emit("fp16_scaler", type(scaler).__name__ if scaler is not None else "none")
    ctx.emit("fp16_forced_overflow_step", forced_step)
    ctx.emit("fp16_skipped_updates", sum(h.get("train/skipped_updates", 0.0) for h in history))
    ctx.emit("fp16_skipped_at_steps", ",".join(str(i) for i, h in enumerate(history)
                                               if h.get("train/skipped_updates", 0.0) > 0) or "none")
    ctx.emit("fp16_steps_completed", len(history))
    ctx.emit("fp16_scale_before", scale_before)
    ctx.emit("fp16_scale_after", float(scaler.get_scale()) if scaler is not None else float("nan"))
    ctx.emit("fp16_weights_finite", int(all(bool(torch.isfinite(p).all()) for _, p in trainer.trainable)))

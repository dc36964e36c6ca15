"""The GRPO sections of ``emofeedback2 bench gpu`` (see :mod:`.gpu`): the shipped recipe's steps at real size.

The real-size pipeline is the family's tiny pipeline with its denoiser and VAE swapped for the real
architectures (random weights, built on the device) and its text encoding for random tensors of the real
shapes; the judge is the one the scorer section built. Memory is measured per training phase and printed
beside the memory plan of the very configuration that ran.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .gpu_sections import REAL_JUDGE_MAX_PIXELS, shared_judge


# --- 2. GRPO on the shipped recipe (and 5. on a 2026 family) ----------------------------------------


def _sd3_shape_only_encode(pipe, tokens: int):
    """SD3's ``encode_prompt`` with random tensors of the real shapes (CLIP-L/G + T5 context, pooled)."""
    import torch

    def encode_prompt(prompt, prompt_2=None, prompt_3=None, device=None, num_images_per_prompt=1,
                      do_classifier_free_guidance=True, negative_prompt=None, **_):
        n, cfg = len(prompt), pipe.transformer.config
        g = torch.Generator().manual_seed(n)
        context = torch.randn(n, tokens, cfg.joint_attention_dim, generator=g)
        pooled = torch.randn(n, cfg.pooled_projection_dim, generator=g)
        out = [t.to(device or pipe.transformer.device, pipe.transformer.dtype) for t in (context, pooled)]
        neg = [torch.zeros_like(t) for t in out] if do_classifier_free_guidance else [None, None]
        return out[0], neg[0], out[1], neg[1]

    return encode_prompt


def _klein_shape_only_encode(pipe, tokens: int):
    """Flux.2 Klein's ``encode_prompt`` with random Qwen3 hidden states of the real shape."""
    import torch

    def encode_prompt(prompt, device=None, **_):
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        cfg = pipe.transformer.config
        g = torch.Generator().manual_seed(len(prompt))
        embeds = torch.randn(len(prompt), tokens, cfg.joint_attention_dim, generator=g)
        embeds = embeds.to(device or pipe.transformer.device, pipe.transformer.dtype)
        return embeds, pipe._prepare_text_ids(embeds).to(embeds.device)

    return encode_prompt


#: real-size name -> (arch, recipe file, text tokens, shape-only encoder); names as ``bench train --real-size``
REAL_GENERATORS = {
    "sd3.5-medium": ("sd3", "sd35_medium_lvlm.toml", 77 + 256, _sd3_shape_only_encode),
    "flux.2-klein-4b": ("flux2_klein", "flux2_klein_4b_lvlm.toml", 512, _klein_shape_only_encode),
}


def _pipeline(ctx, name: str):
    """The family's pipeline: tiny as the tests build it; at real size its denoiser and VAE swapped for the
    real architectures with random weights built on the device, and its text encoding for random tensors of
    the real shapes (the prompt cache then holds those, as training would hold the real encoder's)."""
    import torch

    from ..engines.devices import DTYPES
    from ..engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline
    from ..tiny_models.diffusion import build_tiny_pipeline
    from ..training.generator.real_configs import PIPELINES
    from .train_plan import REAL_PIPELINES

    arch, _, tokens, encoder = REAL_GENERATORS[name]
    dtype_name = "float32" if ctx.tiny else "float16"
    folder = build_tiny_pipeline(f"{ctx.workdir}/{arch}", arch)
    pipe = load_pipeline(DiffusersGeneratorConfig(model=str(folder), dtype=dtype_name, device=str(ctx.device)),
                         ctx.device, DTYPES[dtype_name])
    if ctx.tiny:
        return pipe, str(folder)
    hub_id = REAL_PIPELINES[name]
    modules = {}
    for part in ("transformer", "vae"):
        library, cls_name, config = PIPELINES[hub_id][part]
        cls = getattr(__import__(library), cls_name)
        with torch.device(ctx.device):  # no CPU copy of billions of parameters
            modules[part] = cls(**config).to(DTYPES[dtype_name]).eval()
    if getattr(modules["vae"].config, "force_upcast", False):
        modules["vae"].to(torch.float32)
    pipe.register_modules(**modules)
    pipe.encode_prompt = encoder(pipe, tokens)
    return pipe, hub_id


class PhaseMeter:
    """Peak allocated memory and seconds per training phase, each attributed to the innermost running phase
    (the reward call runs inside the rollout when it is scored inline)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.peak: dict[str, Any] = {}
        self.seconds: dict[str, float] = {}
        self.stack: list[str] = []
        self.mark = time.monotonic()

    def wrap(self, obj: Any, attribute: str, phase: str) -> None:
        original = getattr(obj, attribute)

        def measured(*args, **kwargs):
            self._switch(phase)
            try:
                return original(*args, **kwargs)
            finally:
                self._switch(None)

        setattr(obj, attribute, measured)

    def _switch(self, entering: Any) -> None:
        now = time.monotonic()
        if self.stack:  # close the running phase's span: its peak and time since the last switch
            top = self.stack[-1]
            peak = self.ctx.peak_gib()
            if isinstance(peak, float):
                self.peak[top] = max(self.peak.get(top, 0.0), peak)
            else:
                self.peak[top] = peak
            self.seconds[top] = self.seconds.get(top, 0.0) + now - self.mark
        if entering is None:
            self.stack.pop()
        else:
            self.stack.append(entering)
        self.ctx.reset_peak()
        self.mark = time.monotonic()


def _run_config(ctx, name: str, model_path: str):
    """The shipped recipe of ``name`` as this run runs it; every change from the recipe is printed."""
    from ..training.generator.config import RewardSpec, load_config
    from ..training.generator.config import derive
    from .train_plan import CONFIGS

    judge = shared_judge(ctx)
    config = load_config(CONFIGS / REAL_GENERATORS[name][1])
    judges = [r for r in config.rewards if r.kind == "lvlm"]
    spec = judges[0] if judges else RewardSpec(kind="lvlm")
    changes = {
        "rewards": "the LVLM judge alone (random weights, shared with the scorer section; other terms dropped)",
        "rewards.0.quantization": f"none (was {spec.quantization}: the judge is built in {'float32' if ctx.tiny else 'bf16'}; "
                                  "bitsandbytes needs CUDA and is not on the GPU machine's image)",
        "reward_workers": "0 (the reward inline, so its memory counts in its own phase)",
        "heldout.every": f"0 (was {config.heldout.every})",
    }
    spec.path = judge.source if ctx.tiny else "Qwen/Qwen2.5-VL-7B-Instruct"
    spec.quantization, spec.dtype, spec.adapter = "none", "float32" if ctx.tiny else "bfloat16", ""
    spec.max_pixels = 0 if ctx.tiny else REAL_JUDGE_MAX_PIXELS  # the cap the shared judge was built with
    config.rewards = [spec]
    config.reward_workers = 0
    config.heldout.every = 0
    config.model.pretrained = model_path
    config.output_dir = f"{ctx.workdir}/{REAL_GENERATORS[name][0]}_run"
    config.export_at_end = False
    config.progress = False
    config.device = "cpu" if not ctx.cuda else "cuda"
    if ctx.small_sizes:  # tiny sizes: the code path, not the figures
        config.model.dtype = "float32"
        config.sampling.resolution, config.sampling.steps = 32, 3
        config.grpo.group_size, config.grpo.groups_per_step, config.grpo.batch_size = 2, 1, 2
        config.grpo.updates_per_step = 1
        changes["sizes"] = "tiny: 32 px, 3 steps, one group of 2"
    derive(config)  # the recipe as changed must still be a valid configuration
    return config, spec, changes


def _grpo_figures(ctx, prefix: str, name: str, steps: int = 3) -> None:
    """``steps`` GRPO steps of the recipe of ``name``: memory per phase beside the plan, seconds per step."""
    from ..training.generator.memory_plan import plan_training
    from ..training.generator.rewards import CompositeReward, LVLMVAReward
    from ..training.generator.trainer import GRPOTrainer

    pipe, model_path = _pipeline(ctx, name)
    config, spec, changes = _run_config(ctx, name, model_path)
    ctx.emit(f"{prefix}_recipe", REAL_GENERATORS[name][1])
    for key, why in changes.items():
        ctx.emit(f"{prefix}_changed[{key}]", why)
    judge = shared_judge(ctx)
    saved = judge.config.offload_after_use, judge.config.max_images_per_pass
    judge.config.offload_after_use, judge.config.max_images_per_pass = spec.offload, spec.images_per_pass
    reward = CompositeReward([LVLMVAReward(judge, spec.low_digit_mass)], [spec.weight], [spec.normalize])
    trainer = None
    try:
        trainer = GRPOTrainer(config, pipe=pipe, reward=reward, log=False)
        meter = PhaseMeter(ctx)
        meter.wrap(trainer.rollout_phase, "sample", "rollout")
        meter.wrap(trainer.reward, "score_parts", "reward")
        meter.wrap(trainer.update_phase, "run", "update")
        seconds, skipped = [], 0.0
        for _ in range(steps):
            if ctx.budget.left() < 30:
                ctx.emit(f"{prefix}_stopped", f"budget after {len(seconds)} step(s)")
                break
            started = time.monotonic()
            metrics = trainer.train_step()
            ctx.sync()
            seconds.append(time.monotonic() - started)
            skipped += metrics.get("train/skipped_updates", 0.0)
        for i, s in enumerate(seconds):
            ctx.emit(f"{prefix}_step{i}_seconds", s)
        if len(seconds) > 1:
            ctx.emit(f"{prefix}_seconds_per_step", statistics.median(seconds[1:]))  # the first compiles/allocates
        ctx.emit(f"{prefix}_images_per_step", trainer.derived.samples_per_step)
        ctx.emit(f"{prefix}_skipped_updates", skipped)
        plan = plan_training(config)
        _compare_with_plan(ctx, prefix, meter, plan, spec)
    finally:
        judge.config.offload_after_use, judge.config.max_images_per_pass = saved
        if trainer is not None:
            trainer.runner.close()


def _compare_with_plan(ctx, prefix: str, meter: PhaseMeter, plan, spec) -> None:
    """Measured peak per phase beside the plan's total for that phase on the training device, the plan's
    CUDA context left out (``max_memory_allocated`` does not see it)."""
    device = plan.training_device
    context = sum(c.bytes for c in plan.components if c.device == device and "context" in c.name.lower())
    reward_phase = next((p for p in plan.phases if p.startswith("score:")), "score:lvlm")
    for phase, planned in (("rollout", "rollout"), ("reward", reward_phase), ("update", "update")):
        planned_gib = (plan.phase_bytes(device, planned) - context) / 2**30
        measured = meter.peak.get(phase, "n/a")
        ctx.emit(f"{prefix}_{phase}_peak_gib", measured)
        ctx.emit(f"{prefix}_{phase}_plan_gib", planned_gib)
        ctx.emit(f"{prefix}_{phase}_seconds", meter.seconds.get(phase, 0.0))
        if isinstance(measured, float) and planned_gib > 0:
            ctx.emit(f"{prefix}_{phase}_measured_over_plan", measured / planned_gib)


def grpo_section(ctx) -> None:
    _grpo_figures(ctx, "grpo", "sd3.5-medium")


def family_section(ctx) -> None:
    if ctx.family not in REAL_GENERATORS or ctx.family == "sd3.5-medium":
        choices = ", ".join(n for n in REAL_GENERATORS if n != "sd3.5-medium")
        ctx.emit("family_skipped", f"no shape-only text encoding for {ctx.family!r} here (have: {choices})")
        return
    from ..training.generator.families import FAMILIES

    arch = REAL_GENERATORS[ctx.family][0]
    if arch not in FAMILIES:
        ctx.emit("family_skipped", f"the trainer has no {arch} family")
        return
    ctx.emit("family_name", ctx.family)
    _grpo_figures(ctx, "family", ctx.family)

"""The components of a GRPO run's memory plan, one function per part of what the trainer holds.

Each function returns :class:`~.memory_plan.Component` rows: bytes on one device, and the phases in
which they are resident (``encode`` once at start, then per step ``rollout``, one ``score:<reward>``
per reward model, ``update``; ``heldout:quality`` for a held-out quality judge swapped in for the check).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from .activation_count import ActivationFigures
from .family_plan import Family, uses_negative_branch
from .judge_memory import image_grid, judge_working_bytes
from .meta_models import DTYPE_BYTES, GIB, count_params, quantized_bytes, reward_model


@dataclass
class Component:
    name: str
    device: str
    bytes: int
    phases: tuple[str, ...]
    detail: str
    params: Optional[int] = None


@dataclass
class PlanSetup:
    """What every part needs to know: the config, the training device and the phases."""

    config: Any
    device: str
    phases: list[str]
    reward_phases: list[str]
    samples: int  # per step and process
    family: Optional[Family] = None  # a flow-transformer family (guidance-distilled ones have no negative branch)
    forced_cache: bool = False  # a language-model text encoder: the trainer caches the prompts whatever the config

    @property
    def step_phases(self) -> tuple[str, ...]:
        return tuple(p for p in self.phases if p != "encode")

    @property
    def cached(self) -> bool:
        return bool(self.config.data.cache_prompt_embeddings) or self.forced_cache

    @property
    def train_guidance(self) -> float:
        s = self.config.sampling
        return 1.0 if s.cfg_free_training else s.guidance_scale

    def negative_branch(self, guidance: float) -> bool:
        return uses_negative_branch(self.family, guidance)


def trainable_parts(setup: PlanSetup, n_lora: int, n_adapter: int) -> list[Component]:
    """LoRA + adapter weights, AdamW's two states, gradients (update only) and the EMA, all fp32."""
    c, dev = setup.config, setup.device
    trained = n_lora + (n_adapter if c.model.train_adapter else 0)
    out = [
        Component("lora+adapter weights (fp32)", dev, (n_lora + n_adapter) * 4, tuple(setup.phases),
                  f"LoRA {n_lora:,d} + adapter {n_adapter:,d} params x 4 B", n_lora + n_adapter),
        Component("AdamW states (2 x fp32)", dev, trained * 8, setup.step_phases,
                  f"{trained:,d} trainable params x 2 states x 4 B (params already fp32: no master copy)", trained),
        Component("gradients (fp32)", dev, trained * 4, ("update",),
                  f"{trained:,d} trainable params x 4 B; freed after each optimizer step", trained),
    ]
    if c.optim.ema:
        out.append(Component("EMA copy (fp32)", dev, trained * 4, setup.step_phases, f"{trained:,d} params x 4 B",
                             trained))
    return out


def text_parts(setup: PlanSetup, components: dict[str, nn.Module], per_prompt: int,
               prompt_count: int) -> list[Component]:
    """The text encoders (freed after the encode phase with the prompt cache) and the cache in host memory."""
    c, dev = setup.config, setup.device
    base = DTYPE_BYTES[c.model.dtype]
    cached = setup.cached
    out = []
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if name in components:
            n = count_params(components[name])
            out.append(Component(name, dev, n * base, ("encode",) if cached else tuple(setup.phases),
                                 f"{n:,d} params x {base} B" + ("; freed after caching" if cached else ""), n))
    if cached:
        negative = setup.negative_branch(c.sampling.guidance_scale)
        n_cached = (prompt_count + (1 if negative else 0)) * per_prompt
        out.append(Component("cached prompt embeddings", "cpu", n_cached * base, tuple(setup.phases),
                             f"({prompt_count} prompts{' + negative' if negative else ''}) x {per_prompt:,d} values "
                             f"x {base} B in host memory"))
    return out


def step_parts(setup: PlanSetup, latent: int, per_prompt: int, acts: ActivationFigures) -> list[Component]:
    """Trajectories and images of a step, activations saved for backward, rollout and KL-reference working memory."""
    c, dev = setup.config, setup.device
    s, g = c.sampling, c.grpo
    n, steps = setup.samples, s.steps
    cfg = setup.negative_branch(setup.train_guidance)
    traj = n * ((steps + 1) * latent * 4 + steps * 4 + per_prompt * 4 * (2 if cfg else 1))
    if g.ratio_norm == "grpo_guard":
        traj += n * steps * latent * 4
    out = [
        Component("trajectories of a step", dev, traj, setup.step_phases,
                  f"{n} samples x ({steps + 1} latents + log-probs + fp32 conditioning"
                  f"{' + step means' if g.ratio_norm == 'grpo_guard' else ''})"),
        Component("decoded images of a step", "cpu", n * s.resolution**2 * 3 * 4, setup.step_phases,
                  f"{n} x {s.resolution}² x 3 x 4 B"),
        Component("activations per micro-batch (update)", dev, acts.saved_bytes, ("update",),
                  f"measured: {acts.method}; batch {g.batch_size}{' x2 (CFG)' if cfg else ''}"),
        Component("rollout working memory", dev, max(acts.rollout_forward_peak, acts.vae_decode_peak), ("rollout",),
                  f"measured live-tensor peak: denoiser forward {acts.rollout_forward_peak / GIB:.3f} GiB, "
                  f"VAE decode {acts.vae_decode_peak / GIB:.3f} GiB (TorchDispatchMode, meta)"),
    ]
    if g.kl_beta > 0:  # the no-grad reference forward runs while this timestep's saved activations are held
        out.append(Component("KL reference forward (update)", dev, acts.rollout_forward_peak, ("update",),
                             "measured live-tensor peak of a no-grad denoiser forward at the training batch "
                             "(adapters disabled), on top of the saved activations"))
    return out


def reward_parts(setup: PlanSetup, spec: Any, phase: str, *, judged_images: int, label: str = "") -> list[Component]:
    """A reward model's weights (resident, or swapped in for ``phase``) and, for the LVLM judge, its working memory.

    ``reward_schedule = "micro_batch"`` scores each micro-batch on a worker while the next is sampled:
    the judge's weights and working memory then overlap the rollout phase.
    """
    model = reward_model(spec.kind, spec.path)
    if model is None:
        return []
    c = setup.config
    device = _reward_device(spec, setup.device)
    rbytes = DTYPE_BYTES.get(spec.dtype, 4)
    wbytes, how = quantized_bytes(model, rbytes, spec.quantization)
    n = count_params(model)
    judge = spec.kind in ("lvlm", "lvlm_reasoning")
    kind = label or ("judge" if judge else "quality model")
    form = spec.quantization if spec.quantization != "none" else spec.dtype
    name = f"{kind} {Path(spec.path).name or spec.path} ({form})"
    overlap = ("rollout",) if c.reward_schedule == "micro_batch" and phase.startswith("score:") else ()
    # with the prompt cache the trainer loads reward models after encoding and freeing the text encoders
    loaded = setup.step_phases if setup.cached else tuple(setup.phases)
    if spec.offload and spec.quantization != "none":  # bitsandbytes weights cannot move: freed, reloaded per call
        out = [Component(name, device, wbytes, overlap + (phase,), how + "; loaded for its score call and freed "
                         "after it (a quantised model cannot be moved: it reloads from disk every call)", n)]
    elif spec.offload:
        busy = overlap + (phase,)
        out = [Component(name, device, wbytes, busy, how + "; swapped in for its score call only", n),
               Component(name + " (offloaded)", "cpu", wbytes, tuple(p for p in loaded if p not in busy), how, n)]
    else:
        out = [Component(name, device, wbytes, loaded, how, n)]
    if judge:
        per_pass = spec.images_per_pass or judged_images
        grid = image_grid(model, c.sampling.resolution, getattr(spec, "max_pixels", 0), _local(spec.path))
        work, detail = judge_working_bytes(model, per_pass, rbytes, grid)
        if spec.kind == "lvlm_reasoning":
            detail += "; the written answers' generated tokens are not counted"
        out.append(Component(f"{kind} working memory", device, work, overlap + (phase,), detail))
    return out


def context_parts(setup: PlanSetup, devices: list[str], context_bytes: int) -> list[Component]:
    """The CUDA context on every GPU the run touches (outside ``torch.cuda.max_memory_allocated``)."""
    return [Component("CUDA context", d, context_bytes, tuple(setup.phases),
                      f"estimate {context_bytes / GIB:.2f} GiB: CUDA context and cuBLAS/cuDNN handles, outside the "
                      "caching allocator") for d in devices if d.startswith("cuda")]


def _reward_device(spec: Any, training_device: str) -> str:
    device = spec.device or training_device
    if device == "cuda":
        return "cuda:0"
    if device == "auto":
        return training_device
    return device


def _local(path: str) -> Optional[str]:
    return path if Path(path).expanduser().is_dir() else None


def adapter_on_meta(config: Any, arch: str, context_dim: int, pooled_dim: Optional[int]) -> Optional[nn.Module]:
    """The emotion adapter the trainer would build, on the meta device (None when there is none)."""
    from ...engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig

    m = config.model
    if not (m.train_adapter or m.adapter_init):
        return None
    extra = {"hidden_dim": m.adapter_hidden} if m.adapter_hidden else {}
    acfg = EmotionAdapterConfig(arch=arch, context_dim=context_dim, pooled_dim=None if arch == "sd15" else pooled_dim,
                                **extra)
    with torch.device("meta"):
        adapter = EmotionAdapter(acfg).float()
    if not m.train_adapter:
        adapter.requires_grad_(False)
    return adapter

"""A memory plan for a GRPO run, computed before anything is loaded: bytes per component per device.

Every model is built from its real config on the ``meta`` device (shapes only, no weights, no
download: a local folder's ``config.json`` files, or :mod:`.real_configs` for the recipes' hub ids),
and every figure is counted from those modules (:mod:`.plan_parts` builds the rows):

- weights: parameters × dtype bytes (a quantised base or judge: Linear weights at 1 or 0.5 byte plus
  bitsandbytes' scales, the rest in its dtype);
- LoRA and the emotion adapter: fp32 parameters, fp32 gradients (update phase only: the trainer
  frees them after each optimizer step), AdamW's two fp32 states, an fp32 EMA copy when enabled;
- cached prompt embeddings: unique prompts × (context + pooled) in the base dtype, in host memory;
- trajectories: a step's stored latents, log-probs, step means (GRPO-Guard) and fp32 conditioning;
- activations per micro-batch, **measured** on the real-size model on the ``meta`` device
  (:mod:`.activation_count`; the flow-transformer families' packing, ids and conditioning from
  :mod:`.family_plan`), and during the update the no-grad KL reference forward on top of them;
- rollout working memory (no-grad denoiser forward and VAE decode of one micro-batch), measured;
- the judge's working memory: an estimate from its config and the images' real size (:mod:`.judge_memory`:
  image tokens from the resolution and pixel limits, vision-encoder activations, the KV cache held
  once per answer prefix), labelled as such; with ``reward_schedule = "micro_batch"`` the judge's
  weights and working memory overlap the rollout;
- the CUDA context on every GPU (an estimate, outside the caching allocator).

A device's planned peak is the largest sum over a phase. On top of it the plan keeps an allocator
margin (:data:`ALLOCATOR_MARGIN` of the peak: memory the caching allocator reserves but cannot hand
out, fragmentation); a plan *fits* a card when planned peak + margin ≤ the card's memory. Not
counted: gradients of activations in flight during backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from . import family_plan
# the helpers live in their own modules; their names stay importable from here
from .activation_count import (ActivationFigures, LiveBytes, _conditioning_dims, fused_attention_stand_in,
                               measure_activations)
from .judge_memory import image_grid, judge_working_bytes, smart_resize
from .meta_models import (DTYPE_BYTES, GIB, TORCH_DTYPES, PlanError, _ArchProbe, _meta_module, count_params,
                          pipeline_components, quantized_bytes, reward_model)
from .plan_parts import (Component, PlanSetup, adapter_on_meta, context_parts, reward_parts, step_parts, text_parts,
                         trainable_parts)

__all__ = ["ActivationFigures", "LiveBytes", "fused_attention_stand_in", "measure_activations", "image_grid",
           "judge_working_bytes", "smart_resize", "DTYPE_BYTES", "GIB", "TORCH_DTYPES", "PlanError", "_ArchProbe",
           "_conditioning_dims", "_meta_module", "count_params", "pipeline_components", "quantized_bytes",
           "reward_model", "Component", "MemoryPlan", "plan_training", "print_plan_or_reason",
           "ALLOCATOR_MARGIN", "CUDA_CONTEXT_BYTES", "CARD_24GB_BYTES"]

#: the CUDA context and cuBLAS/cuDNN handles, outside torch.cuda.max_memory_allocated: ~0.3-0.6 GiB on
#: recent cards with lazy module loading; the plan takes the upper end
CUDA_CONTEXT_BYTES = 512 * 2**20
#: share of the planned peak kept free for the caching allocator's fragmentation (reserved, not allocatable)
ALLOCATOR_MARGIN = 0.10
#: a "24 GB" card (RTX 3090/4090) reports 24,564 MiB
CARD_24GB_BYTES = 24564 * 2**20


@dataclass
class MemoryPlan:
    components: list[Component]
    phases: list[str]
    training_device: str
    notes: list[str] = field(default_factory=list)
    margin_fraction: float = ALLOCATOR_MARGIN

    def devices(self) -> list[str]:
        return list(dict.fromkeys(c.device for c in self.components))

    def phase_bytes(self, device: str, phase: str) -> int:
        return sum(c.bytes for c in self.components if c.device == device and phase in c.phases)

    def peak(self, device: str) -> tuple[int, str]:
        """(bytes, phase) of the largest phase total on ``device``."""
        best = max(self.phases, key=lambda p: self.phase_bytes(device, p))
        return self.phase_bytes(device, best), best

    def accelerator_devices(self) -> list[str]:
        return [d for d in self.devices() if d != "cpu"]

    def planned_peak_bytes(self) -> int:
        """The largest per-phase total over the accelerator devices (the host when everything is on CPU)."""
        devices = self.accelerator_devices() or ["cpu"]
        return max(self.peak(d)[0] for d in devices)

    def margin_bytes(self) -> int:
        """The allocator margin kept on top of the planned peak."""
        return int(self.margin_fraction * self.planned_peak_bytes())

    def fits(self, card_bytes: int = CARD_24GB_BYTES) -> bool:
        """Planned peak + margin ≤ the card's memory."""
        return self.planned_peak_bytes() + self.margin_bytes() <= card_bytes

    def component(self, name: str, device: Optional[str] = None) -> Component:
        for c in self.components:
            if c.name == name and (device is None or c.device == device):
                return c
        raise KeyError(name)

    def render(self) -> str:
        lines = ["memory plan (bytes per component per device; phases in which each is resident)"]
        width = max(len(c.name) for c in self.components)
        for c in self.components:
            lines.append(f"  {c.name:<{width}}  {c.device:<7} {c.bytes:>15,d} B  {c.bytes / GIB:8.3f} GiB  "
                         f"[{','.join(c.phases)}]  {c.detail}")
        for device in self.devices():
            totals = ", ".join(f"{p}={self.phase_bytes(device, p) / GIB:.2f}" for p in self.phases)
            peak, phase = self.peak(device)
            lines.append(f"  {device}: GiB per phase: {totals}; peak {peak / GIB:.2f} GiB in {phase}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def summary_lines(self, card_bytes: int = CARD_24GB_BYTES) -> list[str]:
        """The planned peak, the margin with its GiB, and whether peak + margin fits the card."""
        peak, margin = self.planned_peak_bytes(), self.margin_bytes()
        where = ", ".join(self.accelerator_devices()) or "cpu"
        head = (f"allocator margin {margin / GIB:.2f} GiB ({self.margin_fraction:.0%} of the peak); planned peak + "
                f"margin = {(peak + margin) / GIB:.2f} GiB")
        if not self.accelerator_devices():
            return [f"planned peak {peak / GIB:.2f} GiB on cpu", f"{head} of host memory"]
        verdict = "fits" if self.fits(card_bytes) else "does NOT fit"
        return [f"planned peak {peak / GIB:.2f} GiB on {where}",
                f"{head}: {verdict} a {card_bytes / GIB:.2f} GiB (24 GB) card"]


# --- the plan of a training config --------------------------------------------------------------------


def plan_training(config, *, components: Optional[dict[str, nn.Module]] = None,
                  prompt_count: Optional[int] = None, context_bytes: int = CUDA_CONTEXT_BYTES) -> MemoryPlan:
    """The :class:`MemoryPlan` of ``config`` (one process), from meta-device models."""
    from diffusers.utils import logging as diffusers_logging

    from ...engines.generation.diffusers_backend import detect_arch
    from .config import derive
    from .policy_net import add_lora

    diffusers_logging.set_verbosity_error()  # the meta modules' dtype casts are intended, not a warning
    derived = derive(config)
    m, s, g = config.model, config.sampling, config.grpo
    components = components if components is not None else pipeline_components(m.pretrained)
    denoiser_name = "transformer" if "transformer" in components else "unet"
    denoiser = components[denoiser_name]
    arch = m.arch if m.arch != "auto" else detect_arch(_ArchProbe(components))
    family = family_plan.FAMILIES.get(arch)  # Flux / Flux.2 Klein / Qwen-Image / Z-Image, else None (SD)
    kinds = [r.kind for r in config.rewards]
    reward_phases = [f"score:{r.kind}" if kinds.count(r.kind) == 1 else f"score:{r.kind}_{i}"
                     for i, r in enumerate(config.rewards)]
    quality = _heldout_quality(config)
    phases = ["encode", "rollout"] + reward_phases + ["update"]
    if quality is not None and quality.offload:
        phases.append("heldout:quality")
    setup = PlanSetup(config, "cpu" if config.device == "cpu" else "cuda:0", phases, reward_phases,
                      derived.samples_per_step_per_process, family, _forced_cache(arch))
    n_denoiser = count_params(denoiser)
    denoiser.to(TORCH_DTYPES[m.dtype])
    quant = m.quantization
    d_bytes, d_how = quantized_bytes(denoiser, DTYPE_BYTES[m.dtype], quant)  # frozen base: bitsandbytes layout
    out = [Component(denoiser_name, setup.device, d_bytes, tuple(phases),
                     f"{d_how} ({m.dtype}{', ' + quant + ' base' if quant != 'none' else ''})", n_denoiser)]
    with torch.device("meta"):
        add_lora(denoiser, arch, m.lora_rank, m.lora_alpha, list(m.lora_targets))  # empty: the family defaults
    tokens, ctx_dim, pooled_dim = _conditioning_dims(arch, components)
    adapter = adapter_on_meta(config, arch, ctx_dim, pooled_dim)
    out += trainable_parts(setup, count_params(denoiser, lambda n, p: "lora_" in n),
                           count_params(adapter) if adapter is not None else 0)
    per_prompt = tokens * ctx_dim + (pooled_dim or 0)
    count = prompt_count if prompt_count is not None else (_unique_prompt_count(config) if setup.cached else 0)
    out += text_parts(setup, components, per_prompt, count)
    vae = components["vae"]
    out.append(_vae_part(setup, vae))
    acts = measure_activations(arch, denoiser, adapter, vae, batch=g.batch_size, resolution=s.resolution,
                               dtype=TORCH_DTYPES[m.dtype], guidance=setup.train_guidance,
                               gradient_checkpointing=m.gradient_checkpointing, tokens=tokens, context_dim=ctx_dim,
                               pooled_dim=None if arch == "sd15" else pooled_dim)
    if family is not None:
        latent = family_plan.latent_values(family, denoiser, vae, s.resolution)
    else:
        latent = denoiser.config.in_channels * (s.resolution // family_plan.vae_scale(vae)) ** 2
    out += step_parts(setup, latent, per_prompt, acts)
    judged = setup.samples if config.reward_schedule == "step" else g.batch_size
    for spec, phase in zip(config.rewards, reward_phases):
        out += reward_parts(setup, spec, phase, judged_images=judged)
    if quality is not None:
        out += reward_parts(setup, quality, "heldout:quality", judged_images=config.heldout.num_prompts
                            * len(config.heldout.targets), label="held-out quality judge")
    out += context_parts(setup, list(dict.fromkeys(c.device for c in out)), context_bytes)
    return MemoryPlan(out, phases, setup.device, _notes(config, derived, out, setup.device))


def _vae_part(setup: PlanSetup, vae: nn.Module) -> Component:
    m = setup.config.model
    dtype = m.dtype
    if m.dtype == "float16" and getattr(vae.config, "force_upcast", False):
        dtype = "float32"  # the trainer upcasts the VAE in fp16 runs, as diffusers does
    vae.to(TORCH_DTYPES[dtype])
    n = count_params(vae)
    return Component("vae", setup.device, n * DTYPE_BYTES[dtype], tuple(setup.phases),
                     f"{n:,d} params x {DTYPE_BYTES[dtype]} B ({dtype})", n)


def _forced_cache(arch: str) -> bool:
    """Language-model text encoders (Flux.2 Klein, Qwen-Image, Z-Image): the trainer always caches the prompts."""
    from .families import family_for

    return family_for(arch).llm_encoder


def _heldout_quality(config):
    if not (config.heldout.every and config.heldout.quality):
        return None
    from .config import quality_spec

    return quality_spec(config.heldout.quality)


def _notes(config, derived, components: list[Component], device: str) -> list[str]:
    notes = []
    for spec in config.rewards:
        if spec.offload and config.reward_schedule != "step":
            notes.append(f"{spec.kind} is offloaded and scored per micro-batch: {derived.micro_batches_per_step} "
                         "swaps per step, overlapping the rollout (reward_schedule='step' makes it one)")
    if any(c.device not in ("cpu", device) for c in components):
        notes.append("rewards on another device overlap nothing here but free the training device")
    notes.append("not counted: activation gradients in flight during backward; the allocator margin covers "
                 "fragmentation")
    return notes


def _unique_prompt_count(config) -> int:
    from .data import load_prompts, load_targets
    from .heldout import heldout_prompts

    prompts = load_prompts(config.data.prompts_file)
    extra = []
    if str(config.data.targets) != "uniform":
        extra = [p for _, p in load_targets(config.data.targets) if p]
    return len(dict.fromkeys(prompts + extra + heldout_prompts(config, prompts)))


def print_plan_or_reason(config) -> Optional[MemoryPlan]:
    """``train --dry-run``: print the plan, or one line saying why it cannot be computed."""
    try:
        plan = plan_training(config)
    except PlanError as exc:
        print(f"[train] memory plan unavailable: {exc}")
        return None
    print(plan.render())
    for line in plan.summary_lines():
        print(f"[train] {line}")
    return plan

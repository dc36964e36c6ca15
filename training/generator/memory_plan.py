"""A memory plan for a GRPO run, computed before anything is loaded: bytes per component per device.

Every model is built from its real config on the ``meta`` device (shapes only, no weights, no
download: a local folder's ``config.json`` files, or :mod:`.real_configs` for the recipe's hub ids),
and every figure is counted from those modules:

- weights: parameters × dtype bytes (the judge quantised: Linear weights at 1 or 0.5 byte plus
  bitsandbytes' scales, the rest in its dtype);
- LoRA and the emotion adapter: fp32 parameters, fp32 gradients (update phase only: the trainer
  frees them after each optimizer step), AdamW's two fp32 states, an fp32 EMA copy when enabled;
- cached prompt embeddings: unique prompts × (context + pooled) in the base dtype, in host memory;
- trajectories: a step's stored latents, log-probs, step means (GRPO-Guard) and fp32 conditioning;
- activations per micro-batch, **measured** on the real-size model on the ``meta`` device: the bytes
  autograd saves for backward, counted with ``torch.autograd.graph.saved_tensors_hooks`` over one
  training forward (adapter + CFG + LoRA + denoiser), unique tensors only, parameters excluded.
  Attention is replaced during the count by a stand-in that saves what CUDA's fused SDPA kernels
  save (q, k, v, output, fp32 logsumexp) instead of the math kernel's N×N probabilities. With
  gradient checkpointing: bytes saved outside checkpointed blocks + each block's inputs + the
  largest block's saved bytes (recomputed during backward);
- rollout working memory (no-grad denoiser forward and VAE decode of one micro-batch): the peak of
  live tensor bytes, measured with a ``TorchDispatchMode`` on the meta device;
- the judge's working memory: an estimate from its config (KV cache + one layer's MLP tensors for
  the images of one forward pass), labelled as such.

Components are resident in phases (``encode`` once at start, then per step ``rollout``, one
``score:<reward>`` per reward model, ``update``); a device's planned peak is the largest sum over a
phase. Not counted: the CUDA context (outside ``torch.cuda.max_memory_allocated``), allocator
fragmentation, cuBLAS/cuDNN workspaces and gradients of activations in flight during backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

# the helpers live in their own modules; their names stay importable from here
from .activation_count import (ActivationFigures, LiveBytes, _conditioning_dims, fused_attention_stand_in,
                               measure_activations)
from .meta_models import (DTYPE_BYTES, GIB, TORCH_DTYPES, PlanError, _ArchProbe, _meta_module, count_params,
                          pipeline_components, quantized_bytes, reward_model)

__all__ = ["ActivationFigures", "LiveBytes", "fused_attention_stand_in", "measure_activations", "DTYPE_BYTES", "GIB",
           "TORCH_DTYPES", "PlanError", "_ArchProbe", "_conditioning_dims", "_meta_module", "count_params", "pipeline_components", "quantized_bytes", "reward_model",
           "Component", "MemoryPlan", "judge_working_bytes", "plan_training", "print_plan_or_reason"]

# --- the plan ---------------------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    device: str
    bytes: int
    phases: tuple[str, ...]
    detail: str
    params: Optional[int] = None


@dataclass
class MemoryPlan:
    components: list[Component]
    phases: list[str]
    training_device: str
    notes: list[str] = field(default_factory=list)

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


def judge_working_bytes(model: nn.Module, images: int, dtype_bytes: int, image_tokens: int = 361,
                        text_tokens: int = 96) -> tuple[int, str]:
    """Estimate for one LVLM forward pass: KV cache of all layers + one layer's MLP and attention tensors."""
    text = getattr(model.config, "text_config", model.config)
    layers, hidden = text.num_hidden_layers, text.hidden_size
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", heads)
    head_dim = hidden // heads
    n = images * (image_tokens + text_tokens)
    kv = 2 * layers * kv_heads * head_dim * n * dtype_bytes
    layer = n * (3 * text.intermediate_size + 4 * hidden) * dtype_bytes
    return kv + layer, (f"estimate: {images} image(s) x {image_tokens + text_tokens} tokens: KV cache {kv / GIB:.3f} "
                        f"GiB + one layer's tensors {layer / GIB:.3f} GiB")


# --- the plan of a training config --------------------------------------------------------------------


def _unique_prompt_count(config) -> int:
    from .data import load_prompts, load_targets
    from .heldout import heldout_prompts

    prompts = load_prompts(config.data.prompts_file)
    extra = []
    if str(config.data.targets) != "uniform":
        extra = [p for _, p in load_targets(config.data.targets) if p]
    return len(dict.fromkeys(prompts + extra + heldout_prompts(config, prompts)))


def _training_device(config) -> str:
    if config.device == "cpu":
        return "cpu"
    return "cuda:0"


def _reward_device(spec, training_device: str) -> str:
    device = spec.device or training_device
    if device == "cuda":
        return "cuda:0"
    if device == "auto":
        return training_device
    return device


def plan_training(config, *, components: Optional[dict[str, nn.Module]] = None,
                  prompt_count: Optional[int] = None) -> MemoryPlan:
    """The :class:`MemoryPlan` of ``config`` (one process), from meta-device models."""
    from ...engines.generation.diffusers_backend import detect_arch
    from ...engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig
    from .config import derive
    from .policy_net import add_lora

    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # the meta modules' dtype casts are intended, not a warning
    derived = derive(config)
    m, s, g = config.model, config.sampling, config.grpo
    components = components if components is not None else pipeline_components(m.pretrained)
    denoiser_name = "transformer" if "transformer" in components else "unet"
    denoiser = components[denoiser_name]
    arch = m.arch if m.arch != "auto" else detect_arch(_ArchProbe(components))
    base = DTYPE_BYTES[m.dtype]
    dev = _training_device(config)
    phases = ["encode", "rollout"]
    reward_phases = [f"score:{spec.kind}" if [r.kind for r in config.rewards].count(spec.kind) == 1
                     else f"score:{spec.kind}_{i}" for i, spec in enumerate(config.rewards)]
    per_step = config.reward_schedule == "step"
    phases += reward_phases + ["update"]
    steps_phases = tuple(p for p in phases if p != "encode")
    out: list[Component] = []
    notes: list[str] = []

    n_denoiser = count_params(denoiser)
    denoiser.to(TORCH_DTYPES[m.dtype])
    out.append(Component(denoiser_name, dev, n_denoiser * base, tuple(phases),
                         f"{n_denoiser:,d} params x {base} B ({m.dtype})", n_denoiser))
    with torch.device("meta"):
        add_lora(denoiser, arch, m.lora_rank, m.lora_alpha, m.lora_targets)
    n_lora = count_params(denoiser, lambda n, p: "lora_" in n)
    tokens, ctx_dim, pooled_dim = _conditioning_dims(arch, components)
    adapter = None
    n_adapter = 0
    if m.train_adapter or m.adapter_init:
        extra = {"hidden_dim": m.adapter_hidden} if m.adapter_hidden else {}
        acfg = EmotionAdapterConfig(arch=arch, context_dim=ctx_dim, pooled_dim=None if arch == "sd15" else pooled_dim,
                                    **extra)
        with torch.device("meta"):
            adapter = EmotionAdapter(acfg).float()
        n_adapter = count_params(adapter)
        if not m.train_adapter:
            adapter.requires_grad_(False)
    trained = n_lora + (n_adapter if m.train_adapter else 0)
    out.append(Component("lora+adapter weights (fp32)", dev, (n_lora + n_adapter) * 4, tuple(phases),
                         f"LoRA {n_lora:,d} + adapter {n_adapter:,d} params x 4 B", n_lora + n_adapter))
    out.append(Component("AdamW states (2 x fp32)", dev, trained * 8, steps_phases,
                         f"{trained:,d} trainable params x 2 states x 4 B (params already fp32: no master copy)",
                         trained))
    out.append(Component("gradients (fp32)", dev, trained * 4, ("update",),
                         f"{trained:,d} trainable params x 4 B; freed after each optimizer step", trained))
    if config.optim.ema:
        out.append(Component("EMA copy (fp32)", dev, trained * 4, steps_phases, f"{trained:,d} params x 4 B", trained))

    # text encoders and the prompt cache
    cached = config.data.cache_prompt_embeddings
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if name not in components:
            continue
        n = count_params(components[name])
        out.append(Component(name, dev, n * base, ("encode",) if cached else tuple(phases),
                             f"{n:,d} params x {base} B" + ("; freed after caching" if cached else ""), n))
    cfg_any = s.guidance_scale != 1.0
    per_prompt = tokens * ctx_dim + (pooled_dim or 0)
    if cached:
        count = prompt_count if prompt_count is not None else _unique_prompt_count(config)
        n_cached = (count + (1 if cfg_any else 0)) * per_prompt
        out.append(Component("cached prompt embeddings", "cpu", n_cached * base, tuple(phases),
                             f"({count} prompts{' + negative' if cfg_any else ''}) x {per_prompt:,d} values x {base} B "
                             "in host memory", None))

    vae = components["vae"]
    n_vae = count_params(vae)
    vae_dtype = m.dtype
    if m.dtype == "float16" and getattr(vae.config, "force_upcast", False):
        vae_dtype = "float32"  # the trainer upcasts the VAE in fp16 runs, as diffusers does
    vae.to(TORCH_DTYPES[vae_dtype])
    out.append(Component("vae", dev, n_vae * DTYPE_BYTES[vae_dtype], tuple(phases),
                         f"{n_vae:,d} params x {DTYPE_BYTES[vae_dtype]} B ({vae_dtype})", n_vae))

    # trajectories held from rollout to update
    train_guidance = 1.0 if s.cfg_free_training else s.guidance_scale
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = denoiser.config.in_channels * (s.resolution // scale) ** 2
    n_samples = derived.samples_per_step_per_process
    T = s.steps
    traj = n_samples * ((T + 1) * latent * 4 + T * 4 + per_prompt * 4 * (2 if train_guidance != 1.0 else 1))
    if g.ratio_norm == "grpo_guard":
        traj += n_samples * T * latent * 4
    images = n_samples * s.resolution**2 * 3 * 4
    out.append(Component("trajectories of a step", dev, traj, steps_phases,
                         f"{n_samples} samples x ({T + 1} latents + log-probs + fp32 conditioning"
                         f"{' + step means' if g.ratio_norm == 'grpo_guard' else ''})"))
    out.append(Component("decoded images of a step", "cpu", images, steps_phases, f"{n_samples} x {s.resolution}² x 3 x 4 B"))

    acts = measure_activations(arch, denoiser, adapter, vae, batch=g.batch_size, resolution=s.resolution,
                               dtype=TORCH_DTYPES[m.dtype], guidance=train_guidance,
                               gradient_checkpointing=m.gradient_checkpointing, tokens=tokens, context_dim=ctx_dim,
                               pooled_dim=None if arch == "sd15" else pooled_dim)
    out.append(Component("activations per micro-batch (update)", dev, acts.saved_bytes, ("update",),
                         f"measured: {acts.method}; batch {g.batch_size}"
                         f"{' x2 (CFG)' if train_guidance != 1.0 else ''}"))
    rollout_bytes = max(acts.rollout_forward_peak, acts.vae_decode_peak)
    out.append(Component("rollout working memory", dev, rollout_bytes, ("rollout",),
                         f"measured live-tensor peak: denoiser forward {acts.rollout_forward_peak / GIB:.3f} GiB, "
                         f"VAE decode {acts.vae_decode_peak / GIB:.3f} GiB (TorchDispatchMode, meta)"))

    # reward models
    for spec, phase in zip(config.rewards, reward_phases):
        model = reward_model(spec.kind, spec.path)
        if model is None:
            continue
        rdev = _reward_device(spec, dev)
        rbytes = DTYPE_BYTES.get(spec.dtype, 4)
        wbytes, how = quantized_bytes(model, rbytes, spec.quantization)
        n = count_params(model)
        label = "judge" if spec.kind == "lvlm" else "quality model"
        name = f"{label} {Path(spec.path).name or spec.path} ({spec.quantization if spec.quantization != 'none' else spec.dtype})"
        if spec.offload:
            out.append(Component(name, rdev, wbytes, (phase,), how + "; swapped in for its score call only", n))
            out.append(Component(name + " (offloaded)", "cpu", wbytes,
                                 tuple(p for p in phases if p != phase), how, n))
        else:
            out.append(Component(name, rdev, wbytes, tuple(phases), how, n))
        if spec.kind == "lvlm":
            per_pass = spec.images_per_pass or (n_samples if per_step else g.batch_size)
            work, how = judge_working_bytes(model, per_pass, rbytes)
            out.append(Component(f"{label} working memory", rdev, work, (phase,), how))
        if spec.offload and not per_step:
            notes.append(f"{spec.kind} is offloaded and scored per micro-batch: "
                         f"{derived.micro_batches_per_step} swaps per step (reward_schedule='step' makes it one)")
    if any(c.device not in ("cpu", dev) for c in out):
        notes.append("rewards on another device overlap nothing here but free the training device")
    notes.append("not counted: CUDA context, allocator fragmentation, library workspaces, activation gradients "
                 "in flight during backward")
    return MemoryPlan(out, phases, dev, notes)


def print_plan_or_reason(config) -> Optional[MemoryPlan]:
    """``train --dry-run``: print the plan, or one line saying why it cannot be computed."""
    try:
        plan = plan_training(config)
    except PlanError as exc:
        print(f"[train] memory plan unavailable: {exc}")
        return None
    print(plan.render())
    print(f"[train] planned peak {plan.planned_peak_bytes() / GIB:.2f} GiB on {', '.join(plan.accelerator_devices()) or 'cpu'}")
    return plan

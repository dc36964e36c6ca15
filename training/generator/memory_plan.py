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

import contextlib
import importlib
import json
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

from ...engines.errors import UserError
from . import family_plan, real_configs

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PlanError(UserError, ValueError):
    """The plan cannot be computed (a model's configs are not available locally)."""


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


# --- building models on the meta device ---------------------------------------------------------------


def _import(library: str, name: str):
    return getattr(importlib.import_module(library), name)


def _meta_module(library: str, cls_name: str, config: dict | str | Path) -> nn.Module:
    """``cls`` built from a config dict or a folder holding ``config.json``, on the meta device."""
    cls = _import(library, cls_name)
    with torch.device("meta"):
        if library == "diffusers":
            cfg = cls.load_config(str(config)) if isinstance(config, (str, Path)) else dict(config)
            return cls.from_config(cfg)
        config_cls = cls.config_class
        cfg = config_cls.from_pretrained(str(config)) if isinstance(config, (str, Path)) else config_cls(**config)
        return cls(cfg)


def pipeline_components(pretrained: str) -> dict[str, nn.Module]:
    """The pipeline's denoiser, VAE and text encoders on the meta device, from a local folder or a known id."""
    folder = Path(pretrained).expanduser()
    modules: dict[str, nn.Module] = {}
    if folder.is_dir() and (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        for name in ("transformer", "unet", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            entry = index.get(name)
            if not entry or entry[0] is None or not (folder / name / "config.json").is_file():
                continue
            modules[name] = _meta_module(entry[0], entry[1], folder / name)
        return modules
    known = real_configs.PIPELINES.get(pretrained)
    if known is None:
        raise PlanError(
            f"model.pretrained={pretrained!r} is neither a local diffusers folder nor a model the plan knows "
            f"({', '.join(real_configs.PIPELINES)}); download the pipeline folder (the plan reads only its "
            "config.json files) and point model.pretrained at it"
        )
    return {name: _meta_module(lib, cls, cfg) for name, (lib, cls, cfg) in known.items()}


def reward_model(kind: str, path: str) -> Optional[nn.Module]:
    """The reward's model on the meta device (None for weight-free rewards)."""
    if kind not in ("lvlm", "clip_quality"):
        return None
    folder = Path(path).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        if kind == "lvlm":
            from transformers import AutoConfig, AutoModelForImageTextToText

            with torch.device("meta"):
                return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(folder)))
        return _meta_module("transformers", "CLIPModel", folder)
    known = real_configs.known_reward_config(path)
    if known is None:
        raise PlanError(f"reward model {path!r} is neither a local folder with config.json nor a model the plan "
                        f"knows ({', '.join(real_configs.REWARD_MODELS)}); download it (config.json suffices)")
    config_cls, cfg = known
    if config_cls == "CLIPConfig":
        from transformers import CLIPConfig, CLIPModel

        with torch.device("meta"):
            return CLIPModel(CLIPConfig(**cfg))
    from transformers import AutoModelForImageTextToText

    config = _import("transformers", config_cls)(**cfg)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def count_params(module: nn.Module, predicate=None) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if predicate is None or predicate(n, p))


def quantized_bytes(module: nn.Module, dtype_bytes: int, quantization: str) -> tuple[int, str]:
    """bitsandbytes layout: Linear weights at 1 byte (+ fp32 row scale) or 4 bits (+ fp32 absmax per 64)."""
    if quantization == "none":
        n = count_params(module)
        return n * dtype_bytes, f"{n:,d} params x {dtype_bytes} B"
    linear_w = other = 0
    rows = 0
    skip = ("lm_head",)  # transformers keeps the output head unquantised
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and not name.endswith(skip):
            linear_w += sub.weight.numel()
            rows += sub.weight.shape[0]
    other = count_params(module) - linear_w
    if quantization == "8bit":
        total = linear_w + 4 * rows + other * dtype_bytes
        how = f"{linear_w:,d} Linear weights x 1 B + {rows:,d} fp32 row scales + {other:,d} params x {dtype_bytes} B"
    else:
        total = linear_w // 2 + 4 * math.ceil(linear_w / 64) + other * dtype_bytes
        how = f"{linear_w:,d} Linear weights x 0.5 B + fp32 absmax per 64 + {other:,d} params x {dtype_bytes} B"
    return total, how


# --- measuring activations on the meta device --------------------------------------------------------


class _SavedCounter:
    """Bytes autograd saves for backward: unique tensors (views count their base once), parameters excluded."""

    def __init__(self, exclude: Iterable[torch.Tensor], seen: Optional[dict] = None):
        self.exclude = {id(p) for p in exclude}
        self.seen = {} if seen is None else seen  # id → tensor (kept alive so ids stay unique)
        self.bytes = 0

    def add(self, tensor: torch.Tensor) -> None:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) in self.exclude or id(tensor) in self.exclude or id(base) in self.seen:
            return
        self.seen[id(base)] = base
        self.bytes += base.numel() * base.element_size()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.add(tensor)
        return tensor

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


class _FusedAttention(torch.autograd.Function):
    """Meta stand-in for CUDA flash / memory-efficient SDPA: output shaped like q, saves q, k, v, out, lse."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@contextlib.contextmanager
def fused_attention_stand_in():
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        return _FusedAttention.apply(query, key, value)

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of tensors alive at once, counted per op output (views and in-place results excluded)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a) for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t) not in inputs and not t._is_view():
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._free, n)
        return out


@contextlib.contextmanager
def _shape_only_va_check():
    """The adapter checks V-A values (data-dependent, impossible on meta); on meta only shapes are checked."""
    from ...engines.generation import emotion_adapter

    original = emotion_adapter._va_tensor

    def va_tensor(va, batch, device, dtype):
        if isinstance(va, torch.Tensor) and va.device.type == "meta":
            return va.to(dtype=dtype).expand(batch, 2)
        return original(va, batch, device, dtype)

    emotion_adapter._va_tensor = va_tensor
    try:
        yield
    finally:
        emotion_adapter._va_tensor = original


@dataclass
class ActivationFigures:
    saved_bytes: int  # held for backward by one micro-batch's training forward
    outside_blocks: int
    block_inputs: int
    largest_block: int
    checkpointed: bool
    rollout_forward_peak: int
    vae_decode_peak: int
    method: str


def _conditioning_dims(arch: str, components: dict[str, nn.Module]) -> tuple[int, int, Optional[int]]:
    """(tokens, context width, pooled width) of the conditioning the pipeline's encode_prompt returns."""
    if arch == "sd3":
        cfg = components["transformer"].config
        return real_configs.CLIP_TOKENS + real_configs.SD3_T5_TOKENS, cfg.joint_attention_dim, cfg.pooled_projection_dim
    cfg = components["unet"].config
    if arch == "sdxl":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        return real_configs.CLIP_TOKENS, cfg.cross_attention_dim, pooled
    return real_configs.CLIP_TOKENS, cfg.cross_attention_dim, None


def _sd_forward(arch: str, denoiser: nn.Module, adapter: Optional[nn.Module], vae: nn.Module, *, batch: int,
                resolution: int, dtype: torch.dtype, guidance: float, tokens: int, context_dim: int,
                pooled_dim: Optional[int], device: str):
    """(net, training forward, VAE decode) of an SD1.5/SDXL/SD3 micro-batch through :class:`PolicyNet`."""
    from .policy_net import Conditioning, PolicyNet

    net = PolicyNet(arch, denoiser, adapter, dtype)
    side = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    on = dict(device=device)
    x = torch.randn(batch, denoiser.config.in_channels, side, side, dtype=torch.float32, **on)
    cfg = guidance != 1.0
    context = torch.randn(batch, tokens, context_dim, **on)
    pooled = None if pooled_dim is None else torch.randn(batch, pooled_dim, **on)
    cond = Conditioning(context, pooled, context.clone() if cfg else None,
                        None if pooled is None or not cfg else pooled.clone())
    va = torch.zeros(batch, 2, **on)
    t = torch.tensor(500.0, **on)
    if arch == "sdxl":
        net.time_ids = torch.full((1, 6), float(resolution), **on)
    return net, (lambda: net(x, t, cond, va, guidance, 1.0)), (lambda: vae.decode(x.to(vae.dtype), return_dict=False))


def measure_activations(arch: str, denoiser: nn.Module, adapter: Optional[nn.Module], vae: nn.Module, *,
                        batch: int, resolution: int, dtype: torch.dtype, guidance: float,
                        gradient_checkpointing: bool, tokens: int, context_dim: int,
                        pooled_dim: Optional[int], device: str = "meta",
                        fused_attention: bool = True) -> ActivationFigures:
    """Saved-for-backward bytes of one training forward and the live peaks of rollout and decoding.

    ``device="meta"`` (the plan) needs no memory; the same count on real tensors (``"cpu"``) is what
    tests compare it with. ``fused_attention=False`` keeps the installed SDPA kernel.
    """
    from .family_plan import FAMILIES, plan_forward

    if arch in FAMILIES:  # the flow transformers of issue 23: their own packing, ids and conditioning
        net, forward, decode = plan_forward(FAMILIES[arch], denoiser, adapter, vae, batch=batch, resolution=resolution,
                                            dtype=dtype, guidance=guidance, tokens=tokens, context_dim=context_dim,
                                            pooled_dim=pooled_dim, device=device)
    else:
        net, forward, decode = _sd_forward(arch, denoiser, adapter, vae, batch=batch, resolution=resolution, dtype=dtype,
                                           guidance=guidance, tokens=tokens, context_dim=context_dim,
                                           pooled_dim=pooled_dim, device=device)
    attention = fused_attention_stand_in if fused_attention else contextlib.nullcontext
    params = list(net.parameters())
    seen: dict = {}
    outer = _SavedCounter(params, seen)
    inputs = _SavedCounter(params, seen)
    blocks: list[int] = []

    def checkpoint_counter(fn, *args, **kwargs):
        for a in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(a, torch.Tensor):
                inputs.add(a)
        inner = _SavedCounter(params)
        with torch.autograd.graph.saved_tensors_hooks(inner.pack, inner.unpack):
            out = fn(*args, **kwargs)
        blocks.append(inner.bytes)
        return out

    if gradient_checkpointing:
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_counter)
    denoiser.train()
    try:
        with _shape_only_va_check(), attention(), torch.autograd.graph.saved_tensors_hooks(outer.pack, outer.unpack):
            forward()
    finally:
        if gradient_checkpointing:
            denoiser.disable_gradient_checkpointing()
    largest = max(blocks) if blocks else 0
    saved = outer.bytes + inputs.bytes + largest
    # rollout: the same forward without autograd; then decoding one micro-batch
    roll = LiveBytes()
    with torch.no_grad(), _shape_only_va_check(), attention(), roll:
        forward()
    dec = LiveBytes()
    with torch.no_grad(), attention(), dec:
        decode()
    method = ("saved_tensors_hooks on the real-size model on the meta device (fused-SDPA stand-in)"
              + ("; checkpointed: outside + block inputs + largest block" if gradient_checkpointing else ""))
    return ActivationFigures(saved, outer.bytes, inputs.bytes, largest, gradient_checkpointing, roll.peak, dec.peak,
                             method)


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
    family = family_plan.family_of(denoiser)  # Flux / Flux.2 Klein / Qwen-Image / Z-Image, else None
    if m.arch != "auto":
        arch = m.arch
    else:
        arch = family.arch if family is not None else detect_arch(_ArchProbe(components))
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
    quant = getattr(m, "quantization", "none")
    d_bytes, d_how = quantized_bytes(denoiser, base, quant)  # frozen base: bitsandbytes/torchao layout
    out.append(Component(denoiser_name, dev, d_bytes, tuple(phases),
                         f"{d_how} ({m.dtype}{', ' + quant + ' base' if quant != 'none' else ''})", n_denoiser))
    with torch.device("meta"):
        add_lora(denoiser, arch, m.lora_rank, m.lora_alpha, list(m.lora_targets))  # empty: the family defaults
    n_lora = count_params(denoiser, lambda n, p: "lora_" in n)
    if family is not None:
        tokens, ctx_dim, pooled_dim = family_plan.conditioning_dims(family, denoiser)
    else:
        tokens, ctx_dim, pooled_dim = _conditioning_dims(arch, components)
    adapter = None
    n_adapter = 0
    if m.train_adapter or m.adapter_init:
        extra = {"hidden_dim": m.adapter_hidden} if m.adapter_hidden else {}
        acfg = EmotionAdapterConfig(arch=family_plan.adapter_arch(arch, pooled_dim), context_dim=ctx_dim,
                                    pooled_dim=None if arch == "sd15" else pooled_dim, **extra)
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
    cfg_any = family_plan.uses_negative_branch(family, s.guidance_scale)
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
    train_cfg = family_plan.uses_negative_branch(family, train_guidance)
    if family is not None:
        latent = family_plan.latent_values(family, denoiser, vae, s.resolution)
    else:
        latent = denoiser.config.in_channels * (s.resolution // 2 ** (len(vae.config.block_out_channels) - 1)) ** 2
    n_samples = derived.samples_per_step_per_process
    T = s.steps
    traj = n_samples * ((T + 1) * latent * 4 + T * 4 + per_prompt * 4 * (2 if train_cfg else 1))
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
                         f"{' x2 (CFG)' if train_cfg else ''}"))
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


class _ArchProbe:
    """Enough of a pipeline for ``detect_arch`` (which looks at its transformer / unet)."""

    def __init__(self, components: dict[str, nn.Module]):
        self.transformer = components.get("transformer")
        self.unet = components.get("unet")


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

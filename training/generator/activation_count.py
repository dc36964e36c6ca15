"""Activation and working-memory figures of the real-size denoiser, counted on the ``meta`` device.

- saved-for-backward bytes of one training forward (adapter + CFG + LoRA + denoiser), counted with
  ``torch.autograd.graph.saved_tensors_hooks``, unique tensors only, parameters excluded; attention
  replaced by a stand-in that saves what CUDA's fused SDPA kernels save (q, k, v, output, fp32
  logsumexp) instead of the math kernel's N×N probabilities; with gradient checkpointing: bytes
  saved outside checkpointed blocks + each block's inputs + the largest block's saved bytes;
- the live-tensor peak of a no-grad forward (rollout) and of the VAE decode, with a ``TorchDispatchMode``.

The same counts run on real tensors (``device="cpu"``) in the tests, which compare the two.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from . import real_configs


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
    from .family_plan import FAMILIES, conditioning_dims

    if arch in FAMILIES:  # Flux / Flux.2 Klein / Qwen-Image / Z-Image: the transformer's config says it
        return conditioning_dims(FAMILIES[arch], components["transformer"])
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

    build = plan_forward if arch in FAMILIES else _sd_forward  # the flow transformers: their packing, ids, conditioning
    net, forward, decode = build(FAMILIES[arch] if arch in FAMILIES else arch, denoiser, adapter, vae, batch=batch,
                                 resolution=resolution, dtype=dtype, guidance=guidance, tokens=tokens,
                                 context_dim=context_dim, pooled_dim=pooled_dim, device=device)
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


"""Prompt-embedding cache: encode the fixed training prompts once, then free the text encoders.

GRPO draws its prompts from a fixed list (``data.prompts_file`` plus any prompts in the targets
table), so every text-encoder forward after the first one per prompt is wasted work — and on SD3.x
the encoders (T5-XXL ≈ 4.8 B parameters, 9.5 GB in fp16, plus CLIP-L and CLIP-G) hold more memory
than the transformer being trained. :func:`build_prompt_cache` runs the pipeline's own
``encode_prompt`` once per unique prompt (and once for the negative prompt), keeps each result in
host memory in the encoder's output dtype (the policy upcasts to fp32 on use, exactly as it does for
on-the-fly encoding, so the values are bit-equal), optionally writes them to a safetensors file, and
:func:`free_text_encoders` drops the encoders from the pipeline. The emotion adapter is untouched: it
acts on the conditioning in :class:`~.policy_net.PolicyNet`, after the lookup.

Both paths make one encoder call per unique prompt (``DiffusionPolicy.encode`` does so too): a text
encoder treats the rows of a batch independently, but a matmul over a different number of rows may
round differently, so batching prompts would make the conditioning depend on the micro-batch.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...engines.errors import UserError
from .policy_net import Conditioning

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")
FORMAT = "emofeedback2.prompt_cache/1"


class PromptCacheError(UserError, KeyError):
    """A prompt is missing from the cache after the text encoders were freed, or a cache file is stale."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass
class _Entry:
    context: torch.Tensor  # [L, D], encoder output dtype, CPU
    pooled: Optional[torch.Tensor]  # [P] or None (SD1.5)


@dataclass
class PromptEmbeddingCache:
    """Encoded prompts in host memory; :meth:`encode` has the signature of ``DiffusionPolicy.encode``."""

    arch: str
    negative_prompt: str
    entries: dict[str, _Entry] = field(default_factory=dict)
    negative: Optional[_Entry] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.entries

    def nbytes(self) -> int:
        """Host bytes held by the cached tensors."""
        total = 0
        for entry in [*self.entries.values(), *( [self.negative] if self.negative else [])]:
            total += entry.context.numel() * entry.context.element_size()
            if entry.pooled is not None:
                total += entry.pooled.numel() * entry.pooled.element_size()
        return total

    def _lookup(self, prompt: str) -> _Entry:
        entry = self.entries.get(prompt)
        if entry is None:
            raise PromptCacheError(
                f"prompt {prompt[:60]!r} is not in the prompt-embedding cache and the text encoders were freed; "
                "add it to data.prompts_file (or the held-out prompts) or set data.cache_prompt_embeddings = false"
            )
        return entry

    def encode(self, prompts: Sequence[str], negative: str, cfg: bool) -> Conditioning:
        """The conditioning ``DiffusionPolicy.encode`` would return, from the cache (fp32, on ``device``)."""
        if cfg and negative != self.negative_prompt:
            raise PromptCacheError(
                f"negative prompt {negative[:60]!r} differs from the cached one {self.negative_prompt[:60]!r}; "
                "rebuild the cache (delete the cache file) after changing sampling.negative_prompt"
            )
        entries = [self._lookup(p) for p in prompts]
        to = lambda t: t.to(self.device).float()  # noqa: E731  # same upcast as DiffusionPolicy.encode
        context = to(torch.stack([e.context for e in entries]))
        pooled = None if entries[0].pooled is None else to(torch.stack([e.pooled for e in entries]))
        if not cfg:
            return Conditioning(context, pooled)
        if self.negative is None:
            raise PromptCacheError("the cache was built without guidance (no negative prompt); rebuild it with CFG on")
        n = len(prompts)
        neg = to(self.negative.context.unsqueeze(0).expand(n, *self.negative.context.shape).contiguous())
        neg_pooled = None
        if self.negative.pooled is not None:
            neg_pooled = to(self.negative.pooled.unsqueeze(0).expand(n, -1).contiguous())
        return Conditioning(context, pooled, neg, neg_pooled)

    # --- disk ---------------------------------------------------------------------------------------
    def save(self, path: str | Path, key: str) -> Path:
        """Atomic safetensors write; ``key`` identifies the model + prompt list it was built from."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        prompts = list(self.entries)
        for i, prompt in enumerate(prompts):
            tensors[f"context.{i}"] = self.entries[prompt].context.contiguous()
            if self.entries[prompt].pooled is not None:
                tensors[f"pooled.{i}"] = self.entries[prompt].pooled.contiguous()
        if self.negative is not None:
            tensors["neg.context"] = self.negative.context.contiguous()
            if self.negative.pooled is not None:
                tensors["neg.pooled"] = self.negative.pooled.contiguous()
        meta = {"format": FORMAT, "key": key, "arch": self.arch, "negative_prompt": self.negative_prompt,
                "prompts": json.dumps(prompts)}
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, key: str) -> Optional["PromptEmbeddingCache"]:
        """The cache stored at ``path`` when it was built for ``key``; ``None`` when absent or stale."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("key") != key:
                return None
            names = set(handle.keys())
            get = lambda name: handle.get_tensor(name) if name in names else None  # noqa: E731
            cache = cls(meta["arch"], meta["negative_prompt"])
            for i, prompt in enumerate(json.loads(meta["prompts"])):
                cache.entries[prompt] = _Entry(get(f"context.{i}"), get(f"pooled.{i}"))
            if "neg.context" in names:
                cache.negative = _Entry(get("neg.context"), get("neg.pooled"))
        return cache


def cache_key(model: str, arch: str, prompts: Sequence[str], negative: str, cfg: bool, dtype: str) -> str:
    """A digest of everything the cached tensors depend on (model id, prompts, negative, CFG, dtype)."""
    payload = json.dumps([model, arch, sorted(set(prompts)), negative, cfg, dtype], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@torch.no_grad()
def build_prompt_cache(policy, prompts: Sequence[str], negative: str, cfg: bool) -> PromptEmbeddingCache:
    """Encode each unique prompt alone (and the negative once) with the pipeline's own text encoders."""
    cache = PromptEmbeddingCache(policy.arch, negative, device=policy.device)
    for prompt in dict.fromkeys(prompts):  # unique, in order
        cond = policy.encode_raw([prompt], negative, cfg)
        cache.entries[prompt] = _Entry(cond[0][0].cpu(), None if cond[1] is None else cond[1][0].cpu())
        if cfg and cache.negative is None:
            cache.negative = _Entry(cond[2][0].cpu(), None if cond[3] is None else cond[3][0].cpu())
    return cache


def free_text_encoders(pipe) -> int:
    """Drop the pipeline's text encoders (they are not trained); returns the parameter bytes released."""
    freed = 0
    for name in TEXT_ENCODER_NAMES:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        freed += sum(p.numel() * p.element_size() for p in module.parameters())
        setattr(pipe, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return freed


def training_prompts(trainer) -> list[str]:
    """Every prompt a run can draw: the prompt list, prompts in the targets table, the held-out prompts."""
    prompts = list(trainer.sampler.prompts)
    if trainer.sampler.table is not None:
        prompts += [p for _, p in trainer.sampler.table if p]
    from .heldout import heldout_prompts

    prompts += heldout_prompts(trainer.config, trainer.sampler.prompts)
    return list(dict.fromkeys(prompts))


def attach_prompt_cache(trainer) -> Optional[PromptEmbeddingCache]:
    """When ``data.cache_prompt_embeddings``: build (or load) the cache, hand it to the policy, free the encoders.

    The negative prompt is cached whenever any phase samples with guidance (training, or only the
    evaluation when ``sampling.cfg_free_training``), so one cache serves rollouts and evaluation.
    """
    c = trainer.config
    if not c.data.cache_prompt_embeddings:
        return None
    cfg = c.sampling.guidance_scale != 1.0
    prompts = training_prompts(trainer)
    key = cache_key(c.model.pretrained, trainer.arch, prompts, c.sampling.negative_prompt, cfg, c.model.dtype)
    path = Path(c.data.prompt_cache_file) if c.data.prompt_cache_file else None
    cache = PromptEmbeddingCache.load(path, key) if path else None
    if cache is None:
        cache = build_prompt_cache(trainer.policy, prompts, c.sampling.negative_prompt, cfg)
        if path is not None and trainer.accelerator.is_main_process:
            cache.save(path, key)
    cache.device = trainer.device
    trainer.policy.prompt_cache = cache
    freed = free_text_encoders(trainer.pipe)
    if trainer.accelerator.is_main_process:
        print(f"[train] prompt-embedding cache: {len(cache.entries)} prompts, {cache.nbytes() / 2**20:.1f} MiB in host "
              f"memory; text encoders freed ({freed / 2**30:.2f} GiB)")
    return cache

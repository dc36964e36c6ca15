"""Prompt-embedding cache: encode the fixed training prompts once, then free the text encoders.

GRPO draws its prompts from a fixed list (``data.prompts_file`` plus any prompts in the targets
table), so every text-encoder forward after the first one per prompt is wasted work — and on SD3.x
the encoders (T5-XXL ≈ 4.8 B parameters, 9.5 GB in fp16, plus CLIP-L and CLIP-G) hold more memory
than the transformer being trained; Flux.2 Klein, Qwen-Image and Z-Image encode with a 4-8 B language
model, so for them the cache is always on (:func:`attach_prompt_cache` says so when the config has it
off). :func:`build_prompt_cache` runs the pipeline's own
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
from .families import family_for
from .policies import stack_rows
from .policy_net import Conditioning

TEXT_ENCODER_NAMES = ("text_encoder", "text_encoder_2", "text_encoder_3")
FORMAT = "emofeedback2.prompt_cache/2"  # /2: token masks, tensors named <part>.<index|neg>


class PromptCacheError(UserError, KeyError):
    """A prompt is missing from the cache after the text encoders were freed, or a cache file is stale."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


@dataclass
class _Entry:
    context: torch.Tensor  # [L, D], encoder output dtype, CPU
    pooled: Optional[torch.Tensor]  # [P] or None (SD1.5, the language-model encoders)
    mask: Optional[torch.Tensor] = None  # [L] bool when the encoder marks real tokens (Qwen-Image, Z-Image)


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
        for entry in [*self.entries.values(), *([self.negative] if self.negative else [])]:
            for tensor in (entry.context, entry.pooled, entry.mask):
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
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
        to = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        # the same row stacking (and fp32 upcast) as DiffusionPolicy.encode: bit-equal conditioning
        context, mask = stack_rows([(e.context, e.mask) for e in entries])
        pooled = None if entries[0].pooled is None else torch.stack([e.pooled for e in entries]).float()
        if not cfg:
            return Conditioning(to(context), to(pooled), mask=to(mask))
        if self.negative is None:
            raise PromptCacheError("the cache was built without guidance (no negative prompt); rebuild it with CFG on")
        n = len(prompts)
        neg, neg_mask = stack_rows([(self.negative.context, self.negative.mask)] * n)
        neg_pooled = None
        if self.negative.pooled is not None:
            neg_pooled = torch.stack([self.negative.pooled] * n).float()
        return Conditioning(to(context), to(pooled), to(neg), to(neg_pooled), to(mask), to(neg_mask))

    # --- disk ---------------------------------------------------------------------------------------
    def save(self, path: str | Path, key: str) -> Path:
        """Atomic safetensors write; ``key`` identifies the model + prompt list it was built from."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        prompts = list(self.entries)
        for i, prompt in enumerate(prompts):
            _put(tensors, str(i), self.entries[prompt])
        if self.negative is not None:
            _put(tensors, "neg", self.negative)
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
                cache.entries[prompt] = _Entry(get(f"context.{i}"), get(f"pooled.{i}"), get(f"mask.{i}"))
            if "context.neg" in names:
                cache.negative = _Entry(get("context.neg"), get("pooled.neg"), get("mask.neg"))
        return cache


def _put(tensors: dict[str, torch.Tensor], name: str, entry: _Entry) -> None:
    for part in ("context", "pooled", "mask"):
        value = getattr(entry, part)
        if value is not None:
            tensors[f"{part}.{name}"] = value.contiguous()


def cache_key(model: str, arch: str, prompts: Sequence[str], negative: str, cfg: bool, dtype: str) -> str:
    """A digest of everything the cached tensors depend on (model id, prompts, negative, CFG, dtype)."""
    payload = json.dumps([model, arch, sorted(set(prompts)), negative, cfg, dtype], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@torch.no_grad()
def build_prompt_cache(policy, prompts: Sequence[str], negative: str, cfg: bool) -> PromptEmbeddingCache:
    """Encode each unique prompt alone (and the negative once) with the pipeline's own text encoders."""
    cache = PromptEmbeddingCache(policy.arch, negative, device=policy.device)
    first = lambda t: None if t is None else t[0].cpu()  # noqa: E731
    for prompt in dict.fromkeys(prompts):  # unique, in order
        e = policy.encode_raw([prompt], negative, cfg)
        cache.entries[prompt] = _Entry(first(e.prompt_embeds), first(e.pooled_prompt_embeds), first(e.prompt_mask))
        if cfg and cache.negative is None:
            cache.negative = _Entry(first(e.negative_prompt_embeds), first(e.negative_pooled_prompt_embeds),
                                    first(e.negative_prompt_mask))
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
    forced = family_for(trainer.arch).llm_encoder and not c.data.cache_prompt_embeddings
    if not (c.data.cache_prompt_embeddings or forced):
        return None
    if forced and trainer.accelerator.is_main_process:
        print(f"[train] prompt-embedding cache on although data.cache_prompt_embeddings = false: {trainer.arch}'s "
              "text encoder is a language model (4-8B parameters); the prompts are encoded once and it is freed")
    cfg = trainer.policy.wants_negative(c.sampling.guidance_scale != 1.0)
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

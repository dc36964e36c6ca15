"""Prompt-embedding cache on each new family: on (and said so) for language-model encoders, encoders freed,
and the cached conditioning bit-equal to encoding on the fly — token masks included, where prompts of
different lengths share a micro-batch (Qwen-Image, Z-Image), and the negative branch where it exists."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline
from emofeedback2.training.generator.policies import DiffusionPolicy, rollout

from test_families_train_export import _trainer

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize("arch,guidance", [("flux", 1.0), ("flux", 3.5), ("flux2_klein", 1.0), ("qwen_image", 1.0),
                                           ("qwen_image", 2.5), ("z_image", 1.0), ("z_image", 2.5)])
def test_cache_is_bit_equal_to_on_the_fly_encoding(tiny_pipeline_dirs, tmp_path, capsys, arch, guidance):
    trainer = _trainer(tiny_pipeline_dirs[arch], tmp_path / "run", guidance=guidance)
    llm = arch in ("flux2_klein", "qwen_image", "z_image")
    if not llm:  # Flux.1's T5 is not a language model: the cache stays the user's choice
        assert trainer.prompt_cache is None
        trainer.config.data.cache_prompt_embeddings = True
        from emofeedback2.training.generator.prompt_cache import attach_prompt_cache

        trainer.prompt_cache = attach_prompt_cache(trainer)
    else:
        assert "text encoder is a language model" in capsys.readouterr().out
    cache = trainer.prompt_cache
    assert cache is not None and trainer.pipe.text_encoder is None  # encoders freed
    listed = sorted(cache.entries, key=len)
    prompts = [listed[0], listed[-1], listed[0]]  # the shortest and longest training prompts, one repeated
    fresh = load_pipeline(DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs[arch]), device="cpu", dtype="float32"),
                          torch.device("cpu"), torch.float32)
    on_the_fly = DiffusionPolicy(fresh, arch, trainer.raw_net, resolution=32, device=torch.device("cpu"))
    cfg = guidance != 1.0
    a = on_the_fly.encode(prompts, "blurry", cfg)
    b = trainer.policy.encode(prompts, "blurry", cfg)
    for field in ("context", "pooled", "neg_context", "neg_pooled", "mask", "neg_mask"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), field
    if arch in ("qwen_image", "z_image"):  # prompts of different lengths: padded, with a token mask
        assert a.mask is not None and a.mask.sum(1).tolist()[0] < a.mask.sum(1).tolist()[1]
    expects_negative = cfg and arch in ("qwen_image", "z_image")  # Flux.1-dev: guidance is an embedding
    assert (a.neg_context is not None) == expects_negative
    # and the rollouts from both agree bit for bit (the emotion adapter acting on the cached conditioning)
    va = torch.tensor([[2.0, 1.0], [-1.0, 2.0], [0.0, -2.0]])
    ta = rollout(on_the_fly, trainer.raw_net, a, va, [1, 2, 3], 2, guidance, 1.0)
    tb = rollout(trainer.policy, trainer.raw_net, b, va, [1, 2, 3], 2, guidance, 1.0)
    assert torch.equal(ta.latents, tb.latents) and torch.equal(ta.log_probs, tb.log_probs)


def test_cache_file_round_trip_keeps_masks(tiny_pipeline_dirs, tmp_path):
    from emofeedback2.training.generator.prompt_cache import PromptEmbeddingCache

    trainer = _trainer(tiny_pipeline_dirs["qwen_image"], tmp_path / "run", guidance=2.5)
    path = trainer.prompt_cache.save(tmp_path / "cache.safetensors", "key")
    loaded = PromptEmbeddingCache.load(path, "key")
    prompts = list(trainer.prompt_cache.entries)[:3]
    a, b = trainer.prompt_cache.encode(prompts, "blurry", True), loaded.encode(prompts, "blurry", True)
    assert torch.equal(a.context, b.context) and torch.equal(a.neg_context, b.neg_context)
    assert (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)

"""Prompt-embedding cache: bit-equal to on-the-fly encoding, text encoders freed, stale files rebuilt."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.training.generator.prompt_cache import PromptCacheError, PromptEmbeddingCache, cache_key
from emofeedback2.training.generator.trainer import GRPOTrainer

from test_training_trainer import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(pipeline_dir, out, cache: bool, guidance: float, **data):
    c = tiny_config(pipeline_dir, out)
    c.sampling.guidance_scale = guidance
    c.sampling.negative_prompt = "blurry"
    c.data.cache_prompt_embeddings = cache
    for key, value in data.items():
        setattr(c.data, key, value)
    trainer = GRPOTrainer(c, log=False)
    trajs, parts, batch = trainer.sample_step()
    metrics = trainer.train_step()
    return trainer, trajs, parts, metrics


@pytest.mark.parametrize("arch,guidance", [("sd3", 2.0), ("sdxl", 2.0), ("sd3", 1.0)])
def test_cached_run_is_bit_equal_to_encoding_on_the_fly(tiny_pipeline_dirs, tmp_path, arch, guidance):
    plain, trajs_a, parts_a, m_a = _run(tiny_pipeline_dirs[arch], tmp_path / "a", False, guidance)
    cached, trajs_b, parts_b, m_b = _run(tiny_pipeline_dirs[arch], tmp_path / "b", True, guidance)
    # the encoders are gone from the cached run's pipeline, still there in the plain one
    assert cached.pipe.text_encoder is None and cached.pipe.text_encoder_2 is None
    assert plain.pipe.text_encoder is not None
    for ta, tb in zip(trajs_a, trajs_b):
        assert torch.equal(ta.cond.context, tb.cond.context) and torch.equal(ta.cond.pooled, tb.cond.pooled)
        if guidance != 1.0:
            assert torch.equal(ta.cond.neg_context, tb.cond.neg_context)
            assert torch.equal(ta.cond.neg_pooled, tb.cond.neg_pooled)
        else:
            assert tb.cond.neg_context is None
        assert torch.equal(ta.latents, tb.latents) and torch.equal(ta.images, tb.images)
    for name in parts_a:
        assert torch.equal(parts_a[name], parts_b[name])
    # one update later the trained weights (LoRA and the emotion adapter acting on the cache) agree bit for bit
    wa, wb = dict(plain.trainable), dict(cached.trainable)
    assert any(n.startswith("adapter.") for n in wb)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert m_a["train/loss"] == m_b["train/loss"]


def test_cache_file_is_reused_and_rebuilt_when_the_prompts_change(tiny_pipeline_dirs, tmp_path):
    path = tmp_path / "cache.safetensors"
    trainer, *_ = _run(tiny_pipeline_dirs["sd3"], tmp_path / "a", True, 2.0, prompt_cache_file=str(path))
    assert path.is_file()
    key = cache_key(trainer.config.model.pretrained, "sd3", list(trainer.prompt_cache.entries), "blurry", True, "float32")
    loaded = PromptEmbeddingCache.load(path, key)
    assert loaded is not None and list(loaded.entries) == list(trainer.prompt_cache.entries)
    first = next(iter(loaded.entries))
    assert torch.equal(loaded.entries[first].context, trainer.prompt_cache.entries[first].context)
    assert loaded.negative is not None
    # another prompt list (or negative prompt) gives another key: the stale file is not used
    assert PromptEmbeddingCache.load(path, key + "x") is None
    other = cache_key(trainer.config.model.pretrained, "sd3", ["another prompt"], "blurry", True, "float32")
    assert other != key


def test_a_prompt_outside_the_cache_fails_with_the_fix(tiny_pipeline_dirs, tmp_path):
    trainer, *_ = _run(tiny_pipeline_dirs["sd3"], tmp_path / "a", True, 1.0)
    with pytest.raises(PromptCacheError, match="data.prompts_file"):
        trainer.policy.encode(["a prompt nobody listed"], "blurry", False)
    with pytest.raises(PromptCacheError, match="negative prompt"):
        trainer.policy.encode([next(iter(trainer.prompt_cache.entries))], "other negative", True)

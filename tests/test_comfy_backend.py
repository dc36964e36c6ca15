"""The ComfyUI backend against fakes that follow ComfyUI v0.3.64's signatures."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.engines.generation.comfy_backend import ComfyGenerator, apply_adapter_to_conditioning, encode_text
from emofeedback2.engines.generation.emotion_adapter import AdapterArchitectureError, EmotionAdapter, EmotionAdapterConfig
from emofeedback2.engines.emotion_space import VA
from emofeedback2.engines.generation.protocol import GenerationRequest, Generator


def _trained_adapter(arch="sd15", seed=2):
    adapter = EmotionAdapter(EmotionAdapterConfig.for_arch(arch, hidden_dim=16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".up." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return adapter


def _request(n=2, seeds=None, **kw):
    defaults = dict(width=32, height=24, steps=3, cfg=5.0, negative_prompt="blurry")
    defaults.update(kw)
    return GenerationRequest(prompts=["a lighthouse at dusk"] * n, seeds=seeds or list(range(n)), **defaults)


def _stock_ksampler_image(cs, model, clip, vae, text, negative, seed, steps, cfg, width, height):
    """What CLIPTextEncode → EmptyLatentImage → KSampler → VAEDecode produce (nodes.common_ksampler)."""
    import comfy.sample

    positive = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    neg = clip.encode_from_tokens_scheduled(clip.tokenize(negative))
    latent = torch.zeros([1, 4, height // 8, width // 8])
    latent = comfy.sample.fix_empty_latent_channels(model, latent)
    noise = comfy.sample.prepare_noise(latent, seed, None)
    samples = comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, neg, latent, denoise=1.0,
                                  callback=None, disable_pbar=False, seed=seed)
    return vae.decode(samples)


def test_without_emotion_it_reproduces_stock_nodes_bit_exactly(comfy_sampling):
    cs = comfy_sampling
    model, clip, vae = cs.model(), cs.clip(), cs.vae()
    gen = ComfyGenerator(model, clip, vae, adapter=_trained_adapter(), text_strength=0.0)
    assert isinstance(gen, Generator)
    request = _request(2, seeds=[42, 43], targets=[VA(3.0, 3.0), VA(-3.0, -3.0)], adapter_strength=0.0)
    images = gen.generate(request)
    for i, seed in enumerate((42, 43)):
        stock = _stock_ksampler_image(cs, model, clip, vae, "a lighthouse at dusk", "blurry", seed, 3, 5.0, 32, 24)
        assert torch.equal(images[i : i + 1], stock)


def test_shapes_range_seeds_and_inference_mode(comfy_sampling):
    cs = comfy_sampling
    gen = ComfyGenerator(cs.model(), cs.clip(), cs.vae())
    images = gen.generate(_request(3, seeds=[5, 6, 5]))
    assert images.shape == (3, 24, 32, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert not torch.equal(images[0], images[1]) and torch.equal(images[0], images[2])
    assert [c["seed"] for c in cs.sample_calls] == [5, 6, 5]
    assert all(c["inference"] for c in cs.sample_calls)
    assert not images.is_inference()  # usable by callers outside inference mode


def test_batched_sampling_builds_noise_per_seed(comfy_sampling):
    cs = comfy_sampling
    gen = ComfyGenerator(cs.model(), cs.clip(), cs.vae(), max_batch_size=4)
    images = gen.generate(_request(3, seeds=[5, 6, 7]))
    assert len(cs.sample_calls) == 1
    one = ComfyGenerator(cs.model(), cs.clip(), cs.vae()).generate(_request(1, seeds=[6]))
    noise = cs.sample_calls[0]["noise"]
    assert torch.equal(noise[1:2], cs.sample_calls[1]["noise"])  # row 1 = the noise of seed 6 alone
    assert torch.allclose(images[1:2], one, atol=1e-6)


def test_sd3_latent_channels_are_fixed(comfy_sampling):
    cs = comfy_sampling
    gen = ComfyGenerator(cs.model("sd3"), cs.clip("sd3"), cs.vae())
    images = gen.generate(_request(1))
    assert cs.sample_calls[0]["noise"].shape == (1, 16, 3, 4) and images.shape == (1, 24, 32, 3)


def test_adapter_and_text_route_change_the_image(comfy_sampling):
    cs = comfy_sampling
    model, clip, vae = cs.model(), cs.clip(), cs.vae()
    base = ComfyGenerator(model, clip, vae).generate(_request(1, seeds=[9]))
    adapted = ComfyGenerator(model, clip, vae, adapter=_trained_adapter()).generate(
        _request(1, seeds=[9], targets=[VA(2.0, -1.0)]))
    assert (adapted - base).abs().max() > 1e-4
    texted = ComfyGenerator(model, clip, vae, text_strength=1.0)
    request = _request(1, seeds=[9], targets=[VA(2.0, -1.0)])
    assert texted.prompts_for(request)[0] != "a lighthouse at dusk"
    assert (texted.generate(request) - base).abs().max() > 1e-4


def test_progress_and_cancel(comfy_sampling):
    cs = comfy_sampling
    gen = ComfyGenerator(cs.model(), cs.clip(), cs.vae())
    seen = []
    gen.generate(_request(2, steps=3), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 6) for i in range(1, 7)]
    # with no callback, ComfyUI's own progress bar is driven
    gen.generate(_request(1, steps=2))
    assert cs.fake.progress_updates[-2:] == [(1, 2), (2, 2)]
    cs.fake.interrupt_after(len(cs.fake.progress_updates) + 2)
    mm = cs.fake.model_management
    with pytest.raises(mm.InterruptProcessingException):
        gen.generate(_request(2, steps=3))


def test_adapter_on_conditioning_identity_and_arch_check(comfy_sampling):
    cs = comfy_sampling
    clip = cs.clip("sdxl")
    cond = encode_text(clip, "x")
    adapter = _trained_adapter("sdxl")
    assert apply_adapter_to_conditioning(cond, adapter, VA(1, 1), 0.0) is cond
    assert apply_adapter_to_conditioning(cond, None, VA(1, 1), 1.0) is cond
    moved = apply_adapter_to_conditioning(cond, adapter, VA(1, 1), 1.0)
    assert not torch.equal(moved[0][0], cond[0][0])
    assert not torch.equal(moved[0][1]["pooled_output"], cond[0][1]["pooled_output"])
    with pytest.raises(AdapterArchitectureError, match=r"SD1\.5.*SDXL"):
        apply_adapter_to_conditioning(cond, _trained_adapter("sd15"), VA(1, 1), 1.0)


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="VAE"):
        ComfyGenerator(object(), object(), None)

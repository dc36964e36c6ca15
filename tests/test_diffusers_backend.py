"""The diffusers backend on tiny pipelines of every family (SD1.5 … Z-Image) loaded with from_pretrained."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.engines.generation.diffusers_backend import (
    LORA_ADAPTER_NAME,
    DiffusersGenerator,
    DiffusersGeneratorConfig,
    ModelLoadError,
    conditioning_dims,
    detect_arch,
    load_diffusers_generator,
)
from emofeedback2.engines.generation.emotion_adapter import (
    AdapterArchitectureError,
    EmotionAdapter,
    EmotionAdapterConfig,
    load_emotion_adapter,
    save_emotion_adapter,
)
from emofeedback2.engines.emotion_space import VA
from emofeedback2.engines.generation.protocol import GenerationRequest, Generator

ARCHES = ("sd15", "sdxl", "sd3", "flux", "flux2_klein", "qwen_image", "z_image")


@pytest.fixture(scope="module")
def generators(tiny_pipeline_dirs):
    return {
        arch: load_diffusers_generator(DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs[arch]), device="cpu"))
        for arch in ARCHES
    }


def _request(n=2, seeds=None, **kw):
    defaults = dict(width=32, height=32, steps=2, cfg=3.0)
    defaults.update(kw)
    return GenerationRequest(prompts=["a red house by the sea"] * n, seeds=seeds or list(range(n)), **defaults)


def _trained_adapter(arch, context_dim, pooled_dim, seed=3):
    adapter = EmotionAdapter(EmotionAdapterConfig(arch=arch, context_dim=context_dim, pooled_dim=pooled_dim, hidden_dim=16))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if ".up." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return adapter


@pytest.mark.parametrize("arch", ARCHES)
def test_output_shape_range_and_arch(generators, arch):
    gen = generators[arch]
    assert isinstance(gen, Generator) and gen.arch == arch == detect_arch(gen.pipe)
    images = gen.generate(_request(3, width=32, height=24))
    assert images.shape == (3, 24, 32, 3) and images.dtype == torch.float32 and images.device.type == "cpu"
    assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0


@pytest.mark.parametrize("arch", ARCHES)
def test_seeds_make_images_distinct_and_reproducible(generators, arch):
    gen = generators[arch]
    first = gen.generate(_request(3, seeds=[11, 12, 11]))
    assert not torch.allclose(first[0], first[1], atol=1e-3)
    assert torch.allclose(first[0], first[2], atol=1e-5)  # same seed, other batch position
    again = gen.generate(_request(1, seeds=[12]))
    assert torch.allclose(again[0], first[1], atol=1e-5)  # same seed, other batch size
    assert torch.equal(gen.generate(_request(3, seeds=[11, 12, 11])), first)


def test_matches_calling_the_pipeline_directly(generators):
    gen = generators["sd15"]
    ours = gen.generate(_request(2, seeds=[5, 6]))
    direct = gen.pipe(
        ["a red house by the sea"] * 2, height=32, width=32, num_inference_steps=2, guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(s) for s in (5, 6)], output_type="pt",
    ).images.permute(0, 2, 3, 1)
    assert torch.allclose(ours, direct, atol=1e-6)


def test_progress_reports_every_step_and_can_cancel(generators):
    gen = generators["sd15"]
    gen.max_batch_size = 2
    seen = []
    gen.generate(_request(3, steps=3), progress=lambda d, t: seen.append((d, t)))
    gen.max_batch_size = 8
    assert seen == [(i, 6) for i in range(1, 7)]

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        gen.generate(_request(1), progress=cancel)


@pytest.mark.parametrize("arch", ARCHES)
def test_adapter_changes_images_and_strength_zero_does_not(generators, arch, tmp_path):
    gen = generators[arch]
    context_dim, pooled_dim = conditioning_dims(gen.pipe)
    path = save_emotion_adapter(_trained_adapter(arch, context_dim, pooled_dim), tmp_path / f"{arch}.safetensors")
    if arch == "sd15":  # the whole loading path once
        config = DiffusersGeneratorConfig(model=str(gen.pipe.config._name_or_path), device="cpu", adapter=str(path))
        with_adapter = load_diffusers_generator(config)
    else:  # same pipeline object, adapter from the file
        adapter = load_emotion_adapter(path, expected_arch=arch, context_dim=context_dim, pooled_dim=pooled_dim)
        with_adapter = DiffusersGenerator(gen.pipe, adapter=adapter)
    base = gen.generate(_request(1, seeds=[7]))
    targets = [VA(3.0, 3.0)]
    off = with_adapter.generate(_request(1, seeds=[7], targets=targets, adapter_strength=0.0))
    on = with_adapter.generate(_request(1, seeds=[7], targets=targets, adapter_strength=1.0))
    assert torch.equal(off, base)
    assert (on - base).abs().max() > 1e-3


def test_adapter_for_another_architecture_is_refused(generators, tmp_path):
    sdxl_dims = conditioning_dims(generators["sdxl"].pipe)
    path = save_emotion_adapter(EmotionAdapter(EmotionAdapterConfig("sdxl", *sdxl_dims, hidden_dim=8)), tmp_path / "x.safetensors")
    model = str(generators["sd15"].pipe.config._name_or_path)
    with pytest.raises(AdapterArchitectureError, match=r"SDXL.*SD1\.5"):
        load_diffusers_generator(DiffusersGeneratorConfig(model=model, device="cpu", adapter=str(path)))


def test_text_route_changes_the_encoded_prompts(generators):
    gen = generators["sd15"]
    gen.text_strength = 1.0
    try:
        request = _request(1, targets=[VA(-3.0, 3.0)])
        assert gen.prompts_for(request)[0].startswith("a red house by the sea, ")
        assert gen.prompts_for(_request(1))[0] == "a red house by the sea"
    finally:
        gen.text_strength = 0.0


def _write_peft_lora(pipe_dir, out_dir, arch="sd15"):
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    cls = StableDiffusion3Pipeline if arch == "sd3" else StableDiffusionPipeline
    kwargs = dict(text_encoder_3=None, tokenizer_3=None) if arch == "sd3" else {}
    pipe = cls.from_pretrained(str(pipe_dir), **kwargs)
    denoiser = pipe.transformer if arch == "sd3" else pipe.unet
    torch.manual_seed(0)
    denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                    init_lora_weights=False))
    layers = get_peft_model_state_dict(denoiser)
    if arch == "sd3":
        cls.save_lora_weights(str(out_dir), transformer_lora_layers=layers)
    else:
        cls.save_lora_weights(str(out_dir), unet_lora_layers=layers)
    return out_dir / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def peft_lora(tiny_pipeline_dirs, tmp_path_factory):
    return _write_peft_lora(tiny_pipeline_dirs["sd15"], tmp_path_factory.mktemp("peft_lora"))


@pytest.fixture(scope="module")
def lora_generator(tiny_pipeline_dirs, peft_lora):
    return load_diffusers_generator(DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs["sd15"]), device="cpu",
                                                             lora=str(peft_lora.parent)))


def test_lora_loads_and_changes_images(generators, lora_generator):
    base = generators["sd15"].generate(_request(1, seeds=[1]))
    assert (lora_generator.generate(_request(1, seeds=[1])) - base).abs().max() > 1e-3
    lora_generator.pipe.set_adapters([LORA_ADAPTER_NAME], adapter_weights=[0.0])
    try:
        assert torch.allclose(lora_generator.generate(_request(1, seeds=[1])), base, atol=1e-6)
    finally:
        lora_generator.pipe.set_adapters([LORA_ADAPTER_NAME], adapter_weights=[1.0])


def test_lora_for_another_base_model_is_refused(tiny_pipeline_dirs, tmp_path):
    lora = _write_peft_lora(tiny_pipeline_dirs["sd3"], tmp_path, arch="sd3")
    with pytest.raises(ModelLoadError, match="another base model|does not fit"):
        load_diffusers_generator(DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs["sd15"]), device="cpu",
                                                          lora=str(lora)))


def test_missing_model_folder_is_named(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no_such_model"):
        load_diffusers_generator(DiffusersGeneratorConfig(model=str(missing), device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_diffusers_generator(DiffusersGeneratorConfig(model=str(tmp_path / "empty"), device="cpu"))
    with pytest.raises(ModelLoadError, match="hub id 'nobody/nothing-here'"):
        load_diffusers_generator(DiffusersGeneratorConfig(model="nobody/nothing-here", device="cpu"))


def test_bench_generate_prints_the_overhead_ratio_last(capsys):
    import argparse

    from emofeedback2.bench import generate

    parser = argparse.ArgumentParser()
    generate.add_arguments(parser)
    args = parser.parse_args(["--batch", "1", "--steps", "1", "--size", "16", "--repeats", "1", "--warmup", "0"])
    assert generate.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("backend_overhead=") and float(lines[-1].split("=")[1]) > 0
    assert "pixel difference: 0.00e+00" in "\n".join(lines)  # both paths make the same images


def test_kohya_keys_load_like_the_peft_file(tiny_pipeline_dirs, peft_lora, lora_generator, tmp_path):
    """A kohya-format copy of a PEFT LoRA (what `emofeedback2 export` writes) gives the same images."""
    from safetensors.torch import load_file, save_file

    kohya = {}
    for key, value in load_file(str(peft_lora)).items():
        module, kind = key.rsplit(".lora_", 1)
        name = "lora_unet_" + module.removeprefix("unet.").replace(".", "_")
        if kind.startswith("A"):
            kohya[f"{name}.lora_down.weight"] = value
            kohya[f"{name}.alpha"] = torch.tensor(float(value.shape[0]))
        else:
            kohya[f"{name}.lora_up.weight"] = value
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    via_kohya = load_diffusers_generator(DiffusersGeneratorConfig(
        model=str(tiny_pipeline_dirs["sd15"]), device="cpu", lora=str(tmp_path / "kohya.safetensors")))
    assert torch.allclose(lora_generator.generate(_request(1)), via_kohya.generate(_request(1)), atol=1e-6)


def test_unsupported_pipelines_are_named():
    from types import SimpleNamespace

    class Flux2Pipeline:  # Flux.2 [dev]: Mistral-3 24B text encoder
        transformer = SimpleNamespace()

    with pytest.raises(ValueError, match="Flux.2 Klein"):
        detect_arch(Flux2Pipeline())
    with pytest.raises(ValueError, match="Qwen-Image"):
        detect_arch(SimpleNamespace(transformer=torch.nn.Linear(1, 1)))


@pytest.mark.parametrize("arch,cfg", [("flux", 3.5), ("flux2_klein", 4.0), ("qwen_image", 3.0), ("z_image", 3.0)])
def test_flow_families_at_their_guidance(generators, arch, cfg):
    """Flux.1-dev reads cfg through its guidance embedding and Klein ignores it (no negative branch, so the
    negative prompt changes nothing); Qwen-Image and Z-Image run true CFG (the negative prompt matters)."""
    gen = generators[arch]
    plain = gen.generate(_request(1, seeds=[4], cfg=cfg))
    other_negative = gen.generate(_request(1, seeds=[4], cfg=cfg, negative_prompt="a dark storm"))
    negative_matters = arch in ("qwen_image", "z_image")
    assert (float((plain - other_negative).abs().max()) > 1e-4) == negative_matters
    if arch == "flux":  # the embedded guidance value itself changes the image
        assert float((plain - gen.generate(_request(1, seeds=[4], cfg=1.5))).abs().max()) > 1e-4

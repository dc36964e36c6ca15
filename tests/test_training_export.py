"""Export: kohya keys + .alpha = lora_alpha, diffusers copy, emotion adapter; our loader applies them in full."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from emofeedback2.training.generator.config import RewardSpec, TrainConfig
from emofeedback2.training.generator.export import (
    export_checkpoint,
    peft_to_kohya,
    text_encoder_to_kohya,
)
from emofeedback2.training.generator.trainer import GRPOTrainer


# Tiny models run fastest single-threaded on a shared machine (no oversubscription).
pytestmark = pytest.mark.usefixtures("one_thread")


def _trainer(pipeline_dir, out, rank=4, alpha=8.0) -> GRPOTrainer:
    c = TrainConfig()
    c.model.pretrained = str(pipeline_dir)
    c.model.lora_rank, c.model.lora_alpha, c.model.adapter_hidden = rank, alpha, 16
    c.sampling.resolution, c.sampling.steps = 16, 2
    c.sampling.guidance_scale = 1.0
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size = 2, 1, 2
    c.rewards = [RewardSpec(kind="color")]
    c.output_dir, c.device, c.progress = str(out), "cpu", False
    trainer = GRPOTrainer(c, log=False)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # pretend training moved every LoRA and adapter weight
        for _, p in trainer.trainable:
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return trainer


def test_peft_to_kohya_keys_and_alpha():
    state = {
        "denoiser.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.default.weight": torch.ones(4, 32),
        "denoiser.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.default.weight": torch.ones(32, 4),
        "denoiser.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_A.default.weight": torch.ones(4, 32),
        "denoiser.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.lora_B.default.weight": torch.ones(32, 4),
    }
    kohya = peft_to_kohya(state, "sd15", lora_alpha=16.0)
    base = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1"
    assert set(kohya) == {f"{base}_{m}.{s}" for m in ("to_q", "to_out_0") for s in ("lora_down.weight", "lora_up.weight", "alpha")}
    assert kohya[f"{base}_to_q.alpha"].item() == 16.0  # lora_alpha, not the rank (4)
    sd3 = peft_to_kohya({"transformer_blocks.0.attn.add_q_proj.lora_A.weight": torch.ones(2, 8),
                         "transformer_blocks.0.attn.add_q_proj.lora_B.weight": torch.ones(8, 2)}, "sd3", 2.0)
    assert "lora_transformer_transformer_blocks_0_attn_add_q_proj.lora_down.weight" in sd3
    with pytest.raises(ValueError, match="lora_A or lora_B"):
        peft_to_kohya({"a.lora_A.weight": torch.ones(1, 1)}, "sd15", 1.0)


def test_text_encoder_keys_get_text_model_back_for_transformers5():
    state = {"encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 8),
             "encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(8, 2)}
    kohya = text_encoder_to_kohya(state, lora_alpha=2.0)
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in kohya
    old = {"text_model." + k: v for k, v in state.items()}
    assert set(text_encoder_to_kohya(old, lora_alpha=2.0)) == set(kohya)


@pytest.mark.parametrize("arch", ["sd15", "sd3"])
def test_exported_lora_loads_into_our_loader_with_the_full_delta(tiny_pipeline_dirs, tmp_path, arch):
    from emofeedback2.engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_diffusers_generator
    from emofeedback2.engines.generation.emotion_adapter import load_emotion_adapter

    trainer = _trainer(tiny_pipeline_dirs[arch], tmp_path / "run")
    paths = trainer.export(tmp_path / "export")
    kohya = load_file(str(paths["kohya_lora"]))
    prefix = "lora_transformer_" if arch == "sd3" else "lora_unet_"
    assert all(k.startswith(prefix) for k in kohya)
    alphas = [v.item() for k, v in kohya.items() if k.endswith(".alpha")]
    assert alphas and set(alphas) == {8.0}
    n_modules = sum(1 for n, _ in trainer.trainable if n.endswith("lora_A.default.weight"))
    assert len(alphas) == n_modules

    denoiser = trainer.pipe.transformer if arch == "sd3" else trainer.pipe.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    if arch == "sd3":
        ctx, pooled = torch.randn(2, 7, 64, generator=g), torch.randn(2, 64, generator=g)
        call = lambda m: m(hidden_states=x, timestep=torch.tensor([500.0, 500.0]), encoder_hidden_states=ctx,  # noqa: E731
                           pooled_projections=pooled, return_dict=False)[0]
    else:
        ctx = torch.randn(2, 7, 32, generator=g)
        call = lambda m: m(x, torch.tensor([500, 500]), encoder_hidden_states=ctx, return_dict=False)[0]  # noqa: E731
    with torch.no_grad():
        trained = call(denoiser)
        denoiser.disable_adapters()
        base = call(denoiser)
        denoiser.enable_adapters()
    assert (trained - base).abs().max() > 1e-4  # the LoRA does something

    # diffusers reads kohya keys for UNets only; for SD3 the diffusers copy is the file it loads
    # (ComfyUI reads lora_transformer_* itself: see the opt-in ComfyUI test)
    loras = [paths["diffusers_lora"]] if arch == "sd3" else [paths["kohya_lora"], paths["diffusers_lora"]]
    for lora in loras:
        gen = load_diffusers_generator(DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs[arch]), dtype="float32",
                                                                device="cpu", lora=str(lora)))
        loaded = gen.pipe.transformer if arch == "sd3" else gen.pipe.unet
        with torch.no_grad():
            torch.testing.assert_close(call(loaded), trained, atol=1e-5, rtol=1e-4)

    adapter = load_emotion_adapter(paths["emotion_adapter"], expected_arch=arch)
    for (name, p) in trainer.adapter.state_dict().items():
        assert torch.equal(adapter.state_dict()[name], p.cpu())


def test_export_from_checkpoint_equals_export_from_trainer(tiny_pipeline_dir, tmp_path):
    trainer = _trainer(tiny_pipeline_dir, tmp_path / "run")
    trainer.save()
    direct = trainer.export(tmp_path / "direct")
    from_ckpt = export_checkpoint(tmp_path / "run", tmp_path / "from_ckpt")
    for key in ("kohya_lora", "emotion_adapter"):
        a, b = load_file(str(direct[key])), load_file(str(from_ckpt[key]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

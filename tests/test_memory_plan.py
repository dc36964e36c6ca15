"""Memory plan: meta-device counts equal real ones, the plan agrees with a real trainer, the recipe fits 24 GiB."""

from __future__ import annotations

import json

import pytest
import torch

from emofeedback2.training.generator import memory_plan as mp
from emofeedback2.training.generator.policy_net import add_lora
from emofeedback2.training.generator.trainer import GRPOTrainer

from test_training_trainer import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _load(folder, arch):
    from emofeedback2.engines.devices import DTYPES
    from emofeedback2.engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline

    return load_pipeline(DiffusersGeneratorConfig(model=str(folder), dtype="float32", device="cpu"), torch.device("cpu"),
                         DTYPES["float32"])


def _measure(arch, comps, device, batch=2, checkpointing=False, guidance=2.0):
    name = "transformer" if arch == "sd3" else "unet"
    tokens, ctx, pooled = mp._conditioning_dims(arch, comps)
    return mp.measure_activations(arch, comps[name], None, comps["vae"], batch=batch, resolution=32,
                                  dtype=torch.float32, guidance=guidance, gradient_checkpointing=checkpointing,
                                  tokens=tokens, context_dim=ctx, pooled_dim=None if arch == "sd15" else pooled,
                                  device=device)


def _meta(folder, arch):
    comps = mp.pipeline_components(str(folder))
    with torch.device("meta"):
        add_lora(comps["transformer" if arch == "sd3" else "unet"], arch, 4, 4.0)
    return comps


def _real(folder, arch):
    pipe = _load(folder, arch)
    comps = {"vae": pipe.vae, "transformer" if arch == "sd3" else "unet": pipe.transformer if arch == "sd3" else pipe.unet}
    add_lora(comps["transformer" if arch == "sd3" else "unet"], arch, 4, 4.0)
    return comps


@pytest.mark.parametrize("arch", ["sd3", "sdxl"])
def test_meta_device_counts_equal_the_same_counts_on_real_tensors(tiny_pipeline_dirs, arch):
    meta = _measure(arch, _meta(tiny_pipeline_dirs[arch], arch), "meta")
    real = _measure(arch, _real(tiny_pipeline_dirs[arch], arch), "cpu")
    assert meta.saved_bytes == real.saved_bytes > 0
    assert meta.rollout_forward_peak == real.rollout_forward_peak > 0
    assert meta.vae_decode_peak == real.vae_decode_peak > 0


def test_saved_bytes_agree_with_an_independent_storage_count(tiny_pipeline_dirs):
    """Count unique storages autograd saves (by data pointer, parameters' storages left out) on CPU."""
    comps = _real(tiny_pipeline_dirs["sd3"], "sd3")
    figures = _measure("sd3", comps, "cpu", guidance=1.0)
    from emofeedback2.training.generator.policy_net import Conditioning, PolicyNet

    net = PolicyNet("sd3", comps["transformer"], None, torch.float32)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    tokens, ctx, pooled = mp._conditioning_dims("sd3", comps)
    side = 32 // 2 ** (len(comps["vae"].config.block_out_channels) - 1)
    x = torch.randn(2, comps["transformer"].config.in_channels, side, side)
    cond = Conditioning(torch.randn(2, tokens, ctx), torch.randn(2, pooled))
    with mp.fused_attention_stand_in(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x, torch.tensor(500.0), cond, torch.zeros(2, 2), 1.0, 1.0)  # keeps the graph (and storages) alive
    assert out.requires_grad and sum(seen.values()) == figures.saved_bytes


def test_checkpointing_saves_less_and_activations_grow_with_the_batch(tiny_pipeline_dirs):
    from diffusers import SD3Transformer2DModel

    comps = _meta(tiny_pipeline_dirs["sd3"], "sd3")
    # the tiny transformer has one block (checkpointing cannot help there): the same widths with 6 blocks
    config = dict(SD3Transformer2DModel.load_config(str(tiny_pipeline_dirs["sd3"] / "transformer")), num_layers=6)
    comps["transformer"] = mp._meta_module("diffusers", "SD3Transformer2DModel", config)
    with torch.device("meta"):
        add_lora(comps["transformer"], "sd3", 4, 4.0)
    full2 = _measure("sd3", comps, "meta", batch=2)
    full4 = _measure("sd3", comps, "meta", batch=4)
    ckpt4 = _measure("sd3", comps, "meta", batch=4, checkpointing=True)
    assert 1.8 < full4.saved_bytes / full2.saved_bytes < 2.2
    assert ckpt4.checkpointed and ckpt4.block_inputs > 0 and ckpt4.largest_block > 0
    assert ckpt4.saved_bytes < full4.saved_bytes
    cfg_free = _measure("sd3", comps, "meta", batch=4, guidance=1.0)
    assert cfg_free.saved_bytes < full4.saved_bytes  # no unconditional half of the batch


def test_plan_agrees_with_a_real_trainer_on_a_tiny_pipeline(tiny_pipeline_dirs, tmp_path):
    folder = tiny_pipeline_dirs["sd3"]
    c = tiny_config(folder, tmp_path)
    c.sampling.guidance_scale = 2.0
    c.data.cache_prompt_embeddings = True
    c.optim.ema = True
    c.model.dtype = "float32"
    plan = mp.plan_training(c)
    pipe = _load(folder, "sd3")  # counted independently, from the loaded modules
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        n = sum(p.numel() for p in getattr(pipe, name).parameters())
        comp = plan.component(name)
        assert comp.params == n and comp.bytes == n * 4
    trainer = GRPOTrainer(c, log=False)
    trainable = sum(p.numel() for _, p in trainer.trainable)
    assert plan.component("lora+adapter weights (fp32)").params == trainable
    trajs, _, _ = trainer.sample_step()
    traj_bytes = 0
    for t in trajs:
        for tensor in (t.latents, t.log_probs, t.cond.context, t.cond.pooled, t.cond.neg_context, t.cond.neg_pooled):
            traj_bytes += tensor.numel() * tensor.element_size()
    assert plan.component("trajectories of a step").bytes == traj_bytes
    trainer.train_step()
    states = sum(v.numel() * v.element_size() for s in trainer.optimizer.state.values() for k, v in s.items()
                 if k in ("exp_avg", "exp_avg_sq"))
    assert plan.component("AdamW states (2 x fp32)").bytes == states
    assert plan.component("EMA copy (fp32)").bytes == sum(s.numel() * 4 for s in trainer.ema.shadow)
    assert plan.component("cached prompt embeddings").bytes == trainer.prompt_cache.nbytes()
    assert plan.component("text_encoder").phases == ("encode",) and trainer.pipe.text_encoder is None
    assert plan.planned_peak_bytes() == max(plan.phase_bytes("cpu", p) for p in plan.phases)  # all on CPU


def test_dry_run_prints_the_plan_or_says_why_not(tiny_pipeline_dirs, tmp_path, capsys):
    from emofeedback2.cli import main

    config = tmp_path / "c.toml"
    config.write_text(f'device = "cpu"\n[model]\npretrained = "{tiny_pipeline_dirs["sd15"]}"\n'
                      '[sampling]\nresolution = 32\n[data]\ncache_prompt_embeddings = true\n', encoding="utf-8")
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory plan" in out and "activations per micro-batch" in out and "cached prompt embeddings" in out
    assert "[train] planned peak" in out
    assert main(["train", "--config", str(config), "--dry-run", "--set", "model.pretrained=someone/unknown-model"]) == 0
    assert "memory plan unavailable" in capsys.readouterr().out


def test_recipe_plan_at_real_size_fits_24_gib(tmp_path, capsys):
    from emofeedback2.cli import main

    out_json = tmp_path / "plan.json"
    assert main(["bench", "train", "--real-size", "sd3.5-medium", "--judge-real-size", "qwen2.5-vl-7b", "--plan",
                 "--plan-json", str(out_json)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("planned_peak_gib=")
    assert float(lines[-1].split("=")[1]) <= 24.0
    plan = json.loads(out_json.read_text())
    rows = {r["name"]: r for r in plan["components"]}
    # published sizes of the real models (their config.json gives these counts)
    assert rows["judge Qwen2.5-VL-7B-Instruct (bfloat16)"]["params"] == 8_292_166_656
    assert rows["text_encoder_3"]["params"] == 4_762_310_656
    assert rows["transformer"]["bytes"] == rows["transformer"]["params"] * 2  # fp16
    assert rows["judge Qwen2.5-VL-7B-Instruct (bfloat16)"]["bytes"] == 8_292_166_656 * 2
    trained = rows["AdamW states (2 x fp32)"]["params"]
    assert rows["AdamW states (2 x fp32)"]["bytes"] == trained * 8 and rows["gradients (fp32)"]["bytes"] == trained * 4

"""Every family: a 2-step training run, its export, and the LoRA keys ComfyUI's LoraLoader maps for that model.

The expected key set is recomputed here from ComfyUI's own rules, written out independently of
``training/generator/export.py``:

* ``comfy/lora.py`` ``model_lora_keys_unet`` — which LoRA key *prefix* each model branch registers
  (Flux branch: ``lora_transformer_`` + the diffusers path with dots → underscores; SD3 branch: the
  same; QwenImage branch and newer ComfyUI's Lumina2 (Z-Image) branch: ``transformer.`` + the path);
* ``comfy/utils.py`` ``flux_to_diffusers`` / ``mmdit_to_diffusers`` / ``z_image_to_diffusers`` —
  which diffusers module lands on which ComfyUI weight (or slice of a fused qkv weight). The
  Flux.2 and Z-Image rules are newer ComfyUI's (v0.3.64, the checked-out snapshot, has neither
  family); the others are v0.3.64's. ComfyUI's QwenImage model uses the diffusers module names.

A LoRA module that ComfyUI cannot map would be reported as "lora key not loaded" and silently skipped.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from emofeedback2.training.generator.config import RewardSpec, TrainConfig
from emofeedback2.training.generator.trainer import GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

NEW_FAMILIES = ["flux", "flux2_klein", "qwen_image", "z_image"]


def _trainer(pipeline_dir, out, guidance=1.0, steps=2) -> GRPOTrainer:
    c = TrainConfig()
    c.model.pretrained = str(pipeline_dir)
    c.model.lora_rank, c.model.lora_alpha, c.model.adapter_hidden = 2, 6.0, 8
    c.sampling.resolution, c.sampling.steps, c.sampling.eval_steps = 32, 2, 2
    c.sampling.guidance_scale, c.sampling.negative_prompt = guidance, "blurry"
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size = 2, 1, 2
    c.rewards = [RewardSpec(kind="color")]
    c.output_dir, c.device, c.progress, c.max_steps, c.reward_workers = str(out), "cpu", False, steps, 0
    return GRPOTrainer(c, log=False)


# --- ComfyUI's rules, written out -------------------------------------------------------------------------

def comfy_flux_map(depth: int, single: int, hidden: int, flux2: bool) -> dict[str, tuple]:
    """diffusers module → (ComfyUI weight, slice start, slice length or None): comfy/utils.py flux_to_diffusers."""
    m: dict[str, tuple] = {}
    for i in range(depth):
        src, dst = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for j, x in enumerate("qkv"):
            m[f"{src}.attn.to_{x}"] = (f"{dst}.img_attn.qkv", j * hidden, hidden)
            m[f"{src}.attn.add_{x}_proj"] = (f"{dst}.txt_attn.qkv", j * hidden, hidden)
        m[f"{src}.attn.to_out.0"] = (f"{dst}.img_attn.proj", 0, None)
        m[f"{src}.attn.to_add_out"] = (f"{dst}.txt_attn.proj", 0, None)
    for i in range(single):
        src, dst = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for j, x in enumerate("qkv"):
            m[f"{src}.attn.to_{x}"] = (f"{dst}.linear1", j * hidden, hidden)
        m[f"{src}.proj_mlp"] = (f"{dst}.linear1", 3 * hidden, 4 * hidden)
        m[f"{src}.proj_out"] = (f"{dst}.linear2", 0, None)
        if flux2:  # newer ComfyUI's "# Flux 2" entries
            m[f"{src}.attn.to_qkv_mlp_proj"] = (f"{dst}.linear1", 0, None)
            m[f"{src}.attn.to_out"] = (f"{dst}.linear2", 0, None)
    return m


def comfy_z_image_map(n_layers: int, n_refiner: int, dim: int) -> dict[str, tuple]:
    """Newer ComfyUI comfy/utils.py z_image_to_diffusers (attention part)."""
    m: dict[str, tuple] = {}
    blocks = [f"layers.{i}" for i in range(n_layers)]
    blocks += [f"{kind}.{i}" for kind in ("context_refiner", "noise_refiner") for i in range(n_refiner)]
    for b in blocks:
        for j, x in enumerate("qkv"):
            m[f"{b}.attention.to_{x}"] = (f"{b}.attention.qkv", j * dim, dim)
        m[f"{b}.attention.to_out.0"] = (f"{b}.attention.out", 0, None)
    return m


def comfy_mapping(arch: str, denoiser) -> tuple[str, dict[str, tuple]]:
    """(the LoRA key prefix ComfyUI registers for this model, its diffusers → ComfyUI module map)."""
    cfg = denoiser.config
    linear = {n for n, mod in denoiser.named_modules() if isinstance(getattr(mod, "base_layer", mod), torch.nn.Linear)}
    if arch in ("flux", "flux2_klein"):
        hidden = cfg.num_attention_heads * cfg.attention_head_dim
        return "lora_transformer_", comfy_flux_map(cfg.num_layers, cfg.num_single_layers, hidden, arch == "flux2_klein")
    if arch == "z_image":
        return "transformer.", comfy_z_image_map(cfg.n_layers, cfg.n_refiner_layers, cfg.dim)
    if arch == "qwen_image":  # ComfyUI's QwenImage modules carry the diffusers names
        return "transformer.", {n: (n, 0, None) for n in linear}
    raise ValueError(arch)


def comfy_key(prefix: str, module: str) -> str:
    return prefix + module.replace(".", "_") if prefix.endswith("_") else prefix + module


# --- the tests --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_two_step_run_exports_a_lora_comfyui_maps_in_full(tiny_pipeline_dirs, tmp_path, arch):
    trainer = _trainer(tiny_pipeline_dirs[arch], tmp_path / "run")
    history = trainer.train()
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["train/loss"])) for h in history)
    export = tmp_path / "run" / "export"
    lora = load_file(str(export / "emofeedback2_lora.safetensors"))
    denoiser = trainer.raw_net.denoiser
    trained = {n[: -len(".lora_A.default.weight")] for n, _ in denoiser.named_parameters()
               if n.endswith(".lora_A.default.weight")}
    prefix, mapping = comfy_mapping(arch, denoiser)
    assert trained, "no LoRA modules were trained"
    expected = {comfy_key(prefix, m) + suffix for m in trained
                for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha")}
    assert set(lora) == expected
    unmapped = sorted(m for m in trained if m not in mapping)
    assert not unmapped, f"ComfyUI has no target for {unmapped[:3]} (would print 'lora key not loaded')"
    targets = [mapping[m][:2] for m in trained]
    assert len(set(targets)) == len(targets), "two LoRA modules land on the same ComfyUI weight slice"
    for m in trained:
        key = comfy_key(prefix, m)
        assert float(lora[key + ".alpha"]) == 6.0  # lora_alpha, not the rank
        length = mapping[m][2]
        out_features = dict(denoiser.named_modules())[m].base_layer.out_features
        assert lora[key + ".lora_up.weight"].shape[0] == (length or out_features)
        assert lora[key + ".lora_down.weight"].shape[0] == 2
    assert (export / "emotion_adapter.safetensors").is_file()
    assert (export / "diffusers_lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")  # the second load below, on purpose
@pytest.mark.parametrize("arch", NEW_FAMILIES)
def test_diffusers_copy_loads_into_the_generator_with_every_layer(tiny_pipeline_dirs, tmp_path, arch):
    from emofeedback2.engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_diffusers_generator
    from emofeedback2.engines.generation.protocol import GenerationRequest

    trainer = _trainer(tiny_pipeline_dirs[arch], tmp_path / "run")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # pretend training moved every LoRA and adapter weight
        for _, p in trainer.trainable:
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    paths = trainer.export(tmp_path / "export")
    n_modules = sum(1 for n, _ in trainer.trainable if n.endswith("lora_A.default.weight"))
    config = DiffusersGeneratorConfig(model=str(tiny_pipeline_dirs[arch]), device="cpu", dtype="float32",
                                      lora=str(paths["diffusers_lora"].parent), adapter=str(paths["emotion_adapter"]))
    generator = load_diffusers_generator(config)
    from emofeedback2.engines.generation.diffusers_backend import _lora_modules_injected

    assert _lora_modules_injected(generator.pipe, "emofeedback2") == n_modules
    # the ComfyUI-keyed file of the export loads too (through the diffusers copy beside it)
    from emofeedback2.engines.generation.diffusers_backend import apply_lora

    assert apply_lora(generator.pipe, str(paths["kohya_lora"]), adapter_name="again") == n_modules
    request = dict(prompts=["a field"], seeds=[3], width=32, height=32, steps=2, cfg=1.0)
    from emofeedback2.engines.emotion_space import VA

    calm = generator.generate(GenerationRequest(targets=[VA(-2.0, -2.0)], **request))
    excited = generator.generate(GenerationRequest(targets=[VA(2.0, 2.0)], **request))
    assert float((calm - excited).abs().max()) > 1e-4  # the adapter moves this family's conditioning


@pytest.mark.parametrize("arch,guidance", [("flux", 3.5), ("flux2_klein", 1.0), ("qwen_image", 2.5), ("z_image", 2.5)])
def test_ratio_is_exactly_one_before_the_first_update(tiny_pipeline_dirs, tmp_path, arch, guidance):
    """Rollout and update see the same family pieces (guidance, masks, packing): the first ratio is 1,
    with gradient checkpointing on, as a one-GPU recipe runs it."""
    trainer = _trainer(tiny_pipeline_dirs[arch], tmp_path / "run", guidance=guidance, steps=1)
    trainer.raw_net.denoiser.enable_gradient_checkpointing()
    trajs, _, _ = trainer.sample_step()
    traj = trajs[0]
    trainer.raw_net.train()
    for j in range(trainer.config.sampling.steps):
        out = trainer.net(traj.latents[:, j], traj.timesteps[j], traj.cond, traj.va, trainer.train_guidance, 1.0)
        res = trainer.policy.step(out, traj.latents[:, j], traj.params[j], prev_sample=traj.latents[:, j + 1])
        assert res.log_prob.requires_grad
        assert float((torch.exp(res.log_prob.detach() - traj.log_probs[:, j]) - 1).abs().max()) < 1e-6
    trainer.train_step()
    assert trainer.updates == 1 and trainer.ratio_dev_before_first_update < 1e-6

"""Fixture ``comfy_sampling``: fake MODEL / CLIP / VAE objects and ``comfy.sample`` / ``comfy.lora``.

Builds on ``fake_comfy`` (comfy.utils, comfy.model_management, folder_paths) and adds, with the
signatures of ComfyUI v0.3.64 (see DESIGN.md §3 and comfy/sample.py, comfy/sd.py, comfy/lora.py):

- ``comfy.sample.prepare_noise(latent_image, seed, noise_inds=None)`` (real algorithm: a CPU
  generator seeded with ``seed``), ``fix_empty_latent_channels(model, latent_image)`` (real logic),
  ``sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
  denoise=1.0, disable_noise=False, start_step=None, last_step=None, force_full_denoise=False,
  noise_mask=None, sigmas=None, callback=None, disable_pbar=False, seed=None)`` — a toy but
  deterministic denoiser whose result depends on the noise, both conditionings, cfg and LoRA patches,
  calling ``callback(step, x0, x, total_steps)`` and checking Cancel every step like KSampler;
- ``comfy.samplers.KSampler.SAMPLERS / SCHEDULERS``;
- ``comfy.utils.load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False)``,
  ``PROGRESS_BAR_ENABLED``; ``comfy.model_management.intermediate_device()``;
- ``comfy.lora`` / ``comfy.lora_convert`` / ``comfy.sd``'s LoRA functions from
  tests/fixtures_comfy_lora.py (key mapping as the real functions derive it).

``FakeCLIP.tokenize(text)`` / ``encode_from_tokens_scheduled(tokens, unprojected=False, add_dict={},
show_pbar=True)`` return CONDITIONING ``[[cond [1,77,D], {"pooled_output": [1,P]}]]``;
``FakeVAE.decode(samples)`` returns IMAGE ``[B, 8h, 8w, 3]``. ``FakeModelPatcher`` mirrors
ModelPatcher's ``model``, ``load_device``, ``model_options``, ``clone()``, ``add_patches(...)`` and
``get_model_object("latent_format")``.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fixtures_comfy_lora import make_lora, make_sd

ARCH_SHAPES = {"sd15": (768, 768, "SD15"), "sdxl": (2048, 1280, "SDXL"), "sd3": (4096, 2048, "SD3")}
UNET_BLOCKS = {
    # ComfyUI (ldm) key → diffusers module path, for the few attention layers our fake UNet has.
    "input_blocks.1.1.transformer_blocks.0.attn1.to_q": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "input_blocks.1.1.transformer_blocks.0.attn1.to_k": "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "input_blocks.1.1.transformer_blocks.0.attn2.to_v": "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
    "middle_block.1.transformer_blocks.0.attn1.to_out.0": "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
}
CLIP_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "mlp.fc1")


@dataclass
class LatentFormat:
    latent_channels: int = 4
    latent_dimensions: int = 2


def _model_config(arch: str):
    """An instance of a class named like ComfyUI's supported_models entry (SD15, SDXL, SD3)."""
    context_dim, _pooled, name = ARCH_SHAPES[arch]
    config = type(name, (), {})()
    config.unet_config = {"context_dim": context_dim}
    return config


class FakeBaseModel(nn.Module):
    """Stands in for comfy.model_base.BaseModel: ``diffusion_model.*`` weights and a model_config."""

    def __init__(self, arch: str = "sd15", width: int = 8):
        super().__init__()
        self.model_config = _model_config(arch)
        self.latent_format = LatentFormat(16 if arch == "sd3" else 4)
        self.diffusion_model = nn.Module()
        for ldm_key in UNET_BLOCKS:
            _set_module(self.diffusion_model, ldm_key, nn.Linear(width, width, bias=False))
        self.diffusers_keys = {f"{d}.weight": f"{ldm}.weight" for ldm, d in UNET_BLOCKS.items()}


def _set_module(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    root.add_module(parts[-1], module)


class FakeModelPatcher:
    """The MODEL type: a ModelPatcher over a FakeBaseModel; patches are recorded, not applied."""

    def __init__(self, arch: str = "sd15"):
        self.arch = arch
        self.model = FakeBaseModel(arch)
        self.load_device = torch.device("cpu")
        self.model_options: dict = {"transformer_options": {}}
        self.patches: dict[str, list] = {}

    def clone(self) -> "FakeModelPatcher":
        n = FakeModelPatcher.__new__(FakeModelPatcher)
        n.arch, n.model, n.load_device = self.arch, self.model, self.load_device
        n.model_options = dict(self.model_options)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        keys = set(self.model.state_dict().keys())
        added = []
        for k, v in patches.items():
            if k in keys:
                self.patches.setdefault(k, []).append((strength_patch, v, strength_model))
                added.append(k)
        return added

    def get_model_object(self, name: str):
        if name == "latent_format":
            return self.model.latent_format
        return getattr(self.model, name)

    def patch_shift(self) -> float:
        """How much the recorded LoRA patches move the toy denoiser (0 without patches)."""
        total = 0.0
        for entries in self.patches.values():
            for strength, (_kind, (up, down, *_rest)), _sm in entries:
                total += strength * float((up.float() @ down.float()).abs().mean())
        return total


class _FakeTextModel(nn.Module):
    def __init__(self, width: int = 8, layers: int = 2):
        super().__init__()
        self.clip_l = nn.Module()
        for i in range(layers):
            for name in CLIP_LAYERS:
                _set_module(self.clip_l, f"transformer.text_model.encoder.layers.{i}.{name}", nn.Linear(width, width))


class FakeCLIP:
    """The CLIP type: deterministic token embeddings; records every encode call."""

    def __init__(self, arch: str = "sd15", seed: int = 0):
        context_dim, pooled_dim, _ = ARCH_SHAPES[arch]
        g = torch.Generator().manual_seed(seed)
        self.arch = arch
        self.table = torch.randn(260, context_dim, generator=g)
        self.projection = torch.randn(context_dim, pooled_dim, generator=g) / context_dim**0.5
        self.tokens = 333 if arch == "sd3" else 77
        self.cond_stage_model = _FakeTextModel()
        self.patches: dict[str, list] = {}
        self.tokenize_calls: list[str] = []
        self.encode_calls: int = 0

    def tokenize(self, text, return_word_ids=False, **kwargs):
        self.tokenize_calls.append(text)
        ids = [256] + [ord(c) % 256 for c in text][: self.tokens - 2] + [257]
        ids += [257] * (self.tokens - len(ids))
        return {"l": [[(i, 1.0) for i in ids]]}

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True):
        self.encode_calls += 1
        ids = torch.tensor([t for t, _w in tokens["l"][0]])
        cond = torch.cumsum(self.table[ids], dim=0).unsqueeze(0) / torch.arange(1, len(ids) + 1).view(1, -1, 1)
        pooled = cond[:, -1] @ self.projection
        options = {"pooled_output": pooled}
        options.update(add_dict)
        return [[cond, options]]

    def clone(self) -> "FakeCLIP":
        n = FakeCLIP.__new__(FakeCLIP)
        n.__dict__.update(self.__dict__)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        return n

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        keys = set(self.cond_stage_model.state_dict().keys())
        added = []
        for k, v in patches.items():
            if k in keys:
                self.patches.setdefault(k, []).append((strength_patch, v, strength_model))
                added.append(k)
        return added


class FakeVAE:
    """The VAE type: decode = sigmoid of the first 3 latent channels, upsampled 8×."""

    def decode(self, samples_in, vae_options={}):
        x = samples_in.float()[:, :3]
        x = torch.nn.functional.interpolate(x, scale_factor=8, mode="nearest")
        return torch.sigmoid(x).permute(0, 2, 3, 1).contiguous()

    def spacial_compression_encode(self):
        return 8

    def spacial_compression_decode(self):
        return 8


@dataclass
class ComfySampling:
    """Handles for tests: the fake modules, factories for MODEL/CLIP/VAE and a log of sample calls."""

    fake: Any  # the FakeComfy from fake_comfy
    sample: types.ModuleType
    samplers: types.ModuleType
    lora: types.ModuleType
    sd: types.ModuleType
    sample_calls: list = field(default_factory=list)

    def model(self, arch: str = "sd15") -> FakeModelPatcher:
        return FakeModelPatcher(arch)

    def clip(self, arch: str = "sd15", seed: int = 0) -> FakeCLIP:
        return FakeCLIP(arch, seed)

    def vae(self) -> FakeVAE:
        return FakeVAE()


def _make_sample(state: ComfySampling, mm: types.ModuleType, utils: types.ModuleType) -> types.ModuleType:
    sample = types.ModuleType("comfy.sample")

    def prepare_noise(latent_image, seed, noise_inds=None):
        generator = torch.manual_seed(seed)
        if noise_inds is None:
            return torch.randn(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout,
                               generator=generator, device="cpu")
        unique_inds, inverse = np.unique(noise_inds, return_inverse=True)
        noises = []
        for i in range(unique_inds[-1] + 1):
            noise = torch.randn([1] + list(latent_image.size())[1:], dtype=latent_image.dtype,
                                layout=latent_image.layout, generator=generator, device="cpu")
            if i in unique_inds:
                noises.append(noise)
        return torch.cat([noises[i] for i in inverse], axis=0)

    def fix_empty_latent_channels(model, latent_image):
        latent_format = model.get_model_object("latent_format")
        if latent_format.latent_channels != latent_image.shape[1] and torch.count_nonzero(latent_image) == 0:
            latent_image = utils.repeat_to_batch_size(latent_image, latent_format.latent_channels, dim=1)
        if latent_format.latent_dimensions == 3 and latent_image.ndim == 4:
            latent_image = latent_image.unsqueeze(2)
        return latent_image

    def _guide(conditioning, channels):
        cond = conditioning[0][0].float()
        return cond[..., :channels].mean(dim=1)[:, :, None, None]  # [1, C, 1, 1]

    def sample_fn(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0,
                  disable_noise=False, start_step=None, last_step=None, force_full_denoise=False, noise_mask=None,
                  sigmas=None, callback=None, disable_pbar=False, seed=None):
        state.sample_calls.append(dict(noise=noise.clone(), steps=steps, cfg=cfg, sampler_name=sampler_name,
                                       scheduler=scheduler, seed=seed, positive=positive, negative=negative,
                                       grad_enabled=torch.is_grad_enabled(), inference=torch.is_inference_mode_enabled()))
        if noise.shape != latent_image.shape:
            raise RuntimeError(f"noise {tuple(noise.shape)} and latent {tuple(latent_image.shape)} differ")
        channels = noise.shape[1]
        p, n = _guide(positive, channels), _guide(negative, channels)
        target = n + cfg * (p - n) + model.patch_shift()
        x = noise.float().clone()
        for i in range(steps):
            mm.throw_exception_if_processing_interrupted()
            x = 0.6 * x + 0.4 * torch.tanh(target + 0.1 * x.mean(dim=1, keepdim=True))
            if callback is not None:
                callback(i, x, x, steps)
        return x.to(mm.intermediate_device())

    sample.prepare_noise = prepare_noise
    sample.fix_empty_latent_channels = fix_empty_latent_channels
    sample.sample = sample_fn
    return sample


def _make_samplers() -> types.ModuleType:
    samplers = types.ModuleType("comfy.samplers")

    class KSampler:
        SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc"]
        SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]

    samplers.KSampler = KSampler
    samplers.SAMPLER_NAMES = KSampler.SAMPLERS
    samplers.SCHEDULER_NAMES = KSampler.SCHEDULERS
    return samplers


@pytest.fixture
def comfy_sampling(fake_comfy, monkeypatch) -> ComfySampling:
    """Adds comfy.sample / samplers / lora / lora_convert / sd to ``fake_comfy``'s modules."""
    utils, mm = fake_comfy.utils, fake_comfy.model_management

    def repeat_to_batch_size(tensor, batch_size, dim=0):
        if tensor.shape[dim] > batch_size:
            return tensor.narrow(dim, 0, batch_size)
        if tensor.shape[dim] < batch_size:
            return tensor.repeat(dim * [1] + [-(-batch_size // tensor.shape[dim])] + [1] * (len(tensor.shape) - 1 - dim)).narrow(dim, 0, batch_size)
        return tensor

    def load_torch_file(ckpt, safe_load=False, device=None, return_metadata=False):
        from safetensors import safe_open
        from safetensors.torch import load_file

        if not str(ckpt).lower().endswith((".safetensors", ".sft")):
            raise ValueError("the fake load_torch_file only reads safetensors")
        sd = load_file(str(ckpt), device=str(device or "cpu"))
        if return_metadata:
            with safe_open(str(ckpt), framework="pt") as f:
                return sd, f.metadata()
        return sd

    monkeypatch.setattr(utils, "repeat_to_batch_size", repeat_to_batch_size, raising=False)
    monkeypatch.setattr(utils, "load_torch_file", load_torch_file, raising=False)
    monkeypatch.setattr(utils, "PROGRESS_BAR_ENABLED", True, raising=False)
    monkeypatch.setattr(mm, "intermediate_device", lambda: torch.device("cpu"), raising=False)

    lora_convert = types.ModuleType("comfy.lora_convert")
    lora_convert.convert_lora = lambda sd: sd
    state = ComfySampling(fake=fake_comfy, sample=None, samplers=_make_samplers(), lora=None, sd=None)  # type: ignore[arg-type]
    state.sample = _make_sample(state, mm, utils)
    state.lora = make_lora()
    state.sd = make_sd(state.lora, lora_convert)
    for name, module in (("sample", state.sample), ("samplers", state.samplers), ("lora", state.lora),
                         ("lora_convert", lora_convert), ("sd", state.sd)):
        monkeypatch.setitem(sys.modules, f"comfy.{name}", module)
        monkeypatch.setattr(fake_comfy.comfy, name, module, raising=False)
    return state

"""The diffusion policy for GRPO: prompt encoding, schedule, noise, stepping, decoding, and rollouts.

:class:`DiffusionPolicy` wraps a pipeline and its :class:`~.policy_net.PolicyNet`; :func:`rollout`
samples a micro-batch with per-sample seeds and stores what each step's log-prob needs later. The
step formulas are in :mod:`.step_logprob`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from .policy_net import Conditioning, PolicyNet
from .step_logprob import StepOutput, ddim_step_with_logprob, flow_sde_step_with_logprob


class DiffusionPolicy:
    """Prompt encoding, schedule, noise, stepping and decoding for one pipeline and its PolicyNet."""

    def __init__(self, pipe, arch: str, net: PolicyNet, *, resolution: int, device: torch.device,
                 eta: float = 1.0, noise_level: float = 0.7):
        self.pipe = pipe
        self.arch = arch
        self.net = net
        self.resolution = resolution
        self.device = torch.device(device)
        self.eta = eta
        self.noise_level = noise_level
        self.prompt_cache = None  # a training.prompt_cache.PromptEmbeddingCache replaces the text encoders
        if arch == "sd3":
            self.scheduler = pipe.scheduler
            self.latent_channels = net.denoiser.config.in_channels
        else:
            from diffusers import DDIMScheduler

            self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            self.latent_channels = net.denoiser.config.in_channels
            if arch == "sdxl":
                r = resolution
                net.time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

    # prompts ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: Sequence[str], negative: str, cfg: bool) -> Conditioning:
        """Encode prompts with the frozen text encoders (not trained), or look them up in the prompt cache.

        One encoder call per *unique* prompt: a batched matmul may round differently with the number
        of rows, so this keeps a prompt's conditioning independent of which prompts share its
        micro-batch, bit-equal to :mod:`~.prompt_cache`'s, and a group's G copies cost one call.
        """
        if self.prompt_cache is not None:
            return self.prompt_cache.encode(prompts, negative, cfg)
        prompts = list(prompts)
        unique = list(dict.fromkeys(prompts))
        rows = [self.encode_raw([p], negative, cfg) for p in unique]
        index = [unique.index(p) for p in prompts]

        def gather(k: int) -> Optional[torch.Tensor]:
            if rows[0][k] is None:
                return None
            return torch.cat([rows[i][k] for i in index]).float()

        pos, pooled, neg, neg_pooled = (gather(k) for k in range(4))
        return Conditioning(pos, pooled, neg if cfg else None, neg_pooled if cfg else None)

    @torch.no_grad()
    def encode_raw(self, prompts: Sequence[str], negative: str, cfg: bool):
        """The pipeline's ``encode_prompt`` outputs in the encoders' dtype: (context, pooled, neg, neg_pooled)."""
        pipe = self.pipe
        prompts = list(prompts)
        negs = [negative] * len(prompts) if cfg else None
        if self.arch == "sd15":
            pos, neg = pipe.encode_prompt(prompts, self.device, 1, cfg, negative_prompt=negs)
            return pos, None, neg, None
        if self.arch == "sdxl":
            pos, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
                negative_prompt=negs,
            )
        else:
            pos, neg, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=cfg, negative_prompt=negs,
            )
        return pos, pooled, neg, neg_pooled

    # schedule --------------------------------------------------------------------------------------
    def schedule(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps [T] passed to the denoiser, step parameters [T, 2]: (ᾱ_t, ᾱ_prev) or (σ, σ_next))."""
        sched = self.scheduler
        sched.set_timesteps(steps, device="cpu")
        timesteps = sched.timesteps.clone()
        if self.arch == "sd3":
            sigmas = sched.sigmas.float()
            params = torch.stack([sigmas[:-1], sigmas[1:]], dim=1)
        else:
            ac = sched.alphas_cumprod.float()
            final = torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float32)
            stride = sched.config.num_train_timesteps // steps
            rows = []
            for t in timesteps.tolist():
                prev = t - stride
                rows.append((ac[t], ac[prev] if prev >= 0 else final))
            params = torch.tensor(rows, dtype=torch.float32)
        return timesteps, params

    def step(self, model_output: torch.Tensor, latents: torch.Tensor, params: torch.Tensor,
             prev_sample: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> StepOutput:
        """One stochastic step from a stored schedule row ``params`` ([2]: (ᾱ_t, ᾱ_prev) or (σ, σ_next)).

        Everything the step needs is in that row (the SD3 first-step cap is its σ_next), never in the
        scheduler's mutable state: an evaluation with other step counts between rollout and update
        cannot change the recomputed log-probs.
        """
        a, b = params[0].to(latents.device), params[1].to(latents.device)
        if self.arch == "sd3":
            return flow_sde_step_with_logprob(model_output, latents, a, b, noise_level=self.noise_level,
                                              prev_sample=prev_sample, noise=noise)
        return ddim_step_with_logprob(model_output, latents, a, b, eta=self.eta,
                                      prediction_type=self.scheduler.config.prediction_type,
                                      prev_sample=prev_sample, noise=noise)

    # noise / images --------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // self.vae_scale
        return (self.latent_channels, side, side)

    def initial_latents(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        shape = self.latent_shape()
        x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        if self.arch != "sd3":
            x = x * float(self.scheduler.init_noise_sigma)
        return x

    def step_noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        shape = self.latent_shape()
        return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → float32 images [B, H, W, 3] in 0..1 on CPU."""
        vae = self.pipe.vae
        cfg = vae.config
        z = latents / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None) is not None and self.arch == "sd3":
            z = z + cfg.shift_factor
        images = vae.decode(z.to(vae.dtype), return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


@dataclass
class Trajectory:
    """A rollout micro-batch: everything needed to recompute each step's log-prob later."""

    latents: torch.Tensor  # [B, T+1, C, h, w] (x_T … x_0), fp32
    log_probs: torch.Tensor  # [B, T]
    timesteps: torch.Tensor  # [T]
    params: torch.Tensor  # [T, 2]
    cond: Conditioning
    va: torch.Tensor  # [B, 2]
    images: torch.Tensor  # [B, H, W, 3]
    means: Optional[torch.Tensor] = None  # [B, T, C, h, w] step means, kept for GRPO-Guard (keep_means=True)


@torch.no_grad()
def rollout(policy: DiffusionPolicy, net: nn.Module, cond: Conditioning, va: torch.Tensor, seeds: Sequence[int],
            steps: int, guidance_scale: float, adapter_strength: float, *, stochastic: bool = True,
            keep_means: bool = False) -> Trajectory:
    """Sample a micro-batch with per-sample seeds, storing the latents and log-probs of every step.

    ``stochastic=False`` is the deterministic evaluation sampler (DDIM eta=0 / flow ODE Euler): the
    same seeds give the same images, which makes before/after comparisons fair.
    """
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    timesteps, params = policy.schedule(steps)
    x = policy.initial_latents(generators)
    all_latents = [x]
    log_probs = []
    means = []
    for i, t in enumerate(timesteps):
        out = net(x, t.to(x.device), cond, va, guidance_scale, adapter_strength)
        if stochastic:
            res = policy.step(out, x, params[i], noise=policy.step_noise(generators))
            x = res.prev_sample
            log_probs.append(res.log_prob)
            if keep_means:
                means.append(res.mean)
        else:
            x = _deterministic_step(policy, out, x, params[i])
        all_latents.append(x)
    images = policy.decode(x)
    lp = torch.stack(log_probs, dim=1) if log_probs else torch.zeros(x.shape[0], 0)
    return Trajectory(torch.stack(all_latents, dim=1), lp, timesteps, params, cond, va, images,
                      torch.stack(means, dim=1) if means else None)


def _deterministic_step(policy: DiffusionPolicy, out: torch.Tensor, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    a, b = params[0].to(x.device), params[1].to(x.device)
    if policy.arch == "sd3":
        return (x.float() + out.float() * (b - a)).detach()
    x = x.float()
    a_t, a_prev = a, b
    if policy.scheduler.config.prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    else:
        eps = out
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).detach()

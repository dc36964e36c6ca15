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

from .families import family_for
from .policy_net import Conditioning, PolicyNet
from .step_logprob import StepOutput, ddim_step_with_logprob, flow_sde_step_with_logprob


class DiffusionPolicy:
    """Prompt encoding, schedule, noise, stepping and decoding for one pipeline and its PolicyNet.

    What differs between model families (latent layout, timestep shift, decoding) is asked of the
    family (:mod:`.families`); prompts are encoded by the generation engine's per-family code.
    """

    def __init__(self, pipe, arch: str, net: PolicyNet, *, resolution: int, device: torch.device,
                 eta: float = 1.0, noise_level: float = 0.7):
        self.pipe = pipe
        self.arch = arch
        self.family = family_for(arch)
        self.net = net
        self.resolution = resolution
        self.device = torch.device(device)
        self.eta = eta
        self.noise_level = noise_level
        self.prompt_cache = None  # a training.prompt_cache.PromptEmbeddingCache replaces the text encoders
        if self.family.flow:
            self.scheduler = pipe.scheduler
        else:
            from diffusers import DDIMScheduler

            self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
            if arch == "sdxl":
                r = resolution
                net.time_ids = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32)
        self.shape = self.family.latent_shape(pipe, net.denoiser, resolution)

    # prompts ---------------------------------------------------------------------------------------
    def wants_negative(self, cfg: bool) -> bool:
        """Whether sampling with guidance (``cfg``) runs a negative branch for this model."""
        return bool(cfg) and getattr(self.net, "guidance_mode", "cfg") == "cfg"

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], negative: str, cfg: bool) -> Conditioning:
        """Encode prompts with the frozen text encoders (not trained), or look them up in the prompt cache.

        One encoder call per *unique* prompt: a batched matmul may round differently with the number
        of rows, so this keeps a prompt's conditioning independent of which prompts share its
        micro-batch, bit-equal to :mod:`~.prompt_cache`'s, and a group's G copies cost one call.
        Rows of different lengths (language-model encoders) are zero-padded with a token mask.
        """
        cfg = self.wants_negative(cfg)
        if self.prompt_cache is not None:
            return self.prompt_cache.encode(prompts, negative, cfg)
        unique = list(dict.fromkeys(prompts))
        rows = {p: self.encode_raw([p], negative, cfg) for p in unique}
        picked = [rows[p] for p in prompts]
        first = lambda t: None if t is None else t[0]  # noqa: E731  (one prompt per encoder call)
        context, mask = stack_rows([(e.prompt_embeds[0], first(e.prompt_mask)) for e in picked])
        pooled = _cat_pooled([e.pooled_prompt_embeds for e in picked])
        if not cfg:
            return Conditioning(context, pooled, mask=mask)
        neg_context, neg_mask = stack_rows([(e.negative_prompt_embeds[0], first(e.negative_prompt_mask)) for e in picked])
        neg_pooled = _cat_pooled([e.negative_pooled_prompt_embeds for e in picked])
        return Conditioning(context, pooled, neg_context, neg_pooled, mask, neg_mask)

    @torch.no_grad()
    def encode_raw(self, prompts: Sequence[str], negative: str, cfg: bool):
        """The pipeline's own ``encode_prompt`` outputs in the encoders' dtype, in the generation engine's
        layout for every family (:class:`~emofeedback2.engines.generation.pipeline_families.EncodedPrompts`)."""
        from ...engines.generation.pipeline_families import encode_prompts

        return encode_prompts(self.pipe, self.arch, prompts, negative, negative=self.wants_negative(cfg),
                              device=self.device)

    # schedule --------------------------------------------------------------------------------------
    def schedule(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps [T] passed to the denoiser, step parameters [T, 2]: (ᾱ_t, ᾱ_prev) or (σ, σ_next))."""
        sched = self.scheduler
        self.family.set_timesteps(sched, steps, self.family.image_seq_len(self.shape))
        timesteps = sched.timesteps.clone()
        if self.family.flow:
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

        Everything the step needs is in that row (the flow first-step cap is its σ_next), never in the
        scheduler's mutable state: an evaluation with other step counts between rollout and update
        cannot change the recomputed log-probs.
        """
        a, b = params[0].to(latents.device), params[1].to(latents.device)
        if self.family.flow:
            return flow_sde_step_with_logprob(model_output, latents, a, b, noise_level=self.noise_level,
                                              prev_sample=prev_sample, noise=noise)
        return ddim_step_with_logprob(model_output, latents, a, b, eta=self.eta,
                                      prediction_type=self.scheduler.config.prediction_type,
                                      prev_sample=prev_sample, noise=noise)

    # noise / images --------------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        return self.shape

    def initial_latents(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Per-sample starting noise, drawn as the pipelines draw it (``randn_tensor``, one generator each)."""
        from diffusers.utils.torch_utils import randn_tensor

        x = randn_tensor((len(generators), *self.shape), generator=list(generators), dtype=torch.float32)
        if not self.family.flow:
            x = x * float(self.scheduler.init_noise_sigma)
        return x.to(self.device)

    def step_noise(self, generators: Sequence[torch.Generator]) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor((len(generators), *self.shape), generator=list(generators),
                            dtype=torch.float32).to(self.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → float32 images [B, H, W, 3] in 0..1 on CPU (the pipeline's own post-processing)."""
        from diffusers.image_processor import VaeImageProcessor

        images = self.family.decode(self.pipe, latents)
        processor = getattr(self.pipe, "image_processor", None) or VaeImageProcessor()
        return processor.postprocess(images.float(), output_type="pt").permute(0, 2, 3, 1).cpu()


def _cat_pooled(rows: Sequence[Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    return None if rows[0] is None else torch.cat(list(rows)).float()


def stack_rows(rows: Sequence[tuple[torch.Tensor, Optional[torch.Tensor]]]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One prompt's ``([L, D] context, [L] mask or None)`` per sample → fp32 ``[B, L_max, D]`` and a mask.

    Equal-length rows without masks stack as they are (no mask); otherwise shorter rows are padded
    with zeros and the mask marks the real tokens.
    """
    lengths = {int(c.shape[0]) for c, _ in rows}
    if len(lengths) == 1 and all(m is None for _, m in rows):
        return torch.stack([c for c, _ in rows]).float(), None
    longest = max(lengths)
    context = rows[0][0].new_zeros(len(rows), longest, rows[0][0].shape[-1], dtype=torch.float32)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=context.device)
    for i, (c, m) in enumerate(rows):
        context[i, : c.shape[0]] = c.float()
        mask[i, : c.shape[0]] = True if m is None else m.to(mask.device)
    return context, mask


@dataclass
class Trajectory:
    """A rollout micro-batch: everything needed to recompute each step's log-prob later."""

    latents: torch.Tensor  # [B, T+1, *latent_shape] (x_T … x_0), fp32
    log_probs: torch.Tensor  # [B, T]
    timesteps: torch.Tensor  # [T]
    params: torch.Tensor  # [T, 2]
    cond: Conditioning
    va: torch.Tensor  # [B, 2]
    images: torch.Tensor  # [B, H, W, 3]
    means: Optional[torch.Tensor] = None  # [B, T, *latent_shape] step means, kept for GRPO-Guard (keep_means=True)


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
    if policy.family.flow:
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

"""Diffusion policies for GRPO: stochastic sampler steps with exact Gaussian log-probs, and the models.

Two step rules, both small pure functions tested against ``torch.distributions.Normal``:

* SD1.5 / SDXL (UNet, epsilon- or v-prediction): DDIM with ``eta > 0`` (eta = 1 is DDPM-like). The
  next latent is ``N(mean, std²)`` with ``std = eta * sqrt((1-ᾱ_prev)/(1-ᾱ_t) * (1-ᾱ_t/ᾱ_prev))``.
* SD3.x (rectified flow, velocity prediction): the Flow-GRPO SDE with ``σ_t = a*sqrt(t/(1-t))``
  (at t = 1 the denominator uses the schedule's second sigma), ``mean = x + [v + σ_t²/(2t) (x +
  (1-t) v)] Δt`` and noise ``σ_t sqrt(-Δt)``.

The log-prob is the Gaussian log-density **averaged** over C×H×W, in fp32, with the sampled next
latent treated as data (detached). :class:`PolicyNet` bundles the denoiser (with its peft LoRA) and
the emotion adapter in one ``nn.Module`` so DDP sees every trainable parameter in one forward.
:class:`DiffusionPolicy` adds prompt encoding, the schedule, initial noise and decoding around it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class StepOutput:
    """One stochastic sampler step: the next latent, its log-prob under the policy, and the Gaussian."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor  # [B], mean over non-batch dims
    mean: torch.Tensor
    std: torch.Tensor  # broadcastable to mean


def gaussian_log_prob_mean(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²) averaged over every dim but the batch, in fp32 (``x`` is detached)."""
    x = x.detach().float()
    mean = mean.float()
    std = std.float()
    log_prob = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - LOG_SQRT_2PI
    return log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-sample [B] value shaped to broadcast against ``like`` [B, ...] (fp32)."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def ddim_step_with_logprob(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_prod_t: torch.Tensor | float,
    alpha_prod_prev: torch.Tensor | float,
    *,
    eta: float = 1.0,
    prediction_type: str = "epsilon",
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
) -> StepOutput:
    """One DDIM step x_t → x_prev with log-prob. Give ``prev_sample`` to score a stored step, else ``noise``."""
    if eta <= 0:
        raise ValueError("DDIM eta must be > 0 for a log-prob (eta=0 is deterministic)")
    x = sample.float()
    out = model_output.float()
    a_t = _per_sample(alpha_prod_t, x)
    a_prev = _per_sample(alpha_prod_prev, x)
    b_t = 1 - a_t
    if prediction_type == "epsilon":
        eps = out
        x0 = (x - b_t.sqrt() * eps) / a_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - b_t.sqrt() * out
        eps = a_t.sqrt() * out + b_t.sqrt() * x
    else:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported (epsilon or v_prediction)")
    variance = (1 - a_prev) / b_t * (1 - a_t / a_prev)
    std = eta * variance.clamp(min=0).sqrt()
    std = torch.clamp(std, min=1e-12)
    direction = (1 - a_prev - std**2).clamp(min=0).sqrt() * eps
    mean = a_prev.sqrt() * x0 + direction
    if prev_sample is None:
        if noise is None:
            raise ValueError("give prev_sample (to score a stored step) or noise (to sample one)")
        prev_sample = mean + std * noise.float()
    return StepOutput(prev_sample.detach(), gaussian_log_prob_mean(prev_sample, mean, std), mean, std)


def flow_sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    *,
    noise_level: float = 0.7,
    sigma_max: Optional[torch.Tensor | float] = None,
    prev_sample: Optional[torch.Tensor] = None,
    noise: Optional[torch.Tensor] = None,
) -> StepOutput:
    """One Flow-GRPO SDE step for rectified flow (x_t = (1-t) x0 + t ε, v = ε - x0), with log-prob.

    ``σ_t = a·sqrt(t / (1 - t'))`` with ``t' = t`` except at t = 1 (the first step), where ``1 - t``
    is 0 and ``t' = sigma_max``: the schedule's second sigma, as Flow-GRPO does. Only the
    denominator is capped; the numerator keeps the true t. ``sigma_max=None`` uses ``sigma_next``,
    which *is* the second sigma on the first step — so a stored step row is self-contained.
    """
    if noise_level <= 0:
        raise ValueError("noise_level must be > 0 for a log-prob")
    x = sample.float()
    v = velocity.float()
    t = _per_sample(sigma, x)
    t_next = _per_sample(sigma_next, x)
    dt = t_next - t  # negative
    cap = t_next if sigma_max is None else _per_sample(sigma_max, x)
    t_den = torch.where(t >= 1.0, cap, t)
    std_t = noise_level * torch.sqrt(t / (1 - t_den))
    mean = x + (v + std_t**2 / (2 * t) * (x + (1 - t) * v)) * dt
    std = std_t * torch.sqrt(-dt)
    if prev_sample is None:
        if noise is None:
            raise ValueError("give prev_sample (to score a stored step) or noise (to sample one)")
        prev_sample = mean + std * noise.float()
    return StepOutput(prev_sample.detach(), gaussian_log_prob_mean(prev_sample, mean, std), mean, std)


def gaussian_kl_mean(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, σ²) ‖ N(ref_mean, σ²)) per element, averaged over non-batch dims (same σ for both)."""
    kl = (mean.float() - ref_mean.float()) ** 2 / (2 * std.float() ** 2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


# --- conditioning -----------------------------------------------------------------------------------


@dataclass
class Conditioning:
    """Encoded prompts for one micro-batch (positive; negative only when CFG is on)."""

    context: torch.Tensor
    pooled: Optional[torch.Tensor] = None
    neg_context: Optional[torch.Tensor] = None
    neg_pooled: Optional[torch.Tensor] = None

    def index(self, idx: torch.Tensor | slice) -> "Conditioning":
        def pick(t):
            return None if t is None else t[idx]

        return Conditioning(pick(self.context), pick(self.pooled), pick(self.neg_context), pick(self.neg_pooled))


class PolicyNet(nn.Module):
    """Denoiser (+ peft LoRA) and the emotion adapter; ``forward`` returns the guided model output.

    The adapter changes the positive conditioning only (the unconditional branch stays plain, as in
    the EmotionConditioner node). ``use_adapters=False`` gives the frozen base model (KL reference).
    """

    def __init__(self, arch: str, denoiser: nn.Module, adapter: Optional[nn.Module], dtype: torch.dtype):
        super().__init__()
        self.arch = arch
        self.denoiser = denoiser
        self.adapter = adapter
        self.base_dtype = dtype
        self.time_ids: Optional[torch.Tensor] = None  # SDXL micro-conditioning, set by the policy

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditioning,
        va: torch.Tensor,
        guidance_scale: float = 1.0,
        adapter_strength: float = 1.0,
    ) -> torch.Tensor:
        context, pooled = cond.context, cond.pooled
        if self.adapter is not None and adapter_strength != 0.0:
            context, pooled = self.adapter(context, pooled, va, adapter_strength)
        cfg = guidance_scale != 1.0
        if cfg:
            if cond.neg_context is None:
                raise ValueError("guidance_scale != 1 needs negative conditioning")
            context = torch.cat([cond.neg_context, context])
            pooled = None if pooled is None else torch.cat([cond.neg_pooled, pooled])
            x_in = torch.cat([latents, latents])
        else:
            x_in = latents
        x_in = x_in.to(self.base_dtype)
        context = context.to(self.base_dtype)
        pooled = None if pooled is None else pooled.to(self.base_dtype)
        t = timestep.expand(x_in.shape[0]) if timestep.ndim else timestep.repeat(x_in.shape[0])
        if self.arch == "sd3":
            out = self.denoiser(
                hidden_states=x_in, timestep=t, encoder_hidden_states=context, pooled_projections=pooled, return_dict=False
            )[0]
        else:
            kwargs = {}
            if self.arch == "sdxl":
                time_ids = self.time_ids.to(x_in.device, self.base_dtype).expand(x_in.shape[0], -1)
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            out = self.denoiser(x_in, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
        out = out.float()
        if cfg:
            uncond, text = out.chunk(2)
            out = uncond + guidance_scale * (text - uncond)
        return out


@contextlib.contextmanager
def adapters_disabled(net: PolicyNet) -> Iterator[None]:
    """Run the frozen base model: peft LoRA layers off (``disable_adapters``), emotion adapter bypassed."""
    denoiser = net.denoiser
    adapter = net.adapter
    has_lora = bool(getattr(denoiser, "peft_config", None))
    if has_lora:
        denoiser.disable_adapters()
    net.adapter = None
    try:
        yield
    finally:
        net.adapter = adapter
        if has_lora:
            denoiser.enable_adapters()


DEFAULT_LORA_TARGETS = {
    "sd15": ["to_q", "to_k", "to_v", "to_out.0"],
    "sdxl": ["to_q", "to_k", "to_v", "to_out.0"],
    "sd3": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"],
}


def add_lora(denoiser: nn.Module, arch: str, rank: int, alpha: float, targets: Sequence[str] = ()) -> None:
    """Freeze ``denoiser`` and add a peft LoRA (default adapter) whose parameters are fp32."""
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights="gaussian",
        target_modules=list(targets) or DEFAULT_LORA_TARGETS[arch],
    )
    try:
        denoiser.add_adapter(config)
    except ValueError as exc:  # peft: no module of this denoiser matches a target name
        from .config import ConfigError

        raise ConfigError(
            f"model.lora_targets {sorted(config.target_modules)!r} match no module of this {arch} denoiser ({exc}); "
            f"leave it empty for the defaults ({', '.join(DEFAULT_LORA_TARGETS[arch])}) or name its attention "
            "projections") from exc
    for name, param in denoiser.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in module.named_parameters() if "lora_" in n]


# --- the policy around the net ----------------------------------------------------------------------


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

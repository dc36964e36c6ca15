"""Each family's sigma schedule and flow SDE step at its released scheduler config and a real resolution,
against formulas written out here (not diffusers' code):

* base sigmas ``linspace(1, 1/n, n)`` then 0 (what the Flux, Flux.2, Qwen-Image and Z-Image pipelines pass);
* dynamic shift, exponential: ``σ' = e^μ / (e^μ + (1/σ − 1))`` with μ linear in the image-token count
  between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift) — Flux.1, Qwen-Image;
  Flux.2 Klein's μ is BFL's empirical fit in tokens *and* step count (flux2 ``sampling.py``);
* static shift: ``σ' = s·σ / (1 + (s − 1)·σ)`` — Z-Image-Turbo (s = 3);
* Qwen-Image's terminal stretch: ``1 − σ`` rescaled so the last sigma is ``shift_terminal`` (0.02);
* the Flow-GRPO SDE step (Flow-GRPO ``sd3_sde_with_logprob.py``): ``std_t = a·sqrt(σ/(1−σ))`` (at σ = 1
  the denominator takes the next sigma), ``mean = x·(1 + std_t²/(2σ)·dt) + v·(1 + std_t²(1−σ)/(2σ))·dt``,
  noise ``std_t·sqrt(−dt)``, log-prob the Gaussian density averaged over the latent;
* the KL to the reference on Flow-GRPO's scale (``train_sd3.py``): ``mean((μ − μ_ref)²) / (2·std_t²)``.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from emofeedback2.tiny_models.flow_pipelines import (
    FLUX1_DEV_SCHEDULER,
    FLUX2_KLEIN_SCHEDULER,
    QWEN_IMAGE_SCHEDULER,
    Z_IMAGE_TURBO_SCHEDULER,
)
from emofeedback2.training.generator.policies import DiffusionPolicy
from emofeedback2.training.generator.step_logprob import step_kl

# family → (released scheduler config, real resolution, real transformer in_channels, rollout steps)
REAL = {
    "flux": (FLUX1_DEV_SCHEDULER, 1024, 64, 16),
    "flux2_klein": (FLUX2_KLEIN_SCHEDULER, 1024, 128, 4),
    "qwen_image": (QWEN_IMAGE_SCHEDULER, 1328, 64, 20),
    "z_image": (Z_IMAGE_TURBO_SCHEDULER, 1024, 16, 8),
}


def test_the_tiny_pipelines_carry_the_released_scheduler_configs(tiny_pipeline_dirs):
    import json

    for arch, (config, *_rest) in REAL.items():
        saved = json.loads((tiny_pipeline_dirs[arch] / "scheduler" / "scheduler_config.json").read_text())
        assert {k: saved[k] for k in config} == config, arch
    # the released values themselves (scheduler/scheduler_config.json of each repository)
    assert (FLUX1_DEV_SCHEDULER["base_shift"], FLUX1_DEV_SCHEDULER["max_shift"]) == (0.5, 1.15)
    assert (QWEN_IMAGE_SCHEDULER["max_shift"], QWEN_IMAGE_SCHEDULER["shift_terminal"]) == (0.9, 0.02)
    assert Z_IMAGE_TURBO_SCHEDULER == dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)


def _mu_linear(tokens: int, c: dict) -> float:
    lo, hi = c["base_image_seq_len"], c["max_image_seq_len"]
    return c["base_shift"] + (c["max_shift"] - c["base_shift"]) * (tokens - lo) / (hi - lo)


def _mu_klein(tokens: int, steps: int) -> float:
    """BFL's fit: μ linear in tokens at 10 and at 200 steps, linear in steps between (tokens > 4300: the 200-step line)."""
    at_200 = 0.00016927 * tokens + 0.45666666
    at_10 = 8.73809524e-05 * tokens + 1.89833333
    if tokens > 4300:
        return at_200
    return at_10 + (at_200 - at_10) * (steps - 10) / 190


def reference_sigmas(arch: str, tokens: int, steps: int) -> np.ndarray:
    config = REAL[arch][0]
    s = np.linspace(1.0, 1.0 / steps, steps)
    if arch == "z_image":
        s = config["shift"] * s / (1 + (config["shift"] - 1) * s)
    else:
        mu = _mu_klein(tokens, steps) if arch == "flux2_klein" else _mu_linear(tokens, config)
        s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    if config.get("shift_terminal"):
        one_minus = 1 - s
        s = 1 - one_minus / (one_minus[-1] / (1 - config["shift_terminal"]))
    return np.append(s, 0.0)


def _policy(arch: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    config, resolution, in_channels, _ = REAL[arch]
    pipe = SimpleNamespace(scheduler=FlowMatchEulerDiscreteScheduler(**config), vae_scale_factor=8,
                           config=SimpleNamespace(is_distilled=arch == "flux2_klein"))
    net = SimpleNamespace(denoiser=SimpleNamespace(config=SimpleNamespace(in_channels=in_channels)), time_ids=None,
                          guidance_mode="cfg")
    return DiffusionPolicy(pipe, arch, net, resolution=resolution, device=torch.device("cpu"), noise_level=0.7)


@pytest.mark.parametrize("arch", list(REAL))
def test_schedule_is_the_family_shift_at_real_resolution(arch):
    policy = _policy(arch)
    _, resolution, _, steps = REAL[arch]
    tokens = (resolution // 16) ** 2  # 8× VAE, 2×2 patches
    _, params = policy.schedule(steps)
    ours = torch.cat([params[:, 0], params[-1:, 1]]).double().numpy()
    np.testing.assert_allclose(ours, reference_sigmas(arch, tokens, steps), atol=2e-6)
    if arch == "qwen_image":
        assert abs(ours[-2] - 0.02) < 1e-6  # the terminal stretch lands the last nonzero sigma on 0.02
    # the shift really applies at this resolution (an unshifted linear schedule would differ a lot)
    assert np.abs(ours[:-1] - np.linspace(1.0, 1.0 / steps, steps)).max() > 0.05


def flow_grpo_step(v, x, sigma, sigma_next, sigma_after_first, a, noise):
    dt = sigma_next - sigma
    denominator_sigma = sigma_after_first if sigma == 1 else sigma
    std_t = a * math.sqrt(sigma / (1 - denominator_sigma))
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + v * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_t * math.sqrt(-dt)
    prev = mean + std * noise
    log_prob = Normal(mean.double(), std).log_prob(prev.double()).mean(dim=tuple(range(1, prev.ndim)))
    return prev, log_prob


@pytest.mark.parametrize("arch", list(REAL))
def test_sde_step_equals_flow_grpo_on_the_real_schedule(arch):
    policy = _policy(arch)
    steps = REAL[arch][3]
    _, params = policy.schedule(steps)
    shape = (1, *policy.latent_shape())  # the real latent: e.g. Flux.1 16×128×128 at 1024 px
    sigmas = [float(p) for p in params[:, 0]] + [float(params[-1, 1])]
    g = torch.Generator().manual_seed(len(sigmas))
    # the first step (sigma = 1, capped denominator), the second, one in the middle, the last stochastic one
    for i in sorted({0, 1, (steps - 1) // 2, steps - 2}):
        v, x, noise = (torch.randn(shape, generator=g) for _ in range(3))
        ours = policy.step(v, x, params[i], noise=noise)
        prev, log_prob = flow_grpo_step(v, x, sigmas[i], sigmas[i + 1], sigmas[1], 0.7, noise)
        torch.testing.assert_close(ours.prev_sample, prev, atol=3e-5, rtol=1e-5)
        torch.testing.assert_close(ours.log_prob.double(), log_prob, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", list(REAL))
def test_kl_equals_flow_grpo_kl_loss_on_the_real_schedule(arch):
    """The KL divides by the flow SDE's std_t² (Flow-GRPO's kl_loss), not the step variance std_t²·|dt|, at every
    step of the family's real schedule — the distilled families' few, large steps included."""
    policy = _policy(arch)
    steps = REAL[arch][3]
    _, params = policy.schedule(steps)
    sigmas = [float(p) for p in params[:, 0]] + [float(params[-1, 1])]
    g = torch.Generator().manual_seed(7)
    for i in range(steps):
        x, v, v_ref, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(4))
        res = policy.step(v, x, params[i], noise=noise)
        ref = policy.step(v_ref, x, params[i], prev_sample=res.prev_sample)
        sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        std_t = 0.7 * math.sqrt(sigma / (1 - (sigmas[1] if sigma == 1 else sigma)))
        mean_gap = (v.double() - v_ref.double()) * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
        kl_loss = (mean_gap**2).mean(dim=(1, 2, 3)) / (2 * std_t**2)
        torch.testing.assert_close(step_kl(res, ref).double(), kl_loss, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("arch,recipe", [("flux2_klein", "flux2_klein_4b_lvlm.toml"),
                                         ("z_image", "z_image_turbo_lvlm.toml")])
def test_distilled_recipes_train_every_sde_step_but_the_last_one_to_sigma_zero(arch, recipe):
    """Klein (4 steps) and Z-Image-Turbo (8): rollouts use the distilled step count, every step is an SDE step,
    and the trained ones are int(T·f) of the default window [0, T−1]: never the last step, which lands on σ = 0."""
    from pathlib import Path

    from emofeedback2.training.generator.config import derive, load_config, train_window

    config = load_config(Path(__file__).resolve().parents[1] / "training" / "configs" / recipe)
    steps = config.sampling.steps
    assert steps == REAL[arch][3] and config.sampling.eval_steps == steps
    _, params = _policy(arch).schedule(steps)
    assert float(params[-1, 1]) == 0.0 and float(params[-2, 1]) > 0  # only the last step reaches sigma = 0
    assert train_window(config) == (0, steps - 1)
    trained = derive(config).trained_timesteps
    assert trained == int(steps * config.grpo.train_timestep_fraction) <= steps - 1

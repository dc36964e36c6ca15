"""GRPO formulas: step log-probs against torch.distributions, advantages, PPO clip, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from emofeedback2.training.grpo import (EMA, ema_export_choice, ema_warmup_updates, group_advantages, ppo_clip_loss,
                                        upgrade_ema_state)
from emofeedback2.training.generator.step_logprob import (ddim_step_with_logprob, flow_sde_step_with_logprob,
                                                           gaussian_kl_mean, step_kl)


def _normal_mean_logprob(x, mean, std):
    return Normal(mean.double(), std.double()).log_prob(x.double()).mean(dim=(1, 2, 3))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_log_prob_equals_normal_log_prob_mean(prediction_type):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g)
    out = torch.randn(3, 4, 5, 5, generator=g)
    noise = torch.randn(3, 4, 5, 5, generator=g)
    a_t, a_prev = torch.tensor(0.4), torch.tensor(0.7)
    res = ddim_step_with_logprob(out, x, a_t, a_prev, eta=1.0, prediction_type=prediction_type, noise=noise)
    # the DDIM eta=1 formula written out independently
    if prediction_type == "epsilon":
        eps, x0 = out, (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
    else:
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
    torch.testing.assert_close(res.mean, mean)
    torch.testing.assert_close(res.prev_sample, mean + std * noise)
    expected = _normal_mean_logprob(res.prev_sample, mean, std.expand_as(mean))
    torch.testing.assert_close(res.log_prob.double(), expected, atol=1e-5, rtol=1e-6)
    # scoring a stored step gives the same log-prob
    again = ddim_step_with_logprob(out, x, a_t, a_prev, prediction_type=prediction_type, prev_sample=res.prev_sample)
    torch.testing.assert_close(again.log_prob, res.log_prob)


def test_ddim_rejects_eta_zero_and_computes_in_fp32():
    x = torch.randn(2, 4, 3, 3).half()
    with pytest.raises(ValueError, match="eta"):
        ddim_step_with_logprob(x, x, 0.5, 0.6, eta=0.0, noise=x)
    res = ddim_step_with_logprob(x, x, 0.5, 0.6, noise=torch.randn(2, 4, 3, 3))
    assert res.log_prob.dtype == torch.float32 and res.log_prob.shape == (2,)


def test_ddim_per_sample_alphas_broadcast():
    x = torch.randn(2, 4, 3, 3)
    out = torch.randn(2, 4, 3, 3)
    noise = torch.randn(2, 4, 3, 3)
    both = ddim_step_with_logprob(out, x, torch.tensor([0.3, 0.6]), torch.tensor([0.5, 0.8]), noise=noise)
    one = ddim_step_with_logprob(out[1:], x[1:], 0.6, 0.8, noise=noise[1:])
    torch.testing.assert_close(both.log_prob[1:], one.log_prob)


def test_flow_sde_log_prob_equals_normal_and_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 6, generator=g)
    v = torch.randn(2, 4, 6, 6, generator=g)
    noise = torch.randn(2, 4, 6, 6, generator=g)
    t, t_next, a = 0.8, 0.6, 0.7
    res = flow_sde_step_with_logprob(v, x, t, t_next, noise_level=a, noise=noise)
    sigma = a * math.sqrt(t / (1 - t))
    dt = t_next - t
    mean = x + (v + sigma**2 / (2 * t) * (x + (1 - t) * v)) * dt
    std = sigma * math.sqrt(-dt)
    torch.testing.assert_close(res.mean, mean)
    torch.testing.assert_close(res.prev_sample, mean + std * noise)
    expected = _normal_mean_logprob(res.prev_sample, mean, torch.full_like(mean, std))
    torch.testing.assert_close(res.log_prob.double(), expected, atol=1e-5, rtol=1e-6)


def test_flow_sde_first_step_at_t_one_is_finite_and_caps_only_the_denominator():
    x = torch.randn(1, 4, 3, 3)
    res = flow_sde_step_with_logprob(torch.randn_like(x), x, 1.0, 0.9, sigma_max=0.95, noise=torch.randn_like(x))
    assert torch.isfinite(res.log_prob).all() and torch.isfinite(res.prev_sample).all()
    # sigma_t = a*sqrt(t/(1-cap)) with the true t = 1 on top (not a*sqrt(cap/(1-cap)))
    torch.testing.assert_close(res.std, torch.tensor(0.7 * math.sqrt(1 / 0.05) * math.sqrt(0.1)))
    # without sigma_max the first step's own sigma_next is the cap
    again = flow_sde_step_with_logprob(torch.randn_like(x), x, 1.0, 0.95, noise=torch.randn_like(x))
    torch.testing.assert_close(again.std, torch.tensor(0.7 * math.sqrt(1 / 0.05) * math.sqrt(0.05)))


def test_flow_sde_mean_reduces_to_euler_without_noise_term():
    # with a -> 0 the SDE mean is the ODE Euler step x + v dt
    x, v = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    res = flow_sde_step_with_logprob(v, x, 0.5, 0.4, noise_level=1e-6, noise=torch.zeros_like(x))
    torch.testing.assert_close(res.mean, x + v * (0.4 - 0.5), atol=1e-5, rtol=1e-5)


def test_gaussian_kl_zero_for_equal_means_positive_otherwise():
    m = torch.randn(2, 4, 3, 3)
    std = torch.tensor(0.3)
    assert torch.equal(gaussian_kl_mean(m, m.clone(), std), torch.zeros(2))
    kl = gaussian_kl_mean(m + 0.1, m, std)
    torch.testing.assert_close(kl, torch.full((2,), 0.01 / (2 * 0.09)))


# --- advantages ---------------------------------------------------------------------------------------


def test_group_advantages_centre_per_group_and_divide_by_global_std():
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0, 12.0, 14.0])
    gids = torch.tensor([0, 0, 0, 1, 1, 1])
    adv, info = group_advantages(rewards, gids, global_std=True, clip=100)
    centred = torch.tensor([-1.0, 0.0, 1.0, -2.0, 0.0, 2.0])
    torch.testing.assert_close(adv, centred / (rewards.std(unbiased=False) + 1e-6))
    assert info.zero_std_groups == 0 and info.keep.all()
    adv_local, _ = group_advantages(rewards, gids, global_std=False, clip=100)
    torch.testing.assert_close(adv_local[:3], centred[:3] / (math.sqrt(2 / 3) + 1e-6))


def test_zero_std_group_gets_zero_not_nan_and_is_counted():
    rewards = torch.tensor([0.5, 0.5, 0.5, 0.1, 0.9, 0.5])
    gids = torch.tensor([7, 7, 7, 3, 3, 3])
    for global_std in (True, False):
        adv, info = group_advantages(rewards, gids, global_std=global_std)
        assert torch.isfinite(adv).all()
        assert torch.equal(adv[:3], torch.zeros(3))
        assert info.keep.tolist() == [False, False, False, True, True, True]
        assert info.zero_std_groups == 1 and info.zero_std_ratio == 0.5
    adv, info = group_advantages(torch.ones(4), torch.tensor([0, 0, 1, 1]))
    assert torch.equal(adv, torch.zeros(4)) and info.zero_std_ratio == 1.0


def test_advantages_clipped():
    rewards = torch.tensor([0.0] * 99 + [1.0])
    adv, _ = group_advantages(rewards, torch.zeros(100, dtype=torch.long), clip=5.0)
    assert adv.max().item() == pytest.approx(5.0)


def test_advantages_reject_nan_rewards():
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([0.0, float("nan")]), torch.tensor([0, 0]))


def test_loss_over_micro_batches_is_the_masked_mean_of_the_whole_update():
    g = torch.Generator().manual_seed(3)
    new = (0.02 * torch.randn(8, generator=g)).requires_grad_(True)
    old = torch.zeros(8)
    adv = torch.randn(8, generator=g)
    keep = torch.tensor([True, True, True, False, True, False, False, False])  # 3 kept, then 1 kept
    whole, _ = ppo_clip_loss(new, old, adv, 0.05, mask=keep)
    (g_whole,) = torch.autograd.grad(whole, new)
    parts = [ppo_clip_loss(new[sl], old[sl], adv[sl], 0.05, mask=keep[sl], normalizer=int(keep.sum()))[0]
             for sl in (slice(0, 4), slice(4, 8))]
    (g_parts,) = torch.autograd.grad(sum(parts), new)
    torch.testing.assert_close(sum(parts), whole)
    torch.testing.assert_close(g_parts, g_whole)
    # per-micro-batch means would weigh the lone kept sample of the second half 3x more
    per_mb = [ppo_clip_loss(new[sl], old[sl], adv[sl], 0.05, mask=keep[sl])[0] for sl in (slice(0, 4), slice(4, 8))]
    assert not torch.allclose(sum(per_mb) / 2, whole)


def test_clipfrac_and_approx_kl_count_kept_samples_only():
    old = torch.zeros(4)
    new = torch.tensor([0.0, 0.0, 0.5, 0.5])  # the dropped samples' ratios are far off
    keep = torch.tensor([True, True, False, False])
    _, info = ppo_clip_loss(new, old, torch.ones(4), 0.05, mask=keep)
    assert info.clipfrac == 0.0 and info.approx_kl == 0.0 and info.kept == 2
    assert info.ratio_max_dev == pytest.approx(math.exp(0.5) - 1)  # the ratio check still sees every sample
    _, all_info = ppo_clip_loss(new, old, torch.ones(4), 0.05)
    assert all_info.clipfrac == 0.5 and all_info.kept == 4


def test_ppo_clip_loss_value_clipfrac_and_mask():
    old = torch.zeros(4)
    new = torch.tensor([0.0, 0.1, -0.1, 0.0], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0])
    loss, info = ppo_clip_loss(new, old, adv, clip_range=0.05)
    ratio = torch.exp(new.detach())
    expected = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.95, 1.05)).mean()
    assert loss.item() == pytest.approx(expected.item())
    assert info.clipfrac == pytest.approx(0.5)
    loss.backward()
    assert new.grad[1] == 0  # clipped on the profitable side: no gradient
    masked, _ = ppo_clip_loss(new, old, adv, 0.05, mask=torch.tensor([True, False, False, False]))
    assert masked.item() == pytest.approx(-1.0)
    none, _ = ppo_clip_loss(new, old, adv, 0.05, mask=torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0


def test_ema_warms_up_exactly_as_flow_grpo_and_swaps():
    """Flow-GRPO's EMAModuleWrapper (flow_grpo/ema.py): at its n-th update (n = optimizer steps so far, 1 at the
    first call) ``decay_n = min((1 + n) / (10 + n), decay)`` and ``ema += (1 - decay_n) * (p - ema)``; written
    out here independently of diffusers' EMAModel that ours wraps."""
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.9)
    reference = torch.zeros(3)
    for n in range(1, 101):
        with torch.no_grad():
            p.copy_(torch.tensor([float(n % 7), -1.0, 0.5 * n]))
        decay_n = min((1 + n) / (10 + n), 0.9)
        reference = reference + (1 - decay_n) * (p.detach() - reference)
        assert ema.current_decay() == pytest.approx(decay_n)
        ema.update()
        torch.testing.assert_close(ema.shadow[0], reference, rtol=1e-5, atol=1e-5)
        assert ema.warmed_up == (n >= 80)  # (1 + 80) / (10 + 80) = 0.9: the decay has reached its value
    assert ema.warmup_updates == 80 and ema_warmup_updates(0.95) == 170 and ema_warmup_updates(0.05) == 0
    ema.swap()
    torch.testing.assert_close(p.detach(), reference, rtol=1e-5, atol=1e-5)
    ema.swap()
    torch.testing.assert_close(p.detach(), torch.tensor([100 % 7, -1.0, 50.0]))


def test_ema_state_round_trips_and_a_legacy_state_continues():
    p = torch.nn.Parameter(torch.ones(2))
    ema = EMA([p], decay=0.5)
    for _ in range(3):
        ema.update()
    restored = EMA([torch.nn.Parameter(torch.zeros(2))], decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 3 and torch.equal(restored.shadow[0], ema.shadow[0])
    legacy = EMA([torch.nn.Parameter(torch.zeros(2))], decay=0.5)  # the hand-written EMA's checkpoints
    legacy.load_state_dict({"decay": 0.5, "shadow": [torch.full((2,), 0.25)]}, updates=7)
    assert legacy.updates == 7 and torch.equal(legacy.shadow[0], torch.full((2,), 0.25))
    with pytest.raises(ValueError, match="does not match"):
        legacy.load_state_dict({"decay": 0.5, "shadow_params": []})
    # the export reads a legacy checkpoint's state through the same upgrade: its updates count as averaged
    upgraded = upgrade_ema_state({"decay": 0.5, "shadow": []}, updates=8)
    assert upgraded["optimization_step"] == 8 and ema_export_choice(upgraded)[0]
    assert upgrade_ema_state(ema.state_dict(), updates=99)["optimization_step"] == 3  # a current state: as saved


def test_exports_use_the_ema_only_once_it_has_warmed_up():
    p = torch.nn.Parameter(torch.zeros(1))
    ema = EMA([p], decay=0.5)  # warmed up after 8 updates: (1 + 8) / (10 + 8) = 0.5
    use, note = ema_export_choice(ema.state_dict())
    assert not use and "not warmed up (0 of 8 updates" in note
    for _ in range(7):
        ema.update()
    assert not ema_export_choice(ema.state_dict())[0]
    assert not ema.warmed_up and ema_export_choice(ema) == ema_export_choice(ema.state_dict())  # one rule
    ema.update()
    use, note = ema_export_choice(ema.state_dict())
    assert use and "EMA weights" in note
    assert ema.warmed_up and ema_export_choice(ema) == (use, note)
    assert ema_export_choice(ema.state_dict(), wanted=False)[0] is False
    assert ema_export_choice(None) == (False, "exporting the live weights (no EMA kept)")


# --- against the references, at real scheduler configs ------------------------------------------------

SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def _policy(arch: str, scheduler, channels: int):
    from types import SimpleNamespace

    from emofeedback2.training.generator.policies import DiffusionPolicy

    pipe = SimpleNamespace(scheduler=scheduler, vae=SimpleNamespace(config=SimpleNamespace(block_out_channels=[1, 1, 1, 1])))
    net = SimpleNamespace(denoiser=SimpleNamespace(config=SimpleNamespace(in_channels=channels)), time_ids=None)
    return DiffusionPolicy(pipe, arch, net, resolution=64, device=torch.device("cpu"), eta=1.0, noise_level=0.7)


@pytest.mark.parametrize("steps", [10, 28, 50])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_eta_one_step_equals_diffusers_ddim_scheduler(steps, prediction_type):
    """Every step of our DDIM (eta=1) rollout equals ``DDIMScheduler.step(eta=1, variance_noise=...)``."""
    from diffusers import DDIMScheduler

    config = {**SD15_SCHEDULER, "prediction_type": prediction_type}
    policy = _policy("sd15", DDIMScheduler(**config), 4)
    timesteps, params = policy.schedule(steps)
    reference = DDIMScheduler(**config)
    reference.set_timesteps(steps)
    assert torch.equal(timesteps, reference.timesteps)
    g = torch.Generator().manual_seed(steps)
    for i, t in enumerate(timesteps):
        x, out, noise = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
        ours = policy.step(out, x, params[i], noise=noise)
        theirs = reference.step(out, t, x, eta=1.0, variance_noise=noise).prev_sample
        torch.testing.assert_close(ours.prev_sample, theirs, atol=2e-5, rtol=1e-5)


def _flow_grpo_sde_step(v, x, sigma, sigma_next, sigma_max, a, noise):
    """The Flow-GRPO SDE step as its paper/repository write it (expanded form, cap only where sigma = 1)."""
    dt = sigma_next - sigma
    std_dev_t = a * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma)))
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    std = std_dev_t * torch.sqrt(-dt)
    prev = mean + std * noise
    log_prob = Normal(mean.double(), std.double()).log_prob(prev.double()).mean(dim=(1, 2, 3))
    return prev, log_prob


@pytest.mark.parametrize("steps", [10, 28, 50])
def test_flow_sde_step_equals_flow_grpo_formula_at_sd3_schedules(steps):
    """SD3.5's scheduler (shift 3): every step, the first (sigma = 1) included, matches Flow-GRPO."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    policy = _policy("sd3", scheduler, 16)
    _, params = policy.schedule(steps)
    sigmas = scheduler.sigmas.float()
    assert float(sigmas[0]) == 1.0
    g = torch.Generator().manual_seed(steps)
    for i in range(steps - 1):  # the last step ends at sigma = 0: deterministic, never trained
        v, x, noise = (torch.randn(2, 16, 8, 8, generator=g) for _ in range(3))
        ours = policy.step(v, x, params[i], noise=noise)
        prev, log_prob = _flow_grpo_sde_step(v, x, sigmas[i], sigmas[i + 1], sigmas[1], 0.7, noise)
        torch.testing.assert_close(ours.prev_sample, prev, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(ours.log_prob.double(), log_prob, atol=1e-4, rtol=1e-5)


def test_stored_step_rows_ignore_later_scheduler_changes():
    """An evaluation at other step counts between rollout and update must not move the recomputed log-prob."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    policy = _policy("sd3", FlowMatchEulerDiscreteScheduler(shift=3.0), 16)
    _, params = policy.schedule(10)
    g = torch.Generator().manual_seed(0)
    v, x, noise = (torch.randn(2, 16, 8, 8, generator=g) for _ in range(3))
    first = policy.step(v, x, params[0], noise=noise)
    policy.schedule(40)  # e.g. trainer.evaluate(steps=40) in between
    again = policy.step(v, x, params[0], prev_sample=first.prev_sample)
    assert torch.equal(again.log_prob, first.log_prob)


SD35_MEDIUM_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)  # its scheduler/scheduler_config.json


def test_kl_equals_flow_grpo_kl_loss_at_the_sd35_medium_schedule():
    """Flow-GRPO (scripts/train_sd3.py): ``kl_loss = mean_CHW((prev_sample_mean - prev_sample_mean_ref)**2) /
    (2 * std_dev_t**2)`` with ``std_dev_t = sqrt(sigma / (1 - where(sigma == 1, sigma_max, sigma))) * noise_level``
    (flow_grpo/diffusers_patch/sd3_sde_with_logprob.py), at SD3.5 Medium's real scheduler config, 10 steps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**SD35_MEDIUM_SCHEDULER)
    policy = _policy("sd3", scheduler, 16)
    _, params = policy.schedule(10)
    sigmas = scheduler.sigmas.double()
    g = torch.Generator().manual_seed(5)
    ratios = []
    for i in range(10):  # every step, the first (sigma = 1) and the last (to sigma = 0) included
        x, v, v_ref, noise = (torch.randn(3, 16, 8, 8, generator=g) for _ in range(4))
        res = policy.step(v, x, params[i], noise=noise)
        ref = policy.step(v_ref, x, params[i], prev_sample=res.prev_sample)
        ours = step_kl(res, ref)
        sigma, sigma_next, sigma_max = float(sigmas[i]), float(sigmas[i + 1]), float(sigmas[1])
        dt = sigma_next - sigma
        std_dev_t = math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma))) * 0.7

        def flow_grpo_mean(vel):
            x64, v64 = x.double(), vel.double()
            return x64 * (1 + std_dev_t**2 / (2 * sigma) * dt) + v64 * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt

        kl_loss = ((flow_grpo_mean(v) - flow_grpo_mean(v_ref)) ** 2).mean(dim=(1, 2, 3)) / (2 * std_dev_t**2)
        torch.testing.assert_close(ours.double(), kl_loss, rtol=1e-4, atol=1e-9)
        exact = gaussian_kl_mean(res.mean, ref.mean, res.std)  # the step's whole variance sigma_t^2 |dt|
        ratios.append(float((exact / ours).mean()))
        assert ratios[-1] == pytest.approx(1 / abs(dt), rel=1e-4)
    # the step's whole variance made the KL 1/|dt| stronger: 25x at the first step down to 3.7x, 112x at the last
    assert ratios[0] == pytest.approx(25.1, abs=0.1) and min(ratios) == pytest.approx(3.7, abs=0.1)
    assert ratios[-1] == pytest.approx(112.0, abs=0.5)


def test_ddim_kl_divides_by_the_step_variance():
    """DDIM has no separate dt: its KL is the exact Gaussian KL of the step (the documented choice)."""
    g = torch.Generator().manual_seed(6)
    x, out, out_ref, noise = (torch.randn(2, 4, 5, 5, generator=g) for _ in range(4))
    res = ddim_step_with_logprob(out, x, 0.4, 0.7, noise=noise)
    ref = ddim_step_with_logprob(out_ref, x, 0.4, 0.7, prev_sample=res.prev_sample)
    variance = (1 - 0.7) / (1 - 0.4) * (1 - 0.4 / 0.7)
    expected = ((res.mean - ref.mean) ** 2).mean(dim=(1, 2, 3)) / (2 * variance)
    torch.testing.assert_close(step_kl(res, ref), expected, rtol=1e-5, atol=1e-9)

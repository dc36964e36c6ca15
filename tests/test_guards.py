"""GRPO-Guard ratio normalisation (against its formula) and CFG-free training on tiny pipelines."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.training.generator.guards import grpo_guard_log_ratio, guarded_log_probs, ratio_mean_bias
from emofeedback2.training.generator.step_logprob import flow_sde_step_with_logprob
from emofeedback2.training.generator.trainer import GRPOTrainer

from test_training_trainer import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _flow_pair(seed: int, drift: float, sigma: float = 0.3, sigma_next: float = 0.2):
    """One flow-SDE step of an old and a drifted policy at the same x, the next latent drawn from the old."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, 8, 8, generator=g)
    v_old = torch.randn(x.shape, generator=g)
    v_new = v_old + drift * torch.randn(x.shape, generator=g)
    eps = torch.randn(x.shape, generator=g)
    old = flow_sde_step_with_logprob(v_old, x, sigma, sigma_next, noise=eps)
    new = flow_sde_step_with_logprob(v_new, x, sigma, sigma_next, prev_sample=old.prev_sample)
    return old, new, eps


def test_guard_log_ratio_matches_the_formula():
    old, new, eps = _flow_pair(0, drift=0.05)
    s = 0.7 * (0.3 / 0.7) ** 0.5 * (0.1) ** 0.5  # sigma_t * sqrt(-dt) of the flow SDE, noise level 0.7
    assert torch.allclose(new.std, torch.tensor(s), rtol=1e-6)
    d = new.mean - old.mean
    b = (d**2).mean(dim=(1, 2, 3)) / (2 * s**2)
    assert torch.allclose(ratio_mean_bias(new.mean, old.mean, new.std), b, rtol=1e-5)
    expected = (new.log_prob - old.log_prob + b) * s
    got = grpo_guard_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    # and the closed form it reduces to: mean over C×H×W of (μ_θ − μ_old) · ε
    assert torch.allclose(got, (d * eps).mean(dim=(1, 2, 3)), rtol=1e-3, atol=1e-6)


def test_raw_ratio_mean_sits_below_one_and_the_guarded_one_does_not():
    old, new, _ = _flow_pair(1, drift=0.3)
    raw = torch.exp(new.log_prob - old.log_prob)
    guarded = torch.exp(grpo_guard_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std))
    se_raw = raw.std() / raw.numel() ** 0.5
    assert raw.mean() < 1 - 5 * se_raw  # left-shifted, as GRPO-Guard reports
    se_g = guarded.std() / guarded.numel() ** 0.5
    assert abs(float(guarded.mean()) - 1.0) < 4 * float(se_g) + 1e-6  # centred on 1
    # identical policies: both ratios are exactly 1
    same = grpo_guard_log_ratio(old.log_prob, old.log_prob, old.mean, old.mean, old.std)
    assert torch.equal(same, torch.zeros_like(same))


def test_grpo_guard_in_the_trainer_keeps_ratio_one_before_the_first_update(tiny_pipeline_dirs, tmp_path):
    c = tiny_config(tiny_pipeline_dirs["sd3"], tmp_path, ratio_norm="grpo_guard")
    trainer = GRPOTrainer(c, log=False)
    trajs, _, _ = trainer.sample_step()
    assert trajs[0].means is not None and trajs[0].means.shape[:2] == (4, c.sampling.steps)
    out = trainer.net(trajs[0].latents[:, 1], trajs[0].timesteps[1], trajs[0].cond, trajs[0].va, 1.0, 1.0)
    res = trainer.policy.step(out, trajs[0].latents[:, 1], trajs[0].params[1], prev_sample=trajs[0].latents[:, 2])
    lp, old, weight = guarded_log_probs("grpo_guard", "sd3", res, trajs[0], 1)
    assert torch.equal(lp, old)  # ratio exactly 1
    dt = float(trajs[0].params[1][0] - trajs[0].params[1][1])
    assert weight == pytest.approx(1 / dt)
    before = {n: p.detach().clone() for n, p in trainer.trainable}
    metrics = trainer.train_step()
    assert trainer.ratio_dev_before_first_update < 1e-6 and metrics["train/grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in trainer.trainable)
    # without the guard no means are stored (no extra memory)
    plain = GRPOTrainer(tiny_config(tiny_pipeline_dirs["sd3"], tmp_path / "plain"), log=False)
    assert plain.sample_step()[0][0].means is None


def test_cfg_free_training_rolls_out_trains_and_evaluates_the_unguided_policy(tiny_pipeline_dirs, tmp_path):
    c = tiny_config(tiny_pipeline_dirs["sdxl"], tmp_path)
    c.sampling.guidance_scale = 3.0
    c.sampling.cfg_free_training = True
    trainer = GRPOTrainer(c, log=False)
    seen = []
    forward = trainer.raw_net.forward

    def spy(latents, timestep, cond, va, guidance_scale=1.0, adapter_strength=1.0):
        seen.append((guidance_scale, latents.shape[0], cond.neg_context is not None))
        return forward(latents, timestep, cond, va, guidance_scale, adapter_strength)

    trainer.raw_net.forward = spy
    trainer.train_step()
    assert seen and all(g == 1.0 and not has_neg for g, _, has_neg in seen)  # no unconditional branch
    seen.clear()
    trainer.evaluate(["a red apple"], torch.tensor([[1.0, 1.0]]), [7], steps=2)
    assert seen and all(g == 1.0 and not has_neg for g, _, has_neg in seen)  # the policy that is optimised
    seen.clear()
    trainer.evaluate(["a red apple"], torch.tensor([[1.0, 1.0]]), [7], steps=2, guidance_scale=3.0)
    assert seen and all(g == 3.0 and has_neg for g, _, has_neg in seen)  # the guided one, when asked

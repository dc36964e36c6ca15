"""GRPO trainer on tiny pipelines: ratio 1 before the first update, frozen base, KL, resume, dtypes."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.training.generator.config import RewardSpec, TrainConfig
from emofeedback2.training.generator.trainer import GRPOTrainer


# Tiny models run fastest single-threaded on a shared machine (no oversubscription).
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(pipeline_dir, out, **grpo) -> TrainConfig:
    c = TrainConfig()
    c.model.pretrained = str(pipeline_dir)
    c.model.adapter_hidden = 16
    c.model.lora_rank = 4
    c.model.lora_alpha = 4.0
    c.sampling.resolution = 16
    c.sampling.steps = 3
    c.sampling.eval_steps = 3
    c.sampling.guidance_scale = 1.0
    c.grpo.group_size = 4
    c.grpo.groups_per_step = 2
    c.grpo.batch_size = 4
    c.grpo.kl_beta = 0.01
    for key, value in grpo.items():
        setattr(c.grpo, key, value)
    c.optim.lr = 1e-2
    c.rewards = [RewardSpec(kind="color")]
    c.output_dir = str(out)
    c.device = "cpu"
    c.max_steps = 2
    c.save_every = 1
    c.progress = False
    return c


@pytest.mark.parametrize("arch,guidance", [("sd15", 1.0), ("sdxl", 2.0), ("sd3", 1.0)])
def test_ratio_is_exactly_one_at_every_timestep_before_the_first_update(tiny_pipeline_dirs, tmp_path, arch, guidance):
    c = tiny_config(tiny_pipeline_dirs[arch], tmp_path)
    c.sampling.guidance_scale = guidance
    trainer = GRPOTrainer(c, log=False)
    # the recomputed log-prob (with gradients, in training mode) equals the rollout's at every step
    trajs, _, _ = trainer.sample_step()
    trainer.raw_net.train()
    for j in range(c.sampling.steps):
        out = trainer.net(trajs[0].latents[:, j], trajs[0].timesteps[j], trajs[0].cond, trajs[0].va, guidance, 1.0)
        res = trainer.policy.step(out, trajs[0].latents[:, j], trajs[0].params[j], prev_sample=trajs[0].latents[:, j + 1])
        assert res.log_prob.requires_grad
        assert (torch.exp(res.log_prob - trajs[0].log_probs[:, j]) - 1).abs().max() < 1e-6
    trainer.train_step()  # two micro-batches x three timesteps are scored before the optimizer steps
    assert trainer.updates == 1
    assert trainer.ratio_dev_before_first_update < 1e-6


def test_gradient_checkpointing_and_a_trained_window_of_steps(tiny_pipeline_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path, train_window=[1, 3], train_timestep_fraction=0.5)
    c.model.gradient_checkpointing = True
    trainer = GRPOTrainer(c, log=False)
    assert trainer.derived.trained_timesteps == 1 and trainer.derived.backward_passes_per_update == 2
    seen = []
    original = trainer.update_phase.timestep_loss

    def spy(traj, j, adv, keep, **kwargs):
        seen.append(j)
        return original(traj, j, adv, keep, **kwargs)

    trainer.update_phase.timestep_loss = spy
    metrics = trainer.train_step()
    assert len(seen) == 2 and set(seen) <= {1, 2}
    assert metrics["train/grad_norm"] > 0 and trainer.ratio_dev_before_first_update < 1e-6


def test_only_lora_and_adapter_change_base_weights_stay_bit_identical(tiny_pipeline_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path)
    trainer = GRPOTrainer(c, log=False)
    pipe = trainer.pipe
    names = {n for n, _ in trainer.trainable}
    assert names and all(".lora_" in n or n.startswith("adapter.") for n in names)
    assert any(n.startswith("adapter.") for n in names)
    frozen = {}
    for comp in ("unet", "text_encoder", "vae"):
        for n, p in getattr(pipe, comp).named_parameters():
            if "lora_" not in n:
                assert not p.requires_grad, f"{comp}.{n} should be frozen"
                frozen[f"{comp}.{n}"] = p.detach().clone()
    trainable_before = {n: p.detach().clone() for n, p in trainer.trainable}
    trainer.train_step()
    trainer.train_step()
    for comp in ("unet", "text_encoder", "vae"):
        for n, p in getattr(pipe, comp).named_parameters():
            if "lora_" not in n:
                assert torch.equal(p.detach(), frozen[f"{comp}.{n}"]), f"base weight {comp}.{n} changed"
    changed = [n for n, p in trainer.trainable if not torch.equal(p.detach(), trainable_before[n])]
    assert any("lora_B" in n for n in changed) and any(n.startswith("adapter.") for n in changed)


def test_kl_is_zero_at_init_and_positive_after_an_update_and_logged_per_trained_timestep(tiny_pipeline_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path, kl_beta=0.05)
    trainer = GRPOTrainer(c, log=False)
    first = trainer.train_step()
    assert first["train/kl"] == 0.0  # LoRA B = 0 and identity adapter: policy == base before the update
    second = trainer.train_step()
    assert second["train/kl"] > 0.0
    per_step = {k: v for k, v in second.items() if k.startswith("train/kl_by_step/")}
    assert set(per_step) == {"train/kl_by_step/00", "train/kl_by_step/01"}  # 3 steps: the last is not trained
    assert all(v > 0 for v in per_step.values())
    assert second["train/kl"] == pytest.approx(sum(per_step.values()) / 2)  # every sample trains both


def test_trained_timesteps_are_int_of_t_times_f_and_leave_the_last_step_out_by_default(tiny_pipeline_dir, tmp_path):
    import numpy as np

    from emofeedback2.training.generator.config import derive

    c = tiny_config(tiny_pipeline_dir, tmp_path)
    c.sampling.steps = 10
    for fraction, window, expected in [(0.99, [], 9), (0.55, [0, 10], 5), (1.0, [], 9), (1.0, [0, 10], 10),
                                       (0.6, [], 6), (0.05, [], 1), (0.5, [2, 4], 2)]:
        c.grpo.train_timestep_fraction, c.grpo.train_window = fraction, window
        assert derive(c).trained_timesteps == expected, (fraction, window)  # Flow-GRPO: int(T * f), floor
    c.sampling.steps, c.grpo.train_timestep_fraction, c.grpo.train_window = 3, 0.5, []
    trainer = GRPOTrainer(c, log=False)
    drawn = {j for seed in range(40) for j in trainer.update_phase.train_indices(np.random.default_rng(seed))}
    assert drawn == {0, 1}  # never the last, near-deterministic step
    trainer.config.grpo.train_window = [0, 3]
    drawn = {j for seed in range(40) for j in trainer.update_phase.train_indices(np.random.default_rng(seed))}
    assert drawn == {0, 1, 2}  # an explicit window trains it


@pytest.mark.parametrize("decay,warmed", [(0.95, False), (0.15, True)])
def test_export_uses_the_ema_only_once_warmed_up_and_says_so(tiny_pipeline_dir, tmp_path, capsys, decay, warmed):
    from safetensors import safe_open

    c = tiny_config(tiny_pipeline_dir, tmp_path)
    c.optim.ema, c.optim.ema_decay = True, decay  # 0.95 warms up after 170 updates, 0.15 after 1
    trainer = GRPOTrainer(c, log=False)
    trainer.train_step()
    trainer.train_step()
    live = {n: p.detach().clone() for n, p in trainer.trainable}
    assert any(not torch.equal(s, live[n]) for s, (n, _) in zip(trainer.ema.shadow, trainer.trainable))
    paths = trainer.export(tmp_path / "export")
    out = capsys.readouterr().out
    assert ("exporting the EMA weights" if warmed else "has not warmed up (2 of 170 updates") in out
    with safe_open(str(paths["kohya_lora"]), "pt") as f:
        meta = f.metadata()
        up = [k for k in f.keys() if k.endswith("lora_up.weight")][0]
        exported = f.get_tensor(up)
    assert meta["weights"] == ("ema" if warmed else "live") and "warm" in meta["weights_note"]
    ema = dict(zip([n for n, _ in trainer.trainable], trainer.ema.shadow))
    source, other = (ema, live) if warmed else (live, ema)
    assert any(torch.equal(exported.float(), v.float()) for n, v in source.items() if "lora_B" in n)
    assert not any(torch.equal(exported.float(), v.float()) for n, v in other.items() if "lora_B" in n)
    for n, p in trainer.trainable:  # the live weights are back after the export
        assert torch.equal(p.detach(), live[n])


def test_lora_params_stay_fp32_under_bf16_base(tiny_pipeline_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path)
    c.model.dtype = "bfloat16"
    trainer = GRPOTrainer(c, log=False)
    assert trainer.pipe.unet.conv_in.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for _, p in trainer.trainable)
    metrics = trainer.train_step()
    assert trainer.ratio_dev_before_first_update < 1e-6
    assert all(torch.isfinite(p).all() for _, p in trainer.trainable)
    assert metrics["train/grad_norm"] > 0


def test_resume_after_interruption_matches_uninterrupted_run(tiny_pipeline_dir, tmp_path):
    full = tiny_config(tiny_pipeline_dir, tmp_path / "full")
    full.max_steps = 3
    full.optim.ema = True
    full.export_at_end = False
    uninterrupted = GRPOTrainer(full, log=False)
    history_full = uninterrupted.train()

    part = tiny_config(tiny_pipeline_dir, tmp_path / "part")
    part.max_steps = 2
    part.optim.ema = True
    part.export_at_end = False
    GRPOTrainer(part, log=False).train()  # "interrupted" after step 2 (a fresh process resumes)
    part.max_steps = 3
    resumed = GRPOTrainer(part, log=False)
    history_resumed = resumed.train(resume=True)
    assert resumed.step == 3 and len(history_resumed) == 1
    for (name, a), (_, b) in zip(uninterrupted.trainable, resumed.trainable):
        assert torch.equal(a.detach(), b.detach()), f"{name} differs after resume"
    for sa, sb in zip(uninterrupted.ema.shadow, resumed.ema.shadow):
        assert torch.equal(sa, sb)
    for key in ("reward/mean", "train/loss", "train/kl"):
        assert history_resumed[-1][key] == history_full[-1][key]


def test_distinct_seeds_within_groups_and_groups_kept_together(tiny_pipeline_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path)
    trainer = GRPOTrainer(c, log=False)
    batch = trainer.sampler.sample(0, 2, 4)
    assert len(set(batch.seeds)) == len(batch.seeds)
    for g in set(batch.group_ids.tolist()):
        members = [i for i, x in enumerate(batch.group_ids) if x == g]
        assert len({batch.prompts[i] for i in members}) == 1
        assert len({tuple(batch.targets[i]) for i in members}) == 1
    # two processes split whole groups and never share a seed
    r0, r1 = trainer.sampler.sample(0, 2, 4, 0, 2), trainer.sampler.sample(0, 2, 4, 1, 2)
    assert not set(r0.group_ids) & set(r1.group_ids)
    assert not set(r0.seeds) & set(r1.seeds)

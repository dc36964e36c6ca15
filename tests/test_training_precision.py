"""Mixed precision has one owner (accelerate): clipping sees unscaled gradients; an fp16 overflow is a skipped
update, not divergence; bad combinations are refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from emofeedback2.training.checkpoint import NonFiniteError
from emofeedback2.training.generator.config import ConfigError, RewardSpec, TrainConfig
from emofeedback2.training.generator.precision import check_mixed_precision, cpu_accelerator_with_grad_scaler
from emofeedback2.training.generator.trainer import GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _config(pipeline_dir, out) -> TrainConfig:
    c = TrainConfig()
    c.model.pretrained = str(pipeline_dir)
    c.model.adapter_hidden, c.model.lora_rank, c.model.lora_alpha = 16, 4, 4.0
    c.sampling.resolution, c.sampling.steps, c.sampling.guidance_scale = 16, 3, 1.0
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size, c.grpo.kl_beta = 4, 2, 4, 0.01
    c.optim.lr, c.optim.weight_decay = 1e-3, 0.0  # lr is zeroed on the optimiser below (configs refuse lr = 0)
    c.optim.max_grad_norm = 1e-4  # small enough that clipping acts
    c.rewards = [RewardSpec(kind="color")]
    c.output_dir, c.device, c.progress, c.reward_workers = str(out), "cpu", False, 0
    return c


def test_bf16_mixed_precision_clips_unscaled_gradients(tiny_pipeline_dir, tmp_path):
    from accelerate import Accelerator

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # an earlier test may have made a default one
    acc = Accelerator(cpu=True, mixed_precision="bf16")
    trainer = GRPOTrainer(_config(tiny_pipeline_dir, tmp_path), accelerator=acc, log=False)
    params = [p for _, p in trainer.trainable]
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0  # weights stay put, so the update can be recomputed after
    calls, seen = [], {}
    original_loss, original_clip = trainer.update_phase.timestep_loss, acc.clip_grad_norm_

    def loss_spy(*args, **kwargs):
        calls.append((args, kwargs))
        return original_loss(*args, **kwargs)

    def clip_spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        seen["before"] = [p.grad.detach().clone() for p in parameters]
        norm = original_clip(parameters, max_norm, *args, **kwargs)
        seen["after"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
        seen["returned"] = float(norm)
        return norm

    trainer.update_phase.timestep_loss, acc.clip_grad_norm_ = loss_spy, clip_spy
    metrics = trainer.train_step()
    assert trainer.ratio_dev_before_first_update < 1e-6  # rollout and update share the bf16 autocast
    # the same update's loss recomputed by hand: plain autograd, no accelerate, no scaler
    total = sum(original_loss(*a, **kw)[0] for a, kw in calls)
    reference = torch.autograd.grad(total, params, allow_unused=True)
    reference = [torch.zeros_like(p) if g is None else g for p, g in zip(params, reference)]
    ref_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in reference])))
    assert ref_norm > 0
    for got, want in zip(seen["before"], reference):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-9)
    assert seen["returned"] == pytest.approx(ref_norm, rel=1e-3)
    assert metrics["train/grad_norm"] == pytest.approx(ref_norm, rel=1e-3)
    assert float(seen["after"]) == pytest.approx(1e-4, rel=1e-2)  # clipped to max_grad_norm, unscaled units


def _fp16_config(pipeline_dir, out) -> TrainConfig:
    c = _config(pipeline_dir, out)
    c.model.dtype = "float16"  # fp16 base weights: the backward through them overflows at a huge loss scale
    c.optim.lr, c.optim.max_grad_norm = 1e-2, 1.0
    c.max_steps, c.save_every, c.export_at_end = 3, 1, False
    return c


def test_an_fp16_overflow_skips_the_update_and_the_run_continues(tiny_pipeline_dir, tmp_path):
    # scale 2^40: the first update's gradients overflow fp16; the scaler skips it and backs off to 2^10
    acc = cpu_accelerator_with_grad_scaler(init_scale=2.0**40, backoff_factor=2.0**-30)
    trainer = GRPOTrainer(_fp16_config(tiny_pipeline_dir, tmp_path), accelerator=acc, log=False)
    before = {n: p.detach().clone() for n, p in trainer.trainable}
    history = trainer.train()  # a skipped update is not divergence: no NonFiniteError
    assert len(history) == 3 and trainer.step == 3
    first = history[0]
    assert first["train/skipped_updates"] == 1.0 and first["train/applied_updates"] == 0.0
    assert acc.scaler.get_scale() < 2.0**40  # the scaler backed off
    assert trainer.update_phase.skipped == 1 and trainer.updates == 2  # skipped updates are not applied ones
    assert all(h["train/skipped_updates"] == 0.0 and h["train/grad_norm"] > 0 for h in history[1:])
    assert any(not torch.equal(before[n], p) for n, p in trainer.trainable)
    assert all(torch.isfinite(p).all() for _, p in trainer.trainable)


def test_many_skipped_updates_in_a_row_stop_the_run_before_saving(tiny_pipeline_dir, tmp_path):
    from emofeedback2.training import checkpoint as ckpt

    # the scale hardly backs off, so every update overflows: after 2 skips in a row the run stops
    acc = cpu_accelerator_with_grad_scaler(init_scale=2.0**40, backoff_factor=0.99)
    c = _fp16_config(tiny_pipeline_dir, tmp_path)
    c.optim.max_skipped_updates_in_a_row = 2
    trainer = GRPOTrainer(c, accelerator=acc, log=False)
    with pytest.raises(NonFiniteError, match="skipped 2 optimizer updates in a row.*max_skipped_updates_in_a_row=2"):
        trainer.train()
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step-000001"  # one skip: still saved
    assert trainer.updates == 0


def _acc(mode: str, device: str = "cuda"):
    return SimpleNamespace(mixed_precision=mode, device=torch.device(device))


@pytest.mark.parametrize("mode,dtype", [("no", "float16"), ("bf16", "float16"), ("fp16", "bfloat16"), ("fp8", "float32")])
def test_unsupported_mixed_precision_is_refused_with_the_fix(mode, dtype):
    with pytest.raises(ConfigError, match="mixed_precision|model.dtype"):
        check_mixed_precision(_acc(mode), dtype)


@pytest.mark.parametrize("mode,dtype", [("fp16", "float16"), ("bf16", "bfloat16"), ("no", "bfloat16"),
                                        ("fp16", "float32"), ("bf16", "float32"), ("no", "float32")])
def test_supported_mixed_precision_passes(mode, dtype):
    check_mixed_precision(_acc(mode), dtype)

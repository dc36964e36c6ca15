"""Training runs that fail safe: resume refuses to mix runs, applies what it records, survives kills in a
save bit-exactly, stops on NaN before saving, and never lands on top of another run."""

from __future__ import annotations

import json
import os

import pytest
import torch

from emofeedback2.training import checkpoint as ckpt
from emofeedback2.training.generator.config import ConfigError, RewardSpec, TrainConfig
from emofeedback2.training.generator.resume_guard import ResumeMismatchError
from emofeedback2.training.generator.trainer import GRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(pipeline_dir, out, **top) -> TrainConfig:
    c = TrainConfig()
    c.model.pretrained = str(pipeline_dir)
    c.model.adapter_hidden = 8
    c.model.lora_rank = 2
    c.model.lora_alpha = 2.0
    c.sampling.resolution = 16
    c.sampling.steps = 2
    c.sampling.eval_steps = 2
    c.sampling.guidance_scale = 1.0
    c.grpo.group_size = 2
    c.grpo.groups_per_step = 2
    c.grpo.batch_size = 2
    c.optim.lr = 1e-2
    c.rewards = [RewardSpec(kind="color")]
    c.output_dir = str(out)
    c.device = "cpu"
    c.max_steps = 2
    c.save_every = 1
    c.progress = False
    c.export_at_end = False
    c.reward_workers = 0
    for key, value in top.items():
        setattr(c, key, value)
    return c


@pytest.fixture(scope="module")
def reference(tiny_pipeline_dir, tmp_path_factory):
    """An uninterrupted 3-step run (weights after step 3, and the run folder after step 2)."""
    out = tmp_path_factory.mktemp("ref")
    torch.set_num_threads(1)
    c = small_config(tiny_pipeline_dir, out / "full", max_steps=3)
    c.optim.ema = True
    trainer = GRPOTrainer(c, log=False)
    history = trainer.train()
    weights = {n: p.detach().clone() for n, p in trainer.trainable}
    ema = [s.clone() for s in trainer.ema.shadow]
    return {"weights": weights, "ema": ema, "history": history, "dir": tiny_pipeline_dir}


def _two_steps(pipeline_dir, out, **kw) -> GRPOTrainer:
    c = small_config(pipeline_dir, out, **kw)
    c.optim.ema = True
    trainer = GRPOTrainer(c, log=False)
    trainer.train()
    return trainer


class Killed(BaseException):
    pass


@pytest.mark.parametrize("kill_at", ["fsync", "replace-into-place", "replace-pointer"])
def test_a_kill_inside_the_last_save_then_resume_is_bit_exact(reference, tmp_path, monkeypatch, kill_at):
    out = tmp_path / "run"
    c = small_config(reference["dir"], out)
    c.optim.ema = True
    trainer = GRPOTrainer(c, log=False)
    real_replace, real_fsync = os.replace, os.fsync
    state = {"saves": 0}
    real_save = trainer.save

    def save():
        state["saves"] += 1
        return real_save()

    def replace(src, dst, *a, **k):
        if state["saves"] == 2:
            if kill_at == "replace-into-place" and ".tmp-step" in str(src):
                raise Killed
            if kill_at == "replace-pointer" and str(dst).endswith("latest"):
                raise Killed
        return real_replace(src, dst, *a, **k)

    def fsync(fd):
        if state["saves"] == 2 and kill_at == "fsync":
            raise Killed
        return real_fsync(fd)

    trainer.save = save
    monkeypatch.setattr(ckpt.os, "replace", replace)
    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    with pytest.raises(Killed):
        trainer.train()
    monkeypatch.undo()
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest.name == "step-000001"  # the step-2 save never completed: the step-1 checkpoint survives
    ckpt.load_checkpoint(latest)

    c3 = small_config(reference["dir"], out, max_steps=3)
    c3.optim.ema = True
    resumed = GRPOTrainer(c3, log=False)
    history = resumed.train(resume=True)
    assert resumed.step == 3 and len(history) == 2
    for name, p in resumed.trainable:
        assert torch.equal(p.detach(), reference["weights"][name]), f"{name} differs after kill + resume"
    for a, b in zip(resumed.ema.shadow, reference["ema"]):
        assert torch.equal(a, b)
    assert history[-1]["train/loss"] == reference["history"][-1]["train/loss"]
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned


@pytest.mark.parametrize("field,value,match", [
    ("model.lora_rank", 4, "model.lora_rank"),
    ("model.adapter_hidden", 16, "model.adapter_hidden"),
    ("model.train_adapter", False, "model.train_adapter"),
    ("grpo.group_size", 4, "grpo.group_size"),
    ("seed", 7, "seed"),
    ("rewards", [RewardSpec(kind="brightness")], "rewards"),
    ("data.targets", "TARGETS", "data.targets"),
    ("sampling.steps", 3, "sampling.steps"),
])
def test_resume_refuses_a_different_run_naming_the_field(reference, tmp_path, field, value, match):
    out = tmp_path / "run"
    _two_steps(reference["dir"], out)
    c = small_config(reference["dir"], out, max_steps=3)
    c.optim.ema = True
    if value == "TARGETS":
        value = str(tmp_path / "t.csv")
        (tmp_path / "t.csv").write_text("valence,arousal\n1,1\n")
    section, _, name = field.rpartition(".")
    setattr(getattr(c, section) if section else c, name, value)
    if field == "grpo.group_size":
        c.grpo.batch_size = 4
    with pytest.raises(ResumeMismatchError, match=match.replace(".", r"\.")):
        GRPOTrainer(c, log=False).train(resume=True)
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000002"  # untouched


def test_allow_change_lets_a_named_run_defining_field_through_and_records_it(reference, tmp_path):
    out = tmp_path / "run"
    _two_steps(reference["dir"], out)
    c = small_config(reference["dir"], out, max_steps=3)
    c.optim.ema = True
    c.sampling.steps = 3
    with pytest.raises(ConfigError, match="cannot be allowed"):
        GRPOTrainer(c, log=False).train(resume=True, allow_change=["model.lora_rank"])
    trainer = GRPOTrainer(c, log=False)
    trainer.train(resume=True, allow_change=["sampling.steps"])
    _, _, meta = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
    assert meta["config_history"] == [{"step": 2, "changes": {"sampling.steps": [2, 3]}}]


def test_changed_optimiser_and_ema_settings_are_applied_not_just_recorded(reference, tmp_path):
    out = tmp_path / "run"
    _two_steps(reference["dir"], out)
    c = small_config(reference["dir"], out, max_steps=3)
    c.optim.ema = True
    c.optim.lr, c.optim.adapter_lr, c.optim.betas, c.optim.weight_decay, c.optim.ema_decay = 0.5, 0.25, [0.5, 0.9], 0.1, 0.5
    trainer = GRPOTrainer(c, log=False)
    trainer.resume()
    lora_group, adapter_group = trainer.optimizer.param_groups
    assert lora_group["lr"] == 0.5 and adapter_group["lr"] == 0.25
    assert lora_group["betas"] == (0.5, 0.9) and lora_group["weight_decay"] == 0.1
    assert trainer.ema.decay == 0.5
    changes = trainer.config_history[-1]["changes"]
    assert set(changes) == {"optim.lr", "optim.adapter_lr", "optim.betas", "optim.weight_decay", "optim.ema_decay"}
    # control: an unchanged config restores the saved values
    same = GRPOTrainer(small_config(reference["dir"], out, max_steps=3), log=False)
    same.config.optim.ema = True
    same.resume()
    assert same.optimizer.param_groups[0]["lr"] == 1e-2 and same.config_history == []


def test_ema_switched_on_at_resume_starts_from_the_resumed_weights(reference, tmp_path):
    out = tmp_path / "run"
    c = small_config(reference["dir"], out)
    GRPOTrainer(c, log=False).train()  # no EMA
    c3 = small_config(reference["dir"], out, max_steps=3)
    c3.optim.ema = True
    trainer = GRPOTrainer(c3, log=False)
    initial = [s.clone() for s in trainer.ema.shadow]
    trainer.resume()
    for s, (_, p) in zip(trainer.ema.shadow, trainer.trainable):
        assert torch.equal(s, p.detach().float())
    assert any(not torch.equal(a, b) for a, b in zip(initial, trainer.ema.shadow))  # not the initial weights


def test_a_checkpoint_beyond_max_steps_is_refused_and_one_at_max_steps_trains_nothing(reference, tmp_path, capsys):
    out = tmp_path / "run"
    _two_steps(reference["dir"], out)
    c = small_config(reference["dir"], out, max_steps=1)
    c.optim.ema = True
    with pytest.raises(ckpt.CheckpointError, match="beyond max_steps=1"):
        GRPOTrainer(c, log=False).train(resume=True)
    c.max_steps = 2
    trainer = GRPOTrainer(c, log=False)
    assert trainer.train(resume=True) == [] and trainer.step == 2
    assert "nothing to train" in capsys.readouterr().out


def test_a_corrupt_or_missing_latest_with_resume_is_an_error_not_a_fresh_start(reference, tmp_path):
    out = tmp_path / "run"
    _two_steps(reference["dir"], out)
    c = small_config(reference["dir"], out, max_steps=3)
    c.optim.ema = True
    weights = out / "checkpoints" / "step-000002" / ckpt.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        GRPOTrainer(c, log=False).train(resume=True)
    (out / "checkpoints" / "latest").unlink()
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume"):
        GRPOTrainer(c, log=False).train(resume=True)
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume"):
        GRPOTrainer(small_config(reference["dir"], tmp_path / "empty"), log=False).train(resume=True)


def test_a_new_run_in_a_used_output_dir_is_refused_unless_overwrite(reference, tmp_path):
    out = tmp_path / "run"
    _two_steps(reference["dir"], out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match="not empty"):
        GRPOTrainer(small_config(reference["dir"], out), log=False).train()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    (out / "notes.txt").write_text("mine")
    GRPOTrainer(small_config(reference["dir"], out, max_steps=1), log=False).train(overwrite=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000001"]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own folders are replaced


class NaNAfterFirstStep:
    """A reward that turns NaN in the second step (a diverging reward model)."""

    names, weights = ["nan"], [1.0]

    def __init__(self):
        self.calls = 0

    def score_parts(self, images, prompts, va):
        self.calls += 1
        value = images.float().mean(dim=(1, 2, 3))
        return {"nan": value * float("nan") if self.calls > 1 else value}  # one reward call per step

    def combine(self, parts, group_ids=None):
        return parts["nan"]

    def advantage_shares(self, parts, group_ids=None):
        return {}


def test_a_nan_loss_stops_the_run_before_it_is_saved(reference, tmp_path):
    from emofeedback2.training.generator.rewards import CompositeReward

    out = tmp_path / "run"
    c = small_config(reference["dir"], out, max_steps=3)
    assert c.reward_schedule == "step"  # the fake counts reward calls as steps
    reward = NaNAfterFirstStep()
    assert not isinstance(reward, CompositeReward)
    trainer = GRPOTrainer(c, log=False, reward=reward)
    with pytest.raises(ckpt.NonFiniteError, match="NaN"):
        trainer.train()
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000001"
    w, _, _ = ckpt.load_checkpoint(out / "checkpoints" / "step-000001")
    assert all(torch.isfinite(v).all() for v in w.values())
    # control: the same run with a finite reward reaches max_steps
    finite = GRPOTrainer(small_config(reference["dir"], tmp_path / "ok", max_steps=2), log=False)
    assert len(finite.train()) == 2


def test_nan_weights_stop_the_run_before_they_are_saved(reference, tmp_path):
    out = tmp_path / "run"
    trainer = GRPOTrainer(small_config(reference["dir"], out, max_steps=3), log=False)
    real_step = trainer.optimizer.step
    calls = {"n": 0}

    def diverging_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the second update blows up (e.g. an lr far too high)
            with torch.no_grad():
                trainer.trainable[0][1].fill_(float("inf"))
        return result

    trainer.optimizer.step = diverging_step
    with pytest.raises(ckpt.NonFiniteError, match="NaN/inf"):
        trainer.train()
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000001"


def test_export_verifies_hashes_and_refuses_nan(reference, tmp_path, capsys):
    from emofeedback2.cli import main

    out = tmp_path / "run"
    _two_steps(reference["dir"], out)
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "e1")]) == 0
    meta_file = out / "checkpoints" / "step-000002" / ckpt.META
    meta = json.loads(meta_file.read_text())
    meta["config"]["model"]["lora_alpha"] = 99.0
    meta_file.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(out), "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert "sha256" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e2").exists()
    (tmp_path / "afile").write_text("x")
    assert main(["export", "--checkpoint", str(out / "checkpoints" / "step-000001"), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_checkpoint_from_before_a_reward_field_existed_resumes_and_real_reward_changes_are_still_refused():
    from emofeedback2.training.generator.config import config_to_dict
    from emofeedback2.training.generator.resume_guard import compare

    current = small_config("pipe", "out")
    current.rewards = [RewardSpec(kind="lvlm", path="judge", attention="sdpa")]
    saved = config_to_dict(current)
    for spec in saved["rewards"]:  # as an older release recorded it: no attention/images_per_pass fields
        spec.pop("attention")
        spec.pop("images_per_pass")
    current.rewards[0].attention = "auto"
    assert compare(saved, current) == []  # missing fields read as their defaults; the kernel is placement
    current.rewards[0].images_per_pass = 4  # a field the old run did not have, set away from its default
    with pytest.raises(ResumeMismatchError, match="rewards"):
        compare(saved, current)
    current.rewards[0].images_per_pass = 0
    current.rewards[0].weight = 0.5
    with pytest.raises(ResumeMismatchError, match="rewards"):
        compare(saved, current)

"""Training config: TOML/YAML loading, overrides, derived numbers, early failure; atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from emofeedback2.training import checkpoint as ckpt
from emofeedback2.training.generator.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    derive,
    describe_fields,
    load_config,
    validate,
)
from emofeedback2.training.generator.data import PromptTargetSampler, load_prompts, load_targets, quadrant

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.iterdir() if not p.name.startswith("accelerate_")))
def test_shipped_example_configs_load_and_validate(name):
    config = load_config(CONFIGS / name)
    validate(config)
    assert derive(config).samples_per_step == config.grpo.group_size * config.grpo.groups_per_step


def test_toml_types_overrides_and_unknown_fields(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('max_steps = 3\n[grpo]\ngroup_size = 4\ngroups_per_step = 3\nbatch_size = 6\n'
                    '[[rewards]]\nkind = "brightness"\n[[rewards]]\nkind = "color"\nweight = 0.5\n')
    config = load_config(path)
    assert config.max_steps == 3 and config.grpo.batch_size == 6 and len(config.rewards) == 2
    apply_overrides(config, ["grpo.kl_beta=0.02", "rewards.1.weight=2", "optim.ema=true", "model.adapter_init=none",
                             "grpo.train_window=[1, 3]", "seed=7"])
    assert config.grpo.kl_beta == 0.02 and config.rewards[1].weight == 2.0 and config.optim.ema is True
    assert config.model.adapter_init is None and config.grpo.train_window == [1, 3] and config.seed == 7
    with pytest.raises(ConfigError, match="unknown field"):
        apply_overrides(config, ["grpo.group_sise=4"])
    with pytest.raises(ConfigError, match="as int"):
        apply_overrides(config, ["grpo.group_size=four"])
    path.write_text("[grpo]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(path)
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text("grpo:\n  group_size: 2\n  groups_per_step: 2\n  batch_size: 2\n")
    assert load_config(yaml_path).grpo.group_size == 2


def test_top_level_fields_take_trainconfigs_defaults_and_refuse_unknown_names():
    import dataclasses

    from emofeedback2.training.generator.config import SECTIONS, config_from_dict

    loaded, default = config_from_dict({}), TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name not in SECTIONS and f.name != "rewards":
            assert getattr(loaded, f.name) == getattr(default, f.name), f.name
    assert config_from_dict({"progress": False, "reward_workers": 0}).reward_workers == 0
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['max_step'\] in \[top level\]; known: .*'max_steps'"):
        config_from_dict({"max_step": 3})


def test_derived_numbers_and_impossible_combinations():
    c = TrainConfig()
    c.grpo.group_size, c.grpo.groups_per_step, c.grpo.batch_size, c.grpo.updates_per_step = 8, 3, 4, 3
    c.sampling.steps, c.grpo.train_timestep_fraction, c.max_steps = 10, 0.5, 5
    d = derive(c, num_processes=2)
    assert d.samples_per_step == 48 and d.samples_per_step_per_process == 24 and d.groups_per_step == 6
    assert d.micro_batches_per_step == 6 and d.micro_batches_per_update == 2
    assert d.trained_timesteps == 5 and d.backward_passes_per_update == 10
    assert d.total_optimizer_updates == 15 and d.total_images == 240
    assert "samples/step=48" in d.summary()
    bad = [
        ("grpo.batch_size=5", "must divide"),
        ("grpo.updates_per_step=3", "updates_per_step"),
        ("grpo.group_size=1", "group_size"),
        ("sampling.eta=0", "eta"),
        ("grpo.train_window=[3, 20]", "train_window"),
        ("sampling.resolution=100", "multiple of 8"),
        ("model.dtype=float8", "dtype"),
    ]
    for override, message in bad:
        c2 = TrainConfig()
        apply_overrides(c2, [override])
        with pytest.raises(ConfigError, match=message):
            validate(c2)
    c3 = TrainConfig()
    apply_overrides(c3, ["rewards.0.kind=lvlm"])
    with pytest.raises(ConfigError, match="needs path"):
        validate(c3)


def test_every_field_is_documented():
    text = describe_fields()
    assert "group_size" in text and "kl_beta" in text
    assert all("#" in line and line.split("#", 1)[1].strip() for line in text.splitlines() if line.startswith("  "))


def test_prompts_targets_and_sampler(tmp_path):
    prompts = load_prompts()
    assert len(prompts) >= 20 and not any(p.startswith("#") for p in prompts)
    table = tmp_path / "t.csv"
    table.write_text("valence,arousal,prompt\n2.5,-1,a calm lake\n-3,3,\n")
    rows = load_targets(table)
    assert rows[0][0].valence == 2.5 and rows[0][1] == "a calm lake" and rows[1][1] is None
    bad = tmp_path / "bad.csv"
    bad.write_text("valence,arousal\n5,0\n")
    with pytest.raises(ValueError, match="row 1"):
        load_targets(bad)
    sampler = PromptTargetSampler(prompts, "uniform", seed=1)
    a, b = sampler.sample(3, 4, 2), sampler.sample(3, 4, 2)
    assert a.seeds == b.seeds and (a.targets == b.targets).all()  # a function of (seed, step): resumable
    assert sampler.sample(4, 4, 2).seeds != a.seeds
    assert (abs(a.targets) <= 3).all()
    from_file = PromptTargetSampler(prompts, table, seed=1).sample(0, 6, 2)
    assert {tuple(t) for t in from_file.targets.tolist()} <= {(2.5, -1.0), (-3.0, 3.0)}
    assert quadrant(1, -1) == "V+A-" and quadrant(-0.5, 2) == "V-A+"


def test_checkpoint_is_atomic_and_latest_never_half_written(tmp_path, monkeypatch):
    root = tmp_path / "ckpt"
    weights = {"w": torch.arange(4.0)}
    state = {"optimizer": {"x": torch.ones(2)}, "rng": ckpt.rng_state()}
    ckpt.save_checkpoint(root, 1, weights, state, {"config": {}})
    assert ckpt.latest_checkpoint(root).name == "step-000001"

    real_save = torch.save

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(root, 2, {"w": torch.zeros(4)}, state, {"config": {}})
    monkeypatch.setattr(torch, "save", real_save)
    latest = ckpt.latest_checkpoint(root)
    assert latest.name == "step-000001"  # the crashed write never became "latest"
    w, s, meta = ckpt.load_checkpoint(latest)
    assert torch.equal(w["w"], torch.arange(4.0)) and meta["step"] == 1
    ckpt.save_checkpoint(root, 3, weights, state, {"config": {}}, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000003"]  # tmp leftovers and old steps pruned
    (root / "latest").write_text("step-000009")
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.latest_checkpoint(root)


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]

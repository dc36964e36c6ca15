"""``train-judge`` / ``eval-judge`` end to end on the tiny Qwen2.5-VL: the adapter folder, exact resume,
and that every consumer (engine, ``score --adapter``, the LVLM loader node, the training reward) loads it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from emofeedback2.bench.judge import judge_run_config, write_synthetic_judge_set
from emofeedback2.cli import main
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
from emofeedback2.training.generator.config import ConfigError
from emofeedback2.training.judge.config import apply_judge_overrides, JudgeTrainConfig, validate_judge_config
from emofeedback2.training.judge.trainer import JudgeTrainer

PIXELS = 56  # the tiny processor's smallest image: 4 image tokens, fastest


@pytest.fixture(scope="module")
def judge_set(tmp_path_factory):
    return write_synthetic_judge_set(tmp_path_factory.mktemp("judge_set"), n_train=12, n_test=6, seed=3, size=PIXELS)


@pytest.fixture(scope="module")
def trained_adapter(tiny_lvlm_dir, judge_set, tmp_path_factory):
    """A short train-judge CLI run (adapter + model card + checkpoints)."""
    out = tmp_path_factory.mktemp("judge_run") / "adapter"
    torch.set_num_threads(1)
    code = main(["train-judge", "--data", str(judge_set), "--model", str(tiny_lvlm_dir), "--out", str(out),
                 "--max-steps", "4", "--set", "optim.batch_size=4", "--set", "model.device=cpu",
                 "--set", "model.dtype=float32", "--set", "optim.lr=0.02", "--set", "progress=false"])
    assert code == 0
    return out


def test_train_judge_writes_a_peft_adapter_with_a_model_card(trained_adapter, tiny_lvlm_dir):
    files = {p.name for p in trained_adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "judge_training.json"} <= files
    assert {"checkpoints", "tb"} <= files
    config = json.loads((trained_adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tiny_lvlm_dir)
    weights = load_file(str(trained_adapter / "adapter_model.safetensors"))
    assert any("language_model" in k for k in weights) and any("visual.merger" in k for k in weights)
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # it trained
    card = (trained_adapter / "README.md").read_text()
    assert str(tiny_lvlm_dir) in card and "Held-out metrics (test split, n=6)" in card and "| trained | valence |" in card
    record = json.loads((trained_adapter / "judge_training.json").read_text())
    assert record["train_images"] == 12 and record["steps"] == 4
    assert set(record["metrics"]["trained"]["valence"]) >= {"mae", "plcc", "srcc", "mae_constant"}


def test_adapter_loads_through_the_engine_and_changes_readings(trained_adapter, tiny_lvlm_dir, judge_set):
    from emofeedback2.training.judge.data import load_images, read_manifest

    images = load_images(read_manifest(judge_set).samples[:3])
    plain = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32")).score_details(images)
    tuned = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), adapter=str(trained_adapter), device="cpu",
                                 dtype="float32")).score_details(images)
    assert (plain.valence - tuned.valence).abs().max() > 1e-3


def test_score_cli_and_eval_judge_load_the_adapter(trained_adapter, tiny_lvlm_dir, judge_set, tmp_path, capsys):
    image = next((judge_set.parent / "images").iterdir())
    assert main(["score", str(image), "--lvlm", str(tiny_lvlm_dir), "--adapter", str(trained_adapter), "--device", "cpu",
                 "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert trained_adapter.name in scored["scorer"]
    plots = tmp_path / "plots"
    assert main(["eval-judge", "--data", str(judge_set), "--lvlm", str(tiny_lvlm_dir), "--adapter", str(trained_adapter),
                 "--device", "cpu", "--dtype", "float32", "--plots", str(plots), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 6 and result["split"] == "test"
    for axis in ("valence", "arousal"):
        assert {"mae", "plcc", "srcc", "mae_constant", "acc_within_eps", "low_mass_share"} <= set(result[axis])
    # the constant predictor is the training set's mean, taken from the adapter's training record
    record = json.loads((trained_adapter / "judge_training.json").read_text())
    assert result["valence"]["constant"] == pytest.approx(record["label_mean"]["valence"])
    assert 0.0 <= result["low_mass_share"] <= 1.0
    from PIL import Image

    for axis in ("valence", "arousal"):
        with Image.open(plots / f"judge_{axis}_scatter.png") as png:
            assert png.size == (480, 480)
    assert main(["eval-judge", "--data", str(judge_set), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu",
                 "--plots", ""]) == 0
    text = capsys.readouterr().out
    assert "constant MAE" in text and "low digit-mass readings" in text


def test_lvlm_loader_node_and_training_reward_load_the_adapter(trained_adapter, tiny_lvlm_dir, fake_comfy):
    from emofeedback2.nodes.loader_nodes import LVLMLoader, list_adapter_folders
    from emofeedback2.training.generator.config import RewardSpec
    from emofeedback2.training.generator.rewards import build_reward

    llm = fake_comfy.models_dir / "LLM"
    shutil.copytree(tiny_lvlm_dir, llm / "tiny-judge-base")
    shutil.copytree(trained_adapter, llm / "emo-judge", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    assert "emo-judge" in list_adapter_folders()
    scorer = LVLMLoader().load(model="tiny-judge-base", device="cpu", dtype="float32", adapter="emo-judge")[0]
    assert scorer.config.adapter.endswith("emo-judge") and hasattr(scorer.model, "peft_config")
    reward = build_reward([RewardSpec(kind="lvlm", path=str(tiny_lvlm_dir), adapter=str(trained_adapter))], "cpu")
    assert hasattr(reward.rewards[0].scorer.model, "peft_config")
    images = torch.rand(2, 56, 56, 3)
    parts = reward.score_parts(images, ["a", "b"], torch.zeros(2, 2))
    assert all(torch.isfinite(v).all() for v in parts.values())


def test_resume_is_exact(tiny_lvlm_dir, judge_set, tmp_path, one_thread):
    def config(out, steps):
        c = judge_run_config(tiny_lvlm_dir, judge_set, out, seed=5, steps=steps, batch_size=4)
        c.max_steps, c.save_every = 4, 2
        return c

    straight = JudgeTrainer(config(tmp_path / "a", 4), log=False)
    straight.train()
    interrupted = JudgeTrainer(config(tmp_path / "b", 4), log=False)
    interrupted.config.max_steps = 2
    interrupted.train()
    resumed = JudgeTrainer(config(tmp_path / "b", 4), log=False)
    assert resumed.resume() and resumed.step == 2
    resumed.train()
    a, b = straight.lora_state(), resumed.lora_state()
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = JudgeTrainer(config(tmp_path / "c", 4), log=False)
    fresh.config.max_steps = 2
    fresh.train()
    assert not all(torch.equal(a[k], fresh.lora_state()[k]) for k in a)  # the comparison can fail


def test_config_errors_and_dry_run(tiny_lvlm_dir, judge_set, tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown field"):
        apply_judge_overrides(JudgeTrainConfig(), ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="cannot read .two. as int"):
        apply_judge_overrides(JudgeTrainConfig(), ["optim.batch_size=two"])
    assert main(["train-judge", "--data", str(judge_set), "--out", str(tmp_path / "x")]) == 2
    assert "model.pretrained is empty" in capsys.readouterr().err
    assert main(["train-judge", "--data", str(tmp_path / "none.csv"), "--model", str(tiny_lvlm_dir)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train-judge", "--data", str(judge_set), "--model", str(tiny_lvlm_dir), "--out", str(tmp_path / "x"),
                 "--set", "objective.kind=dpo"]) == 2
    assert "use one of soft_label, grpo" in capsys.readouterr().err
    assert main(["train-judge", "--data", str(judge_set), "--model", str(tiny_lvlm_dir), "--out", str(tmp_path / "x"),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 training rows" in out and "held-out split test" in out
    assert not (tmp_path / "x").exists()
    toml = tmp_path / "judge.toml"
    toml.write_text("max_steps = 7\n[optim]\nlr = 0.001\n[model]\nlora_rank = 4\n", encoding="utf-8")
    assert main(["train-judge", "--config", str(toml), "--data", str(judge_set), "--model", str(tiny_lvlm_dir),
                 "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out.split("\n[train-judge]")[0])
    assert resolved["max_steps"] == 7 and resolved["optim"]["lr"] == 0.001 and resolved["model"]["lora_rank"] == 4


def test_train_judge_loads_its_base_with_the_configured_attention(tiny_lvlm_dir, judge_set, tmp_path, monkeypatch, capsys):
    from emofeedback2.training.judge import trainer as judge_trainer

    seen = []

    def capture(config):
        seen.append(config)
        raise RuntimeError("stop after the load request")

    monkeypatch.setattr(judge_trainer, "load_lvlm", capture)
    config = judge_run_config(tiny_lvlm_dir, judge_set, tmp_path / "run", seed=0, steps=1, batch_size=2)
    config.model.attention = "eager"
    with pytest.raises(RuntimeError, match="stop after"):
        JudgeTrainer(config, log=False)
    assert seen[0].attn_implementation == "eager"
    assert main(["train-judge", "--data", str(judge_set), "--model", str(tiny_lvlm_dir), "--out", str(tmp_path / "x"),
                 "--set", "model.attention=flash", "--dry-run"]) == 2
    assert "model.attention must be one of auto, sdpa, eager, flash_attention_2" in capsys.readouterr().err


def test_tiny_lvlm_module_builds_a_judge_folder_from_the_command_line(tmp_path):
    out = tmp_path / "tiny-judge"
    proc = subprocess.run([sys.executable, "-m", "emofeedback2.tiny_models.lvlm", str(out), "--family", "qwen2_vl"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_vl"
    assert any(out.glob("*.safetensors"))
    from PIL import Image

    reading = load_lvlm(LVLMConfig(model=str(out), device="cpu", dtype="float32")).score([Image.new("RGB", (56, 56))])[0]
    assert -3.0 <= reading.valence <= 3.0


def test_learning_rate_defaults_are_per_objective_and_for_a_real_size_judge(judge_set, tiny_lvlm_dir, capsys):
    from emofeedback2.training.judge.config import DEFAULT_LR, effective_lr

    config = JudgeTrainConfig()
    assert config.optim.lr is None and effective_lr(config) == DEFAULT_LR["soft_label"] == 1e-4
    config.objective.kind = "grpo"
    assert effective_lr(config) == DEFAULT_LR["grpo"] == 1e-6
    apply_judge_overrides(config, ["optim.lr=3e-5"])
    assert effective_lr(config) == 3e-5
    assert main(["train-judge", "--data", str(judge_set), "--model", str(tiny_lvlm_dir), "--set", "objective.kind=grpo",
                 "--dry-run"]) == 0
    assert "lr 1e-6 (grpo default)" in capsys.readouterr().out
    config.model.pretrained, config.data.manifest = "m", "d.csv"
    apply_judge_overrides(config, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="optim.lr and optim.max_grad_norm must be >= 0"):
        validate_judge_config(config)
    apply_judge_overrides(config, ["optim.lr=none"])
    validate_judge_config(config)  # back to the default


def test_a_tiny_model_learning_rate_on_a_real_size_judge_is_warned(tiny_lvlm_dir, judge_set, tmp_path, monkeypatch):
    from emofeedback2.training.judge import config as judge_config
    from emofeedback2.training.judge.config import real_size_warnings

    config = judge_run_config(tiny_lvlm_dir, judge_set, tmp_path / "run", seed=0, steps=1, batch_size=2)
    assert config.optim.lr == 4e-3  # the tiny settings set it explicitly
    message = real_size_warnings(config, 8_290_000_000)
    assert len(message) == 1 and "tiny test models" in message[0] and "8.29B" in message[0] and "about 1e-4" in message[0]
    assert real_size_warnings(config, 120_000) == []  # a tiny judge: 4e-3 is right there
    config.optim.lr = None
    assert real_size_warnings(config, 8_290_000_000) == []  # the default is the real-size one
    # through the trainer, with the loaded model's own parameter count (the threshold lowered to the tiny judge)
    monkeypatch.setattr(judge_config, "REAL_SIZE_PARAMS", 1000)
    config.optim.lr = 4e-3
    with pytest.warns(UserWarning, match="learning rate for tiny test models"):
        trainer = JudgeTrainer(config, log=False)
    assert trainer.base_parameters > 1000 and trainer.optimizer.param_groups[0]["initial_lr"] == 4e-3

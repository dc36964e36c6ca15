"""Bad training inputs that ``train --dry-run`` must catch before anything loads (one line, exit 2)."""

from __future__ import annotations

import pytest

from fixtures_diffusion import small_train_toml
from emofeedback2.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_files(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("bad_train_inputs")
    (root / "prompts.json").write_text('["a cat", "a dog"]\n')
    (root / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")
    config = root / "c.toml"
    config.write_text(small_train_toml(root / "run", tiny_pipeline_dir))
    two_rewards = root / "two.toml"
    two_rewards.write_text(config.read_text() + '[[rewards]]\nkind = "brightness"\nnormalize = "none"\n')
    return root, config, two_rewards


@pytest.mark.parametrize("extra, message", [
    (["--set", 'model.lora_targets=["nosuchmodule"]'], "model.lora_targets ['nosuchmodule'] match no module"),
    (["--set", "optim.lr=0"], "optim.lr"),
    (["--set", "optim.lr=nan"], "optim.lr must be a finite number"),
    (["--set", "data.prompts_file={root}/prompts.json"], "plain text, one prompt a line"),
    (["--set", "heldout.every=1", "--set", "heldout.prompts_file={root}/latin1.txt"], "heldout.prompts_file"),
    (["--set", "heldout.every=1", "--set", "heldout.prompts_file={root}/missing.txt"], "set heldout.prompts_file"),
    (["--set", "rewards.0.kind=lvlm", "--set", "rewards.0.path={root}", "--set", "rewards.0.adapter={root}/no-adapter"],
     "rewards[0].adapter"),
    # the held-out quality judge is checked as a training reward is, and named as itself ({{}}: str.format)
    (["--set", 'heldout.quality={{"kind": "brightness", "dtype": "float8"}}'],
     "heldout.quality.dtype must be float32, float16 or bfloat16, got 'float8'"),
    (["--set", 'heldout.quality={{"kind": "lvlm", "path": "org/judge", "quantization": "3bit"}}'],
     "heldout.quality.quantization must be 'none', '8bit' or '4bit', got '3bit'"),
    (["--set", 'heldout.quality={{"kind": "clip_quality", "path": "org/pick", "max_pixels": 100000}}'],
     "heldout.quality.max_pixels must be >= 0"),
])
def test_dry_run_catches_it_in_one_line(run_files, extra, message, capsys):
    root, config, _ = run_files
    argv = ["train", "--config", str(config), "--dry-run"] + [a.format(root=root) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "Traceback" not in err[0]


def test_mixed_reward_normalisations_are_refused_before_any_model_loads(run_files, capsys):
    _, _, two_rewards = run_files
    assert main(["train", "--config", str(two_rewards), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same normalize" in err[0]


def test_a_mismatched_resume_is_refused_before_any_model_loads(run_files, tmp_path, monkeypatch, capsys):
    from emofeedback2.training.generator import trainer as trainer_module

    _, config, _ = run_files
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--output-dir", str(out)]) == 0
    capsys.readouterr()

    def no_loading(*args, **kwargs):
        raise AssertionError("the trainer (pipeline and reward models) was built before the resume check")

    monkeypatch.setattr(trainer_module, "GRPOTrainer", no_loading)
    for flag, message in (("seed=7", "resume refused: seed"), ("grpo.group_size=4", "resume refused: grpo.group_size")):
        assert main(["train", "--config", str(config), "--output-dir", str(out), "--resume", "--max-steps", "2",
                     "--set", flag, "--set", "grpo.batch_size=2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    # the same check in --dry-run: a user can ask whether a resume would be accepted
    assert main(["train", "--config", str(config), "--output-dir", str(out), "--resume", "--dry-run",
                 "--set", "seed=7"]) == 2
    assert "resume refused: seed" in capsys.readouterr().err

"""The judge's GRPO objective (``objective.kind = "grpo"``): the strict paper-format rewards, the loss maths
on fixed completions of the tiny Qwen2.5-VL (zero advantage, ratio 1, the gradient's direction), sampling,
and ``train-judge`` end to end with exact resume.

A random tiny model never writes the paper's format, so every reward is 0 and nothing would train. The
end-to-end and resume tests therefore swap the answer parser for a scripted one (a fixed function of
the text), which gives groups a reward spread; what they check is the machinery, not learning."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from emofeedback2.bench.judge import judge_run_config, write_synthetic_judge_set
from emofeedback2.cli import main
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
from emofeedback2.engines.judge.paper_format import ANSWER_TAG, REASONING_INSTRUCTION, parse_paper_answer
from emofeedback2.training.judge import grpo_objective as judge_grpo
from emofeedback2.training.generator.config import ConfigError
from emofeedback2.training.grpo import group_advantages
from emofeedback2.training.judge.config import JudgeTrainConfig, apply_judge_overrides, validate_judge_config
from emofeedback2.training.judge.data import load_images
from emofeedback2.training.judge.grpo_objective import (
    attach_reference_logprobs, backward_rollout, build_rollout, completion_mask, completion_rewards, sample_rollout,
    token_logprobs,
)
from emofeedback2.training.judge.trainer import JudgeTrainer

PIXELS = 56


@pytest.fixture(scope="module")
def judge_set(tmp_path_factory):
    return write_synthetic_judge_set(tmp_path_factory.mktemp("grpo_set"), n_train=8, n_test=4, seed=4, size=PIXELS)


def grpo_config(model_dir, manifest, out, *, steps=2, **objective):
    config = judge_run_config(model_dir, manifest, out, seed=3, steps=steps, batch_size=2)
    config.objective.kind = "grpo"
    config.objective.group_size = 3
    config.objective.max_new_tokens = 12
    config.optim.lr = 0.02
    config.optim.warmup_steps = 0
    for name, value in objective.items():
        setattr(config.objective, name, value)
    return config


@pytest.fixture
def scripted_answers(monkeypatch):
    """Replace the paper-format parser with a fixed function of the text: about half the completions
    'answer' (0, 0), the rest are malformed, so groups have a reward spread."""
    def fake(text):
        return (0.0, 0.0) if sum(map(ord, text)) % 2 == 0 else None

    monkeypatch.setattr(judge_grpo, "parse_paper_answer", fake)


# --- the parser and the rewards (model text is untrusted) -----------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("<think>warm light, smiles</think><answer>1.25, -0.50</answer>", (1.25, -0.5)),
    ("  <think>\nmulti\nline\n</think>\n<answer> -3.00 , 3 </answer>\n", (-3.0, 3.0)),
    ("<answer>1.25, -0.50</answer>", None),  # no reasoning
    ("<think>x</think>", None),  # no answer
    ("<think>x</think><answer>1.0, 2.0</answer> and more", None),  # text after the answer
    ("<think>x</think><answer>1, 2</answer><answer>0, 0</answer>", None),  # hedging with two answers
    ("<think><answer>0, 0</answer></think><answer>1, 1</answer>", None),  # an answer hidden in the reasoning
    ("<think>x</think><answer>3.5, 0</answer>", None),  # out of range
    ("<think>x</think><answer>-3.01, 0</answer>", None),
    ("<think>x</think><answer>nan, nan</answer>", None),
    ("<think>x</think><answer>inf, 0</answer>", None),
    ("<think>x</think><answer>1e0, 0</answer>", None),
    ("<think>x</think><answer>__import__('os').system('id'), 0</answer>", None),
    ("<think>x</think><answer>\u0663, \u0660</answer>", None),  # Arabic-Indic digits: ASCII only
    ("<think>" + "a" * 9000 + "</think><answer>1, 1</answer>", None),  # longer than any real completion
    (None, None),
    (b"<think>x</think><answer>1, 1</answer>", None),
])
def test_paper_answer_parser_accepts_only_one_well_formed_answer_in_range(text, expected):
    assert parse_paper_answer(text) == expected


def test_one_copy_of_the_paper_format_serves_the_scorer_bench_and_grpo():
    from emofeedback2.bench import scorer as bench_scorer

    assert bench_scorer.REASONING_INSTRUCTION is REASONING_INSTRUCTION and bench_scorer.ANSWER_TAG is ANSWER_TAG
    assert "<answer>valence, arousal</answer>" in REASONING_INSTRUCTION and "-3" in REASONING_INSTRUCTION


def test_rewards_are_format_plus_per_axis_accuracy_within_epsilon():
    texts = [
        "<think>a</think><answer>1.00, 0.00</answer>",  # both axes within 0.5
        "<think>a</think><answer>1.00, 2.00</answer>",  # valence only
        "<think>a</think><answer>-2.00, 2.00</answer>",  # well-formed, both wrong
        "<answer>1.00, 0.00</answer>",  # right numbers, wrong format: no reward at all
        "<think>a</think><answer>nan, 0.00</answer>",
        "<think>a</think><answer>1.50, 0.50</answer>",  # exactly epsilon away: counts
    ]
    labels = torch.tensor([[1.0, 0.0]] * 6)
    r = completion_rewards(texts, labels, epsilon=0.5, format_weight=0.5)
    assert r.format_ok.tolist() == [True, True, True, False, False, True]
    assert r.accuracy.tolist() == [1.0, 0.5, 0.0, 0.0, 0.0, 1.0]
    assert r.reward.tolist() == [1.5, 1.0, 0.5, 0.0, 0.0, 1.5]
    with pytest.raises(ValueError, match="NaN"):
        completion_rewards(texts[:1], torch.tensor([[math.nan, 0.0]]), 0.5, 0.5)
    with pytest.raises(ValueError, match="1 completions for 2 labels"):
        completion_rewards(texts[:1], torch.zeros(2, 2), 0.5, 0.5)


def test_completion_mask_keeps_tokens_up_to_and_including_the_first_end_token():
    ids = torch.tensor([[5, 6, 9, 9, 9], [5, 9, 6, 7, 9], [5, 6, 7, 8, 4]])
    assert completion_mask(ids, {9}).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert completion_mask(ids, {9, 6})[0].tolist() == [True, True, False, False, False]


# --- the loss on fixed completions -------------------------------------------------------------------------


def _fixed_rollout(trainer, texts):
    """One image, one group of the given completions (same token count each), end token appended."""
    tok = trainer.scorer.tokenizer
    rows = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in texts]
    assert len({len(r) for r in rows}) == 1
    images = load_images(trainer.train_rows[:1])
    obj = trainer.config.objective
    return build_rollout(trainer.scorer, images, trainer.labels[:1], [torch.tensor(rows)], obj)


def _sequence_logp(trainer, rollout):
    with torch.no_grad():
        chunk = rollout.chunks[0]
        logp = token_logprobs(trainer.model, chunk, trainer.config.objective.temperature)
        return (logp * chunk.mask).sum(dim=1)


TWO = ["<think>warm</think><answer>1.00, 0.50</answer>", "<think>cold</think><answer>-1.0, 0.50</answer>"]


def test_zero_advantage_gives_zero_gradient_and_the_first_update_sees_ratio_one(tiny_lvlm_dir, judge_set, tmp_path,
                                                                              one_thread):
    trainer = JudgeTrainer(grpo_config(tiny_lvlm_dir, judge_set, tmp_path, group_size=2, inner_updates=2,
                                       kl_coef=0.1), log=False)
    rollout = _fixed_rollout(trainer, TWO)
    trainer.model.train()
    attach_reference_logprobs(trainer.model, rollout, trainer.config.objective)
    keep = torch.ones(2, dtype=torch.bool)
    trainer.optimizer.zero_grad(set_to_none=True)
    backward_rollout(trainer.model, rollout, torch.zeros(2), keep, trainer.config.objective)
    grads = [p.grad for p in trainer.params if p.grad is not None]
    assert grads and all(torch.count_nonzero(g) == 0 for g in grads)  # zero advantage, KL 0 at the start

    advantages = torch.tensor([1.0, -1.0])
    trainer.optimizer.zero_grad(set_to_none=True)
    first = backward_rollout(trainer.model, rollout, advantages, keep, trainer.config.objective)
    assert first.ratio_max_dev <= 1e-6 and first.kl == 0.0  # old pass == training pass; LoRA B = 0 is the base
    assert any(torch.count_nonzero(p.grad) > 0 for p in trainer.params if p.grad is not None)
    torch.optim.SGD(trainer.params, lr=0.5).step()
    trainer.optimizer.zero_grad(set_to_none=True)
    second = backward_rollout(trainer.model, rollout, advantages, keep, trainer.config.objective)
    assert second.ratio_max_dev > 1e-4 and second.kl > 0  # the checks above could fail


@pytest.mark.parametrize("rewards, direction", [([1.0, 0.0], 1), ([0.0, 1.0], -1)])
def test_one_step_raises_the_logprob_of_the_higher_reward_completion(tiny_lvlm_dir, judge_set, tmp_path, one_thread,
                                                                    rewards, direction):
    trainer = JudgeTrainer(grpo_config(tiny_lvlm_dir, judge_set, tmp_path, group_size=2, kl_coef=0.0), log=False)
    rollout = _fixed_rollout(trainer, TWO)
    trainer.model.train()
    before = _sequence_logp(trainer, rollout)
    advantages, info = group_advantages(torch.tensor(rewards), rollout.group_ids, global_std=False)
    trainer.optimizer.zero_grad(set_to_none=True)
    backward_rollout(trainer.model, rollout, advantages, info.keep, trainer.config.objective)
    torch.optim.SGD(trainer.params, lr=0.05).step()
    after = _sequence_logp(trainer, rollout)
    gap_change = float((after[0] - after[1]) - (before[0] - before[1]))
    assert direction * gap_change > 1e-3, (before, after)


def test_sampling_is_seeded_and_overrides_the_models_greedy_defaults(tiny_lvlm_dir, judge_set, tmp_path, one_thread):
    trainer = JudgeTrainer(grpo_config(tiny_lvlm_dir, judge_set, tmp_path, group_size=4), log=False)
    trainer.model.generation_config.top_k = 1  # what Qwen-VL checkpoints ship: greedy in disguise
    trainer.model.generation_config.top_p = 0.001
    trainer.model.eval()
    images = load_images(trainer.train_rows[:1])
    obj = trainer.config.objective
    a = sample_rollout(trainer.scorer, images, trainer.labels[:1], obj, seed=11)
    b = sample_rollout(trainer.scorer, images, trainer.labels[:1], obj, seed=11)
    c = sample_rollout(trainer.scorer, images, trainer.labels[:1], obj, seed=12)
    ids = a.chunks[0].completion
    assert torch.equal(ids, b.chunks[0].completion) and not torch.equal(ids, c.chunks[0].completion)
    assert len({tuple(row.tolist()) for row in ids}) > 1  # the group differs: top-k 1 was not applied
    assert ids.shape[1] <= obj.max_new_tokens and a.group_ids.tolist() == [0, 0, 0, 0]
    assert a.rewards.reward.shape == (4,) and not a.rewards.format_ok.any()  # random bytes are never well-formed


# --- train-judge end to end -------------------------------------------------------------------------------


def test_train_judge_grpo_writes_a_loadable_adapter_and_finite_logs(tiny_lvlm_dir, judge_set, tmp_path, one_thread,
                                                                    scripted_answers, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "adapter"
    code = main(["train-judge", "--data", str(judge_set), "--model", str(tiny_lvlm_dir), "--out", str(out),
                 "--max-steps", "2", "--set", "objective.kind=grpo", "--set", "objective.group_size=3",
                 "--set", "objective.max_new_tokens=12", "--set", "objective.rows_per_pass=4",
                 "--set", "optim.batch_size=2", "--set", "optim.lr=0.02", "--set", "optim.warmup_steps=0",
                 "--set", "model.device=cpu", "--set", "model.dtype=float32", "--set", "progress=false"])
    assert code == 0
    assert "GRPO: 3 completions per image = 6 per step (2 pass(es) of <= 4 rows)" in capsys.readouterr().out
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "judge_training.json", "checkpoints",
            "tb"} <= {p.name for p in out.iterdir()}
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # it trained
    record = json.loads((out / "judge_training.json").read_text())
    assert record["objective"] == "grpo" and record["steps"] == 2
    assert record["objective_settings"]["group_size"] == 3 and math.isfinite(record["final_train_reward"])
    card = (out / "README.md").read_text()
    assert "GRPO on the paper's output format" in card and "grpo (G=3, epsilon 0.5" in card

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    for tag in ("train/reward", "train/format_rate", "train/accuracy", "train/kl", "train/policy_loss", "train/loss"):
        values = [e.value for e in events.Scalars(tag)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), tag
    assert min(e.value for e in events.Scalars("train/zero_std_ratio")) < 1.0  # some group had a reward spread

    tuned = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), adapter=str(out), device="cpu", dtype="float32"))
    assert hasattr(tuned.model, "peft_config")
    from emofeedback2.training.judge.data import read_manifest

    image = load_images(read_manifest(judge_set).samples[:1])
    reading = tuned.score(image)[0]
    assert -3.0 <= reading.valence <= 3.0 and isinstance(tuned.generate_text(image, REASONING_INSTRUCTION, 4)[0], str)


def test_grpo_resume_is_exact(tiny_lvlm_dir, judge_set, tmp_path, one_thread, scripted_answers):
    def config(out):
        c = grpo_config(tiny_lvlm_dir, judge_set, out, steps=4, inner_updates=2)
        c.save_every = 2
        return c

    straight = JudgeTrainer(config(tmp_path / "a"), log=False)
    straight.train()
    interrupted = JudgeTrainer(config(tmp_path / "b"), log=False)
    for _ in range(2):  # a run stopped right after its step-2 checkpoint
        interrupted.train_step()
    interrupted.save()
    resumed = JudgeTrainer(config(tmp_path / "b"), log=False)
    assert resumed.resume() and resumed.step == 2
    resumed.train()
    a, b = straight.lora_state(), resumed.lora_state()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.history[-1]["train/reward"] == resumed.history[-1]["train/reward"]
    initial = JudgeTrainer(config(tmp_path / "c"), log=False).lora_state()
    assert not all(torch.equal(a[k], initial[k]) for k in a)  # the comparison can fail


@pytest.mark.parametrize("override, message", [
    ("objective.kind=dpo", "use one of soft_label, grpo"),
    ("objective.group_size=1", r"objective.group_size must be in \[2, 1024\]"),
    ("objective.epsilon=NaN", "objective.epsilon must be a finite number"),
    ("objective.epsilon=0", r"objective.epsilon must be in \(0, 6\]"),
    ("objective.temperature=0", "objective.temperature must be in"),
    ("objective.kl_coef=-0.1", "objective.kl_coef must be in"),
    ("objective.kl_coef=Infinity", "objective.kl_coef must be a finite number"),
    ("objective.clip_range=1", r"objective.clip_range must be in \(0, 1\)"),
    ("objective.max_new_tokens=4", "objective.max_new_tokens must be in"),
    ("objective.inner_updates=0", "objective.inner_updates must be in"),
    ("objective.rows_per_pass=-1", "objective.rows_per_pass must be in"),
    ("objective.format_weight=-1", "objective.format_weight must be in"),
])
def test_grpo_config_errors_name_the_field(override, message):
    config = JudgeTrainConfig()
    config.model.pretrained, config.data.manifest = "some/model", "m.csv"
    apply_judge_overrides(config, ["objective.kind=grpo", override])
    with pytest.raises(ConfigError, match=message):
        validate_judge_config(config)


def test_grpo_fields_are_not_checked_for_the_soft_label_objective():
    config = JudgeTrainConfig()
    config.model.pretrained, config.data.manifest = "some/model", "m.csv"
    apply_judge_overrides(config, ["objective.group_size=1"])
    validate_judge_config(config)  # ignored unless objective.kind = grpo

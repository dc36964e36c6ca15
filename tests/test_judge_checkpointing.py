"""Judge training with gradient checkpointing (``model.gradient_checkpointing = true``), both objectives.

Under checkpointing transformers forces ``use_cache=False`` in a training forward, so the scorer's
shared-prompt pass returns no key/value cache; the readout then runs every row in full. Checked on
the tiny Qwen2.5-VL: the checkpointed layers really recompute, a step gives the loss and gradient
norm of the same step without checkpointing, and the trained readout is what the scorer reads from
the exported adapter (train == read)."""

from __future__ import annotations

import pytest
import torch

from emofeedback2.bench.judge import judge_run_config, write_synthetic_judge_set
from emofeedback2.engines.judge import lvlm_batching
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
from emofeedback2.training.judge import grpo_objective
from emofeedback2.training.judge.data import load_images
from emofeedback2.training.judge.soft_label_objective import readout_logits
from emofeedback2.training.judge.trainer import JudgeTrainer

PIXELS = 56


@pytest.fixture(scope="module")
def judge_set(tmp_path_factory):
    return write_synthetic_judge_set(tmp_path_factory.mktemp("gc_set"), n_train=6, n_test=2, seed=9, size=PIXELS)


def _config(model_dir, manifest, out, kind: str, checkpointing: bool):
    config = judge_run_config(model_dir, manifest, out, seed=2, steps=2, batch_size=3)
    config.model.gradient_checkpointing = checkpointing
    config.optim.lr, config.optim.warmup_steps = 0.02, 0
    config.objective.kind = kind
    if kind == "grpo":
        config.objective.group_size, config.objective.max_new_tokens = 2, 10
    return config


def _count_recomputes(trainer) -> list[int]:
    """Wrap the checkpoint function of every checkpointed layer; the list's length counts the calls."""
    calls: list[int] = []
    layers = [m for m in trainer.model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    assert layers, "gradient checkpointing is not enabled on any layer"
    for layer in layers:
        inner = layer._gradient_checkpointing_func

        def counted(*args, _inner=inner, **kwargs):
            calls.append(1)
            return _inner(*args, **kwargs)

        layer._gradient_checkpointing_func = counted
    return calls


@pytest.fixture
def scripted_answers(monkeypatch):
    """Half the completions 'answer' (0, 0), so GRPO groups have a reward spread (a random model never does)."""
    monkeypatch.setattr(grpo_objective, "parse_paper_answer",
                        lambda text: (0.0, 0.0) if sum(map(ord, text)) % 2 == 0 else None)


@pytest.mark.parametrize("kind", ["soft_label", "grpo"])
def test_judge_trains_with_gradient_checkpointing_and_matches_the_plain_step(tiny_lvlm_dir, judge_set, tmp_path,
                                                                           one_thread, scripted_answers, kind):
    plain = JudgeTrainer(_config(tiny_lvlm_dir, judge_set, tmp_path / "plain", kind, False), log=False)
    checkpointed = JudgeTrainer(_config(tiny_lvlm_dir, judge_set, tmp_path / "gc", kind, True), log=False)
    calls = _count_recomputes(checkpointed)
    a, b = plain.train_step(), checkpointed.train_step()
    assert calls, "no layer went through the checkpoint function"
    key = "train/loss"
    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6)
    assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-3)
    assert b["train/grad_norm"] > 0  # the step had a gradient to compare
    checkpointed.train_step()
    assert all(torch.isfinite(v).all() for v in checkpointed.lora_state().values())


def test_checkpointed_training_readout_is_what_the_scorer_reads(tiny_lvlm_dir, judge_set, tmp_path, one_thread,
                                                                monkeypatch):
    trainer = JudgeTrainer(_config(tiny_lvlm_dir, judge_set, tmp_path / "run", "soft_label", True), log=False)
    trainer.train()
    adapter = trainer.export_adapter()
    images = load_images(trainer.train_rows[:3])
    trainer.model.train()  # the training forward: checkpointed, no cache, every row in full
    calls = _count_recomputes(trainer)

    def no_prefix_pass(*args):  # a prompt pass whose cache transformers would drop is not even run
        raise AssertionError("the shared-prefix path ran under gradient checkpointing")

    with monkeypatch.context() as patched:  # only the training readout: the scorer below takes the shared prefix
        patched.setattr(lvlm_batching, "prefix_shared_logits", no_prefix_pass)
        trained = readout_logits(trainer.scorer, images)
    assert calls and trained.digits.requires_grad
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), adapter=str(adapter), device="cpu", dtype="float32"))
    read = scorer.score_details(images)  # the shared-prefix path on the prompt's cache
    va = trained.expected_va().detach()
    assert va[:, 0].tolist() == pytest.approx(read.valence.tolist(), abs=1e-5)
    assert va[:, 1].tolist() == pytest.approx(read.arousal.tolist(), abs=1e-5)
    base = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32")).score_details(images)
    assert (base.valence - read.valence).abs().max() > 1e-3  # it trained: the comparison can fail


def test_one_cache_rule_decides_the_shared_prefix(tiny_lvlm_dir):
    """shares_prefix follows transformers (keeps_cache): checkpointing drops the cache only in a training
    forward *with* gradients; a no-grad pass in training mode keeps it (it used to fall back to full rows)."""
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))
    prompt, suffixes = scorer._chat(scorer.prompts.question), [scorer.prompts.valence_prefix]
    scorer.model.gradient_checkpointing_enable()
    scorer.model.train()
    assert not lvlm_batching.keeps_cache(scorer.model) and not scorer._shares_prefix(prompt, suffixes)
    with torch.no_grad():
        assert lvlm_batching.keeps_cache(scorer.model) and scorer._shares_prefix(prompt, suffixes)
    scorer.model.eval()
    assert scorer._shares_prefix(prompt, suffixes)


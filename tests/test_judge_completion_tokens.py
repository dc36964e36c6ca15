"""GRPO judge training survives its own samples: completions never carry vision or other special tokens.

Before the fix a sampled ``<|image_pad|>`` went back into the training forward as a 17th image slot
for 16 image features (``Image features and image tokens do not match, tokens: 17, features: 16``,
tiny Qwen2.5-VL, 64 x 64 images). Here a model that *prefers* the image-pad token (a hook adds a
large logit to it) is sampled from, and a scripted generation that emits it anyway is trained on.
"""

from __future__ import annotations

import pytest
import torch

from emofeedback2.bench.judge import judge_run_config, write_synthetic_judge_set
from emofeedback2.engines.judge.completion_tokens import blocked_token_ids, end_token_ids
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
from emofeedback2.training.judge.data import load_images
from emofeedback2.training.judge.grpo_objective import build_rollout, refuse_blocked, sample_rollout
from emofeedback2.training.judge.trainer import JudgeTrainer

PIXELS = 64  # the size of the bug report


@pytest.fixture(scope="module")
def judge_set(tmp_path_factory):
    return write_synthetic_judge_set(tmp_path_factory.mktemp("tokens_set"), n_train=4, n_test=2, seed=5, size=PIXELS)


def _trainer(model_dir, manifest, out, **objective):
    config = judge_run_config(model_dir, manifest, out, seed=0, steps=1, batch_size=2)
    config.objective.kind = "grpo"
    config.objective.group_size = 2
    config.objective.max_new_tokens = 10
    for name, value in objective.items():
        setattr(config.objective, name, value)
    return JudgeTrainer(config, log=False)


def _prefer_token(model, token_id: int, boost: float = 40.0):
    """A forward hook on the output layer that makes ``token_id`` the model's favourite next token."""
    def hook(module, args, output):
        output = output.clone()
        output[..., token_id] += boost
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_blocked_ids_are_the_vision_and_special_tokens_not_the_end_or_text(tiny_lvlm_dirs, family):
    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dirs[family]), device="cpu", dtype="float32"))
    blocked = set(blocked_token_ids(scorer.model, scorer.tokenizer))
    ends = end_token_ids(scorer.model, scorer.tokenizer)
    config = scorer.model.config
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert getattr(config, name) in blocked, name
    assert ends and not ends & blocked
    text_ids = scorer.tokenizer.encode("<answer>1.5, -2</answer> calm", add_special_tokens=False)
    assert not set(text_ids) & blocked
    vocab_rows = scorer.model.get_output_embeddings().weight.shape[0]
    assert set(range(len(scorer.tokenizer), vocab_rows)) <= blocked  # padded logits rows no token decodes to


def test_preset_reading_blocks_and_ends_as_grpo_sampling_does(tiny_lvlm_dir):
    """One rule for every generated answer: the preset reader uses completion_tokens, not a copy of its own."""
    from emofeedback2.engines.judge.generated_reading import GeneratedReader
    from emofeedback2.engines.judge.presets import PAPER

    scorer = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))
    reader = GeneratedReader(scorer, PAPER)
    assert reader.suppress == blocked_token_ids(scorer.model, scorer.tokenizer)
    assert reader.end_ids == end_token_ids(scorer.model, scorer.tokenizer)


def test_sampling_never_emits_the_image_pad_even_when_the_model_prefers_it(tiny_lvlm_dir, judge_set, tmp_path,
                                                                             one_thread):
    trainer = _trainer(tiny_lvlm_dir, judge_set, tmp_path)
    image_pad = trainer.model.config.image_token_id
    handle = _prefer_token(trainer.model, image_pad)
    try:
        trainer.model.eval()
        images = load_images(trainer.train_rows[:2])
        obj = trainer.config.objective
        rollout = sample_rollout(trainer.scorer, images, trainer.labels[:2], obj, seed=0)
        ids = torch.cat([c.completion for c in rollout.chunks])
        assert not (ids == image_pad).any() and rollout.refused == 0
        # the control: the same prompts sampled without the suppression are nearly all image-pad tokens
        encoded = rollout.chunks[0].prompt
        with torch.no_grad():
            plain = trainer.model.generate(**encoded, do_sample=True, top_k=0, top_p=1.0,
                                           max_new_tokens=obj.max_new_tokens,
                                           pad_token_id=trainer.scorer.tokenizer.pad_token_id)
        assert (plain[:, encoded["input_ids"].shape[1]:] == image_pad).float().mean() > 0.9
        metrics = trainer.train_step()  # the step that used to stop with "Image features and image tokens do not match"
        assert metrics["train/refused_completions"] == 0.0 and torch.isfinite(torch.tensor(metrics["train/loss"]))
    finally:
        handle.remove()


def test_a_rollout_works_out_the_blocked_ids_once(tiny_lvlm_dir, judge_set, tmp_path, one_thread, monkeypatch):
    """Sampling suppresses and the rollout refuses by the same list, computed once per GRPO step."""
    from emofeedback2.training.judge import grpo_objective

    trainer = _trainer(tiny_lvlm_dir, judge_set, tmp_path)
    calls = []
    original = grpo_objective.blocked_token_ids
    monkeypatch.setattr(grpo_objective, "blocked_token_ids", lambda scorer: (calls.append(1), original(scorer))[1])
    trainer.model.eval()
    images = load_images(trainer.train_rows[:2])
    sample_rollout(trainer.scorer, images, trainer.labels[:2], trainer.config.objective, seed=0)
    assert len(calls) == 1


def test_refuse_blocked_pads_a_refused_row_and_every_position_past_the_end():
    completion = torch.tensor([[5, 7, 9, 2], [5, 9, 7, 2], [5, 6, 2, 1]])  # 7 blocked, 2 = end, 1 = pad
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    ids, new_mask, refused = refuse_blocked(completion, mask, [7], pad_id=1)
    assert refused.tolist() == [True, True, False]
    assert ids.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [5, 6, 2, 1]]
    assert new_mask.tolist() == [[False] * 4, [False] * 4, [True, True, True, False]]


def test_a_scripted_completion_carrying_an_image_pad_is_refused_counted_and_not_trained(tiny_lvlm_dir, judge_set,
                                                                                         tmp_path, one_thread,
                                                                                         monkeypatch):
    trainer = _trainer(tiny_lvlm_dir, judge_set, tmp_path, kl_coef=0.1)
    tok = trainer.scorer.tokenizer
    image_pad, end = trainer.model.config.image_token_id, sorted(end_token_ids(trainer.model, tok))[0]
    text = tok.encode("<think>a</think>", add_special_tokens=False)
    scripted = [text[:3] + [image_pad] + text[3:] + [end] * 4,  # an image pad inside the completion: refused
                text + [end, image_pad, image_pad, image_pad, end],  # after the end: padded away, the row is kept
                text + [end] * 5, text + [end] * 5]

    def generate(**kwargs):  # a forced generation, whatever the suppression asks for
        prompt = kwargs["input_ids"]
        return torch.cat([prompt, torch.tensor(scripted[:prompt.shape[0]], device=prompt.device)], dim=1)

    monkeypatch.setattr(trainer.model, "generate", generate)
    images = load_images(trainer.train_rows[:2])
    rollout = sample_rollout(trainer.scorer, images, trainer.labels[:2], trainer.config.objective, seed=0)
    assert rollout.refused == 1 and rollout.texts[0] == ""
    ids = torch.cat([c.completion for c in rollout.chunks])
    assert not (ids == image_pad).any()
    mask = torch.cat([c.mask for c in rollout.chunks])
    assert mask[0].sum() == 0 and mask[1].sum() == len(text) + 1
    metrics = trainer.train_step()  # the training forward sees 16 image slots per row again
    assert metrics["train/refused_completions"] == 1.0
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    # build_rollout on the raw ids gives the same refusal (the check does not live in sampling only)
    raw = build_rollout(trainer.scorer, images, trainer.labels[:2], [torch.tensor(scripted)], trainer.config.objective)
    assert raw.refused == 1

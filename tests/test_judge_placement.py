"""Judge placement: one reward call per step, options plumbed into LVLMConfig, clear errors otherwise."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from emofeedback2.engines.judge import lvlm_scorer
from emofeedback2.engines.judge import placement as judge_placement
from emofeedback2.training.generator.config import RewardSpec
from emofeedback2.engines.judge.placement import JudgePlacementError, judge_config
from emofeedback2.training.generator.rewards import ColorVAReward, CompositeReward, LVLMVAReward, build_reward
from emofeedback2.training.generator.trainer import GRPOTrainer

from test_training_trainer import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class CountingColor(ColorVAReward):
    """The colour reward, counting its calls and the images of each."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def __call__(self, images, prompts, targets):
        self.calls.append(images.shape[0])
        return super().__call__(images, prompts, targets)


@pytest.mark.parametrize("workers", [0, 1])
def test_one_reward_call_per_step_scores_what_per_micro_batch_calls_score(tiny_pipeline_dir, tmp_path, workers):
    results = {}
    for schedule in ("step", "micro_batch"):
        c = tiny_config(tiny_pipeline_dir, tmp_path / schedule)
        c.reward_schedule = schedule
        c.reward_workers = workers
        counting = CountingColor()
        trainer = GRPOTrainer(c, reward=CompositeReward([counting], [1.0], ["none"]), log=False)
        _, parts, batch = trainer.sample_step()
        results[schedule] = (counting.calls, parts["color_va"])
        trainer.runner.close()
    n = 8  # group_size 4 x groups_per_step 2, micro-batches of 4
    assert results["step"][0] == [n]
    assert results["micro_batch"][0] == [4, 4]
    assert torch.equal(results["step"][1], results["micro_batch"][1])


def test_offloaded_tiny_judge_is_swapped_in_once_per_step(tiny_pipeline_dir, tiny_lvlm_dir, tmp_path):
    c = tiny_config(tiny_pipeline_dir, tmp_path)
    c.rewards = [RewardSpec(kind="lvlm", path=str(tiny_lvlm_dir), device="cpu", offload=True, images_per_pass=3)]
    c.reward_workers = 0
    trainer = GRPOTrainer(c, log=False)
    scorer = trainer.reward.rewards[0].scorer
    assert scorer.config.offload_after_use and scorer.config.max_images_per_pass == 3
    calls, moves, passes = [], [], []
    real_score, real_to, real_answer = scorer.score, scorer.to, scorer._answer_logits
    scorer.score = lambda images, *a, **k: (calls.append(len(images)), real_score(images, *a, **k))[1]
    scorer.to = lambda device: (moves.append(str(device)), real_to(device))[1]
    scorer._answer_logits = lambda p, s, images: (passes.append(len(images)), real_answer(p, s, images))[1]
    metrics = trainer.train_step()
    assert calls == [8]  # one call for the step's 8 images, not one per micro-batch
    assert len(moves) == 2  # onto the device and back: one swap
    assert max(passes) <= 3 and sum(passes) % 8 == 0  # inside the call: passes of at most 3 images
    assert torch.isfinite(torch.tensor(metrics["reward/mean"]))


def test_judge_config_plumbs_device_offload_and_images_per_pass():
    cfg = judge_config("some/judge", device="cuda:1", dtype="bfloat16", offload=False, images_per_pass=8)
    assert (cfg.device, cfg.dtype, cfg.offload_after_use, cfg.max_images_per_pass) == ("cuda:1", "bfloat16", False, 8)
    assert judge_config("some/judge").device == lvlm_scorer.LVLMConfig(model="x").device  # '' = the default


def test_quantization_reaches_lvlm_config_when_the_loader_supports_it(monkeypatch):
    @dataclasses.dataclass
    class QuantLVLMConfig(lvlm_scorer.LVLMConfig):
        quantization: str = "none"

    seen = []
    monkeypatch.setattr(lvlm_scorer, "LVLMConfig", QuantLVLMConfig)
    monkeypatch.setattr(lvlm_scorer, "load_lvlm", lambda config: seen.append(config) or "scorer")
    monkeypatch.setattr(judge_placement.importlib.util, "find_spec",
                        lambda name: object() if name == "bitsandbytes" else importlib.util.find_spec(name))
    reward = build_reward([RewardSpec(kind="lvlm", path="judge", device="cuda:0", quantization="4bit",
                                      images_per_pass=2)])
    assert isinstance(reward.rewards[0], LVLMVAReward) and reward.rewards[0].scorer == "scorer"
    assert seen[0].quantization == "4bit" and seen[0].max_images_per_pass == 2 and seen[0].device == "cuda:0"


def test_quantization_without_bitsandbytes_or_loader_support_names_the_fix(monkeypatch):
    monkeypatch.setattr(judge_placement.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(JudgePlacementError, match="pip install bitsandbytes"):
        judge_config("judge", device="cuda:0", quantization="8bit")
    monkeypatch.setattr(judge_placement.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(JudgePlacementError, match="CUDA GPUs only"):
        judge_config("judge", device="cpu", quantization="8bit")
    if not any(f.name == "quantization" for f in dataclasses.fields(lvlm_scorer.LVLMConfig)):
        with pytest.raises(JudgePlacementError, match="quantization = 'none'"):
            judge_config("judge", device="cuda:0", quantization="8bit")


def test_attention_kernel_reaches_the_training_judge_and_bad_values_are_refused(monkeypatch, tmp_path):
    from emofeedback2.training.generator.config import ConfigError, validate

    seen = []
    monkeypatch.setattr(lvlm_scorer, "load_lvlm", lambda config: seen.append(config) or "scorer")
    build_reward([RewardSpec(kind="lvlm", path="judge", attention="eager"), RewardSpec(kind="lvlm", path="judge")])
    assert [c.attn_implementation for c in seen] == ["eager", None]  # "auto" = transformers' default

    config = tiny_config(tmp_path / "pipe", tmp_path / "out")
    config.rewards = [RewardSpec(kind="lvlm", path="judge", attention="fast")]
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.attention must be one of auto, sdpa, eager, flash_attention_2"):
        validate(config)
    config.rewards = [RewardSpec(kind="color", attention="sdpa")]
    with pytest.raises(ConfigError, match="LVLM judge only"):
        validate(config)

"""The feedback loop engine on a fake generator whose emotion follows the prompt's words."""

import json

import pytest
import torch

from emofeedback2.engines.emotion_space import VA, va_distance
from emofeedback2.engines.demo.toy_plants import true_emotion
from emofeedback2.engines.loop.feedback_loop import FeedbackLoop, run_feedback_loop
from emofeedback2.engines.loop.loop_config import LoopConfig, candidate_seed
from emofeedback2.engines.loop.prompt_text import subject_words
from emofeedback2.engines.loop.refiner import FallbackRefiner, LVLMRefiner
from loop_fakes import PixelScorer, PromptResponsiveGenerator, ScriptedLVLM, ignoring_plant, obedient_plant

PROMPT = "a lighthouse on a rocky cliff, wide shot"
SMALL = dict(width=16, height=16, steps=1)


def run(target=VA(1.5, 1.0), generator=None, scorer=None, refiner=None, progress=None, **config):
    settings = dict(rounds=4, candidates=3, tolerance=0.0, min_improvement=0.0, seed=7, **SMALL)
    settings.update(config)
    return run_feedback_loop(
        generator or PromptResponsiveGenerator(), scorer or PixelScorer(), refiner or FallbackRefiner(),
        PROMPT, target, LoopConfig(**settings), progress=progress,
    )


def test_refinement_moves_the_prompt_toward_the_target_on_a_plant_it_was_not_written_for():
    # The plant's word responses are its own (rotated, scaled, noisy): the prompt's noise-free
    # response must come closer over the rounds, and beat repeating round 1 with more seeds.
    gains, control = [], []
    for seed in range(3):
        plant = PromptResponsiveGenerator(seed=seed)
        for target in (VA(1.5, 1.0), VA(-2.0, 1.5), VA(-1.5, -2.0), VA(2.0, -1.5)):
            result = run(target=target, generator=plant, rounds=5, candidates=3)
            response = [va_distance(VA.clamped(*plant.response(r.prompt)), target) for r in result.rounds]
            gains.append(response[0] - min(response[-2:]))
            truth = [va_distance(p, target) for p in true_emotion(result.images)]
            repeat = run(target=target, generator=plant, rounds=1, candidates=15)
            control.append(min(va_distance(p, target) for p in true_emotion(repeat.images)) - min(truth))
    assert sum(gains) / len(gains) > 0.2, gains
    assert sum(control) / len(control) > 0.0, control


def test_best_reward_never_decreases_and_is_the_best_seen():
    result = run(rounds=5, candidates=2, target=VA(-2.0, 1.5))
    rewards = result.best_rewards
    assert all(b >= a for a, b in zip(rewards, rewards[1:]))
    every = [c for r in result.rounds for c in r.candidates]
    assert result.best.reward == max(c.reward for c in every)
    assert result.final_prompt == result.best.prompt
    assert torch.equal(result.best_image, result.images[result.best.image_index : result.best.image_index + 1])


def test_early_stop_on_tolerance_saves_rounds():
    result = run(target=VA(1.0, 1.0), generator=obedient_plant(), rounds=3, candidates=4, tolerance=0.5)
    assert result.stop_reason == "tolerance"
    assert len(result.rounds) < 3 and result.best.distance <= 0.5
    assert result.counts.generator_images == 4 * len(result.rounds)
    assert result.rounds[-1].refined_prompt is None  # no refinement after the last round


def test_plateau_stop():
    # A generator that ignores the prompt: round 2 cannot improve much → plateau.
    result = run(target=VA(2.5, 2.5), generator=ignoring_plant(), rounds=5, candidates=2, min_improvement=0.05)
    assert result.stop_reason == "plateau" and len(result.rounds) == 2


def test_one_batched_scorer_call_per_round_and_counts():
    scorer = PixelScorer()
    generator = PromptResponsiveGenerator()
    result = run(scorer=scorer, generator=generator, rounds=3, candidates=5)
    assert scorer.batch_sizes == [5, 5, 5]
    assert result.counts.scorer_calls == 3 and result.counts.scorer_images == 15
    assert result.counts.generator_images == 15 and generator.calls == 3
    assert result.counts.refiner_calls == 2 and result.counts.refiner_lvlm_images == 0
    assert result.counts.image_evaluations == 15
    assert result.images.shape == (15, 16, 16, 3)
    assert set(result.timings) >= {"generate", "score", "refine", "total"}


def test_seeds_are_distinct_derived_and_reproducible():
    result = run(rounds=3, candidates=4, seed=100)
    seeds = [c.seed for r in result.rounds for c in r.candidates]
    assert len(set(seeds)) == len(seeds)
    assert seeds[5] == candidate_seed(100, 1, 1, 4) == 105
    first = run(rounds=3, candidates=4, seed=3).to_dict()
    second = run(rounds=3, candidates=4, seed=3).to_dict()
    for d in (first, second):
        d.pop("timings")
        for r in d["rounds"]:
            r.pop("seconds")
    assert first == second
    other = run(rounds=3, candidates=4, seed=4).to_dict()
    assert other["rounds"][0]["candidates"][0]["valence"] != first["rounds"][0]["candidates"][0]["valence"]


class Cancel(Exception):
    pass


class InterruptProcessingException(Exception):
    """Same name as ComfyUI's cancel exception."""


@pytest.mark.parametrize("cancel_at", [3, 7, 9])
def test_cancel_mid_loop_leaves_whole_rounds(cancel_at):
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if len(calls) == cancel_at:
            raise InterruptProcessingException()

    with pytest.raises(InterruptProcessingException) as info:
        run(rounds=4, candidates=3, progress=progress)
    partial = info.value.partial_result
    assert partial.cancelled and partial.stop_reason == "cancelled"
    n = len(partial.rounds)
    assert partial.images is None if n == 0 else partial.images.shape[0] == 3 * n
    for record in partial.rounds:
        assert len(record.candidates) == 3
    if n:
        assert partial.best.round <= n
    json.loads(partial.to_json())  # still serialisable


def test_generator_errors_are_reported_as_errors_not_cancels():
    class Broken(PromptResponsiveGenerator):
        def generate(self, request, progress=None):
            if self.calls == 1:
                raise RuntimeError("out of memory")
            return super().generate(request, progress)

    with pytest.raises(RuntimeError) as info:
        run(generator=Broken(), rounds=3, candidates=2)
    assert info.value.partial_result.stop_reason == "error: RuntimeError"
    assert len(info.value.partial_result.rounds) == 1


def test_history_json_has_every_candidate_and_feedback():
    result = run(rounds=2, candidates=2)
    data = json.loads(result.to_json())
    assert [len(r["candidates"]) for r in data["rounds"]] == [2, 2]
    cand = data["rounds"][1]["candidates"][0]
    assert set(cand) >= {"round", "prompt", "seed", "valence", "arousal", "reward"}
    assert data["rounds"][0]["feedback"] and data["rounds"][0]["refined_prompt"] == data["rounds"][1]["prompt"]
    for word in subject_words(PROMPT):
        assert word in data["rounds"][1]["prompt"]


def test_initial_prompt_modes():
    generator = PromptResponsiveGenerator()
    run(generator=generator, rounds=1, candidates=1, initial_prompt="as_is")
    assert generator.requests[0].prompts[0] == PROMPT
    generator = PromptResponsiveGenerator()
    run(generator=generator, rounds=1, candidates=1, target=VA(2.5, 2.5))
    assert generator.requests[0].prompts[0].startswith(PROMPT + ", ") and "mood" in generator.requests[0].prompts[0]


def test_quality_term_changes_selection():
    def quality(images):  # prefers the last candidate of each round
        return [float(i == images.shape[0] - 1) for i in range(images.shape[0])]

    config = LoopConfig(rounds=1, candidates=4, quality_weight=10.0, seed=1, **SMALL)
    result = FeedbackLoop(PromptResponsiveGenerator(), PixelScorer(), None, config, quality_fn=quality).run(PROMPT, VA(0, 0))
    assert result.best.index == 3 and result.best.quality == 1.0


def test_lvlm_refiner_in_the_loop_counts_its_image_reads():
    lvlm = ScriptedLVLM("FEEDBACK: too dark. PROMPT: a lighthouse on a rocky cliff, wide shot, golden light, joyful")
    result = run(refiner=LVLMRefiner(lvlm), rounds=3, candidates=2)
    assert result.counts.refiner_lvlm_images == 2
    assert result.counts.image_evaluations == 6 + 2
    assert result.rounds[1].prompt.endswith("golden light, joyful")


def test_bad_config_and_inputs_are_explained():
    with pytest.raises(ValueError, match="rounds"):
        LoopConfig(rounds=0)
    with pytest.raises(ValueError, match="tolerance"):
        LoopConfig(tolerance=7)
    with pytest.raises(ValueError, match="prompt is empty"):
        run_feedback_loop(PromptResponsiveGenerator(), PixelScorer(), None, "  ", VA(0, 0), LoopConfig(**SMALL))


def test_budget_caps_evaluations_and_cuts_the_last_round():
    result = run(rounds=10, candidates=3, max_evaluations=7)
    assert result.counts.image_evaluations == 7 and [len(r.candidates) for r in result.rounds] == [3, 3, 1]
    assert result.stop_reason == "budget"
    scheduled = run(rounds=1, candidates=1, schedule=(1, 2, 3))
    assert [len(r.candidates) for r in scheduled.rounds] == [1, 2, 3]
    assert [c.seed for r in scheduled.rounds for c in r.candidates] == list(range(7, 13))


def test_progress_total_shrinks_to_an_early_stop():
    calls = []
    result = run(target=VA(1.0, 1.0), generator=obedient_plant(), rounds=5, candidates=3, tolerance=0.6,
                 confidence=0.0, progress=lambda done, total: calls.append((done, total)))
    assert len(result.rounds) < 5
    assert calls[0][1] == 5 * (3 + 1)
    assert calls[-1] == (len(result.rounds) * 4, len(result.rounds) * 4)


def test_on_round_sees_each_finished_round_with_its_refinement():
    seen = []
    result = run_feedback_loop(PromptResponsiveGenerator(), PixelScorer(), None, PROMPT, VA(1.5, 1.0),
                               LoopConfig(rounds=3, candidates=2, tolerance=0.0, **SMALL),
                               on_round=lambda result, images: seen.append((result.rounds[-1].round, result.rounds[-1].refined_prompt)))
    assert [r for r, _ in seen] == [1, 2, 3]
    assert seen[0][1] == result.rounds[1].prompt and seen[-1][1] is None


def test_tolerance_stop_needs_a_margin_for_judge_noise():
    noisy = PromptResponsiveGenerator(family="noisy", seed=1)
    judge = noisy.judge()
    trusting = run(target=VA(1.0, 0.5), generator=noisy, scorer=judge, rounds=4, candidates=8, tolerance=1.0, confidence=0.0)
    careful = run(target=VA(1.0, 0.5), generator=noisy, scorer=judge, rounds=4, candidates=8, tolerance=1.0, confidence=3.0)
    assert trusting.stop_reason == "tolerance" and len(trusting.rounds) == 1
    assert careful.stop_reason != "tolerance" and len(careful.rounds) == 4


def test_secant_steer_reaches_the_refiner_and_integral_keeps_its_own_step():
    secant = run(rounds=3, candidates=2)
    integral = run(rounds=3, candidates=2, controller="integral")
    assert secant.rounds[0].steer == (1.5, 1.0)
    assert secant.rounds[1].steer != integral.rounds[1].steer

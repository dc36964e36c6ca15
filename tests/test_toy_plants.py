"""Toy plants: seeded, independent of the refiner's inverse, ground truth recoverable, judge noisy."""

import torch

from emofeedback2.engines.emotion_space import VA, va_distance
from emofeedback2.engines.generation.protocol import GenerationRequest
from emofeedback2.engines.loop.prompt_text import implied_point
from emofeedback2.engines.loop.refiner import FallbackRefiner
from emofeedback2.engines.demo.toy_plants import PLANT_FAMILIES, make_plant, true_emotion


def test_plants_are_seeded_and_differ_between_seeds():
    a, b, c = make_plant("rotated", 1), make_plant("rotated", 1), make_plant("rotated", 2)
    prompt = FallbackRefiner().compose("a cat on a sofa", VA(2.0, 1.0))
    assert a.response(prompt) == b.response(prompt)
    assert a.response(prompt) != c.response(prompt)


def test_response_is_not_the_refiners_inverse_but_correlates_with_it():
    # Over many steer points, the plant's response follows the descriptor meaning (positive
    # correlation) yet differs from implied_point by a clear margin (rotation, gains, word noise).
    refiner, plant = FallbackRefiner(), make_plant("rotated", 3)
    points = [VA(-2.5 + 1.0 * i, -2.5 + 1.0 * j) for i in range(6) for j in range(6)]
    prompts = [refiner.compose("a house by a lake", p) for p in points]
    responses = [plant.response(p) for p in prompts]
    implied = [implied_point(p) for p in prompts]
    gaps = [va_distance(VA.clamped(*r), i) for r, i in zip(responses, implied)]
    assert sum(gaps) / len(gaps) > 0.3
    v = torch.tensor([r[0] for r in responses])
    target_v = torch.tensor([p.valence for p in points])
    assert torch.corrcoef(torch.stack([v, target_v]))[0, 1] > 0.5


def test_ground_truth_round_trips_and_judge_is_noisy_but_deterministic():
    plant = make_plant("noisy", 0)
    request = GenerationRequest(prompts=["a dog, joyful mood"] * 6, seeds=list(range(6)), width=8, height=8)
    images = plant.generate(request)
    truth = true_emotion(images)
    for point, seed in zip(truth, range(6)):
        expected = plant.emotion("a dog, joyful mood", seed)
        assert abs(point.valence - expected[0]) < 1e-5 and abs(point.arousal - expected[1]) < 1e-5
    judge = plant.judge()
    first, second = judge.score(images), judge.score(images)
    assert first == second  # the same image always reads the same
    errors = [abs(r.valence - t.valence) for r, t in zip(first, truth)]
    assert max(errors) > 0.05  # ... but not as the truth


def test_every_family_builds_and_the_emotional_words_matter():
    for name in PLANT_FAMILIES:
        plant = make_plant(name, 0)
        happy = plant.response(FallbackRefiner().compose("a street", VA(2.5, 1.5)))
        grim = plant.response(FallbackRefiner().compose("a street", VA(-2.5, -1.5)))
        assert happy[0] > grim[0] + 1.0, name

"""Our default controller vs the paper's fixed 3 × 8 at equal judge evaluations, on toy plants
scored by their TRUE emotion (seeds from EMOFEEDBACK2_SEED_BASE, held away from the tuning seeds)."""

from dataclasses import replace

import pytest

from emofeedback2.bench.loop import BENCH_PROMPTS, BENCH_TARGETS, truncated
from emofeedback2.engines.feedback_loop import LoopConfig, run_feedback_loop
from emofeedback2.engines.refiner import FallbackRefiner
from emofeedback2.engines.toy_plants import PLANT_FAMILIES, ToyPlant, draw_params, make_plant
from learning_stats import RunComparison, seed_base

SMALL = dict(width=8, height=8, steps=1)


def true_errors(config_for, budget, plant_seed, family):
    plant = make_plant(family, plant_seed) if isinstance(family, str) else ToyPlant(draw_params(family, plant_seed))
    judge = plant.judge()
    errors = []
    for k, target in enumerate(BENCH_TARGETS):
        result = run_feedback_loop(plant, judge, FallbackRefiner(), BENCH_PROMPTS[k % 4], target, config_for(1000 * k))
        errors.append(truncated(result, budget)[0])
    return sum(errors) / len(errors)


@pytest.mark.learning
def test_ours_beats_the_paper_schedule_at_8_evaluations_and_a_deaf_plant_control_does_not_move():
    runs = [(family, 500 + seed_base() + 10 * j) for family in PLANT_FAMILIES for j in range(3)]
    paper = [true_errors(lambda s: LoopConfig.paper(seed=s, **SMALL), 8, seed, fam) for fam, seed in runs]
    ours = [true_errors(lambda s: LoopConfig(tolerance=0.0, max_evaluations=8, rounds=8, seed=s, **SMALL), 8, seed, fam)
            for fam, seed in runs]
    # Control: on plants that ignore emotional words no controller can help, so the same comparison
    # must show no gain (what the treatment shows is steering, not a selection or seed artefact).
    deaf = replace(PLANT_FAMILIES["rotated"], valence_gain=(0.0, 0.0), arousal_gain=(0.0, 0.0), word_noise=0.0)
    deaf_runs = [(deaf, seed + k) for k, (_, seed) in enumerate(runs)]
    deaf_paper = [true_errors(lambda s: LoopConfig.paper(seed=s, **SMALL), 8, seed, fam) for fam, seed in deaf_runs]
    deaf_ours = [true_errors(lambda s: LoopConfig(tolerance=0.0, max_evaluations=8, rounds=8, seed=s, **SMALL), 8, seed, fam)
                 for fam, seed in deaf_runs]
    gain = RunComparison(tuple(p - o for p, o in zip(paper, ours)), tuple(p - o for p, o in zip(deaf_paper, deaf_ours)))
    assert gain.treatment_mean > 0 and gain.t_diff > 2, gain.summary()
    # no steering gain where words do nothing: within noise of zero, or negligible beside the treatment
    assert abs(gain.t_control) < 2.5 or abs(gain.control_mean) < gain.treatment_mean / 5, gain.summary()

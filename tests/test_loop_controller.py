"""Our default controller vs the paper's fixed 3 × 8 at equal judge evaluations, on toy plants
scored by their TRUE emotion (seeds from EMOFEEDBACK2_SEED_BASE, held away from the tuning seeds)."""

from dataclasses import replace

import pytest

from emofeedback2.bench.loop import BENCH_PROMPTS, BENCH_TARGETS, truncated
from emofeedback2.engines.loop.feedback_loop import run_feedback_loop
from emofeedback2.engines.loop.loop_config import LoopConfig
from emofeedback2.engines.loop.refiner import FallbackRefiner
from emofeedback2.engines.demo.toy_plants import PLANT_FAMILIES, ToyPlant, draw_params, make_plant
from learning_stats import RunComparison, seed_base

SMALL = dict(width=8, height=8, steps=1)
BUDGETS = (8, 12, 24)


def true_errors(config_for, budgets, plant_seed, family):
    """Mean true error of the chosen image over the bench targets, per budget (runs are causal: the
    first B evaluations of one long run are the run capped at B)."""
    plant = make_plant(family, plant_seed) if isinstance(family, str) else ToyPlant(draw_params(family, plant_seed))
    judge = plant.judge()
    errors = {b: [] for b in budgets}
    for k, target in enumerate(BENCH_TARGETS):
        result = run_feedback_loop(plant, judge, FallbackRefiner(), BENCH_PROMPTS[k % 4], target, config_for(1000 * k))
        for b in budgets:
            errors[b].append(truncated(result, b)[0])
    return {b: sum(e) / len(e) for b, e in errors.items()}


@pytest.mark.learning
def test_ours_beats_the_paper_schedule_at_equal_evaluations_and_a_deaf_plant_control_does_not_move():
    runs = [(family, 500 + seed_base() + 10 * j) for family in PLANT_FAMILIES for j in range(3)]
    paper = [true_errors(lambda s: LoopConfig.paper(seed=s, **SMALL), BUDGETS, seed, fam) for fam, seed in runs]
    ours = [true_errors(lambda s: LoopConfig(tolerance=0.0, max_evaluations=24, rounds=12, seed=s, **SMALL), BUDGETS,
                        seed, fam) for fam, seed in runs]
    # Control: on plants that ignore emotional words no controller can help, so the same comparison
    # must show no gain (what the treatment shows is steering, not a selection or seed artefact).
    deaf = replace(PLANT_FAMILIES["rotated"], valence_gain=(0.0, 0.0), arousal_gain=(0.0, 0.0), word_noise=0.0)
    deaf_runs = [(deaf, seed + k) for k, (_, seed) in enumerate(runs)]
    deaf_paper = [true_errors(lambda s: LoopConfig.paper(seed=s, **SMALL), (8,), seed, fam)[8] for fam, seed in deaf_runs]
    deaf_ours = [true_errors(lambda s: LoopConfig(tolerance=0.0, max_evaluations=8, rounds=8, seed=s, **SMALL), (8,),
                             seed, fam)[8] for fam, seed in deaf_runs]
    gain = RunComparison(tuple(p[8] - o[8] for p, o in zip(paper, ours)), tuple(p - o for p, o in zip(deaf_paper, deaf_ours)))
    assert gain.treatment_mean > 0 and gain.t_diff > 2, gain.summary()
    # no steering gain where words do nothing: within noise of zero, or negligible beside the treatment
    assert abs(gain.t_control) < 2.5 or abs(gain.control_mean) < gain.treatment_mean / 5, gain.summary()
    # At 12 and 24 evaluations the paper's schedule has had its 2nd/3rd round of 8 and the margin is
    # smaller (bench loop: 0.405 vs 0.438 at 12, 0.366 vs 0.391 at 24; over seed bases 0-4000 the
    # run-level t of the gain was 1.7-4.1 at 12 and 0.7-2.6 at 24): ours must not be worse beyond noise.
    for budget in (12, 24):
        diffs = [p[budget] - o[budget] for p, o in zip(paper, ours)]
        mean = sum(diffs) / len(diffs)
        se = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
        assert mean + 2 * se > 0, f"budget {budget}: ours worse than the paper by {-mean:.4f} (SE {se:.4f})"
        if budget == 12:
            assert mean > 0, f"budget 12: mean gain {mean:+.4f} (SE {se:.4f})"

"""Evaluation metrics against hand-computed values, on fakes whose readings are known in advance."""

import math

import pytest

from emofeedback2.engines.emotion_space import VA
from emofeedback2.evaluation.metrics import average_ranks, emotion_metrics, monotonicity, pearson, slope, spearman
from emofeedback2.evaluation.records import ImageRecord, read_records
from emofeedback2.evaluation.report import QualityScores, build_report
from emofeedback2.evaluation.runner import EvalPlan, Sampling, run_evaluation
from emofeedback2.evaluation.targets import grid_targets, grid_values

from eval_fakes import CellCodeGenerator, CellCodeScorer

SAMPLING = Sampling(width=16, height=16, steps=1, cfg=1.0)


def _record(tv, ta, v, a, seed=0, prompt_index=0, index=0):
    return ImageRecord(f"x{index}.png", prompt_index, "p", seed, index, tv, ta, v, a)


def _evaluate(tmp_path, response, prompts=("a house",), n=5, seeds=(0,)):
    targets = grid_targets(n)
    plan = EvalPlan(prompts=list(prompts), targets=targets, seeds=list(seeds), sampling=SAMPLING, batch_size=4)
    records = run_evaluation(CellCodeGenerator(prompts, targets), CellCodeScorer(targets, response), plan, tmp_path)
    report = build_report(records, tmp_path, list(prompts), QualityScores(records, tmp_path), run={})
    return records, report


def test_grid_is_evenly_spaced_over_the_emotion_range():
    assert grid_values(5) == [-3.0, -1.5, 0.0, 1.5, 3.0]
    targets = grid_targets(5)
    assert len(targets) == len(set(targets)) == 25


def test_small_statistics_match_hand_computed_values():
    assert pearson([1, 2, 3], [1, 3, 2])[0] == pytest.approx(0.5)  # Σdxdy=1, Σdx²=Σdy²=2
    assert slope([1, 2, 3], [1, 3, 2])[0] == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])[0] == pytest.approx(0.8)  # 1 − 6·4/(5·24)
    assert average_ranks([1.0, 2.0, 2.0, 3.0]).tolist() == [1.0, 2.5, 2.5, 4.0]
    value, reason = pearson([1, 2, 3], [4, 4, 4])
    assert value is None and "do not vary" in reason
    line = [_record(t, 0.0, v, 0.0, index=i) for i, (t, v) in enumerate(zip([-3, -1, 1, 3], [0.0, 1.0, 0.5, 2.0]))]
    share, per_line, _ = monotonicity(line, "valence")
    assert share == pytest.approx(2 / 3) and per_line[0]["steps"] == 3 and per_line[0]["rising"] == 2


def test_end_to_end_metrics_on_a_known_generator(tmp_path):
    # valence half follows (V = t/2 + 1), arousal runs backwards (A = −t/3)
    records, report = _evaluate(tmp_path, lambda p, s, t: (t.valence / 2 + 1, -t.arousal / 3), n=2)
    assert len(records) == 4 == report["n_images"]
    # V targets −3, 3 → readings −0.5, 2.5: errors 2.5, 0.5; mean reading 1 → |−3−1|, |3−1|
    assert report["valence_error"] == pytest.approx(1.5)
    assert report["valence_error_constant"] == pytest.approx(3.0)
    assert report["valence_error_ratio"] == pytest.approx(0.5)
    assert report["valence_pearson"] == pytest.approx(1.0) and report["valence_spearman"] == pytest.approx(1.0)
    assert report["valence_slope"] == pytest.approx(0.5) and report["valence_monotonicity"] == 1.0
    # A targets −3, 3 → readings 1, −1: errors 4, 4; mean reading 0 → constant 3
    assert report["arousal_error"] == pytest.approx(4.0)
    assert report["arousal_error_constant"] == pytest.approx(3.0)
    assert report["arousal_error_ratio"] == pytest.approx(4 / 3)
    assert report["arousal_pearson"] == pytest.approx(-1.0) and report["arousal_slope"] == pytest.approx(-1 / 3)
    assert report["arousal_monotonicity"] == 0.0
    for key in ("clip_score", "clip_iqa", "lpips_continuous"):
        assert report[key] is None and "given" in report["null_reasons"][key]


def test_a_generator_that_ignores_the_target_scores_the_constant_baseline(tmp_path):
    # the reading depends on the seed only (a little), never on the target
    jitter = {0: -0.1, 1: 0.0, 2: 0.1}
    records, report = _evaluate(tmp_path, lambda p, s, t: (0.4 + jitter[s], -0.2 - jitter[s]), seeds=(0, 1, 2))
    for axis in ("valence", "arousal"):
        error, constant = report[f"{axis}_error"], report[f"{axis}_error_constant"]
        assert error >= constant - 1e-12  # Jensen: ignoring the target never beats the baseline
        assert error == pytest.approx(constant, abs=0.05)
        assert report[f"{axis}_error_ratio"] == pytest.approx(1.0, abs=0.03)
        assert abs(report[f"{axis}_pearson"]) < 1e-9 and abs(report[f"{axis}_spearman"]) < 1e-9
        assert abs(report[f"{axis}_slope"]) < 1e-9
    # a perfectly constant generator: error equals the baseline exactly; correlation undefined, said so
    _, flat = _evaluate(tmp_path / "flat", lambda p, s, t: (0.7, 0.7))
    assert flat["valence_error"] == pytest.approx(flat["valence_error_constant"], abs=1e-12)
    assert flat["valence_pearson"] is None and "do not vary" in flat["null_reasons"]["valence_pearson"]
    assert flat["valence_monotonicity"] == 0.0


def test_a_generator_that_follows_exactly_has_zero_error(tmp_path):
    _, report = _evaluate(tmp_path, lambda p, s, t: (t.valence, t.arousal))
    assert report["valence_error"] == 0.0 and report["arousal_error"] == 0.0
    assert report["valence_error_constant"] == pytest.approx(1.8)  # mean |t| over {−3, −1.5, 0, 1.5, 3}
    assert report["valence_slope"] == pytest.approx(1.0) and report["arousal_monotonicity"] == 1.0


def test_per_prompt_metrics_use_only_that_prompts_images(tmp_path):
    follow = {0: 1.0, 1: 0.0}  # prompt 0 follows valence, prompt 1 ignores it
    records, report = _evaluate(tmp_path, lambda p, s, t: (follow[p] * t.valence, 0.0), prompts=("a", "b"), n=3)
    first, second = report["per_prompt"]
    assert first["prompt"] == "a" and first["n_images"] == 9 and first["valence_error"] == 0.0
    assert second["valence_error"] == pytest.approx(second["valence_error_constant"])  # mean |t| = 2
    assert second["valence_error"] == pytest.approx(2.0)
    assert report["valence_error"] == pytest.approx(1.0)
    assert math.isclose(report["valence_monotonicity"], 0.5)  # 6 steps rise of 12
    # images.csv holds exactly what the report was computed from
    assert read_records(tmp_path / "images.csv") == records

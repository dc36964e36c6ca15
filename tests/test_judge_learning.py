"""Judge fine-tuning learns to read V-A from image content, and a shuffled-label control does not.

Run-level statistics (one number per independent run, seeds from ``EMOFEEDBACK2_SEED_BASE``): each
run builds its own tiny random Qwen2.5-VL and its own synthetic labelled set in the manifest format
(valence = brightness, arousal = warm/cool balance; ``bench.judge.write_synthetic_judge_set``),
trains ``train-judge``'s soft-label LoRA on the training split — once on the real labels
(treatment) and once on labels permuted between images (control: same images, same label
distribution, no image-label link) — and evaluates all three judges on the held-out test split
through the scorer's normal read path (``LVLMConfig(adapter=...)``).

Asserted over runs: the treatment's test PLCC gain over the base model is far beyond the control's
(Welch t on the run means), its MAE beats the constant predictor (training mean) in every run, and
the control's PLCC gain and MAE advantage over the constant are not distinguishable from zero.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from emofeedback2.bench.judge import evaluate_folder, judge_run_config, train_judge, write_synthetic_judge_set
from emofeedback2.tiny_models.lvlm import build_tiny_lvlm
from learning_stats import RunComparison, seed_base

pytestmark = [pytest.mark.learning, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

RUNS = 5
STEPS = 150
PIXELS = 56  # 4 image tokens per image after merging: the tiny judge trains in seconds per 10 steps
N_TRAIN, N_TEST = 48, 32


def _one_run(seed: int, root: Path) -> dict:
    model = build_tiny_lvlm(root / "model", family="qwen2_5_vl", seed=seed)
    manifest = write_synthetic_judge_set(root / "data", N_TRAIN, N_TEST, seed, PIXELS)
    base = evaluate_folder(model, manifest, None, PIXELS)
    out = {"base_plcc": base.mean("plcc") or 0.0, "base_mae": base.mean("mae")}
    for arm, shuffled in (("treatment", False), ("control", True)):
        config = judge_run_config(model, manifest, root / arm, seed=seed, steps=STEPS, batch_size=8,
                                  shuffle_labels=shuffled, pixels=PIXELS)
        adapter, _ = train_judge(config)
        ev = evaluate_folder(model, manifest, adapter, PIXELS)
        out[arm] = {"plcc": ev.mean("plcc") or 0.0, "mae": ev.mean("mae"),
                    "mae_advantage": ev.mean("mae_constant") - ev.mean("mae")}  # > 0: beats the constant
    return out


def test_judge_training_learns_content_and_the_shuffled_control_does_not():
    runs = []
    for r in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="judge-learning-") as tmp:
            runs.append(_one_run(seed_base() + 17 * r, Path(tmp)))
    treatment_plcc = tuple(x["treatment"]["plcc"] for x in runs)
    control_plcc = tuple(x["control"]["plcc"] for x in runs)
    base_plcc = tuple(x["base_plcc"] for x in runs)
    mae = RunComparison(tuple(x["treatment"]["mae_advantage"] for x in runs),
                        tuple(x["control"]["mae_advantage"] for x in runs))
    # A random judge's PLCC is itself random (it may happen to follow brightness, up to ~0.7 here), and
    # the shuffled control keeps much of its base's correlation; so PLCC is compared within a run (same
    # base model, same data: paired over runs), and "beats the base" is judged on MAE, which a random
    # judge cannot fake.
    plcc_vs_control = _paired_t([t - c for t, c in zip(treatment_plcc, control_plcc)])
    mae_vs_base = _paired_t([x["base_mae"] - x["treatment"]["mae"] for x in runs])
    control_vs_base = _paired_t([x["base_mae"] - x["control"]["mae"] for x in runs])
    print(f"\nbase PLCC {_fmt(base_plcc)}; trained {_fmt(treatment_plcc)}; shuffled {_fmt(control_plcc)}"
          f"\ntrained - shuffled PLCC, paired: {plcc_vs_control}\nbase MAE - trained MAE, paired: {mae_vs_base}"
          f"\nbase MAE - shuffled MAE, paired: {control_vs_base}\nMAE advantage over the constant: {mae.summary()}")
    # treatment: beats the constant predictor in every run; the base and the control over runs
    assert all(x > 0.0 for x in mae.treatment), f"trained judge must beat the constant predictor: {mae.summary()}"
    assert mae_vs_base[1] >= 2.5 and plcc_vs_control[1] >= 2.5, (mae_vs_base, plcc_vs_control)
    assert sum(treatment_plcc) > sum(base_plcc) and sum(treatment_plcc) / RUNS > 0.5, (treatment_plcc, base_plcc)
    assert mae.t_diff >= 2.5, mae.summary()
    # control: does not beat the constant predictor distinguishably
    assert mae.control_mean < 0.1 or abs(mae.t_control) < 2.5, mae.summary()


def _paired_t(diffs: list[float]) -> tuple[float, float]:
    """(mean, mean / standard error) of per-run differences."""
    from statistics import fmean, stdev

    se = stdev(diffs) / len(diffs) ** 0.5
    return round(fmean(diffs), 4), round(fmean(diffs) / max(se, 1e-12), 2)


def _fmt(values) -> list[str]:
    return ["%+.3f" % v for v in values]

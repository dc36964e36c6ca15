"""The learning tests' verdict can fail: on a treatment that did not learn, and on a control that did."""

from __future__ import annotations

import pytest

from learning_stats import RunComparison

LEARNED = (0.09, 0.11, 0.10, 0.12, 0.08, 0.10)
FLAT = (0.002, -0.003, 0.001, -0.001, 0.003, -0.002)


def test_a_learning_treatment_beside_a_flat_control_passes():
    RunComparison(LEARNED, FLAT).assert_learns()


def test_a_treatment_that_did_not_learn_fails():
    with pytest.raises(AssertionError, match="did not raise the reward"):
        RunComparison(FLAT, FLAT).assert_learns()


def test_a_treatment_within_noise_of_the_control_fails():
    noisy = (0.30, -0.25, 0.28, -0.22, 0.31, -0.30)
    with pytest.raises(AssertionError, match="not distinguishable"):
        RunComparison(noisy, FLAT).assert_learns()


def test_a_control_that_learns_as_well_fails():
    moving_control = (0.08, 0.09, 0.085, 0.075, 0.08, 0.09)
    with pytest.raises(AssertionError, match="control moved the reward"):
        RunComparison(tuple(x * 3 for x in LEARNED), moving_control).assert_learns()

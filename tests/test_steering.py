"""The secant controller: learns gains and cross-talk, aims where the model predicts the target."""

import pytest

from emofeedback2.engines.emotion_space import VA
from emofeedback2.engines.loop.steering import SecantController


def linear_plant(s: VA) -> VA:
    # gain 0.5 on valence, 0.8 on arousal, cross-talk 0.2, bias (-0.3, 0.4)
    return VA.clamped(0.5 * s.valence + 0.2 * s.arousal - 0.3, 0.8 * s.arousal + 0.4)


def test_first_step_is_the_prior_gain_step():
    c = SecantController(prior_gain=0.5, max_step=9)
    c.observe(VA(1.0, 0.0), VA(0.5, 0.0), 4)
    s = c.next_steer(VA(1.0, 0.0), current=VA(1.0, 0.0))
    assert s.valence == pytest.approx(2.0) and s.arousal == pytest.approx(0.0, abs=1e-9)


def test_learns_a_linear_plant_and_hits_the_target():
    c = SecantController(prior_strength=1e-3, recency=1.0, max_step=9)
    target = VA(0.6, 1.2)
    steer = target
    for _ in range(5):
        c.observe(steer, linear_plant(steer), 8)
        steer = c.next_steer(target, current=steer)
    reached = linear_plant(steer)
    assert reached.valence == pytest.approx(target.valence, abs=0.05)
    assert reached.arousal == pytest.approx(target.arousal, abs=0.05)
    jac, bias = c.model()
    assert float(jac[0, 1]) == pytest.approx(0.2, abs=0.05) and float(bias[1]) == pytest.approx(0.4, abs=0.1)


def test_unreachable_target_stays_in_the_box_and_noise_shrinks_the_step():
    c = SecantController()
    c.observe(VA(2.0, 0.0), VA(0.5, 0.0), 2)
    far = c.next_steer(VA(3.0, 0.0), current=VA(2.0, 0.0))
    assert -3 <= far.valence <= 3 and far.valence == pytest.approx(3.0)
    c = SecantController()
    c.observe(VA(1.0, 1.0), VA(0.8, 0.9), 2)
    quiet = c.next_steer(VA(1.0, 1.0), current=VA(1.0, 1.0), noise=0.0)
    noisy = c.next_steer(VA(1.0, 1.0), current=VA(1.0, 1.0), noise=0.6)
    assert abs(noisy.valence - 1.0) < abs(quiet.valence - 1.0) / 2

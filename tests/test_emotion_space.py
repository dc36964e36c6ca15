"""The emotion space: validation, converters, distance/reward and descriptors."""

import math

import pytest
import torch

from emofeedback2.engines import descriptors, emotion_space as es
from emofeedback2.engines.emotion_space import VA, EmotionValueError


@pytest.mark.parametrize("bad", [3.01, -3.5, float("nan"), float("inf"), "1.0", None, True, [1.0]])
def test_invalid_components_raise_clear_errors(bad):
    with pytest.raises(EmotionValueError, match="valence"):
        VA(bad, 0.0)


def test_zero_dim_tensors_and_numpy_scalars_are_accepted():
    import numpy as np

    point = VA(torch.tensor(1.5), np.float32(-2.0))
    assert point == VA(1.5, -2.0)


def test_out_of_range_message_points_to_the_convert_scale_command():
    with pytest.raises(EmotionValueError, match="emofeedback2 convert-scale --from"):
        VA(5.0, 0.0)


def test_clamped_accepts_out_of_range_but_not_nan():
    assert VA.clamped(7.0, -9.0) == VA(3.0, -3.0)
    with pytest.raises(EmotionValueError):
        VA.clamped(float("nan"), 0.0)


@pytest.mark.parametrize(
    "to_, from_, lo, hi",
    [
        (es.to_emotic, es.from_emotic, 1.0, 10.0),
        (es.to_sam, es.from_sam, 1.0, 9.0),
    ],
)
def test_converters_round_trip_and_hit_the_ends(to_, from_, lo, hi):
    assert from_(lo, lo) == VA(-3.0, -3.0)
    assert from_(hi, hi) == VA(3.0, 3.0)
    for v, a in [(-2.5, 1.0), (0.0, 0.0), (1.7, -0.3)]:
        back = from_(*to_(VA(v, a)))
        assert math.isclose(back.valence, v, abs_tol=1e-9) and math.isclose(back.arousal, a, abs_tol=1e-9)


def test_findingemo_shifts_arousal_only():
    assert es.from_findingemo(-3.0, 0.0) == VA(-3.0, -3.0)
    assert es.from_findingemo(1.0, 4.0) == VA(1.0, 1.0)
    assert es.to_findingemo(VA(1.0, 1.0)) == pytest.approx((1.0, 4.0))


def test_sam_midpoint_is_neutral_and_out_of_scale_is_rejected():
    assert es.from_sam(5.0, 5.0) == VA(0.0, 0.0)
    with pytest.raises(EmotionValueError, match="SAM"):
        es.from_sam(0.0, 5.0)
    with pytest.raises(EmotionValueError, match="EMOTIC"):
        es.from_emotic(11.0, 5.0)


def test_distance_and_reward_follow_the_documented_formula():
    target = VA(1.0, -1.0)
    pred = VA(2.0, 1.0)
    assert es.va_errors(pred, target) == (1.0, 2.0)
    assert es.va_distance(pred, target) == pytest.approx(1.5)
    assert es.va_reward(pred, target) == pytest.approx(1.0 - 1.5 / 6.0)
    assert es.va_reward(target, target) == 1.0
    assert es.va_reward(VA(-3, -3), VA(3, 3)) == 0.0


def test_tensor_reward_matches_scalar_reward():
    pv, pa, tv, ta = (torch.tensor([0.5, -2.0]), torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 2.5]))
    got = es.va_reward_tensor(pv, pa, tv, ta)
    want = [es.va_reward(VA(float(pv[i]), float(pa[i])), VA(float(tv[i]), float(ta[i]))) for i in range(2)]
    assert got.tolist() == pytest.approx(want)


def test_descriptors_name_the_quadrants():
    assert "serene" in descriptors.nearest_emotion_words(VA(2.2, -2.0), 3)
    assert "terrified" in descriptors.nearest_emotion_words(VA(-2.7, 2.9), 3)
    assert "ecstatic" in descriptors.nearest_emotion_words(VA(2.7, 2.9), 3)
    assert "depressed" in descriptors.nearest_emotion_words(VA(-2.7, -2.1), 3)


def test_descriptors_are_continuous_nearby_points_share_words():
    for target in es.grid_targets(7):
        nudged = VA.clamped(target.valence + 0.1, target.arousal - 0.1)
        a = set(descriptors.nearest_emotion_words(target, 3))
        b = set(descriptors.nearest_emotion_words(nudged, 3))
        assert a & b, f"{target} and {nudged} share no words: {a} vs {b}"


def test_emotional_prompt_strength_zero_is_identity_and_keeps_subject():
    assert descriptors.emotional_prompt(" a red barn ", VA(2, 2), 0.0) == "a red barn"
    text = descriptors.emotional_prompt("a red barn", VA(-2.5, -2.0), 1.0)
    assert text.startswith("a red barn, ") and "mood" in text
    strong = descriptors.emotional_prompt("a red barn", VA(-2.5, -2.0), 2.0)
    assert ":1.50)" in strong
    with pytest.raises(ValueError, match="strength"):
        descriptors.emotional_prompt("x", VA(0, 0), 3.0)

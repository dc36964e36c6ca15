"""The colour heuristic follows the Valdez & Mehrabian weights and is usable as a reward."""

import math

import pytest
import torch
from PIL import Image

from emofeedback2.engines.judge.color_scorer import (
    AROUSAL_WEIGHTS,
    PLEASURE_WEIGHTS,
    REFERENCE_STATS,
    ColorHeuristicScorer,
)
from emofeedback2.engines.images import ImageBatchError
from emofeedback2.engines.judge.scoring import EmotionScorer


def flat(rgb, size=16):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 1, 1, 3).expand(1, size, size, 3).clone()


def test_is_a_labelled_heuristic_scorer():
    scorer = ColorHeuristicScorer()
    assert isinstance(scorer, EmotionScorer)
    assert scorer.is_heuristic and "heuristic" in scorer.name


def test_bright_saturated_beats_dark_grey_in_valence_and_arousal():
    scorer = ColorHeuristicScorer()
    images = torch.cat([flat([1.0, 0.8, 0.1]), flat([0.15, 0.15, 0.15])])
    bright, grey = scorer.score(images)
    assert bright.valence > grey.valence + 1.0
    assert bright.arousal > grey.arousal + 0.5
    assert grey.valence < 0 and bright.valence > 0


def test_values_match_the_documented_formula():
    r, g, b = 0.9, 0.5, 0.2
    s = REFERENCE_STATS
    zb = (0.299 * r + 0.587 * g + 0.114 * b - s.brightness_mean) / s.brightness_std
    zs = ((r - b) - s.saturation_mean) / s.saturation_std
    expect_v = 3 * math.tanh((PLEASURE_WEIGHTS[0] * zb + PLEASURE_WEIGHTS[1] * zs) / s.squash)
    expect_a = 3 * math.tanh((AROUSAL_WEIGHTS[0] * zb + AROUSAL_WEIGHTS[1] * zs) / s.squash)
    v, a = ColorHeuristicScorer().score_tensor(flat([r, g, b]))
    assert v.item() == pytest.approx(expect_v, abs=1e-5)
    assert a.item() == pytest.approx(expect_a, abs=1e-5)


def test_brightness_alone_lowers_arousal_as_the_formula_says():
    # same chroma (grey), brighter → more pleasant but calmer (-0.31 weight)
    v, a = ColorHeuristicScorer().score_tensor(torch.cat([flat([0.2] * 3), flat([0.9] * 3)]))
    assert v[1] > v[0] and a[1] < a[0]


def test_score_tensor_is_batched_differentiable_and_in_range():
    images = torch.rand(5, 8, 8, 3, requires_grad=True)
    v, a = ColorHeuristicScorer().score_tensor(images)
    assert v.shape == (5,) and a.shape == (5,)
    assert bool(((v.abs() <= 3) & (a.abs() <= 3)).all())
    (v.sum() + a.sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    v2, a2 = ColorHeuristicScorer().score_tensor(images.detach().permute(0, 3, 1, 2), layout="BCHW")
    assert torch.allclose(v, v2) and torch.allclose(a, a2)


def test_pil_images_of_different_sizes_and_analysis_text():
    scorer = ColorHeuristicScorer()
    readings = scorer.score([Image.new("RGB", (10, 12), (250, 200, 30)), Image.new("RGB", (30, 20), (40, 40, 40))], analysis=True)
    assert len(readings) == 2 and readings[0].valence > readings[1].valence
    assert "heuristic" in readings[0].analysis.lower()
    assert scorer.score(flat([0.5, 0.5, 0.5]))[0].analysis == ""


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(0, 8, 8, 3), "empty"),
        (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
        (torch.zeros(1, 8, 8, 5), "channels"),
        ([], "empty"),
    ],
)
def test_bad_images_are_clear_errors(bad, match):
    with pytest.raises(ImageBatchError, match=match):
        ColorHeuristicScorer().score(bad)

"""The V-A trajectory plot: a readable PIL image with the target, candidates and the best path."""

import numpy as np
import pytest
import torch

from emofeedback2.engines.emotion_space import VA
from emofeedback2.engines.loop.feedback_loop import run_feedback_loop
from emofeedback2.engines.loop.loop_config import LoopConfig
from emofeedback2.engines.loop.trajectory_plot import TARGET_COLOUR, ROUND_COLOURS, plot_to_tensor, plot_trajectory
from loop_fakes import PixelScorer, PromptResponsiveGenerator


def _count(image, colour, tol=8):
    array = np.asarray(image).astype(int)
    return int((np.abs(array - np.array(colour)).max(axis=-1) <= tol).sum())


def test_plot_of_a_loop_run_shows_target_and_each_round():
    config = LoopConfig(rounds=3, candidates=3, tolerance=0.0, min_improvement=0.0, width=16, height=16, steps=1)
    result = run_feedback_loop(PromptResponsiveGenerator(), PixelScorer(), None, "a cat", VA(1.5, 1.0), config)
    image = plot_trajectory(result)
    assert image.size == (512, 512) and image.mode == "RGB"
    assert _count(image, TARGET_COLOUR) > 50
    for r in range(3):
        assert _count(image, ROUND_COLOURS[r]) > 20, f"round {r + 1} is not drawn"
    tensor = plot_to_tensor(image)
    assert tensor.shape == (1, 512, 512, 3) and tensor.dtype == torch.float32 and 0 <= tensor.min() and tensor.max() <= 1


def test_target_is_drawn_where_it_belongs():
    left = plot_trajectory(rounds=[], best_path=[], target=(-2.5, 0.0))
    right = plot_trajectory(rounds=[], best_path=[], target=(2.5, 0.0))
    xs_left = np.nonzero((np.abs(np.asarray(left).astype(int) - TARGET_COLOUR).max(-1) <= 8))[1]
    xs_right = np.nonzero((np.abs(np.asarray(right).astype(int) - TARGET_COLOUR).max(-1) <= 8))[1]
    # ignore the legend's cross (bottom-left): compare the median column of the plotted target
    assert np.median(xs_left) < np.median(xs_right)


def test_plot_size_is_validated_and_scales():
    with pytest.raises(ValueError, match="at least 256"):
        plot_trajectory(rounds=[], target=(0, 0), size=100)
    assert plot_trajectory(rounds=[[(0, 0)]], best_path=[(0, 0)], target=(1, 1), size=768).size == (768, 768)

"""EmotionSweepGrid and the sweep engine: target order, one seed, labelled grid, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from emofeedback2.engines.generation.sweep import (
    SweepLayout,
    SweepValueError,
    labelled_grid,
    parse_axis_values,
)
from emofeedback2.nodes.sweep_nodes import EmotionSweepGrid


def test_axis_values_parse_and_reject_bad_input():
    assert parse_axis_values("-3, -1.5, 0, 1.5, 3") == [-3.0, -1.5, 0.0, 1.5, 3.0]
    assert parse_axis_values("1 2") == [1.0, 2.0]
    for bad in ("", "a, b", "0, 0", "-4, 0", ", ".join(str(i / 10) for i in range(10))):
        with pytest.raises((SweepValueError, ValueError)):
            parse_axis_values(bad)


def test_layout_puts_high_arousal_on_top_and_low_valence_left():
    layout = SweepLayout.from_values([3, -3, 0], [-3, 3])
    targets = layout.targets()
    assert (targets[0].valence, targets[0].arousal) == (-3, 3)
    assert (targets[-1].valence, targets[-1].arousal) == (3, -3)
    assert len(targets) == 6


def test_grid_holds_every_cell_where_the_layout_says():
    layout = SweepLayout.from_values([-3, 3], [-3, 3])
    cells = torch.stack([torch.full((16, 16, 3), v) for v in (0.1, 0.3, 0.6, 0.9)])
    grid = labelled_grid(cells, layout)
    assert grid.shape[0] == 1 and grid.shape[-1] == 3
    found = [bool(((grid[0] - v).abs().sum(-1) < 1e-2).sum() >= 16 * 16) for v in (0.1, 0.3, 0.6, 0.9)]
    assert all(found)
    with pytest.raises(SweepValueError, match="2×2 grid"):
        labelled_grid(cells[:3], layout)


def test_sweep_node_uses_one_seed_and_every_target(comfy_sampling):
    node = EmotionSweepGrid()
    inputs = EmotionSweepGrid.INPUT_TYPES()
    assert all("tooltip" in spec[1] for group in inputs.values() for spec in group.values())
    grid, images, targets_json = node.sweep(
        comfy_sampling.model(), comfy_sampling.clip(), comfy_sampling.vae(), "a harbour", "", "-3, 0, 3", "-3, 3",
        seed=7, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", width=64, height=64, text_strength=1.0,
    )  # fmt: skip
    assert images.shape == (6, 64, 64, 3)
    targets = json.loads(targets_json)
    assert targets[0] == [-3.0, 3.0] and targets[-1] == [3.0, -3.0]
    # different targets change the prompt (text route), so the cells differ although the seed is shared
    assert not torch.equal(images[0], images[-1])
    assert grid.shape[0] == 1 and grid.shape[1] > 2 * 64 and grid.shape[2] > 3 * 64


def test_sweep_node_at_zero_strength_repeats_one_image(comfy_sampling):
    _, images, _ = EmotionSweepGrid().sweep(
        comfy_sampling.model(), comfy_sampling.clip(), comfy_sampling.vae(), "a harbour", "", "-3, 3", "0",
        seed=3, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", width=64, height=64, text_strength=0.0,
    )  # fmt: skip
    assert torch.equal(images[0], images[1])  # same prompt, same seed, no emotion input → same image

"""Tiny diffusers pipelines of every family (SD1.5 … Z-Image), each built once per test session on first use.

Built with :func:`emofeedback2.tiny_models.diffusion.build_tiny_pipeline` (``save_pretrained``), so
tests load them through the same ``from_pretrained`` code users run on real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest


class _BuiltOnFirstUse(dict):
    """``dirs[arch]`` builds that family's tiny pipeline folder the first time it is asked for."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, arch: str) -> Path:
        from emofeedback2.tiny_models.diffusion import build_tiny_pipeline

        self[arch] = build_tiny_pipeline(self.root / arch, arch=arch, seed=0)
        return self[arch]


@pytest.fixture(scope="session")
def tiny_pipeline_dirs(tmp_path_factory) -> dict[str, Path]:
    """``dirs[arch]`` for any arch of ``tiny_models.diffusion.ARCHES``: saved tiny pipeline folders (seed 0)."""
    return _BuiltOnFirstUse(tmp_path_factory.mktemp("tiny_pipelines"))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_pipeline_dirs) -> Path:
    """The tiny SD1.5-like pipeline folder (the cheapest, and what ComfyUI's slim checkpoint mirrors)."""
    return tiny_pipeline_dirs["sd15"]


def small_train_toml(output_dir: Path, pipeline_dir: Path) -> str:
    """A one-step CPU training config on a tiny pipeline (colour reward): the smallest real run."""
    return (
        f'output_dir = "{output_dir}"\nmax_steps = 1\ndevice = "cpu"\nprogress = false\n'
        f'[model]\npretrained = "{pipeline_dir}"\nlora_rank = 2\nadapter_hidden = 8\n'
        '[sampling]\nsteps = 2\nresolution = 16\nguidance_scale = 1.0\n'
        '[grpo]\ngroup_size = 2\ngroups_per_step = 1\nbatch_size = 2\n[[rewards]]\nkind = "color"\n'
    )

"""Session fixtures: tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL folders built once per test run.

Each folder is written with ``save_pretrained`` (see ``emofeedback2.tiny_models.lvlm``) and loaded
by the code under test through the normal ``from_pretrained`` route.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_lvlm_dirs(tmp_path_factory) -> dict[str, Path]:
    """``{family: folder}`` for every tiny LVLM family (about 0.5 MB each)."""
    from emofeedback2.tiny_models.lvlm import FAMILIES, build_tiny_lvlm

    root = tmp_path_factory.mktemp("tiny_lvlm")
    return {family: build_tiny_lvlm(root / family, family=family, seed=0) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_lvlm_dir(tiny_lvlm_dirs) -> Path:
    """The tiny Qwen2.5-VL folder (the paper's judge family)."""
    return tiny_lvlm_dirs["qwen2_5_vl"]

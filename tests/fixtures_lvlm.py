"""Session fixtures: tiny random judge folders of every family, each built once per test run on first use.

Each folder is written with ``save_pretrained`` (see ``emofeedback2.tiny_models.lvlm``) and loaded
by the code under test through the normal ``from_pretrained`` route. A test that needs only the
Qwen2.5-VL judge does not pay for building the other families.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest


class TinyJudgeFolders(Mapping):
    """``{family: folder}``; a family's folder is built (about 0.1 s, under 1 MB) the first time it is asked for."""

    def __init__(self, root: Path):
        from emofeedback2.tiny_models.lvlm import FAMILIES

        self._root = root
        self._families = FAMILIES
        self._built: dict[str, Path] = {}

    def __getitem__(self, family: str) -> Path:
        if family not in self._families:
            raise KeyError(family)
        if family not in self._built:
            from emofeedback2.tiny_models.lvlm import build_tiny_lvlm

            self._built[family] = build_tiny_lvlm(self._root / family, family=family, seed=0)
        return self._built[family]

    def __iter__(self) -> Iterator[str]:
        return iter(self._families)

    def __len__(self) -> int:
        return len(self._families)


@pytest.fixture(scope="session")
def tiny_lvlm_dirs(tmp_path_factory) -> TinyJudgeFolders:
    """``{family: folder}`` for every tiny judge family (built on first access)."""
    return TinyJudgeFolders(tmp_path_factory.mktemp("tiny_lvlm"))


@pytest.fixture(scope="session")
def tiny_lvlm_dir(tiny_lvlm_dirs) -> Path:
    """The tiny Qwen2.5-VL folder (the paper's judge family)."""
    return tiny_lvlm_dirs["qwen2_5_vl"]

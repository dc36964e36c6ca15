"""The ComfyUI LVLM Loader lists and loads a folder of every judge family (default widgets), and skips the
parts of a diffusion pipeline put under models/LLM."""

from __future__ import annotations

import json
import shutil

import torch

from emofeedback2.engines.judge.lvlm_scorer import LVLMScorer
from emofeedback2.nodes import NODE_CLASS_MAPPINGS, loader_nodes, scorer_nodes
from emofeedback2.nodes.loader_nodes import COLOUR_OPTION, LVLMLoader
from emofeedback2.tiny_models.lvlm import FAMILIES


def test_loader_lists_and_loads_every_family_and_no_pipeline_parts(fake_comfy, tiny_lvlm_dirs):
    llm = fake_comfy.models_dir / "LLM"
    for family in FAMILIES:
        shutil.copytree(tiny_lvlm_dirs[family], llm / "tiny" / family)
    pipeline = llm / "sd15-pipeline"  # a diffusers folder dropped in the wrong place
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    (pipeline / "unet" / "config.json").write_text("{}")

    options = LVLMLoader.INPUT_TYPES()["required"]["model"][0]
    assert options == [*sorted(f"tiny/{family}" for family in FAMILIES), COLOUR_OPTION]  # a model first: the default

    loader, scorer_node = NODE_CLASS_MAPPINGS[loader_nodes.NODE_ID](), NODE_CLASS_MAPPINGS[scorer_nodes.NODE_ID]()
    images = torch.rand(2, 40, 56, 3, generator=torch.Generator().manual_seed(0))
    for family in FAMILIES:  # default widgets, max_pixels included (it must not break edge- or tile-sized processors)
        lvlm = getattr(loader, loader.FUNCTION)(model=f"tiny/{family}", dtype="float32", device="cpu")[0]
        assert isinstance(lvlm, LVLMScorer)
        outputs = getattr(scorer_node, scorer_node.FUNCTION)(lvlm=lvlm, images=images)
        rows = json.loads(outputs[scorer_node.RETURN_NAMES.index("readings_json")])
        assert len(rows) == 2 and all(-3 <= row["valence"] <= 3 for row in rows), family

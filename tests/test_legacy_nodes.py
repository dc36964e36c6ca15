"""Graphs saved before the renames keep loading and running (the deprecated aliases in nodes/legacy_nodes.py).

The fixtures in tests/data/old_graphs/ are the shipped workflows and API twins as they were on main
before the renames, and the node interfaces of that time (old_node_interfaces.json). ComfyUI
restores a UI workflow's widgets by position and an API prompt's inputs by name, so each old class
name must declare the old inputs in the old order and run as the new node.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from emofeedback2.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from emofeedback2.nodes.loader_nodes import COLOUR_OPTION, LEGACY_COLOUR_OPTION
from fixtures_comfy_graph import comfy_graph, validate_prompt  # noqa: F401  (comfy_graph is a fixture)
from workflow_checks import ui_to_api

OLD = Path(__file__).parent / "data" / "old_graphs"
OLD_NODES = json.loads((OLD / "old_node_interfaces.json").read_text(encoding="utf-8"))["nodes"]
OLD_UI = sorted(OLD.glob("*.json"))
OLD_UI = [p for p in OLD_UI if p.name != "old_node_interfaces.json"]
# CPU sizes, as in the real-server tier; a 2 x 2 sweep
SMALL = {"width": 64, "height": 64, "steps": 2, "rounds": 2, "candidates": 2, "valences": "-3, 3", "arousals": "-3, 3"}


def _kind(spec: tuple) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


@pytest.mark.parametrize("old_id", sorted(OLD_NODES))
def test_every_old_class_name_is_still_registered_with_its_old_interface(old_id):
    old, cls = OLD_NODES[old_id], NODE_CLASS_MAPPINGS.get(old_id)
    assert cls is not None, f"{old_id} is gone: graphs saved with it would show a missing node"
    types = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        assert [[name, _kind(spec)] for name, spec in types.get(group, {}).items()] == old[group], (old_id, group)
    assert [list(pair) for pair in zip(cls.RETURN_NAMES, cls.RETURN_TYPES)] == old["outputs"]
    # hidden from search and the menu, pointing at its replacement
    assert cls.DEPRECATED is True
    new_display = NODE_DISPLAY_NAME_MAPPINGS[cls.NEW_NODE_ID]
    assert NODE_DISPLAY_NAME_MAPPINGS[old_id] == f"{new_display} (DEPRECATED)"
    assert new_display in cls.DESCRIPTION
    assert not getattr(NODE_CLASS_MAPPINGS[cls.NEW_NODE_ID], "DEPRECATED", False)


def test_the_fixtures_are_the_graphs_of_that_time():
    """The old files use only old class names and input names (so they test what they claim)."""
    seen = set()
    for path in sorted((OLD / "api").glob("*.json")):
        for node in json.loads(path.read_text(encoding="utf-8")).values():
            if node["class_type"] in OLD_NODES:
                seen.add(node["class_type"])
                old_inputs = {name for name, _ in OLD_NODES[node["class_type"]]["required"] + OLD_NODES[node["class_type"]]["optional"]}
                assert set(node["inputs"]) <= old_inputs, (path.name, node["class_type"])
    assert seen == set(OLD_NODES) - {"EmotionConditionerFromConditioning"}  # the one node no workflow used


@pytest.mark.parametrize("path", OLD_UI, ids=lambda p: p.stem)
def test_an_old_ui_workflow_reads_back_into_its_old_api_prompt(path):
    """Widget values by position land on the same inputs: the UI file stands for the API prompt saved with it."""
    prompt, errors = ui_to_api(json.loads(path.read_text(encoding="utf-8")))
    assert errors == []
    twin = json.loads((OLD / "api" / path.name).read_text(encoding="utf-8"))
    assert prompt == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()}


def shrink(prompt: dict) -> dict:
    """An old API prompt on CPU sizes, its LVLM Loader on the old heuristic label (no model on disk)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmoLVLMLoader":
            inputs["model"] = LEGACY_COLOUR_OPTION  # the value an old graph on a fresh install holds
        for key, value in SMALL.items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
    return prompt


@pytest.mark.parametrize("path", sorted((OLD / "api").glob("*.json")), ids=lambda p: p.stem)
def test_an_old_api_prompt_passes_validation_and_runs(comfy_graph, path):
    prompt = shrink(json.loads(path.read_text(encoding="utf-8")))
    outputs = comfy_graph.run(prompt)
    images = [v for k, v in comfy_graph.shown.items() if prompt[k]["class_type"] == "SaveImage"]
    assert images and all(image.ndim == 4 and image.shape[-1] == 3 for image in images)
    for node_id, node in prompt.items():
        cls = NODE_CLASS_MAPPINGS.get(node["class_type"])
        if cls is not None:  # the old outputs, so the old links' slot numbers still point at the same values
            assert len(outputs[node_id]) == len(cls.RETURN_TYPES), node["class_type"]


def test_an_alias_gives_what_the_new_node_gives(comfy_sampling):
    """Old input names and the old heuristic label map onto the new node; the old outputs are its first ones."""
    import torch

    old_loader, new_loader = NODE_CLASS_MAPPINGS["EmoLVLMLoader"](), NODE_CLASS_MAPPINGS["EmoFeedback2LVLMLoader"]()
    lvlm = old_loader.run_legacy(model=LEGACY_COLOUR_OPTION, dtype="auto", device="cpu", attention="auto", keep_loaded=True)[0]
    assert type(lvlm) is type(new_loader.load(model=COLOUR_OPTION)[0])
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    old = NODE_CLASS_MAPPINGS["LVLMEmotionScorer"]().run_legacy(
        lvlm=lvlm, images=images, use_target=True, target_valence=2.0, target_arousal=-1.0, analysis=False)
    new = NODE_CLASS_MAPPINGS["EmoFeedback2Scorer"]().score(
        lvlm=lvlm, images=images, use_target=True, valence=2.0, arousal=-1.0, analysis=False)
    assert old == new[:5] and len(new) == 6
    clip = comfy_sampling.clip()
    old_cond = NODE_CLASS_MAPPINGS["EmotionConditioner"]().run_legacy(
        clip=clip, text="a harbour", valence=1.0, arousal=2.0, text_strength=1.0)
    new_cond = NODE_CLASS_MAPPINGS["EmoFeedback2Conditioner"]().encode(
        clip=clip, prompt="a harbour", valence=1.0, arousal=2.0, text_strength=1.0)
    assert old_cond[1] == new_cond[1] and torch.equal(old_cond[0][0][0], new_cond[0][0][0])


def test_old_graphs_get_the_queue_time_prompt_check_too():
    base = shrink(json.loads((OLD / "api" / "emo_reward_loop.json").read_text(encoding="utf-8")))
    loop = next(k for k, v in base.items() if v["class_type"] == "EmoRewardLoop")
    assert validate_prompt(base) == {}
    base[loop]["inputs"]["prompt"] = "  "
    errors = validate_prompt(base)
    assert list(errors) == [loop] and "prompt is empty" in errors[loop][0]

"""Opt-in tier: graphs saved before the renames still run, and an empty prompt is refused when queued.

tests/data/old_graphs/ holds the workflows and API prompts as shipped before the renames; they name
the old classes and inputs, which the deprecated aliases (nodes/legacy_nodes.py) keep. Their UI
files are loaded in the front end by test_comfyui_server.py's front-end test.
"""

from __future__ import annotations

import uuid

import pytest

from comfy_tier import OLD_GRAPHS, assert_success, load_twin, node_id, repoint, saved_pixels
from emofeedback2.nodes.loader_nodes import LEGACY_COLOUR_OPTION

pytestmark = pytest.mark.comfyui

OLD_PROMPTS = sorted(p.stem for p in (OLD_GRAPHS / "api").glob("*.json"))


@pytest.mark.parametrize("name", OLD_PROMPTS)
def test_an_api_prompt_saved_before_the_renames_runs(comfy_server, name):
    prompt = repoint(load_twin(name, OLD_GRAPHS / "api"), comfy_server)
    if name == "score_and_refine":  # as on a fresh install: the old loader's old heuristic label
        prompt[node_id(prompt, "EmoLVLMLoader")]["inputs"]["model"] = LEGACY_COLOUR_OPTION
    run = comfy_server.run_prompt(prompt)
    assert_success(run)
    for node, entry in prompt.items():
        if entry["class_type"] == "SaveImage":
            assert saved_pixels(run, comfy_server, node).size > 0, (name, node)


@pytest.mark.parametrize("folder, loop_type", [(None, "EmoFeedback2RewardLoop"), (OLD_GRAPHS / "api", "EmoRewardLoop")],
                         ids=["current", "saved-before-the-renames"])
def test_an_empty_prompt_is_refused_when_queued(comfy_server, folder, loop_type):
    """VALIDATE_INPUTS runs before anything executes: /prompt answers 400 with a node error naming the fix."""
    prompt = repoint(load_twin("emo_reward_loop", *([folder] if folder else [])), comfy_server)
    loop = node_id(prompt, loop_type)
    prompt[loop]["inputs"]["prompt"] = "   "
    status, body = comfy_server.post_json("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 400, body
    errors = body["node_errors"][loop]["errors"]
    assert [e["type"] for e in errors] == ["custom_validation_failed"], errors
    assert "prompt is empty" in errors[0]["details"] and "type what the image should show" in errors[0]["details"]
    assert list(body["node_errors"]) == [loop]  # the other nodes were fine

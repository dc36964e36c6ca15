"""What a ComfyUI user sees of every node: error dialogs, widget limits, categories, search.

The rules come from ComfyUI v0.3.64 and its front end 1.58.1:
- the error dialog shows ``full_type_name(type(e))`` (execution.py): module + qualname unless the
  module is ``builtins``; custom-node modules are named after their folder path;
- core nodes' limits (KSampler steps ≤ 10000, cfg ≤ 100; EmptyLatentImage width/height step 8,
  floored to a multiple of 8) are in tests/comfy_core_nodes.json;
- the node search is Fuse.js over name and display_name with threshold 0.3, default location 0 and
  distance 100 (nodeDefStore's NodeSearchService): an exact word matches only if it starts within
  the first 0.3 × 100 = 30 characters of the display name.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emofeedback2.engines.errors import UserError
from emofeedback2.engines.judge.lvlm_scorer import LVLMLoadError
from emofeedback2.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from emofeedback2.nodes.errors import clean_errors, comfy_facing

ROOT = Path(__file__).resolve().parents[1]
CORE = json.loads((ROOT / "tests" / "comfy_core_nodes.json").read_text(encoding="utf-8"))["nodes"]
PACK = "EmoFeedback2"


def full_type_name(klass: type) -> str:
    """ComfyUI's formatting of ``exception_type`` (execution.py, v0.3.64)."""
    return klass.__qualname__ if klass.__module__ == "builtins" else f"{klass.__module__}.{klass.__qualname__}"


def _spec(node: str, name: str) -> dict:
    cls = NODE_CLASS_MAPPINGS[node]
    types = cls.INPUT_TYPES()
    return {**types.get("required", {}), **types.get("optional", {})}[name][1]


def _core(node: str, name: str) -> dict:
    return next(i for i in CORE[node]["inputs"] if i["name"] == name)


# --- errors --------------------------------------------------------------------------------------


def test_every_node_function_reports_errors_cleanly():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        method = getattr(cls, cls.FUNCTION)
        assert getattr(method, "__wrapped__", None) is not None, f"{name}.{cls.FUNCTION} lacks @clean_errors"


def test_a_node_error_reads_as_a_plain_type_name_and_message(fake_comfy):
    loader = NODE_CLASS_MAPPINGS["EmoLVLMLoader"]()
    with pytest.raises(LVLMLoadError) as info:  # still catchable as the pack's own class
        loader.load(model="no-such-model")
    error = info.value
    assert full_type_name(type(error)) == "LVLMLoadError"
    assert isinstance(error, UserError)
    assert "models/LLM/no-such-model" in str(error) and "refresh" in str(error)  # says what to do


def test_errors_from_elsewhere_pass_through_untouched():
    class Elsewhere(Exception):
        pass

    @clean_errors
    def fails(exc):
        raise exc

    for exc in (ValueError("bad value"), Elsewhere("comfy's own")):
        with pytest.raises(type(exc)) as info:
            fails(exc)
        assert info.value is exc
    pack_error = LVLMLoadError("fix the folder")
    twin = comfy_facing(pack_error)
    assert type(twin).__name__ == "LVLMLoadError" and twin.args == pack_error.args
    assert full_type_name(type(pack_error)).endswith(".engines.judge.lvlm_config.LVLMLoadError")  # what ComfyUI showed


# --- limits and defaults as in core nodes ----------------------------------------------------------


@pytest.mark.parametrize("node", ["EmoRewardLoop", "EmotionSweepGrid"])
def test_sampling_limits_match_ksampler_and_empty_latent_image(node):
    for name in ("steps", "cfg"):
        ours, core = _spec(node, name), _core("KSampler", name)
        assert (ours["min"], ours["max"]) == (core["min"], core["max"]), (node, name)
    for name in ("width", "height"):
        ours, core = _spec(node, name), _core("EmptyLatentImage", name)
        assert {k: ours[k] for k in ("min", "max", "step")} == {k: core[k] for k in ("min", "max", "step")}


def test_a_size_that_is_not_a_multiple_of_8_is_floored_like_empty_latent_image(comfy_sampling):
    from emofeedback2.engines.judge.color_scorer import ColorHeuristicScorer

    loop = NODE_CLASS_MAPPINGS["EmoRewardLoop"]()
    best, *_ = loop.run(
        model=comfy_sampling.model(), clip=comfy_sampling.clip(), vae=comfy_sampling.vae(), lvlm=ColorHeuristicScorer(),
        prompt="a lighthouse", negative="", target_valence=1.0, target_arousal=0.0, rounds=1, candidates=1,
        tolerance=0.0, min_improvement=0.0, seed=0, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
        width=100, height=20,
    )
    assert tuple(best.shape[1:3]) == (16, 96)  # EmptyLatentImage(100, 20) makes a 96×16 image too


def test_negative_prompt_defaults_agree_across_nodes_and_workflows():
    defaults = {node: _spec(node, "negative")["default"] for node in ("EmoRewardLoop", "EmotionSweepGrid")}
    assert len(set(defaults.values())) == 1 and defaults["EmoRewardLoop"], defaults
    for path in (ROOT / "workflows" / "api").glob("*.json"):
        for entry in json.loads(path.read_text(encoding="utf-8")).values():
            if entry["_meta"]["title"] == "Negative prompt":
                assert entry["inputs"]["text"] == defaults["EmoRewardLoop"], path.name
            elif isinstance(entry["inputs"].get("negative"), str):
                assert entry["inputs"]["negative"] == defaults["EmoRewardLoop"], path.name


def test_every_node_sits_in_a_pack_subcategory():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY.startswith(f"{PACK}/") and cls.CATEGORY.count("/") == 1, (name, cls.CATEGORY)


# --- search ---------------------------------------------------------------------------------------


def fuse_exact_word_score(display_name: str, word: str, distance: int = 100) -> float:
    """Fuse.js's score for an exact occurrence of ``word``: 0 errors, so only the location term counts."""
    position = display_name.lower().find(word.lower())
    return float("inf") if position < 0 else position / distance


def test_a_search_for_the_pack_name_finds_every_node():
    threshold = 0.3  # the front end's node search
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for name, display in NODE_DISPLAY_NAME_MAPPINGS.items():
        assert display.endswith(f"({PACK})"), display
        assert fuse_exact_word_score(display, PACK) <= threshold - 0.02, display
    # the check can fail: the old display name was not found by the front end
    assert fuse_exact_word_score("Emotion Conditioner from Conditioning (EmoFeedback2)", PACK) > threshold

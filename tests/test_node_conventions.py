"""What a ComfyUI user sees of every node: names, error dialogs, widget limits, categories, search.

The rules come from ComfyUI v0.3.64 and its front ends 1.27 (shipped with it) and 1.58.1:
- the error dialog shows ``full_type_name(type(e))`` (execution.py): module + qualname unless the
  module is ``builtins``; custom-node modules are named after their folder path;
- core nodes' limits (KSampler steps ≤ 10000, cfg ≤ 100; EmptyLatentImage width/height step 8,
  floored to a multiple of 8) are in tests/comfy_core_nodes.json;
- the node search is Fuse.js over name and display_name with threshold 0.3, default location 0 and
  distance 100 (nodeDefStore's NodeSearchService) over the keys ``name`` and ``display_name``: an
  exact word matches only if it starts within the first 0.3 × 100 = 30 characters of one of them;
- core names its nodes in Title Case, at most 28 characters for the ones a user meets
  ("Load ControlNet Model (diff)"; only "(DEPRECATED)" and one conditioning node are longer), and
  files them under lowercase categories ("loaders", "conditioning", "sampling", "image" …).
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
#: the nodes a new graph uses (the deprecated aliases of the old names are tested in test_legacy_nodes.py)
CURRENT = {name: cls for name, cls in NODE_CLASS_MAPPINGS.items() if not getattr(cls, "DEPRECATED", False)}
CORE_LONGEST_NAME = len("Load ControlNet Model (diff)")


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
    loader = NODE_CLASS_MAPPINGS["EmoFeedback2LVLMLoader"]()
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


@pytest.mark.parametrize("node", ["EmoFeedback2RewardLoop", "EmoFeedback2SweepGrid"])
def test_sampling_limits_match_ksampler_and_empty_latent_image(node):
    for name in ("steps", "cfg"):
        ours, core = _spec(node, name), _core("KSampler", name)
        assert (ours["min"], ours["max"]) == (core["min"], core["max"]), (node, name)
    for name in ("width", "height"):
        ours, core = _spec(node, name), _core("EmptyLatentImage", name)
        assert {k: ours[k] for k in ("min", "max", "step")} == {k: core[k] for k in ("min", "max", "step")}


def test_a_size_that_is_not_a_multiple_of_8_is_floored_like_empty_latent_image(comfy_sampling):
    from emofeedback2.engines.judge.color_scorer import ColorHeuristicScorer

    loop = NODE_CLASS_MAPPINGS["EmoFeedback2RewardLoop"]()
    best, *_ = loop.run(
        model=comfy_sampling.model(), clip=comfy_sampling.clip(), vae=comfy_sampling.vae(), lvlm=ColorHeuristicScorer(),
        prompt="a lighthouse", negative_prompt="", valence=1.0, arousal=0.0, rounds=1, candidates=1,
        tolerance=0.0, min_improvement=0.0, seed=0, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
        width=100, height=20,
    )
    assert tuple(best.shape[1:3]) == (16, 96)  # EmptyLatentImage(100, 20) makes a 96×16 image too


def test_negative_prompt_defaults_agree_across_nodes_and_workflows():
    nodes = ("EmoFeedback2RewardLoop", "EmoFeedback2SweepGrid")
    defaults = {node: _spec(node, "negative_prompt")["default"] for node in nodes}
    default = defaults[nodes[0]]
    assert len(set(defaults.values())) == 1 and default, defaults
    checked = 0
    for path in (ROOT / "workflows" / "api").glob("*.json"):
        for entry in json.loads(path.read_text(encoding="utf-8")).values():
            if entry["_meta"]["title"] == "Negative prompt":
                assert entry["inputs"]["text"] == default, path.name
                checked += 1
            elif isinstance(entry["inputs"].get("negative_prompt"), str):
                assert entry["inputs"]["negative_prompt"] == default, path.name
                checked += 1
    assert checked >= 4  # text_to_image, score_and_refine, the loop and the sweep carry one


def test_every_node_sits_in_a_pack_subcategory_with_cores_casing():
    for name, cls in NODE_CLASS_MAPPINGS.items():
        root, _, leaf = cls.CATEGORY.partition("/")
        assert root == PACK and leaf and "/" not in leaf, (name, cls.CATEGORY)
        assert leaf == leaf.lower(), (name, cls.CATEGORY)  # like core's "loaders", "conditioning", "sampling"
    assert {cls.CATEGORY for cls in CURRENT.values()} == {
        f"{PACK}/loaders", f"{PACK}/conditioning", f"{PACK}/judge", f"{PACK}/sampling"}


# --- search ---------------------------------------------------------------------------------------


def fuse_exact_word_score(display_name: str, word: str, distance: int = 100) -> float:
    """Fuse.js's score for an exact occurrence of ``word``: 0 errors, so only the location term counts."""
    position = display_name.lower().find(word.lower())
    return float("inf") if position < 0 else position / distance


# --- one name per idea ------------------------------------------------------------------------------


def test_every_node_has_the_pack_prefix_and_a_name_that_fits_the_default_node_width():
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for name in CURRENT:
        display = NODE_DISPLAY_NAME_MAPPINGS[name]
        assert name.startswith(PACK) and name.isidentifier() and " " not in name, name
        assert display.startswith(PACK + " ") and display.replace(" ", "") == name, (name, display)
        assert len(display) <= CORE_LONGEST_NAME, display
        assert "(" not in display, display  # the pack is the prefix: no "(EmoFeedback2)" suffix left


def _inputs(cls) -> dict[str, tuple]:
    types = cls.INPUT_TYPES()
    return {**types.get("required", {}), **types.get("optional", {})}


def test_one_name_per_idea_across_nodes():
    """Targets are valence/arousal, text is prompt, the negative *prompt* says so, measurements say measured."""
    seen_targets = 0
    for name, cls in CURRENT.items():
        inputs = _inputs(cls)
        assert not {"target_valence", "target_arousal", "text", "negative"} & set(inputs), (name, list(inputs))
        for input_name, spec in inputs.items():
            if spec[0] == "STRING" and spec[1].get("multiline"):
                assert input_name in ("prompt", "negative_prompt"), (name, input_name)
            if input_name in ("valence", "arousal"):
                seen_targets += 1
                assert spec[0] == "FLOAT" and "[-3, 3]" in spec[1]["tooltip"], (name, input_name)
            if input_name.startswith("measured_"):
                assert spec[1].get("forceInput"), (name, input_name)  # measurements arrive by wire
        outputs = cls.RETURN_NAMES
        assert not {"valence", "arousal", "encoded_text"} & set(outputs), (name, outputs)
    assert seen_targets == 2 * 5  # conditioner, apply adapter, scorer, refiner, loop
    scorer, refiner = CURRENT["EmoFeedback2Scorer"], CURRENT["EmoFeedback2PromptRefiner"]
    assert scorer.RETURN_NAMES[:2] == ("measured_valence", "measured_arousal")
    assert set(scorer.RETURN_NAMES[:2]) <= set(_inputs(refiner))  # the scorer's outputs fit the refiner's inputs


def test_a_search_for_the_pack_name_finds_every_node():
    threshold = 0.3  # the front end's node search
    for name in CURRENT:
        display = NODE_DISPLAY_NAME_MAPPINGS[name]
        assert min(fuse_exact_word_score(display, PACK), fuse_exact_word_score(name, PACK)) <= threshold - 0.02, display
    # the check can fail: a display name with the pack far behind was not found by the front end
    assert fuse_exact_word_score("Emotion Conditioner from Conditioning (EmoFeedback2)", PACK) > threshold


# --- which judge judged --------------------------------------------------------------------------


def test_the_heuristic_choice_says_so_and_comes_after_any_model(fake_comfy):
    from emofeedback2.nodes.loader_nodes import COLOUR_OPTION

    assert "no LVLM" in COLOUR_OPTION and "heuristic" in COLOUR_OPTION
    choices = CURRENT["EmoFeedback2LVLMLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choices == [COLOUR_OPTION]  # no model on disk: the heuristic, named as such, is the only choice
    (fake_comfy.models_dir / "LLM" / "some-vlm").mkdir(parents=True)
    (fake_comfy.models_dir / "LLM" / "some-vlm" / "config.json").write_text("{}")
    choices = CURRENT["EmoFeedback2LVLMLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choices == ["some-vlm", COLOUR_OPTION]  # with a model there, the model is the default
    for node in ("EmoFeedback2Scorer", "EmoFeedback2RewardLoop"):
        assert CURRENT[node].RETURN_NAMES[-1] == "judge" and CURRENT[node].RETURN_TYPES[-1] == "STRING"


# --- queue-time validation -------------------------------------------------------------------------


@pytest.mark.parametrize("node", ["EmoFeedback2PromptRefiner", "EmoFeedback2RewardLoop"])
def test_an_empty_prompt_is_refused_at_queue_time(node):
    """ComfyUI calls VALIDATE_INPUTS with the inputs its signature names, before running anything."""
    import inspect

    validate = CURRENT[node].VALIDATE_INPUTS
    # only `prompt` is named, so ComfyUI still range-checks every other widget itself (execution.py)
    assert inspect.getfullargspec(validate).args == ["cls", "prompt"]
    for empty in ("", "   \n"):
        problem = validate(prompt=empty)
        assert isinstance(problem, str) and "prompt is empty" in problem
    assert validate(prompt="a lighthouse") is True
    assert validate(prompt=None) is True  # a wired prompt: ComfyUI passes None, it is checked at run time

"""Default tier: what a user sees on opening a shipped workflow (front end 1.27's geometry, see workflow_checks).

Each UI file must be readable at the front end's fit-to-view on a 1920 x 1080 screen (a maximised
browser leaves a ~1920 x 950 page): the zoom that fits the whole graph, groups included, stays at or
above 0.6, above the 8/14 = 0.57 at which LiteGraph stops drawing node text. Links run left to right,
no node hides a link or overlaps another, each stage (load, condition, generate, judge, refine) is a
titled group holding its nodes, and links cross only where the graph leaves no choice (budgets below).
"""

from __future__ import annotations

import copy

import pytest

from workflow_checks import (
    LOD_ZOOM, MIN_FIT_ZOOM, ROOT, backward_links, crossing_pairs, fit_to_view, group_errors, layout_errors, load,
    min_node_height,
)

UI_FILES = sorted((ROOT / "workflows").glob("*.json"))
STAGES = ("load", "condition", "generate", "judge", "refine")
#: crossings a column layout cannot avoid, per workflow (0 unless said why)
CROSSING_BUDGET = {
    # the Weights Loader's CLIP feeds the negative prompt below the conditioner, whose adapter input sits
    # between (1); the encoded-prompt preview's wire must pass either KSampler's model/positive wires or
    # its negative/latent wires (2)
    "emotion_text_to_image": 3,
    # one checkpoint and one judge feed two rounds. The checkpoint's MODEL/CLIP/VAE run in lanes along the
    # top; a wire dropping from a lane to its node crosses the lanes below it (MODEL→both KSamplers over
    # CLIP/VAE: 3, CLIP→four text encoders over VAE: 4); each VAE Decode takes VAE from above and samples
    # from its left (2); judge and image both feed scorer and refiner (3); the refined prompt climbs past
    # the round-2 negative's CLIP and the scorer's analysis wire (2); round 2's negative and latent wires
    # rise steeply into its KSampler (1: a wider gap there would push the fit below the zoom bound)
    "score_and_refine": 15,
}
MULTILINE = {"CLIPTextEncode": 1, "EmoFeedback2Conditioner": 1, "EmoFeedback2RewardLoop": 2, "EmoFeedback2SweepGrid": 2,
             "EmoFeedback2PromptRefiner": 1}  # fmt: skip


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_fit_to_view_on_a_1920_by_1080_screen_is_readable(path):
    fit = fit_to_view(load(path))
    assert MIN_FIT_ZOOM > LOD_ZOOM
    assert fit.zoom >= MIN_FIT_ZOOM, f"{path.stem}: {fit.width:.0f} x {fit.height:.0f} fits at zoom {fit.zoom:.2f}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_layout_has_no_overlapping_nodes_and_no_link_behind_a_node(path):
    ui = load(path)
    assert layout_errors(ui) == []
    for node in ui["nodes"]:
        if node["type"] not in ("Note", "Reroute"):
            linked_texts = sum(1 for i in node.get("inputs", []) if i.get("widget") and i["name"] == "prompt")
            multiline = MULTILINE.get(node["type"], 0) - linked_texts
            assert node["size"][1] >= min_node_height(node, multiline), (node["id"], node["type"], node["size"])


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_links_run_left_to_right(path):
    assert backward_links(load(path)) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_links_cross_only_where_the_graph_leaves_no_choice(path):
    crossings = crossing_pairs(load(path))
    assert len(crossings) <= CROSSING_BUDGET.get(path.stem, 0), crossings


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_stage_groups_are_titled_and_hold_their_nodes(path):
    ui = load(path)
    assert ui["groups"] and group_errors(ui, STAGES) == []
    titles = " ".join(g["title"].lower() for g in ui["groups"])
    assert "load" in titles and "generate" in titles


# --- the checks catch what they claim to catch ------------------------------------------------------


def _t2i() -> dict:
    return copy.deepcopy(load(ROOT / "workflows" / "emotion_text_to_image.json"))


def _node(ui: dict, node_type: str) -> dict:
    return next(n for n in ui["nodes"] if n["type"] == node_type)


def test_layout_check_catches_an_overlap_and_a_hidden_link():
    ui = _t2i()
    checkpoint, note = _node(ui, "CheckpointLoaderSimple"), _node(ui, "Note")
    checkpoint["pos"] = [note["pos"][0] + 10, note["pos"][1] + note["size"][1] - 10]
    assert any("overlaps" in e for e in layout_errors(ui))
    ui = _t2i()
    decode, sampler, save = _node(ui, "VAEDecode"), _node(ui, "KSampler"), _node(ui, "SaveImage")
    # put the sampler squarely between the decoder and the image it feeds
    decode["pos"] = [sampler["pos"][0] - 400, sampler["pos"][1] + 60]
    save["pos"] = [sampler["pos"][0] + sampler["size"][0] + 400, sampler["pos"][1] + 60]
    assert any("behind node" in e for e in layout_errors(ui))


def test_flow_crossing_group_and_size_checks_can_fail():
    ui = _t2i()
    decode, sampler = _node(ui, "VAEDecode"), _node(ui, "KSampler")
    decode["pos"] = [sampler["pos"][0] - 200, decode["pos"][1]]
    assert any("back to node" in e for e in backward_links(ui))
    ui = _t2i()  # swap the negative and latent nodes: their wires into KSampler now cross
    negative, latent = _node(ui, "CLIPTextEncode"), _node(ui, "EmptyLatentImage")
    negative["pos"], latent["pos"] = [negative["pos"][0], latent["pos"][1]], [latent["pos"][0], negative["pos"][1]]
    assert len(crossing_pairs(ui)) > len(crossing_pairs(_t2i()))
    ui = _t2i()
    sampler = _node(ui, "KSampler")
    sampler["pos"] = [sampler["pos"][0], sampler["pos"][1] + 2000]
    assert any("KSampler" in e and "groups []" in e for e in group_errors(ui, STAGES))
    assert fit_to_view(ui).zoom < MIN_FIT_ZOOM  # the graph now spans 3000 px in height
    ui["groups"][0]["title"] = "Misc"
    assert any("not named after a stage" in e for e in group_errors(ui, STAGES))


def test_fit_to_view_follows_the_front_ends_formula():
    """useLitegraphService.fitView → ds.fitToBounds(createBounds(nodes, 10), zoom 0.75)."""
    ui = {"nodes": [{"type": "KSampler", "pos": [0, 30], "size": [1900, 900]}], "groups": []}
    fit = fit_to_view(ui, viewport=(1920, 950))
    assert (fit.width, fit.height) == (1920, 950)
    assert fit.zoom == pytest.approx(0.75)

"""Default tier: the shipped workflows are well-formed without a ComfyUI install.

Every UI file in workflows/ (what ComfyUI lists as this pack's templates) and its API twin in
workflows/api/ must: parse; use only node types that exist (ours from NODE_CLASS_MAPPINGS, core ones
from tests/comfy_core_nodes.json); have links whose types match both ends; hold widget values in the
order the front end reads them and inside each input's range or choices; and describe the same graph.
The checks live in tests/workflow_checks.py, written independently of workflows/build_workflows.py;
the layout (what a user sees on opening a file) is tested in tests/test_workflow_layout.py.
"""

from __future__ import annotations

import copy
import glob
import os
import sys
import uuid
from pathlib import Path

import pytest

from emofeedback2.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from workflow_checks import CORE, CONTROL_VALUES, ROOT, has_control, is_widget, link_errors, load, node_inputs, validate

UI_DIR = ROOT / "workflows"
API_DIR = UI_DIR / "api"
UI_FILES = sorted(UI_DIR.glob("*.json"))
EXPECTED = {"emotion_text_to_image", "score_and_refine", "emo_reward_loop", "emotion_sweep_grid", "flux_emotion_lora"}


def test_the_five_workflows_ship_as_ui_files_with_api_twins():
    assert {p.stem for p in UI_FILES} == EXPECTED
    assert {p.stem for p in API_DIR.glob("*.json")} == EXPECTED


def test_comfyui_lists_the_ui_files_and_not_the_twins(tmp_path):
    """ComfyUI v0.3.64 lists ``<custom_nodes>/*/workflows/*.json`` (one level deep) as templates."""
    (tmp_path / "ComfyUI-EmoFeedback2").symlink_to(ROOT, target_is_directory=True)
    listed = glob.glob(os.path.join(str(tmp_path), "*", "workflows", "*.json"))
    assert {Path(p).stem for p in listed} == EXPECTED
    assert all("/api/" not in p for p in listed)
    for path in UI_FILES:
        ui = load(path)
        assert {"nodes", "links", "version"} <= set(ui), f"{path.name} is not in UI format"
        uuid.UUID(ui["id"])  # the front end's schema rejects other ids


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_workflow_is_valid_and_matches_its_twin(path):
    ui, api = load(path), load(API_DIR / path.name)
    assert validate(ui, api) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_workflow_uses_only_current_node_names(path):
    """Shipped graphs use the current nodes; the deprecated aliases are for graphs saved earlier."""
    for node in load(path)["nodes"]:
        assert not getattr(NODE_CLASS_MAPPINGS.get(node["type"]), "DEPRECATED", False), node["type"]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_workflow_has_one_read_me_note_saying_what_to_load_where(path):
    notes = [n for n in load(path)["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and notes[0].get("title") == "Read me"
    assert "models/" in notes[0]["widgets_values"][0]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_every_node_has_a_position_and_every_output_node_saves_or_shows(path):
    ui = load(path)
    for node in ui["nodes"]:
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
    assert any(n["type"] in ("SaveImage", "PreviewImage") for n in ui["nodes"])
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert "ds" not in ui["extra"]  # no saved view: the front end fits the graph to the screen on opening


def test_sweep_workflow_is_the_five_by_five_grid():
    api = load(API_DIR / "emotion_sweep_grid.json")
    sweep = next(v for v in api.values() if v["class_type"] == "EmoFeedback2SweepGrid")
    for axis in ("valences", "arousals"):
        assert [float(x) for x in sweep["inputs"][axis].split(",")] == [-3.0, -1.5, 0.0, 1.5, 3.0]


def test_loop_workflow_saves_the_trajectory_plot_and_shows_the_judge():
    api = load(API_DIR / "emo_reward_loop.json")
    loop_id = next(k for k, v in api.items() if v["class_type"] == "EmoFeedback2RewardLoop")
    names = list(NODE_CLASS_MAPPINGS["EmoFeedback2RewardLoop"].RETURN_NAMES)
    wired = {tuple(v["inputs"].get("images", v["inputs"].get("source", []))) for v in api.values()}
    assert (loop_id, names.index("trajectory_plot")) in wired and (loop_id, names.index("judge")) in wired


def test_flux_workflow_follows_comfyuis_flux_conventions():
    """Stock Flux loaders, guidance on the conditioning, cfg 1 with a zeroed negative, a 16-channel latent,
    and the trained LoRA + emotion adapter through our Weights Loader into our Conditioner."""
    api = load(API_DIR / "flux_emotion_lora.json")
    by_type = {}
    for node_id, node in api.items():
        by_type.setdefault(node["class_type"], []).append((node_id, node["inputs"]))
    (unet_id, _), = by_type["UNETLoader"]
    (_, dual), = by_type["DualCLIPLoader"]
    (weights_id, weights), = by_type["EmoFeedback2WeightsLoader"]
    (cond_id, cond), = by_type["EmoFeedback2Conditioner"]
    (guidance_id, guidance), = by_type["FluxGuidance"]
    (zero_id, zero), = by_type["ConditioningZeroOut"]
    (latent_id, _), = by_type["EmptySD3LatentImage"]
    (_, sampler), = by_type["KSampler"]
    assert dual["type"] == "flux" and {dual["clip_name1"], dual["clip_name2"]} >= {"clip_l.safetensors"}
    assert weights["model"] == [unet_id, 0] and weights["lora_name"] != "none" and weights["adapter_name"] != "none"
    assert cond["clip"] == [weights_id, 1] and cond["emotion_adapter"] == [weights_id, 2]
    assert guidance["conditioning"] == [cond_id, 0] and zero["conditioning"] == [cond_id, 0]
    assert sampler["positive"] == [guidance_id, 0] and sampler["negative"] == [zero_id, 0]
    assert sampler["cfg"] == 1.0 and sampler["latent_image"] == [latent_id, 0] and sampler["model"] == [weights_id, 0]
    assert any(v["class_type"] == "VAELoader" for v in api.values())


def test_score_and_refine_keeps_both_rounds_comparable():
    """Same seed and sampler settings, same negative prompt and size in round 2 as in round 1."""
    api = load(API_DIR / "score_and_refine.json")
    samplers = [v["inputs"] for v in api.values() if v["class_type"] == "KSampler"]
    settings = [{k: v for k, v in s.items() if not isinstance(v, list)} for s in samplers]
    assert len(settings) == 2 and settings[0] == settings[1]
    negatives = {v["inputs"]["text"] for v in api.values() if v["_meta"]["title"].startswith("Negative prompt")}
    sizes = {(v["inputs"]["width"], v["inputs"]["height"]) for v in api.values() if v["class_type"] == "EmptyLatentImage"}
    assert len(negatives) == 1 and len(sizes) == 1


# --- the validator catches what it claims to catch -------------------------------------------------


def _text_to_image() -> tuple[dict, dict]:
    return load(UI_DIR / "emotion_text_to_image.json"), load(API_DIR / "emotion_text_to_image.json")


def _node(ui: dict, node_type: str) -> dict:
    return next(n for n in ui["nodes"] if n["type"] == node_type)


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda ui, api: _node(ui, "EmoFeedback2Conditioner")["widgets_values"].__setitem__(1, 4.5), "outside"),
        (lambda ui, api: _node(ui, "KSampler")["widgets_values"].__setitem__(4, "no_such_sampler"), "not one of"),
        (lambda ui, api: _node(ui, "KSampler")["widgets_values"].pop(1), "control value"),
        (lambda ui, api: _node(ui, "VAEDecode").__setitem__("type", "VAEDecodeTypo"), "unknown node type"),
        (lambda ui, api: next(l for l in ui["links"] if l[5] == "LATENT").__setitem__(5, "IMAGE"), "declared type"),
        (lambda ui, api: api[str(_node(ui, "KSampler")["id"])]["inputs"].__setitem__("steps", 3), "differ"),
        (lambda ui, api: ui["links"][0].__setitem__(4, "model"), "target slot"),
    ],
    ids=["range", "choice", "widget-order", "node-type", "link-type", "twin", "link-slot"],
)
def test_validator_rejects_broken_workflows(break_it, expected):
    ui, api = copy.deepcopy(_text_to_image())
    break_it(ui, api)
    errors = validate(ui, api)
    assert any(expected in e for e in errors), errors


def test_validator_rejects_a_link_between_mismatched_sockets():
    ui, api = _text_to_image()
    decode = _node(ui, "VAEDecode")
    samples = next(i for i in decode["inputs"] if i["name"] == "samples")
    vae_link = next(i for i in decode["inputs"] if i["name"] == "vae")["link"]
    samples["link"], next(i for i in decode["inputs"] if i["name"] == "vae")["link"] = vae_link, samples["link"]
    assert any("into VAEDecode" in e for e in link_errors(ui))


def test_validator_follows_reroutes_and_checks_what_they_carry():
    """score_and_refine's wires pass Reroute dots: the API prompt names the node behind them."""
    ui, api = load(UI_DIR / "score_and_refine.json"), load(API_DIR / "score_and_refine.json")
    reroutes = [n for n in ui["nodes"] if n["type"] == "Reroute"]
    assert reroutes and validate(ui, api) == []
    broken = copy.deepcopy(ui)
    next(n for n in broken["nodes"] if n["type"] == "Reroute")["outputs"][0]["type"] = "LATENT"
    assert any("carries" in e for e in link_errors(broken))


def test_shipped_files_are_what_the_builder_writes_from_the_current_nodes():
    """A node's inputs changed without re-running the builder: run ``python workflows/build_workflows.py``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_workflows", UI_DIR / "build_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # dataclasses look their module up there
    try:
        spec.loader.exec_module(builder)
        specs = builder.node_specs()
        for graph in builder.graphs():
            ui, api = builder.build(graph, specs)
            assert load(UI_DIR / f"{graph.name}.json") == ui, f"workflows/{graph.name}.json is stale"
            assert load(API_DIR / f"{graph.name}.json") == api, f"workflows/api/{graph.name}.json is stale"
    finally:
        del sys.modules[spec.name]


def test_api_twin_titles_are_the_display_names():
    core_titles = {name: entry.get("display_name", name) for name, entry in CORE.items()}
    for path in UI_FILES:
        ui, api = load(path), load(API_DIR / path.name)
        titled = {str(n["id"]): n.get("title") for n in ui["nodes"]}
        for node_id, node in api.items():
            expected = titled[node_id] or NODE_DISPLAY_NAME_MAPPINGS.get(node["class_type"]) or core_titles[node["class_type"]]
            assert node["_meta"]["title"] == expected, (path.name, node_id)


def test_seeds_the_workflow_relies_on_are_fixed():
    """score_and_refine compares two rounds at one seed; the sweep's cells share one seed."""
    for path in UI_FILES:
        for node in load(path)["nodes"]:
            described = node_inputs(node["type"])
            values = list(node.get("widgets_values", []))
            for spec in described[0]:
                if not is_widget(spec):
                    continue
                values.pop(0)
                if has_control(spec):
                    control = values.pop(0)
                    assert control in CONTROL_VALUES and control == "fixed", (path.name, node["type"], spec["name"])

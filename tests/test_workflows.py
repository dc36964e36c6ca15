"""Default tier: the shipped workflows are well-formed without a ComfyUI install.

Every UI file in workflows/ (what ComfyUI lists as this pack's templates) and its API twin in
workflows/api/ must: parse; use only node types that exist (ours from NODE_CLASS_MAPPINGS, core ones
from tests/comfy_core_nodes.json); have links whose types match both ends; hold widget values in the
order the front end reads them and inside each input's range or choices; and describe the same graph.
The validator is written here independently of workflows/build_workflows.py.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from emofeedback2.nodes import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
UI_DIR = ROOT / "workflows"
API_DIR = UI_DIR / "api"
CORE = json.loads((ROOT / "tests" / "comfy_core_nodes.json").read_text(encoding="utf-8"))["nodes"]
UI_FILES = sorted(UI_DIR.glob("*.json"))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Our combos filled from model folders at run time: any non-empty name is a valid shipped default.
MODEL_LIST_INPUTS = {
    ("EmoLVLMLoader", "model"), ("EmoLVLMLoader", "adapter"),
    ("EmotionWeightsLoader", "lora_name"), ("EmotionWeightsLoader", "adapter_name"),
}  # fmt: skip
# Our sampler/scheduler combos list ComfyUI's own choices (a short fallback outside ComfyUI).
KSAMPLER_CHOICES = {i["name"]: i["choices"] for i in CORE["KSampler"]["inputs"] if i["type"] == "COMBO"}
EXPECTED = {"emotion_text_to_image", "score_and_refine", "emo_reward_loop", "emotion_sweep_grid"}


def node_inputs(node_type: str) -> tuple[list[dict], list[str], bool] | None:
    """(inputs [{name, type, options}], output types, ui_only) for a node type, None if unknown."""
    if node_type in NODE_CLASS_MAPPINGS:
        cls = NODE_CLASS_MAPPINGS[node_type]
        inputs = []
        for group in ("required", "optional"):
            for name, spec in cls.INPUT_TYPES().get(group, {}).items():
                kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
                if isinstance(kind, list):
                    options["choices"] = kind
                    kind = "COMBO"
                if (node_type, name) in MODEL_LIST_INPUTS:
                    options = {"choices_from": name}
                elif name in KSAMPLER_CHOICES and kind == "COMBO":
                    options["choices"] = KSAMPLER_CHOICES[name]
                inputs.append({"name": name, "type": kind, "options": options, "required": group == "required"})
        return inputs, list(cls.RETURN_TYPES), False
    if node_type in CORE:
        entry = CORE[node_type]
        inputs = [
            {"name": i["name"], "type": i["type"], "required": True,
             "options": {k: v for k, v in i.items() if k not in ("name", "type")}}
            for i in entry["inputs"]
        ]  # fmt: skip
        return inputs, [o["type"] for o in entry["outputs"]], bool(entry.get("ui_only"))
    return None


def is_widget(spec: dict) -> bool:
    return spec["type"] in WIDGET_TYPES and not spec["options"].get("forceInput", False)


def has_control(spec: dict) -> bool:
    flag = spec["options"].get("control_after_generate")
    return bool(flag) if flag is not None else spec["type"] == "INT" and spec["name"] in ("seed", "noise_seed")


def check_value(where: str, spec: dict, value: Any) -> list[str]:
    kind, options = spec["type"], spec["options"]
    if kind == "COMBO":
        if "choices_from" in options:
            return [] if isinstance(value, str) and value.strip() else [f"{where}: model name must be a non-empty string"]
        return [] if value in options["choices"] else [f"{where}: {value!r} is not one of {options['choices'][:8]}..."]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    if kind == "INT" and (isinstance(value, bool) or not isinstance(value, int)):
        return [f"{where}: {value!r} is not an integer"]
    if kind == "FLOAT" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return [f"{where}: {value!r} is not a number"]
    low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
    return [] if low <= value <= high else [f"{where}: {value!r} outside [{low}, {high}]"]


def ui_to_api(ui: dict) -> tuple[dict, list[str]]:
    """The API prompt a UI workflow stands for (UI-only nodes dropped), plus any problems found."""
    errors: list[str] = []
    links = {link[0]: link for link in ui["links"]}
    prompt: dict[str, Any] = {}
    for node in ui["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        described = node_inputs(node["type"])
        if described is None:
            errors.append(f"{where}: unknown node type (not ours, not in comfy_core_nodes.json)")
            continue
        specs, _, ui_only = described
        values = list(node.get("widgets_values", []))
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        known = {s["name"] for s in specs}
        errors += [f"{where}: input {n!r} does not exist" for n in linked if n not in known]
        inputs: dict[str, Any] = {}
        for spec in specs:
            if is_widget(spec):
                if not values:
                    errors.append(f"{where}: widgets_values too short at {spec['name']!r}")
                    break
                value = values.pop(0)
                errors += check_value(f"{where}.{spec['name']}", spec, value)
                if has_control(spec):
                    control = values.pop(0) if values else None
                    if control not in CONTROL_VALUES:
                        errors.append(f"{where}.{spec['name']}: control value {control!r} not in {sorted(CONTROL_VALUES)}")
                if spec["name"] not in linked:
                    inputs[spec["name"]] = value
            if spec["name"] in linked:
                link = links.get(linked[spec["name"]])
                if link is None:
                    errors.append(f"{where}.{spec['name']}: link {linked[spec['name']]} missing from 'links'")
                    continue
                inputs[spec["name"]] = [str(link[1]), link[2]]
            elif spec["required"] and not is_widget(spec) and not ui_only:
                errors.append(f"{where}: required input {spec['name']!r} is not connected")
        if values:
            errors.append(f"{where}: {len(values)} widget value(s) left over: {values}")
        if not ui_only:
            prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt, errors


def link_errors(ui: dict) -> list[str]:
    errors = []
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, slot, dst, dst_slot, link_type in ui["links"]:
        source, target = nodes.get(src), nodes.get(dst)
        if source is None or target is None:
            errors.append(f"link {link_id}: endpoint node missing")
            continue
        out_types = node_inputs(source["type"])[1] if node_inputs(source["type"]) else []
        if slot >= len(out_types):
            errors.append(f"link {link_id}: {source['type']} has no output {slot}")
            continue
        target_inputs = target.get("inputs", [])
        if not isinstance(dst_slot, int) or not 0 <= dst_slot < len(target_inputs) or target_inputs[dst_slot].get("link") != link_id:
            errors.append(f"link {link_id}: target slot {dst_slot!r} is not the index of the {target['type']} input holding it")
        target_input = next((i for i in target_inputs if i.get("link") == link_id), None)
        specs = {s["name"]: s for s in (node_inputs(target["type"]) or ([], [], False))[0]}
        if target_input is None or target_input["name"] not in specs:
            errors.append(f"link {link_id}: {target['type']} has no input holding this link")
            continue
        in_type = specs[target_input["name"]]["type"]
        out_type = out_types[slot]
        if in_type != "*" and out_type != in_type:
            errors.append(f"link {link_id}: {source['type']} output {out_type} into {target['type']}.{target_input['name']} ({in_type})")
        if link_type not in (out_type, "*"):
            errors.append(f"link {link_id}: declared type {link_type} but the output gives {out_type}")
        if link_id not in (source["outputs"][slot].get("links") or []):
            errors.append(f"link {link_id}: not listed on {source['type']}'s output {slot}")
    return errors


def validate(ui: dict, api: dict) -> list[str]:
    prompt, errors = ui_to_api(ui)
    errors += link_errors(ui)
    twin = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    if prompt != twin:
        differing = sorted(set(prompt) ^ set(twin)) + [k for k in prompt if k in twin and prompt[k] != twin[k]]
        errors.append(f"UI file and API twin differ at nodes {differing}")
    return errors


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_four_workflows_ship_as_ui_files_with_api_twins():
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
def test_workflow_has_a_note_saying_what_to_load_where(path):
    notes = [n for n in load(path)["nodes"] if n["type"] == "Note"]
    assert notes and "models/" in notes[0]["widgets_values"][0]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_every_node_has_a_position_and_every_output_node_saves_or_shows(path):
    ui = load(path)
    for node in ui["nodes"]:
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
    assert any(n["type"] in ("SaveImage", "PreviewImage") for n in ui["nodes"])
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])


def test_sweep_workflow_is_the_five_by_five_grid():
    api = load(API_DIR / "emotion_sweep_grid.json")
    sweep = next(v for v in api.values() if v["class_type"] == "EmotionSweepGrid")
    for axis in ("valences", "arousals"):
        assert [float(x) for x in sweep["inputs"][axis].split(",")] == [-3.0, -1.5, 0.0, 1.5, 3.0]


def test_loop_workflow_saves_the_trajectory_plot():
    api = load(API_DIR / "emo_reward_loop.json")
    loop_id = next(k for k, v in api.items() if v["class_type"] == "EmoRewardLoop")
    slot = list(NODE_CLASS_MAPPINGS["EmoRewardLoop"].RETURN_NAMES).index("trajectory_plot")
    assert any(v["class_type"] == "SaveImage" and v["inputs"]["images"] == [loop_id, slot] for v in api.values())


# --- the validator catches what it claims to catch -------------------------------------------------


def _text_to_image() -> tuple[dict, dict]:
    return load(UI_DIR / "emotion_text_to_image.json"), load(API_DIR / "emotion_text_to_image.json")


def _node(ui: dict, node_type: str) -> dict:
    return next(n for n in ui["nodes"] if n["type"] == node_type)


@pytest.mark.parametrize(
    "break_it, expected",
    [
        (lambda ui, api: _node(ui, "EmotionConditioner")["widgets_values"].__setitem__(1, 4.5), "outside"),
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


def test_shipped_files_are_what_the_builder_writes_from_the_current_nodes():
    """A node's inputs changed without re-running the builder: run ``python workflows/build_workflows.py``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_workflows", UI_DIR / "build_workflows.py")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # dataclasses look their module up there
    try:
        spec.loader.exec_module(builder)
    finally:
        del sys.modules[spec.name]
    specs = builder.node_specs()
    for graph in builder.graphs():
        ui, api = builder.build(graph, specs)
        assert load(UI_DIR / f"{graph.name}.json") == ui, f"workflows/{graph.name}.json is stale"
        assert load(API_DIR / f"{graph.name}.json") == api, f"workflows/api/{graph.name}.json is stale"


# --- layout: what a user sees on opening the file ---------------------------------------------------
# LiteGraph geometry (the front end's canvas): a node's title bar sits above ``pos``; input socket k
# is at (x, y + (k + 0.7) · 20) on the left edge, output k at the same height on the right edge; a
# link is a cubic Bézier from the output to the input with control points a quarter of the distance
# straight out of each socket.

TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT = 30, 20, 24
GAP = 20  # the least free space kept between two nodes


def node_box(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return (x, y - TITLE_HEIGHT, x + w, y + h)


def _socket(node: dict, index: int, output: bool) -> tuple[float, float]:
    x, y = node["pos"]
    return (x + (node["size"][0] if output else 0), y + (index + 0.7) * SLOT_HEIGHT)


def link_points(ui: dict, link: list, samples: int = 40) -> list[tuple[float, float]]:
    nodes = {n["id"]: n for n in ui["nodes"]}
    _, src, slot, dst, dst_slot, _ = link
    (ax, ay), (bx, by) = _socket(nodes[src], slot, True), _socket(nodes[dst], dst_slot, False)
    reach = ((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5 * 0.25
    c1, c2 = (ax + reach, ay), (bx - reach, by)
    points = []
    for k in range(1, samples):
        t = k / samples
        u = 1 - t
        points.append((
            u**3 * ax + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t**3 * bx,
            u**3 * ay + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t**3 * by,
        ))  # fmt: skip
    return points


def layout_errors(ui: dict) -> list[str]:
    """Nodes that overlap (title bars included, with a small gap) and links drawn behind a node."""
    errors = []
    nodes = ui["nodes"]
    for i, a in enumerate(nodes):
        ax0, ay0, ax1, ay1 = node_box(a)
        for b in nodes[i + 1:]:
            bx0, by0, bx1, by1 = node_box(b)
            if ax0 < bx1 + GAP and bx0 < ax1 + GAP and ay0 < by1 + GAP and by0 < ay1 + GAP:
                errors.append(f"node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})")
    for link in ui["links"]:
        for node in nodes:
            if node["id"] in (link[1], link[3]):
                continue
            x0, y0, x1, y1 = node_box(node)
            if any(x0 < x < x1 and y0 < y < y1 for x, y in link_points(ui, link)):
                errors.append(f"link {link[0]} ({link[5]}) runs behind node {node['id']} ({node['type']})")
    return errors


def min_node_height(node: dict) -> int:
    """What the front end needs to draw a node's sockets and widgets (it enlarges smaller nodes)."""
    sockets = max(len(node.get("inputs", [])), len(node.get("outputs", [])))
    widgets = len(node.get("widgets_values", []))
    return sockets * SLOT_HEIGHT + widgets * WIDGET_HEIGHT


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_layout_has_no_overlapping_nodes_and_no_link_behind_a_node(path):
    ui = load(path)
    assert layout_errors(ui) == []
    for node in ui["nodes"]:
        if node["type"] != "Note":
            assert node["size"][1] >= min_node_height(node), (node["id"], node["type"], node["size"])


def test_layout_check_catches_an_overlap_and_a_hidden_link():
    ui = copy.deepcopy(_text_to_image()[0])
    checkpoint, note = _node(ui, "CheckpointLoaderSimple"), _node(ui, "Note")
    checkpoint["pos"] = [note["pos"][0] + 10, note["pos"][1] + note["size"][1] - 10]
    assert any("overlaps" in e for e in layout_errors(ui))
    ui = copy.deepcopy(_text_to_image()[0])
    decode, sampler = _node(ui, "VAEDecode"), _node(ui, "KSampler")
    save = _node(ui, "SaveImage")
    # put the sampler squarely between the decoder and the image it feeds
    decode["pos"] = [sampler["pos"][0] - 400, sampler["pos"][1] + 60]
    save["pos"] = [sampler["pos"][0] + sampler["size"][0] + 400, sampler["pos"][1] + 60]
    assert any("behind node" in e for e in layout_errors(ui))


def test_api_twin_titles_are_the_display_names():
    from emofeedback2.nodes import NODE_DISPLAY_NAME_MAPPINGS

    core_titles = {name: entry.get("display_name", name) for name, entry in CORE.items()}
    for path in UI_FILES:
        ui, api = load(path), load(API_DIR / path.name)
        titled = {str(n["id"]): n.get("title") for n in ui["nodes"]}
        for node_id, node in api.items():
            expected = titled[node_id] or NODE_DISPLAY_NAME_MAPPINGS.get(node["class_type"]) or core_titles[node["class_type"]]
            assert node["_meta"]["title"] == expected, (path.name, node_id)
            assert node["_meta"]["title"] != node["class_type"] or node["class_type"] in ("KSampler", "VAEDecode")


def test_seeds_the_workflow_relies_on_are_fixed():
    """score_and_refine compares two rounds at one seed; the sweep's cells share one seed."""
    for name in ("score_and_refine", "emotion_sweep_grid", "emotion_text_to_image", "emo_reward_loop"):
        ui = load(UI_DIR / f"{name}.json")
        for node in ui["nodes"]:
            described = node_inputs(node["type"])
            values = list(node["widgets_values"])
            for spec in described[0]:
                if not is_widget(spec):
                    continue
                values.pop(0)
                if has_control(spec):
                    assert values.pop(0) == "fixed", (name, node["type"], spec["name"])
    refine = load(API_DIR / "score_and_refine.json")
    seeds = {v["inputs"]["seed"] for v in refine.values() if v["class_type"] == "KSampler"}
    assert len(seeds) == 1

"""Checks on ComfyUI workflow files, written independently of workflows/build_workflows.py.

Validation (:func:`validate`): node types exist (ours from NODE_CLASS_MAPPINGS, core ones from
tests/comfy_core_nodes.json); links' types match both ends; widget values sit in the order the front
end reads them, within each input's range or choices; the UI file and its API twin describe the
same graph. Layout (:func:`layout_report`): what a user sees when the front end fits the graph to
the screen, measured with LiteGraph's geometry (front end 1.27, shipped with ComfyUI v0.3.64).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emofeedback2.nodes import NODE_CLASS_MAPPINGS

ROOT = Path(__file__).resolve().parents[1]
CORE = json.loads((ROOT / "tests" / "comfy_core_nodes.json").read_text(encoding="utf-8"))["nodes"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
# Our combos filled from model folders at run time: any non-empty name is a valid shipped default.
MODEL_LIST_INPUTS = {
    ("EmoFeedback2LVLMLoader", "model"), ("EmoFeedback2LVLMLoader", "adapter"),
    ("EmoFeedback2WeightsLoader", "lora_name"), ("EmoFeedback2WeightsLoader", "adapter_name"),
}  # fmt: skip
# Our sampler/scheduler combos list ComfyUI's own choices (a short fallback outside ComfyUI).
KSAMPLER_CHOICES = {i["name"]: i["choices"] for i in CORE["KSampler"]["inputs"] if i["type"] == "COMBO"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def node_inputs(node_type: str) -> tuple[list[dict], list[str], bool] | None:
    """(inputs [{name, type, options, required}], output types, ui_only) for a node type, None if unknown."""
    if node_type in NODE_CLASS_MAPPINGS:
        cls = NODE_CLASS_MAPPINGS[node_type]
        current = getattr(cls, "NEW_NODE_ID", node_type)  # a deprecated alias lists from the same folders
        inputs = []
        for group in ("required", "optional"):
            for name, spec in cls.INPUT_TYPES().get(group, {}).items():
                kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
                if isinstance(kind, list):
                    options["choices"] = kind
                    kind = "COMBO"
                if (current, name) in MODEL_LIST_INPUTS:
                    options = {"choices_from": name}
                elif name in KSAMPLER_CHOICES and kind == "COMBO":
                    options["choices"] = KSAMPLER_CHOICES[name]
                inputs.append({"name": name, "type": kind, "options": options, "required": group == "required"})
        return inputs, list(cls.RETURN_TYPES), False
    if node_type in CORE:
        entry = CORE[node_type]
        inputs = [
            {"name": i["name"], "type": i["type"], "required": not i.get("optional", False),
             "options": {k: v for k, v in i.items() if k not in ("name", "type", "optional")}}
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


def _behind_reroutes(ui: dict, link: list) -> list:
    """``link`` itself, or (when it leaves a Reroute) the link that enters the first real node's output."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {item[0]: item for item in ui["links"]}
    seen = set()
    while nodes[link[1]]["type"] == "Reroute" and link[0] not in seen:
        seen.add(link[0])
        incoming = nodes[link[1]]["inputs"][0].get("link")
        if incoming not in links:
            break
        link = links[incoming]
    return link


def ui_to_api(ui: dict) -> tuple[dict, list[str]]:
    """The API prompt a UI workflow stands for (UI-only nodes dropped, reroutes followed), plus any problems."""
    errors: list[str] = []
    links = {link[0]: _behind_reroutes(ui, link) for link in ui["links"]}
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
    for link in ui["links"]:
        link_id, src, slot, dst, dst_slot, link_type = link
        source, target = nodes.get(src), nodes.get(dst)
        if source is None or target is None:
            errors.append(f"link {link_id}: endpoint node missing")
            continue
        out_types = node_inputs(source["type"])[1] if node_inputs(source["type"]) else []
        if source["type"] == "Reroute":  # it gives what enters it
            real = _behind_reroutes(ui, link)
            out_types = [node_inputs(nodes[real[1]]["type"])[1][real[2]]] if node_inputs(nodes[real[1]]["type"]) else []
            if source["outputs"][0]["type"] != out_types[0]:
                errors.append(f"link {link_id}: reroute {src} says {source['outputs'][0]['type']}, carries {out_types[0]}")
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


# --- layout: LiteGraph geometry -------------------------------------------------------------------
# A node's title bar (30 px) sits above ``pos``; input socket k is at (x, y + (k + 0.7) · 20) on the
# left edge, output k at the same height on the right edge; a link is a cubic Bézier from the output
# to the input with control points a quarter of the distance straight out of each socket. A group's
# title bar is font_size · 1.4 high. The front end's "fit view" (useLitegraphService.fitView) takes
# the nodes' bounding rectangles plus 10 px and scales to 0.75 × the tighter of width and height.

TITLE_HEIGHT, SLOT_HEIGHT, WIDGET_HEIGHT, MULTILINE_HEIGHT = 30, 20, 24, 60
GAP = 20  # the least free space kept between two nodes
FIT_ZOOM, FIT_PADDING = 0.75, 10
#: the graph canvas on a 1920 x 1080 screen: a maximised browser leaves a ~1920 x 950 page (task bar,
#: tab strip, address bar), of which the front end's side bar and top menu leave 1856 x 872 for the
#: canvas (measured by tests/comfy_frontend_check.py in ComfyUI v0.3.64's front end 1.27.10)
VIEWPORT = (1856, 872)
#: below this zoom LiteGraph draws nodes without text: the default "MinFontSizeForLOD" 8 px / 14 px font
LOD_ZOOM = 8 / 14
#: what we ask of every shipped workflow at fit-to-view (a margin above the LOD threshold)
MIN_FIT_ZOOM = 0.6


def node_box(node: dict) -> tuple[float, float, float, float]:
    x, y = node["pos"]
    w, h = node["size"]
    return (x, y - (0 if node["type"] == "Reroute" else TITLE_HEIGHT), x + w, y + h)


def group_box(group: dict) -> tuple[float, float, float, float]:
    x, y, w, h = group["bounding"]
    return (x, y, x + w, y + h)


def group_title_height(group: dict) -> float:
    return group.get("font_size", 24) * 1.4


def _socket(node: dict, index: int, output: bool) -> tuple[float, float]:
    x, y = node["pos"]
    if node["type"] == "Reroute":  # a title-less dot: its one socket on each side, half-way down
        return (x + (node["size"][0] if output else 0), y + node["size"][1] / 2)
    return (x + (node["size"][0] if output else 0), y + (index + 0.7) * SLOT_HEIGHT)


def link_points(ui: dict, link: list, samples: int = 40) -> list[tuple[float, float]]:
    """Points along a link's curve from its output socket to its input socket (ends included)."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    _, src, slot, dst, dst_slot, _ = link
    (ax, ay), (bx, by) = _socket(nodes[src], slot, True), _socket(nodes[dst], dst_slot, False)
    reach = ((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5 * 0.25
    c1, c2 = (ax + reach, ay), (bx - reach, by)
    points = []
    for k in range(samples + 1):
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
            if any(x0 < x < x1 and y0 < y < y1 for x, y in link_points(ui, link)[1:-1]):
                errors.append(f"link {link[0]} ({link[5]}) runs behind node {node['id']} ({node['type']})")
    return errors


def min_node_height(node: dict, multiline: int = 0) -> int:
    """What the front end needs to draw a node's sockets and widgets (it enlarges smaller nodes)."""
    sockets = max(len(node.get("inputs", [])), len(node.get("outputs", [])))
    widgets = len(node.get("widgets_values", []))
    return sockets * SLOT_HEIGHT + (widgets - multiline) * WIDGET_HEIGHT + multiline * MULTILINE_HEIGHT


def _curves_cross(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two polylines (``[n, 2]`` points) cross: any segment of one properly crosses one of the other."""
    p, q = a[:-1, None, :], a[1:, None, :]
    r, s = b[None, :-1, :], b[None, 1:, :]

    def orient(u, v, w):
        return (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    return bool(np.any((d1 * d2 < 0) & (d3 * d4 < 0)))


def crossing_pairs(ui: dict) -> list[tuple[int, int]]:
    """Pairs of links whose curves cross (links leaving the same output may touch where they start)."""
    curves = {link[0]: (link, np.asarray(link_points(ui, link, samples=24))) for link in ui["links"]}
    pairs = []
    ids = sorted(curves)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (la, pa), (lb, pb) = curves[a], curves[b]
            if (la[1], la[2]) == (lb[1], lb[2]):
                continue
            if pa[:, 0].max() < pb[:, 0].min() or pb[:, 0].max() < pa[:, 0].min():
                continue
            if pa[:, 1].max() < pb[:, 1].min() or pb[:, 1].max() < pa[:, 1].min():
                continue
            if _curves_cross(pa, pb):
                pairs.append((a, b))
    return pairs


def backward_links(ui: dict) -> list[str]:
    """Links whose input socket is not to the right of their output socket (the flow runs left to right)."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    found = []
    for link_id, src, _, dst, _, kind in ui["links"]:
        source, target = nodes[src], nodes[dst]
        if target["pos"][0] <= source["pos"][0] + source["size"][0]:
            found.append(f"link {link_id} ({kind}) from node {src} ({source['type']}) back to node {dst} ({target['type']})")
    return found


@dataclass
class Fit:
    width: float
    height: float
    zoom: float


def fit_to_view(ui: dict, viewport: tuple[int, int] = VIEWPORT) -> Fit:
    """The zoom of the front end's fit view on ``viewport``; groups are counted too (users see them)."""
    boxes = [node_box(n) for n in ui["nodes"]] + [group_box(g) for g in ui.get("groups", [])]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    width, height = x1 - x0 + 2 * FIT_PADDING, y1 - y0 + 2 * FIT_PADDING
    zoom = FIT_ZOOM * min(viewport[0] / max(width, 300), viewport[1] / max(height, 300))
    return Fit(width, height, zoom)


def group_errors(ui: dict, stages: tuple[str, ...]) -> list[str]:
    """Each group is titled after a stage; every node but the Read-me note lies inside exactly one group,
    below its title; groups do not overlap."""
    errors = []
    groups = ui.get("groups", [])
    for group in groups:
        if not any(group["title"].lower().startswith(stage) for stage in stages):
            errors.append(f"group {group['title']!r} is not named after a stage {stages}")
    for i, a in enumerate(groups):
        ax0, ay0, ax1, ay1 = group_box(a)
        for b in groups[i + 1:]:
            bx0, by0, bx1, by1 = group_box(b)
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                errors.append(f"groups {a['title']!r} and {b['title']!r} overlap")
    for node in ui["nodes"]:
        x0, y0, x1, y1 = node_box(node)
        if node["type"] == "Reroute":  # a bend in a wire, not a stage's node
            continue
        if node["type"] == "Note":
            touched = [g["title"] for g in groups if x0 < group_box(g)[2] and group_box(g)[0] < x1
                       and y0 < group_box(g)[3] and group_box(g)[1] < y1]  # fmt: skip
            errors += [f"the note overlaps group {title!r}" for title in touched]
            continue
        inside = [g["title"] for g in groups
                  if group_box(g)[0] <= x0 and x1 <= group_box(g)[2]
                  and group_box(g)[1] + group_title_height(g) <= y0 and y1 <= group_box(g)[3]]  # fmt: skip
        if len(inside) != 1:
            errors.append(f"node {node['id']} ({node['type']}) is inside groups {inside}, not exactly one")
    return errors


if __name__ == "__main__":  # a summary of the shipped files: python tests/workflow_checks.py
    for ui_path in sorted((ROOT / "workflows").glob("*.json")):
        shipped = load(ui_path)
        fitted = fit_to_view(shipped)
        print(f"{ui_path.stem}: {fitted.width:.0f} x {fitted.height:.0f} (groups included), fit zoom "
              f"{fitted.zoom:.3f} on a {VIEWPORT[0]} x {VIEWPORT[1]} canvas, {len(crossing_pairs(shipped))} crossings")

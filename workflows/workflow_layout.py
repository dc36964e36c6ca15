"""Turns a graph description into a ComfyUI UI workflow (laid out) and its API-format twin.

A graph lists nodes with the column they sit in and the stage they belong to. Columns run left to
right, nodes stack top to bottom inside a column, each node as tall as the front end draws it (its
sockets and widgets); every stage becomes a titled group around its nodes. Widget values are
written in the order the front end reads them (required inputs, then optional ones, an extra
"control after generate" value after seed inputs). Used by ``build_workflows.py``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
CORE_NODES = ROOT / "tests" / "comfy_core_nodes.json"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# LiteGraph's drawing sizes (front end 1.27): the front end enlarges a node smaller than its sockets
# and widgets need; a multiline text box is a DOM widget of about 60 px.
TITLE, SLOT, WIDGET, MULTILINE = 30, 20, 24, 60
NODE_GAP = 20  # free space between two stacked nodes (below the lower node's title bar)
GROUP_PAD, GROUP_TITLE = 12, 34  # a group's margin around its nodes, and its title bar (24 px font × 1.4)
COLUMN_GAP, STAGE_GAP = 48, 2 * GROUP_PAD + 32  # between columns of one stage / of two stages
REROUTE_SIZE = (75, 26)  # the front end's Reroute node: a dot with one input and one output, no title
STAGE_COLOURS = {"load": "#3f789e", "condition": "#8A8", "generate": "#b58b2a", "judge": "#a1309b",
                 "refine": "#88A", "results": "#444"}  # fmt: skip


@dataclass
class InputSpec:
    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def is_multiline(self) -> bool:
        return self.type == "STRING" and bool(self.options.get("multiline"))

    @property
    def has_control(self) -> bool:
        flag = self.options.get("control_after_generate")
        return bool(flag) if flag is not None else (self.type == "INT" and self.name in ("seed", "noise_seed"))

    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        if self.type == "COMBO":
            if "choices" not in self.options:
                raise KeyError(f"give a value for the model-list input {self.name!r}")
            return self.options["choices"][0]
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[self.type]


Specs = dict[str, tuple[list[InputSpec], list[tuple[str, str]], bool]]


def display_names() -> dict[str, str]:
    """What the front end shows as each node's title: our display names and the core ones."""
    import emofeedback2.nodes as ours

    core = json.loads(CORE_NODES.read_text(encoding="utf-8"))["nodes"]
    return {**{name: entry.get("display_name", name) for name, entry in core.items()}, **ours.NODE_DISPLAY_NAME_MAPPINGS}


def node_specs() -> Specs:
    """``{type: (inputs, outputs [(name, type)], ui_only)}`` for our nodes and the listed core ones."""
    import emofeedback2.nodes as ours

    specs: Specs = {}
    for name, cls in ours.NODE_CLASS_MAPPINGS.items():
        inputs = []
        for group in ("required", "optional"):
            for input_name, spec in cls.INPUT_TYPES().get(group, {}).items():
                kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
                if isinstance(kind, list):
                    options["choices"] = kind
                    kind = "COMBO"
                inputs.append(InputSpec(input_name, kind, options))
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        specs[name] = (inputs, list(zip(names, cls.RETURN_TYPES)), False)
    core = json.loads(CORE_NODES.read_text(encoding="utf-8"))["nodes"]
    for name, entry in core.items():
        inputs = [InputSpec(i["name"], i["type"], {k: v for k, v in i.items() if k not in ("name", "type")}) for i in entry["inputs"]]
        specs[name] = (inputs, [(o["name"], o["type"]) for o in entry["outputs"]], entry.get("ui_only", False))
    return specs


@dataclass
class Node:
    """One node: ``col`` (0 = leftmost column), ``stage`` (its group); nodes of a column stack in list order."""

    id: int
    type: str
    col: int
    stage: str
    widgets: dict[str, Any] = field(default_factory=dict)
    title: Optional[str] = None
    width: int = 250
    height: int = 0  # 0: as tall as its sockets and widgets need
    control: str = "fixed"


@dataclass
class Graph:
    name: str
    note: str  # the Read-me text; the note heads column 0
    nodes: list[Node]
    links: list[tuple[int, str, int, str]]  # (from node, output name, to node, input name)
    stages: dict[str, str]  # stage key → group title, in the order the groups are drawn
    note_height: int = 300
    #: node id → where its body starts (below the title bar); others stack under the node above.
    #: Chosen so that links run left to right, cross as little as possible and pass no node.
    ys: dict[int, int] = field(default_factory=dict)
    wide_gaps: dict[int, int] = field(default_factory=dict)  # column → extra room before it, for steep links
    #: Reroute dots that carry long links around nodes: id → (column, x offset in it, y of the dot's top)
    reroutes: dict[int, tuple[int, int, int]] = field(default_factory=dict)


def needed_height(node: Node, specs: Specs, linked: set[str]) -> int:
    """The front end's minimum: one row per socket (the taller side), one per widget, 60 px per text box."""
    inputs, outputs, _ = specs[node.type]
    sockets = sum(1 for i in inputs if not i.is_widget or i.name in linked)
    widgets = sum(1 + (1 if i.has_control else 0) for i in inputs if i.is_widget and not i.is_multiline)
    texts = sum(1 for i in inputs if i.is_widget and i.is_multiline)
    return max(sockets, len(outputs)) * SLOT + widgets * WIDGET + texts * MULTILINE


def place(graph: Graph, specs: Specs) -> tuple[dict[int, tuple[int, int, int, int]], list[dict]]:
    """Positions and sizes ``{id: (x, y, w, h)}`` for every node and the stage groups.

    The Read-me note (id 1) goes at ``ys[1]`` in column 0, or under its last node; outside every group.
    """
    linked: dict[int, set[str]] = {}
    for _, _, dst, name in graph.links:
        linked.setdefault(dst, set()).add(name)
    columns: dict[int, list[Node]] = {}
    for node in graph.nodes:
        columns.setdefault(node.col, []).append(node)
    for nodes in columns.values():  # placed nodes in their given order, top to bottom
        nodes.sort(key=lambda n: graph.ys.get(n.id, 0) if all(m.id in graph.ys for m in nodes) else 0)
    top = GROUP_PAD + GROUP_TITLE + TITLE
    boxes: dict[int, tuple[int, int, int, int]] = {}
    column_x: dict[int, int] = {}
    x = GROUP_PAD
    for col in sorted(columns):
        nodes = columns[col]
        width = max(n.width for n in nodes)
        if col > 0:
            previous = {n.stage for n in columns[col - 1]}
            x += (STAGE_GAP if previous != {n.stage for n in nodes} else COLUMN_GAP) + graph.wide_gaps.get(col, 0)
        column_x[col] = x
        y = top
        for index, node in enumerate(nodes):
            if index and nodes[index - 1].stage != node.stage:
                y += STAGE_GAP + GROUP_TITLE - NODE_GAP
            if node.id in graph.ys:
                if graph.ys[node.id] < y:
                    raise ValueError(f"{graph.name}: node {node.id} at y={graph.ys[node.id]} would overlap the node above")
                y = graph.ys[node.id]
            height = max(node.height, needed_height(node, specs, linked.get(node.id, set())))
            boxes[node.id] = (x, y, node.width, height)
            y += height + NODE_GAP + TITLE
        if col == 0:
            note_y = graph.ys.get(1, y + STAGE_GAP)
            boxes[1] = (x - GROUP_PAD, note_y, width + 2 * GROUP_PAD, graph.note_height)
        x += width
    for reroute_id, (col, dx, y) in graph.reroutes.items():
        boxes[reroute_id] = (column_x[col] + dx, y, *REROUTE_SIZE)
    groups = []
    for key, title in graph.stages.items():
        members = [boxes[n.id] for n in graph.nodes if n.stage == key]
        x0 = min(b[0] for b in members) - GROUP_PAD
        y0 = min(b[1] for b in members) - TITLE - GROUP_TITLE - GROUP_PAD
        x1 = max(b[0] + b[2] for b in members) + GROUP_PAD
        y1 = max(b[1] + b[3] for b in members) + GROUP_PAD
        groups.append({
            "id": len(groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
            "color": STAGE_COLOURS.get(key.split("_")[0], "#444"), "font_size": 24, "flags": {},
        })  # fmt: skip
    return boxes, groups


def build(graph: Graph, specs: Specs) -> tuple[dict, dict]:
    """(UI workflow, API prompt) for one graph."""
    note = Node(1, "Note", 0, "", {"text": graph.note.strip()}, title="Read me")
    reroutes = [Node(i, "Reroute", col, "") for i, (col, _, _) in graph.reroutes.items()]
    nodes = [note, *graph.nodes, *reroutes]
    by_id = {n.id: n for n in nodes}
    if len(by_id) != len(nodes):
        raise ValueError(f"{graph.name}: node ids repeat (id 1 is the Read-me note)")
    boxes, groups = place(graph, specs)
    titles = display_names()
    feeds = {dst: (src, out) for src, out, dst, _ in graph.links if by_id[dst].type == "Reroute"}

    def origin(src: int, out_name: str) -> tuple[int, str]:
        """The real node and output behind a chain of reroutes (what ComfyUI's API prompt names)."""
        while by_id[src].type == "Reroute":
            src, out_name = feeds[src]
        return src, out_name

    def slot_of(node_id: int, out_name: str) -> int:
        return [o[0] for o in specs[by_id[node_id].type][1]].index(out_name)

    ui_links, link_ids_out, link_into = [], {}, {}
    for link_id, (src, out_name, dst, in_name) in enumerate(graph.links, start=1):
        real, real_out = origin(src, out_name)
        kind = specs[by_id[real].type][1][slot_of(real, real_out)][1]
        slot = slot_of(src, out_name)
        in_spec = next(i for i in specs[by_id[dst].type][0] if i.name == in_name)
        ui_links.append([link_id, src, slot, dst, in_name, kind])  # target slot index filled in below
        link_ids_out.setdefault((src, slot), []).append(link_id)
        link_into[(dst, in_name)] = (link_id, real, slot_of(real, real_out), in_spec)
    ui_nodes, api = [], {}
    for order, node in enumerate(nodes):
        if node.type == "Reroute":
            link_id = link_into[(node.id, "")][0]
            x, y, w, h = boxes[node.id]
            ui_nodes.append({
                "id": node.id, "type": "Reroute", "pos": [x, y], "size": [w, h], "flags": {}, "order": order,
                "mode": 0, "inputs": [{"name": "", "type": "*", "link": link_id}],
                "outputs": [{"name": "", "type": ui_links[link_id - 1][5], "links": link_ids_out.get((node.id, 0), []),
                             "slot_index": 0}],
                "properties": {"showOutputText": False, "horizontal": False},
            })  # fmt: skip
            continue
        inputs, outputs, ui_only = specs[node.type]
        unknown = set(node.widgets) - {i.name for i in inputs}
        if unknown:
            raise KeyError(f"{graph.name}: {node.type} has no input(s) {sorted(unknown)}")
        ui_inputs, widgets_values, api_inputs = [], [], {}
        for spec in inputs:
            linked = link_into.get((node.id, spec.name))
            if spec.is_widget:
                value = node.widgets[spec.name] if spec.name in node.widgets else spec.default()
                widgets_values.append(value)
                if spec.has_control:
                    widgets_values.append(node.control)
                if linked is None:
                    api_inputs[spec.name] = value
            if linked is not None:
                link_id, src, slot, _ = linked  # src, slot: the real output behind any reroutes
                entry = {"name": spec.name, "type": spec.type, "link": link_id}
                if spec.is_widget:
                    entry["widget"] = {"name": spec.name}
                ui_inputs.append(entry)
                api_inputs[spec.name] = [str(src), slot]
            elif not spec.is_widget:
                ui_inputs.append({"name": spec.name, "type": spec.type, "link": None})
        ui_outputs = [
            {"name": name, "type": kind, "links": link_ids_out.get((node.id, slot), []), "slot_index": slot}
            for slot, (name, kind) in enumerate(outputs)
        ]
        x, y, w, h = boxes[node.id]
        ui_node = {
            "id": node.id, "type": node.type, "pos": [x, y], "size": [w, h], "flags": {},
            "order": order, "mode": 0, "inputs": ui_inputs, "outputs": ui_outputs,
            "properties": {"Node name for S&R": node.type}, "widgets_values": widgets_values,
        }  # fmt: skip
        if node.title:
            ui_node["title"] = node.title
        if node.type == "Note":
            ui_node["color"], ui_node["bgcolor"] = "#432", "#653"
        ui_nodes.append(ui_node)
        if not ui_only:
            title = node.title or titles.get(node.type, node.type)
            api[str(node.id)] = {"class_type": node.type, "inputs": api_inputs, "_meta": {"title": title}}
    node_inputs = {n["id"]: [i["name"] for i in n["inputs"]] for n in ui_nodes}
    for link in ui_links:  # the front end's schema wants the target *slot index* here
        link[4] = node_inputs[link[3]].index(link[4])
    ui = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"emofeedback2/workflows/{graph.name}")), "revision": 0,
        "last_node_id": max(by_id), "last_link_id": len(ui_links),
        "nodes": ui_nodes, "links": ui_links, "groups": groups, "config": {},
        # no saved view ("ds"): the front end then fits the whole graph to the screen on opening
        "extra": {"emofeedback2": {"api_twin": f"api/{graph.name}.json"}},
        "version": 0.4,
    }  # fmt: skip
    return ui, api

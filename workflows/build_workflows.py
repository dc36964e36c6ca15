"""Writes the shipped workflows: each graph once, as a ComfyUI UI file and its API-format twin.

Run from the repository root after changing a graph or a node's inputs:

    python workflows/build_workflows.py

UI files (``workflows/*.json``) are what ComfyUI lists as this pack's templates; API twins
(``workflows/api/*.json``, a subfolder ComfyUI's template listing does not descend into) are what
the tests POST to a real server. Widget values are written in the order the front end reads them
(required inputs, then optional, an extra "control after generate" value after seed inputs).
``tests/test_workflows.py`` re-checks both files independently of this script.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emofeedback2.nodes.common import NEGATIVE_DEFAULT as NEGATIVE

ROOT = Path(__file__).resolve().parents[1]
OUT_UI = ROOT / "workflows"
OUT_API = ROOT / "workflows" / "api"
CORE_NODES = ROOT / "tests" / "comfy_core_nodes.json"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
LVLM = "Qwen2.5-VL-7B-Instruct"
# LiteGraph's drawing sizes: the front end enlarges a node smaller than its sockets and widgets need.
SLOT_HEIGHT, WIDGET_HEIGHT = 20, 24


@dataclass
class InputSpec:
    name: str
    type: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

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


def display_names() -> dict[str, str]:
    """What the front end shows as each node's title: our display names and the core ones."""
    import emofeedback2.nodes as ours

    core = json.loads(CORE_NODES.read_text(encoding="utf-8"))["nodes"]
    return {**{name: entry.get("display_name", name) for name, entry in core.items()}, **ours.NODE_DISPLAY_NAME_MAPPINGS}


def node_specs() -> dict[str, tuple[list[InputSpec], list[tuple[str, str]], bool]]:
    """``{type: (inputs, outputs [(name, type)], ui_only)}`` for our nodes and the listed core ones."""
    import emofeedback2.nodes as ours

    specs = {}
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
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int] = (320, 160)
    widgets: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    control: str = "fixed"


@dataclass
class Graph:
    name: str
    nodes: list[Node]
    links: list[tuple[int, str, int, str]]  # (from node, output name, to node, input name)


def build(graph: Graph, specs) -> tuple[dict, dict]:
    """(UI workflow, API prompt) for one graph."""
    by_id = {n.id: n for n in graph.nodes}
    titles = display_names()
    ui_links, link_ids_out, link_into = [], {}, {}
    for link_id, (src, out_name, dst, in_name) in enumerate(graph.links, start=1):
        outputs = specs[by_id[src].type][1]
        slot = [o[0] for o in outputs].index(out_name)
        inputs = specs[by_id[dst].type][0]
        in_spec = next(i for i in inputs if i.name == in_name)
        link_type = outputs[slot][1]
        ui_links.append([link_id, src, slot, dst, in_name, link_type])  # target slot index filled in below
        link_ids_out.setdefault((src, slot), []).append(link_id)
        link_into[(dst, in_name)] = (link_id, src, slot, in_spec)
    ui_nodes, api = [], {}
    for order, node in enumerate(graph.nodes):
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
                link_id, src, slot, _ = linked
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
        height = max(node.size[1], max(len(ui_inputs), len(ui_outputs)) * SLOT_HEIGHT + len(widgets_values) * WIDGET_HEIGHT)
        ui_node = {
            "id": node.id, "type": node.type, "pos": list(node.pos), "size": [node.size[0], height], "flags": {},
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
        "nodes": ui_nodes, "links": ui_links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}, "emofeedback2": {"api_twin": f"api/{graph.name}.json"}},
        "version": 0.4,
    }  # fmt: skip
    return ui, api


def _note(text: str, width: int = 1400, height: int = 230) -> Node:
    """The read-me as a banner above the graph, so no node or link sits under it."""
    return Node(1, "Note", (20, 20), (width, height), {"text": text.strip()}, title="Read me: what to load where")


#: top of the graph below the Note banner (title bars included)
TOP = 340


MODELS_NOTE = f"""
Models (re-point the loaders to what you have):
- Checkpoint Loader: any SD1.5 checkpoint in models/checkpoints (here {CHECKPOINT}). SDXL/SD3.x checkpoints work too with a matching emotion adapter.
"""
LVLM_NOTE = f"""- LVLM Loader: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model folder (config.json + *.safetensors + processor files) in models/LLM/<folder>, here {LVLM} (the paper's judge). Pick "colour heuristic (no model)" to try the graph without a model.
"""


def graphs() -> list[Graph]:
    t2i = Graph(
        "emotion_text_to_image",
        [
            _note(
                "Emotional text-to-image.\n\nEmotion Conditioner replaces CLIPTextEncode for the positive prompt: "
                "set valence (-3 unpleasant ... +3 pleasant) and arousal (-3 calm ... +3 excited). text_strength "
                "weaves emotion words into the prompt (0 = off, identical to CLIPTextEncode); the preview shows the "
                "text actually encoded.\n" + MODELS_NOTE +
                "- Emotion Weights Loader (optional): a LoRA trained by `emofeedback2 train` in models/loras and/or "
                "an emotion adapter (.safetensors) in models/emotion_adapters; 'none' keeps the model unchanged."
            ),
            Node(2, "CheckpointLoaderSimple", (20, 940), (320, 100), {"ckpt_name": CHECKPOINT}),
            Node(3, "EmotionWeightsLoader", (380, 340), (320, 170), {"lora_name": "none", "adapter_name": "none"}),
            Node(4, "EmotionConditioner", (740, 390), (400, 280), {
                "text": "a lighthouse on a rocky coast at dusk, wide shot", "valence": 2.0, "arousal": -1.5,
                "text_strength": 1.0, "adapter_strength": 1.0}),
            Node(5, "CLIPTextEncode", (760, 730), (400, 130), {"text": NEGATIVE}, title="Negative prompt"),
            Node(6, "EmptyLatentImage", (800, 920), (320, 110), {"width": 512, "height": 512, "batch_size": 1}),
            Node(7, "KSampler", (1220, 340), (320, 270), {
                "seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}),
            Node(8, "VAEDecode", (1580, 1080), (220, 50)),
            Node(9, "SaveImage", (1840, 340), (420, 460), {"filename_prefix": "EmoFeedback2/text_to_image"}),
            Node(10, "PreviewAny", (1200, 670), (320, 160), title="Encoded prompt"),
        ],  # fmt: skip
        [
            (2, "MODEL", 3, "model"), (2, "CLIP", 3, "clip"),
            (3, "clip", 4, "clip"), (3, "emotion_adapter", 4, "emotion_adapter"), (3, "clip", 5, "clip"),
            (3, "model", 7, "model"), (4, "conditioning", 7, "positive"), (5, "CONDITIONING", 7, "negative"),
            (6, "LATENT", 7, "latent_image"), (7, "LATENT", 8, "samples"), (2, "VAE", 8, "vae"),
            (8, "IMAGE", 9, "images"), (4, "encoded_text", 10, "source"),
        ],  # fmt: skip
    )
    prompt = "a city street after rain, people walking"
    target = {"valence": 2.0, "arousal": 1.5}
    refine = Graph(
        "score_and_refine",
        [
            _note(
                "Score and refine (one round of the EmoFeedback2 'self-promotion' loop, by hand).\n\n"
                "1. The first image is generated for the target emotion.\n2. LVLM Emotion Scorer reads its valence/"
                "arousal and the reward against the target.\n3. Feedback Prompt Refiner asks the LVLM what misses the "
                "target and rewrites the prompt.\n4. The refined prompt is generated again with the same seed.\n\n"
                "Keep the target values the same in both conditioners, the scorer and the refiner; the refiner gets the "
                "text the first conditioner encoded and keeps the subject words of `subject` (your prompt). The second "
                "conditioner encodes the refined prompt as is (text_strength 0: it already carries the emotion words).\n"
                + MODELS_NOTE + LVLM_NOTE
            ),
            Node(2, "CheckpointLoaderSimple", (80, 3180), (320, 100), {"ckpt_name": CHECKPOINT}),
            Node(3, "EmoLVLMLoader", (20, 2660), (320, 250), {"model": LVLM}),
            Node(4, "EmotionConditioner", (720, 580), (380, 260), {"text": prompt, **target, "text_strength": 1.0}),
            Node(5, "CLIPTextEncode", (580, 340), (380, 120), {"text": NEGATIVE}, title="Negative prompt"),
            Node(6, "EmptyLatentImage", (40, 1880), (320, 110), {"width": 512, "height": 512, "batch_size": 1}),
            Node(7, "KSampler", (1160, 2020), (320, 270), {"seed": 7, "steps": 25, "cfg": 7.0, "scheduler": "normal"}, title="KSampler (round 1)"),
            Node(8, "VAEDecode", (1520, 700), (220, 50)),
            Node(9, "SaveImage", (1880, 1520), (360, 400), {"filename_prefix": "EmoFeedback2/refine_round1"}),
            Node(10, "LVLMEmotionScorer", (2000, 2140), (340, 230), {
                "use_target": True, "target_valence": target["valence"], "target_arousal": target["arousal"],
                "analysis": True}),
            Node(11, "FeedbackPromptRefiner", (2540, 480), (360, 250), {
                "subject": prompt, "target_valence": target["valence"], "target_arousal": target["arousal"]}),
            Node(12, "EmotionConditioner", (3320, 3720), (380, 260), {"text": prompt, **target, "text_strength": 0.0},
                 title="Emotion Conditioner (refined prompt)"),
            Node(13, "KSampler", (4420, 380), (320, 270), {"seed": 7, "steps": 25, "cfg": 7.0, "scheduler": "normal"}, title="KSampler (round 2)"),
            Node(14, "VAEDecode", (5680, 620), (220, 50)),
            Node(15, "SaveImage", (5940, 2960), (360, 400), {"filename_prefix": "EmoFeedback2/refine_round2"}),
            Node(16, "PreviewAny", (4120, 3860), (340, 180), title="Scorer analysis"),
            Node(17, "PreviewAny", (4880, 3720), (380, 180), title="Refiner feedback"),
            Node(18, "PreviewAny", (5240, 1420), (380, 180), title="Refined prompt"),
        ],  # fmt: skip
        [
            (2, "CLIP", 4, "clip"), (2, "CLIP", 5, "clip"), (2, "MODEL", 7, "model"),
            (4, "conditioning", 7, "positive"), (5, "CONDITIONING", 7, "negative"), (6, "LATENT", 7, "latent_image"),
            (7, "LATENT", 8, "samples"), (2, "VAE", 8, "vae"), (8, "IMAGE", 9, "images"),
            (3, "lvlm", 10, "lvlm"), (8, "IMAGE", 10, "images"),
            (3, "lvlm", 11, "lvlm"), (8, "IMAGE", 11, "image"), (4, "encoded_text", 11, "prompt"),
            (10, "valence", 11, "measured_valence"), (10, "arousal", 11, "measured_arousal"),
            (2, "CLIP", 12, "clip"), (11, "refined_prompt", 12, "text"),
            (2, "MODEL", 13, "model"), (12, "conditioning", 13, "positive"), (5, "CONDITIONING", 13, "negative"),
            (6, "LATENT", 13, "latent_image"), (13, "LATENT", 14, "samples"), (2, "VAE", 14, "vae"),
            (14, "IMAGE", 15, "images"),
            (10, "analysis", 16, "source"), (11, "feedback", 17, "source"), (11, "refined_prompt", 18, "source"),
        ],  # fmt: skip
    )
    loop = Graph(
        "emo_reward_loop",
        [
            _note(
                "The full EmoFeedback2 inference loop in one node.\n\nEmoRewardLoop generates `candidates` images per "
                "round, scores each with the LVLM against the target valence/arousal, keeps the best and lets the "
                "LVLM rewrite the prompt for the next round (paper: 3 rounds x 8 images). It stops early once the "
                "best image is within `tolerance` of the target. Outputs: the best image, every candidate, the final "
                "prompt, the per-round history (JSON) and a plot of the V-A trajectory toward the target.\n"
                + MODELS_NOTE + LVLM_NOTE +
                "- Optional: connect an emotion adapter from an Emotion Weights Loader."
            ),
            Node(2, "CheckpointLoaderSimple", (20, 340), (320, 100), {"ckpt_name": CHECKPOINT}),
            Node(3, "EmoLVLMLoader", (20, 510), (320, 250), {"model": LVLM}),
            Node(4, "EmoRewardLoop", (440, 340), (400, 620), {
                "prompt": "a lighthouse on a rocky coast, wide shot", "negative": NEGATIVE,
                "target_valence": 1.5, "target_arousal": 1.0, "rounds": 3, "candidates": 4, "seed": 0,
                "steps": 20, "cfg": 7.0, "width": 512, "height": 512}),
            Node(5, "SaveImage", (1040, 340), (400, 420), {"filename_prefix": "EmoFeedback2/loop_best"}, title="Best image"),
            Node(6, "SaveImage", (1040, 830), (420, 420), {"filename_prefix": "EmoFeedback2/loop_trajectory"},
                 title="V-A trajectory plot"),
            Node(7, "PreviewImage", (1040, 1320), (400, 300), title="All candidates"),
            Node(8, "PreviewAny", (1040, 1690), (420, 160), title="Final prompt"),
            Node(9, "PreviewAny", (1040, 1920), (420, 200), title="History (JSON)"),
        ],  # fmt: skip
        [
            (2, "MODEL", 4, "model"), (2, "CLIP", 4, "clip"), (2, "VAE", 4, "vae"), (3, "lvlm", 4, "lvlm"),
            (4, "best_image", 5, "images"), (4, "trajectory_plot", 6, "images"), (4, "all_candidates", 7, "images"),
            (4, "final_prompt", 8, "source"), (4, "history_json", 9, "source"),
        ],  # fmt: skip
    )
    sweep = Graph(
        "emotion_sweep_grid",
        [
            _note(
                "Continuity sweep: the same prompt and seed at every valence x arousal target of a 5 x 5 grid "
                "(-3, -1.5, 0, 1.5, 3 on each axis), assembled into one labelled image: valence grows left to "
                "right, arousal bottom to top. Smooth changes from cell to cell mean continuous control.\n\n"
                "Each cell is sampled like Emotion Conditioner -> KSampler -> VAE Decode. Compare text_strength "
                "only (no adapter) with a trained emotion adapter connected from an Emotion Weights Loader.\n"
                + MODELS_NOTE
            ),
            Node(2, "CheckpointLoaderSimple", (20, 340), (320, 100), {"ckpt_name": CHECKPOINT}),
            Node(3, "EmotionSweepGrid", (380, 340), (400, 560), {
                "text": "a quiet harbour town at dusk", "negative": NEGATIVE,
                "valences": "-3, -1.5, 0, 1.5, 3", "arousals": "-3, -1.5, 0, 1.5, 3", "seed": 1234,
                "steps": 20, "cfg": 7.0, "width": 512, "height": 512, "text_strength": 1.0, "adapter_strength": 1.0}),
            Node(4, "SaveImage", (820, 340), (620, 640), {"filename_prefix": "EmoFeedback2/sweep_grid"}, title="Labelled grid"),
        ],  # fmt: skip
        [(2, "MODEL", 3, "model"), (2, "CLIP", 3, "clip"), (2, "VAE", 3, "vae"), (3, "grid", 4, "images")],
    )
    return [t2i, refine, loop, sweep]


def main() -> int:
    specs = node_specs()
    OUT_API.mkdir(parents=True, exist_ok=True)
    for graph in graphs():
        ui, api = build(graph, specs)
        (OUT_UI / f"{graph.name}.json").write_text(json.dumps(ui, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (OUT_API / f"{graph.name}.json").write_text(json.dumps(api, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote workflows/{graph.name}.json and workflows/api/{graph.name}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

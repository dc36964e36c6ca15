"""Writes the shipped workflows: each graph once, as a ComfyUI UI file and its API-format twin.

Run from the repository root after changing a graph or a node's inputs:

    python workflows/build_workflows.py

UI files (``workflows/*.json``) are what ComfyUI lists as this pack's templates; API twins
(``workflows/api/*.json``, a subfolder ComfyUI's template listing does not descend into) are what
the tests POST to a real server. Each graph reads left to right in columns, one titled group per
stage (load, condition, generate, judge, refine) and one "Read me" note; ``workflow_layout.py``
places the nodes. ``tests/test_workflows.py`` re-checks both files independently of this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # workflow_layout sits beside this script

from emofeedback2.nodes.common import NEGATIVE_DEFAULT as NEGATIVE  # noqa: E402
from workflow_layout import Graph, Node, build, node_specs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT_UI = ROOT / "workflows"
OUT_API = ROOT / "workflows" / "api"

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
LVLM = "Qwen2.5-VL-7B-Instruct"
FLUX = {"unet": "flux1-dev.safetensors", "t5": "t5xxl_fp16.safetensors", "clip_l": "clip_l.safetensors",
        "vae": "ae.safetensors", "lora": "emofeedback2_flux_lora.safetensors",
        "adapter": "emotion_adapter_flux.safetensors"}  # fmt: skip
SD_STAGES = {"load": "Load", "condition": "Condition", "generate": "Generate"}

MODELS_NOTE = f"""
Models (re-point the loaders to what you have):
- Load Checkpoint: any SD1.5 checkpoint in models/checkpoints (here {CHECKPOINT}); SDXL/SD3.x work too, with a matching emotion adapter.
"""
LVLM_NOTE = f"""- EmoFeedback2 LVLM Loader: a Qwen2-VL / Qwen2.5-VL / Qwen3-VL folder (config.json + *.safetensors + processor files) in models/LLM/<folder>, here {LVLM} (the paper's judge). To try the graph without a model pick "no LVLM: colour heuristic judges" (a brightness/saturation rule; the judge outputs say so).
"""


def text_to_image() -> Graph:
    return Graph(
        "emotion_text_to_image",
        "Emotional text-to-image.\n\nThe EmoFeedback2 Conditioner replaces CLIP Text Encode for the positive prompt: "
        "set valence (-3 unpleasant ... +3 pleasant) and arousal (-3 calm ... +3 excited). text_strength weaves "
        "emotion words into the prompt (0 = off: identical to CLIP Text Encode); the preview shows the prompt "
        "actually encoded.\n" + MODELS_NOTE + "- EmoFeedback2 Weights Loader (optional): a LoRA from `emofeedback2 "
        "export` in models/loras and/or an emotion adapter in models/emotion_adapters; 'none' keeps the model.",
        [
            Node(2, "CheckpointLoaderSimple", 0, "load", {"ckpt_name": CHECKPOINT}, width=260),
            Node(3, "EmoFeedback2WeightsLoader", 1, "load_weights", {"lora_name": "none", "adapter_name": "none"},
                 width=260),
            Node(4, "EmoFeedback2Conditioner", 2, "condition", {
                "prompt": "a lighthouse on a rocky coast at dusk, wide shot", "valence": 2.0, "arousal": -1.5,
                "text_strength": 1.0, "adapter_strength": 1.0}, width=270),
            Node(5, "CLIPTextEncode", 2, "condition", {"text": NEGATIVE}, title="Negative prompt", width=270),
            Node(6, "EmptyLatentImage", 2, "condition", {"width": 512, "height": 512, "batch_size": 1}, width=270),
            Node(7, "KSampler", 3, "generate", {
                "seed": 42, "steps": 25, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0},
                width=240),
            Node(10, "PreviewAny", 3, "generate", title="Encoded prompt", width=240, height=80),
            Node(8, "VAEDecode", 4, "generate", width=150),
            Node(9, "SaveImage", 5, "generate", {"filename_prefix": "EmoFeedback2/text_to_image"}, width=300, height=360),
        ],  # fmt: skip
        [
            (2, "MODEL", 3, "model"), (2, "CLIP", 3, "clip"),
            (3, "clip", 4, "clip"), (3, "emotion_adapter", 4, "emotion_adapter"), (3, "clip", 5, "clip"),
            (3, "model", 7, "model"), (4, "conditioning", 7, "positive"), (5, "CONDITIONING", 7, "negative"),
            (6, "LATENT", 7, "latent_image"), (7, "LATENT", 8, "samples"), (2, "VAE", 8, "vae"),
            (8, "IMAGE", 9, "images"), (4, "encoded_prompt", 10, "source"),
        ],  # fmt: skip
        {**SD_STAGES, "load": "Load checkpoint", "load_weights": "Load emotion weights"},
        # the VAE wire runs along the bottom, under the conditioning stack, into VAE Decode from below
        ys={1: 76, 2: 586, 3: 76, 4: 136, 5: 382, 6: 512, 7: 76, 10: 380, 8: 606, 9: 606},
        wide_gaps={1: 260, 3: 60, 4: 60, 5: 40},
    )


def score_and_refine() -> Graph:
    prompt = "a city street after rain, people walking"
    target = {"valence": 2.0, "arousal": 1.5}
    ksampler = {"seed": 7, "steps": 25, "cfg": 7.0, "scheduler": "normal"}
    return Graph(
        "score_and_refine",
        "Score and refine: one round of the EmoFeedback2 loop, by hand.\n\n1. Generate the first image for the "
        "target emotion.\n2. The Scorer reads its valence/arousal and the reward against the target.\n3. The Prompt "
        "Refiner shows the image to the same judge, asks what misses the target and rewrites the prompt (it reads "
        "valence/arousal itself; wire the Scorer's measured_valence/arousal into it to pass them).\n4. Generate again from the refined "
        "prompt with the same seed.\n\nKeep the target the same in the conditioners, the scorer and the refiner. "
        "The second conditioner encodes the refined prompt as it is (text_strength 0: it already carries the "
        "emotion words).\n" + MODELS_NOTE + LVLM_NOTE,
        [
            Node(2, "CheckpointLoaderSimple", 0, "load", {"ckpt_name": CHECKPOINT}, width=230),
            Node(3, "EmoFeedback2LVLMLoader", 0, "load_judge", {"model": LVLM}, title="LVLM Loader", width=230),
            Node(4, "EmoFeedback2Conditioner", 1, "condition", {"prompt": prompt, **target, "text_strength": 1.0},
                 title="Conditioner (round 1)", width=230),
            Node(5, "CLIPTextEncode", 1, "condition", {"text": NEGATIVE}, title="Negative prompt", width=230),
            Node(6, "EmptyLatentImage", 1, "condition", {"width": 512, "height": 512, "batch_size": 1}, width=230),
            Node(7, "KSampler", 2, "generate", ksampler, title="KSampler (round 1)", width=200),
            Node(8, "VAEDecode", 3, "generate", width=140),
            Node(9, "SaveImage", 4, "judge", {"filename_prefix": "EmoFeedback2/refine_round1"}, title="Round 1",
                 width=230, height=200),
            Node(10, "EmoFeedback2Scorer", 4, "judge", {"use_target": True, **target, "analysis": True}, width=230),
            Node(11, "EmoFeedback2PromptRefiner", 4, "judge", {"prompt": prompt, **target}, title="Prompt Refiner",
                 width=230),
            Node(12, "EmoFeedback2Conditioner", 5, "refine", {"prompt": prompt, **target, "text_strength": 0.0},
                 title="Conditioner (refined)", width=230),
            Node(18, "CLIPTextEncode", 5, "refine", {"text": NEGATIVE}, title="Negative prompt (round 2)", width=230),
            Node(19, "EmptyLatentImage", 5, "refine", {"width": 512, "height": 512, "batch_size": 1},
                 title="Empty Latent (round 2)", width=230),
            Node(16, "PreviewAny", 5, "refine", title="Scorer analysis", width=240, height=80),
            Node(17, "PreviewAny", 5, "refine", title="Refiner feedback", width=240, height=80),
            Node(13, "KSampler", 6, "refine", ksampler, title="KSampler (round 2)", width=200),
            Node(14, "VAEDecode", 7, "refine", width=140),
            Node(15, "SaveImage", 8, "refine", {"filename_prefix": "EmoFeedback2/refine_round2"}, title="Round 2",
                 width=210, height=200),
        ],  # fmt: skip
        [
            (2, "MODEL", 24, ""), (24, "", 7, "model"), (2, "CLIP", 4, "clip"), (2, "CLIP", 5, "clip"),
            (4, "conditioning", 7, "positive"), (5, "CONDITIONING", 7, "negative"), (6, "LATENT", 7, "latent_image"),
            (7, "LATENT", 8, "samples"), (2, "VAE", 22, ""), (22, "", 8, "vae"), (8, "IMAGE", 9, "images"),
            (3, "lvlm", 25, ""), (25, "", 10, "lvlm"), (8, "IMAGE", 10, "images"),
            (25, "", 11, "lvlm"), (8, "IMAGE", 11, "image"), 
            (2, "CLIP", 21, ""), (21, "", 12, "clip"), (21, "", 18, "clip"), (11, "refined_prompt", 12, "prompt"),
            (24, "", 20, ""), (20, "", 13, "model"), (12, "conditioning", 13, "positive"),
            (18, "CONDITIONING", 13, "negative"), (19, "LATENT", 13, "latent_image"),
            (13, "LATENT", 14, "samples"), (22, "", 23, ""), (23, "", 14, "vae"),
            (14, "IMAGE", 15, "images"), (10, "analysis", 16, "source"), (11, "feedback", 17, "source"),
        ],  # fmt: skip
        {"load": "Load checkpoint", "load_judge": "Load the judge", "condition": "Condition",
         "generate": "Generate (round 1)",
         "judge": "Judge: score, explain, rewrite", "refine": "Refine: round 2 from the rewritten prompt"},  # fmt: skip
        # wires from the checkpoint run in lanes along the top (reroute dots end them above their targets);
        # the judge's wire runs along the bottom
        ys={1: 230, 2: 76, 3: 776, 4: 230, 5: 476, 6: 606, 7: 230, 8: 230, 9: 230, 10: 480, 11: 776, 12: 230,
            18: 496, 19: 626, 16: 768, 17: 898, 13: 230, 14: 230, 15: 230},
        wide_gaps={2: 30},
        reroutes={24: (1, 150, 77), 20: (5, 150, 77), 21: (4, 150, 97), 22: (2, 120, 117), 23: (6, 120, 117),
                  25: (3, 30, 777)},
    )


def reward_loop() -> Graph:
    return Graph(
        "emo_reward_loop",
        "The whole EmoFeedback2 inference loop in one node.\n\nThe Reward Loop generates `candidates` images per "
        "round, scores each with the LVLM against the target valence/arousal, keeps the best and lets the LVLM "
        "rewrite the prompt for the next round (paper: 3 rounds x 8 images). It stops early once the best image is "
        "within `tolerance` of the target. Outputs: the best image, every candidate, the final prompt, the history "
        "(JSON), a plot of the V-A trajectory and which judge judged.\n" + MODELS_NOTE + LVLM_NOTE
        + "- Optional: an emotion adapter from an EmoFeedback2 Weights Loader.",
        [
            Node(2, "CheckpointLoaderSimple", 0, "load", {"ckpt_name": CHECKPOINT}, width=280),
            Node(3, "EmoFeedback2LVLMLoader", 0, "load", {"model": LVLM}, width=280),
            Node(4, "EmoFeedback2RewardLoop", 1, "generate", {
                "prompt": "a lighthouse on a rocky coast, wide shot", "negative_prompt": NEGATIVE,
                "valence": 1.5, "arousal": 1.0, "rounds": 3, "candidates": 4, "seed": 0,
                "steps": 20, "cfg": 7.0, "width": 512, "height": 512}, width=320),
            Node(5, "SaveImage", 2, "generate", {"filename_prefix": "EmoFeedback2/loop_best"}, title="Best image",
                 width=320, height=180),
            Node(7, "PreviewImage", 2, "generate", title="All candidates", width=320, height=110),
            Node(8, "PreviewAny", 2, "generate", title="Final prompt", width=320, height=70),
            Node(9, "PreviewAny", 2, "generate", title="History (JSON)", width=320, height=70),
            Node(6, "SaveImage", 2, "generate", {"filename_prefix": "EmoFeedback2/loop_trajectory"},
                 title="V-A trajectory plot", width=320, height=180),
            Node(10, "PreviewAny", 2, "generate", title="Judge", width=320, height=60),
        ],  # fmt: skip
        [
            (2, "MODEL", 4, "model"), (2, "CLIP", 4, "clip"), (2, "VAE", 4, "vae"), (3, "lvlm", 4, "lvlm"),
            (4, "best_image", 5, "images"), (4, "all_candidates", 7, "images"), (4, "trajectory_plot", 6, "images"),
            (4, "final_prompt", 8, "source"), (4, "history_json", 9, "source"), (4, "judge", 10, "source"),
        ],  # fmt: skip
        {"load": "Load", "generate": "Generate, judge, refine (the loop)"},
        ys={2: 76, 3: 226, 4: 276, 5: 76, 7: 312, 8: 478, 9: 604, 6: 730, 10: 966},
        wide_gaps={2: 160},
    )


def sweep_grid() -> Graph:
    return Graph(
        "emotion_sweep_grid",
        "Continuity sweep: the same prompt and seed at every valence x arousal target of a 5 x 5 grid (-3, -1.5, 0, "
        "1.5, 3 on each axis), assembled into one labelled image: valence grows left to right, arousal bottom to "
        "top. Smooth changes from cell to cell mean continuous control.\n\nEach cell is sampled like the "
        "EmoFeedback2 Conditioner -> KSampler -> VAE Decode. Compare text_strength only (no adapter) with a "
        "trained emotion adapter from an EmoFeedback2 Weights Loader.\n" + MODELS_NOTE,
        [
            Node(2, "CheckpointLoaderSimple", 0, "load", {"ckpt_name": CHECKPOINT}, width=300),
            Node(3, "EmoFeedback2SweepGrid", 1, "generate", {
                "prompt": "a quiet harbour town at dusk", "negative_prompt": NEGATIVE,
                "valences": "-3, -1.5, 0, 1.5, 3", "arousals": "-3, -1.5, 0, 1.5, 3", "seed": 1234,
                "steps": 20, "cfg": 7.0, "width": 512, "height": 512, "text_strength": 1.0, "adapter_strength": 1.0},
                width=320),
            Node(4, "SaveImage", 2, "generate", {"filename_prefix": "EmoFeedback2/sweep_grid"}, title="Labelled grid",
                 width=560, height=560),
        ],  # fmt: skip
        [(2, "MODEL", 3, "model"), (2, "CLIP", 3, "clip"), (2, "VAE", 3, "vae"), (3, "grid", 4, "images")],
        {"load": "Load", "generate": "Generate the grid"},
        note_height=330,
    )


def flux_lora_and_adapter() -> Graph:
    return Graph(
        "flux_emotion_lora",
        "Flux.1 [dev] with an emotion LoRA and emotion adapter trained by EmoFeedback2.\n\nFlux conventions, as in "
        "ComfyUI's own Flux examples: guidance goes on the conditioning (FluxGuidance, 3.5) and KSampler runs at "
        "cfg 1.0, so its negative input is ignored (fed the zeroed conditioning); the latent is EmptySD3LatentImage's "
        "16 channels.\n\nModels:\n- Load Diffusion Model: flux1-dev in models/diffusion_models.\n- DualCLIPLoader "
        "(type flux): clip_l and t5xxl in models/text_encoders.\n- Load VAE: ae.safetensors in models/vae.\n- "
        "EmoFeedback2 Weights Loader: the LoRA and adapter from `emofeedback2 export` of a Flux run (its "
        "emofeedback2_lora.safetensors into models/loras, emotion_adapter.safetensors into "
        f"models/emotion_adapters, renamed here {FLUX['lora']} / {FLUX['adapter']}).",
        [
            Node(2, "UNETLoader", 0, "load", {"unet_name": FLUX["unet"], "weight_dtype": "default"}, width=300),
            Node(3, "DualCLIPLoader", 0, "load", {
                "clip_name1": FLUX["t5"], "clip_name2": FLUX["clip_l"], "type": "flux", "device": "default"}, width=300),
            Node(4, "VAELoader", 0, "load", {"vae_name": FLUX["vae"]}, width=300),
            Node(5, "EmoFeedback2WeightsLoader", 1, "load", {
                "lora_name": FLUX["lora"], "adapter_name": FLUX["adapter"]}, width=280),
            Node(6, "EmoFeedback2Conditioner", 2, "condition", {
                "prompt": "a lighthouse on a rocky coast at dusk, wide shot", "valence": 2.0, "arousal": -1.5,
                "text_strength": 0.5, "adapter_strength": 1.0}, width=280),
            Node(7, "FluxGuidance", 3, "condition", {"guidance": 3.5}, width=220),
            Node(8, "ConditioningZeroOut", 3, "condition", title="Zeroed negative", width=220),
            Node(9, "EmptySD3LatentImage", 3, "condition", {"width": 1024, "height": 1024, "batch_size": 1}, width=220),
            Node(10, "KSampler", 4, "generate", {
                "seed": 42, "steps": 20, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0},
                width=240),
            Node(11, "VAEDecode", 5, "generate", width=150),
            Node(12, "SaveImage", 6, "generate", {"filename_prefix": "EmoFeedback2/flux_emotion"}, width=330, height=360),
        ],  # fmt: skip
        [
            (2, "MODEL", 5, "model"), (3, "CLIP", 5, "clip"),
            (5, "clip", 6, "clip"), (5, "emotion_adapter", 6, "emotion_adapter"),
            (6, "conditioning", 7, "conditioning"), (6, "conditioning", 8, "conditioning"),
            (5, "model", 10, "model"), (7, "CONDITIONING", 10, "positive"), (8, "CONDITIONING", 10, "negative"),
            (9, "LATENT", 10, "latent_image"), (10, "LATENT", 11, "samples"), (4, "VAE", 11, "vae"),
            (11, "IMAGE", 12, "images"),
        ],  # fmt: skip
        SD_STAGES,
        note_height=420,
        # the VAE loader sits low so that its wire passes under the conditioning nodes into VAE Decode
        ys={2: 76, 3: 194, 4: 398, 5: 76, 6: 136, 7: 136, 8: 230, 9: 300, 10: 76, 11: 378, 12: 378},
        wide_gaps={5: 130},
    )


def graphs() -> list[Graph]:
    return [text_to_image(), score_and_refine(), reward_loop(), sweep_grid(), flux_lora_and_adapter()]


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

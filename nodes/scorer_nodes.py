"""EmoFeedback2 Scorer node: an IMAGE batch → per-image measured valence, arousal, reward against a target, analysis.

ComfyUI wiring: the FLOAT outputs carry the batch mean (one image → that image's value) so they plug
into any FLOAT input; ``readings_json`` carries every image's row for inspection or scripts.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Optional

import torch

from ..engines.emotion_space import VA
from ..engines.images import check_image_tensor
from ..engines.judge.scoring import EmotionScorer, assess_readings, reading_rows
from . import comfy_bridge
from .errors import clean_errors
from .common import arousal_widget, category, display_name, node_id, valence_widget
from .loader_nodes import DISPLAY_NAME as LOADER_DISPLAY_NAME, LVLM_TYPE, judge_label, require_lvlm

NO_REWARD = -1.0
NAME = "Scorer"
NODE_ID, DISPLAY_NAME = node_id(NAME), display_name(NAME)
JUDGE_OUTPUT_TOOLTIP = (
    "Which judge read the images: the LVLM's folder name, or a line saying the colour heuristic (no LVLM) did."
)


class LVLMEmotionScorer:
    """Measure the emotion of every image in a batch with the LVLM (or the colour heuristic)."""

    CATEGORY = category("judge")
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING", "STRING", "STRING")
    RETURN_NAMES = ("measured_valence", "measured_arousal", "reward", "analysis", "readings_json", "judge")
    OUTPUT_TOOLTIPS = (
        "Measured valence in [-3, 3] (mean over the batch; the image's own value for one image).",
        "Measured arousal in [-3, 3] (mean over the batch).",
        "Mean reward in [0, 1] against the target (1 = on target): 1 - mean(|ΔV|, |ΔA|)/6. -1 when use_target is off.",
        "A readable report, one line per image (with the model's short explanation when analysis is on).",
        "JSON list with one row per image: index, valence, arousal, reward, distance, digit_mass and "
        "low_digit_mass (true when the judge put little probability on the scale digits: an unreliable "
        "reading), analysis.",
        JUDGE_OUTPUT_TOOLTIP,
    )
    DESCRIPTION = (
        "Reads valence (unpleasant → pleasant) and arousal (calm → excited) of every image, in [-3, 3], "
        "from the LVLM's answer probabilities (no text parsing), all images in one batch. Optionally "
        "compares with a target emotion and asks the model for a short explanation. The judge output "
        "names what judged (an LVLM, or the colour heuristic)."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "lvlm": (LVLM_TYPE, {"tooltip": f"The judge from the {LOADER_DISPLAY_NAME} node."}),
                "images": ("IMAGE", {"tooltip": "A batch of images to score; each gets its own reading."}),
                "use_target": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Compare each reading with the target below and output a reward."},
                ),
                "valence": valence_widget(0.0, "Target valence in [-3, 3] (used when use_target is on)."),
                "arousal": arousal_widget(0.0, "Target arousal in [-3, 3] (used when use_target is on)."),
                "analysis": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Also generate a short explanation per image (slower: text "
                                                  "generation). The numbers never depend on this text."},
                ),
            }
        }

    @clean_errors
    def score(
        self,
        lvlm: EmotionScorer,
        images: torch.Tensor,
        use_target: bool = False,
        valence: float = 0.0,
        arousal: float = 0.0,
        analysis: bool = False,
    ):
        lvlm = require_lvlm(lvlm)
        target: Optional[VA] = VA(valence, arousal) if use_target else None
        images = check_image_tensor(images, "images")
        progress = comfy_bridge.make_progress(1)
        if "progress" in inspect.signature(lvlm.score).parameters:
            readings = lvlm.score(images, analysis=bool(analysis), progress=progress)
        else:
            progress(0, 1)
            readings = lvlm.score(images, analysis=bool(analysis))
            progress(1, 1)
        comfy_bridge.check_interrupted()
        rows = reading_rows(readings, target)
        n = len(readings)
        mean_v = sum(r.valence for r in readings) / n
        mean_a = sum(r.arousal for r in readings) / n
        mean_reward = sum(row["reward"] for row in rows) / n if target is not None else NO_REWARD
        report = self._report(lvlm, rows, target)
        report += "".join(f"\nWARNING: {w}" for w in assess_readings(readings, lvlm).warnings)
        return (float(mean_v), float(mean_a), float(mean_reward), report, json.dumps(rows), judge_label(lvlm))

    @staticmethod
    def _report(lvlm: EmotionScorer, rows: list[dict], target: Optional[VA]) -> str:
        kind = " (heuristic: colour statistics, not a content judgement)" if lvlm.is_heuristic else ""
        lines = [f"Scored by {lvlm.name}{kind}" + (f"; target {target}" if target is not None else "")]
        for row in rows:
            line = f"image {row['index'] + 1}: V={row['valence']:+.2f} A={row['arousal']:+.2f}"
            if "reward" in row:
                line += f" reward={row['reward']:.3f}"
            if row.get("low_digit_mass"):
                line += f" [LOW DIGIT MASS {row['digit_mass']:.2f}: unreliable reading]"
            if row.get("analysis"):
                line += f" — {row['analysis']}"
            lines.append(line)
        return "\n".join(lines)


NODE_CLASS_MAPPINGS: dict[str, type] = {NODE_ID: LVLMEmotionScorer}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {NODE_ID: DISPLAY_NAME}

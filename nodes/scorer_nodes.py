"""LVLMEmotionScorer node: an IMAGE batch → per-image valence, arousal, reward against a target, analysis.

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
from .common import CATEGORY, arousal_widget, valence_widget
from .loader_nodes import LVLM_TYPE, require_lvlm

NO_REWARD = -1.0


class LVLMEmotionScorer:
    """Measure the emotion of every image in a batch with the LVLM (or the colour heuristic)."""

    CATEGORY = f"{CATEGORY}/LVLM"
    FUNCTION = "score"
    RETURN_TYPES = ("FLOAT", "FLOAT", "FLOAT", "STRING", "STRING")
    RETURN_NAMES = ("valence", "arousal", "reward", "analysis", "readings_json")
    OUTPUT_TOOLTIPS = (
        "Measured valence in [-3, 3] (mean over the batch; the image's own value for one image).",
        "Measured arousal in [-3, 3] (mean over the batch).",
        "Mean reward in [0, 1] against the target (1 = on target): 1 - mean(|ΔV|, |ΔA|)/6. -1 when use_target is off.",
        "A readable report, one line per image (with the model's short explanation when analysis is on).",
        "JSON list with one row per image: index, valence, arousal, reward, distance, digit_mass and "
        "low_digit_mass (true when the judge put little probability on the scale digits: an unreliable "
        "reading), analysis.",
    )
    DESCRIPTION = (
        "Reads valence (unpleasant → pleasant) and arousal (calm → excited) of every image, in [-3, 3], "
        "from the LVLM's answer probabilities (no text parsing), all images in one batch. Optionally "
        "compares with a target emotion and asks the model for a short explanation."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "lvlm": (LVLM_TYPE, {"tooltip": "The judge from the LVLM Loader (EmoFeedback2) node."}),
                "images": ("IMAGE", {"tooltip": "A batch of images to score; each gets its own reading."}),
                "use_target": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Compare each reading with the target below and output a reward."},
                ),
                "target_valence": valence_widget(0.0, "Target valence in [-3, 3] (used when use_target is on)."),
                "target_arousal": arousal_widget(0.0, "Target arousal in [-3, 3] (used when use_target is on)."),
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
        target_valence: float = 0.0,
        target_arousal: float = 0.0,
        analysis: bool = False,
    ):
        lvlm = require_lvlm(lvlm)
        target: Optional[VA] = VA(target_valence, target_arousal) if use_target else None
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
        return (float(mean_v), float(mean_a), float(mean_reward), report, json.dumps(rows))

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


NODE_CLASS_MAPPINGS: dict[str, type] = {"LVLMEmotionScorer": LVLMEmotionScorer}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {"LVLMEmotionScorer": "LVLM Emotion Scorer (EmoFeedback2)"}

"""Constants and widget helpers shared by every node module (no ComfyUI imports)."""

from __future__ import annotations

from ..engines.emotion_space import VA_MAX, VA_MIN

CATEGORY = "EmoFeedback2"

VALENCE_TOOLTIP = (
    "Valence in [-3, 3]: how pleasant the image should feel. -3 = distressing, grim, hostile; "
    "0 = neutral; +3 = joyful, warm, delightful."
)
AROUSAL_TOOLTIP = (
    "Arousal in [-3, 3]: how intense or energetic the image should feel. -3 = calm, sleepy, still; "
    "0 = moderate; +3 = excited, tense, explosive."
)


def valence_widget(default: float = 0.0, tooltip: str = VALENCE_TOOLTIP) -> tuple:
    return ("FLOAT", {"default": default, "min": VA_MIN, "max": VA_MAX, "step": 0.1, "tooltip": tooltip})


def arousal_widget(default: float = 0.0, tooltip: str = AROUSAL_TOOLTIP) -> tuple:
    return ("FLOAT", {"default": default, "min": VA_MIN, "max": VA_MAX, "step": 0.1, "tooltip": tooltip})

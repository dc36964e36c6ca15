"""Conditioner nodes: sit where CLIPTextEncode sits and steer the conditioning toward (V, A).

Two routes, usable together:
- text route (no weights needed): emotion words and visual cues for the target are woven into the
  prompt (engines.descriptors.emotional_prompt); the node outputs the prompt it actually encoded;
- learned route: an EMOTION_ADAPTER (from the Weights Loader) moves the encoded tensors
  (EmoFeedback2 Apply Adapter does only this, on conditioning encoded elsewhere).

With text_strength 0 and no adapter (or adapter_strength 0) the EmoFeedback2 Conditioner makes exactly the
call CLIPTextEncode makes on the unchanged text, so its CONDITIONING is identical to CLIPTextEncode's.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..engines.generation.comfy_backend import apply_adapter_to_conditioning, encode_text
from ..engines.descriptors import emotional_prompt
from ..engines.generation.emotion_adapter import EmotionAdapter
from ..engines.emotion_space import VA
from .errors import clean_errors
from .common import category, display_name, node_id, arousal_widget, valence_widget

EMOTION_ADAPTER_TYPE = "EMOTION_ADAPTER"
_LOG = logging.getLogger("EmoFeedback2")

TEXT_STRENGTH_TOOLTIP = (
    "How strongly emotion words are woven into the prompt, 0-2. 0 = the prompt is encoded unchanged "
    "(identical to CLIPTextEncode); 0.5 = a mood phrase; 1 = mood phrase + light/colour/motion cues; "
    "above 1 the mood phrase is weighted up with (phrase:w) syntax."
)
ADAPTER_STRENGTH_TOOLTIP = (
    "How far the emotion adapter moves the conditioning, 0-2 (1 = as trained; 0 = off, output unchanged). "
    "The change grows in proportion to this value."
)
ADAPTER_INPUT_TOOLTIP = (
    "Optional learned emotion adapter from the EmoFeedback2 Weights Loader. It must be made for this model "
    "family (SD1.5 / SDXL / SD3.x …); a mismatch stops with an error saying which."
)
NAME, APPLY_NAME = "Conditioner", "Apply Adapter"
NODE_ID, DISPLAY_NAME = node_id(NAME), display_name(NAME)
APPLY_NODE_ID, APPLY_DISPLAY_NAME = node_id(APPLY_NAME), display_name(APPLY_NAME)


def _strength_widget(default: float, tooltip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": tooltip})


def emotion_text(prompt: str, valence: float, arousal: float, text_strength: float) -> str:
    """The prompt to encode; at strength 0 the user's prompt exactly as typed (whitespace included)."""
    target = VA(valence, arousal)
    if float(text_strength) == 0.0:
        return prompt
    return emotional_prompt(prompt, target, float(text_strength))


class EmotionConditioner:
    """CLIP + prompt + target emotion → CONDITIONING (a drop-in for CLIPTextEncode)."""

    CATEGORY = category("conditioning")
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "encoded_prompt")
    OUTPUT_TOOLTIPS = (
        "Conditioning for KSampler's positive input, steered toward the target valence/arousal.",
        "The prompt text that was actually encoded (your prompt plus the emotion words, if any).",
    )
    DESCRIPTION = (
        "Encodes a prompt like CLIPTextEncode, steered toward a target emotion: valence (unpleasant -3 … "
        "+3 pleasant) and arousal (calm -3 … +3 excited). Emotion words are added to the prompt "
        "(text_strength) and, if connected, a trained emotion adapter moves the encoding (adapter_strength). "
        "With both strengths at 0 the output equals CLIPTextEncode's."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The CLIP (text encoder) from your checkpoint loader."}),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                      "tooltip": "Your prompt, as you would type it into CLIPTextEncode."}),
                "valence": valence_widget(),
                "arousal": arousal_widget(),
                "text_strength": _strength_widget(1.0, TEXT_STRENGTH_TOOLTIP),
            },
            "optional": {
                "emotion_adapter": (EMOTION_ADAPTER_TYPE, {"tooltip": ADAPTER_INPUT_TOOLTIP}),
                "adapter_strength": _strength_widget(1.0, ADAPTER_STRENGTH_TOOLTIP),
            },
        }

    @clean_errors
    def encode(
        self,
        clip: Any,
        prompt: str,
        valence: float,
        arousal: float,
        text_strength: float = 1.0,
        emotion_adapter: Optional[EmotionAdapter] = None,
        adapter_strength: float = 1.0,
    ) -> tuple[list, str]:
        encoded = emotion_text(prompt, valence, arousal, text_strength)
        conditioning = encode_text(clip, encoded)  # the very call CLIPTextEncode makes
        conditioning = apply_adapter_to_conditioning(
            conditioning, emotion_adapter, VA(valence, arousal), float(adapter_strength)
        )
        return (conditioning, encoded)


NO_ADAPTER_NOTE = (
    "no emotion adapter connected: the conditioning passed through unchanged. This node needs an adapter "
    f"trained by EmoFeedback2 (pick it in the {display_name('Weights Loader')}'s adapter_name); without one, use "
    f"the {DISPLAY_NAME}'s text route (text_strength) instead."
)
FROM_CONDITIONING_ADAPTER_TOOLTIP = (
    "Required for any effect: a trained emotion adapter from the EmoFeedback2 Weights Loader, made for this "
    "model family (SD1.5 / SDXL / SD3.x …). Unconnected (or 'none' in the loader), the conditioning passes "
    "through unchanged and the note output says so."
)


class EmotionConditionerFromConditioning:
    """CONDITIONING + target emotion + EMOTION_ADAPTER → CONDITIONING (for prompts encoded elsewhere)."""

    CATEGORY = category("conditioning")
    FUNCTION = "apply"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("conditioning", "note")
    OUTPUT_TOOLTIPS = (
        "The input conditioning moved toward the target valence/arousal by the adapter (unchanged without one).",
        "What happened: the adapter applied and its strength, or why the conditioning passed through unchanged.",
    )
    DESCRIPTION = (
        "Applies a trained emotion adapter to conditioning from any text encoder node (CLIPTextEncode, "
        "SDXL/SD3 encoders, combined or scheduled conditioning): every entry's tensors are moved toward the "
        "target valence (unpleasant -3 … +3 pleasant) and arousal (calm -3 … +3 excited). Needs an emotion "
        "adapter trained by EmoFeedback2; without one (or at strength 0) the conditioning passes through "
        "untouched and the note output says so."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "Conditioning from a text encoder node."}),
                "valence": valence_widget(),
                "arousal": arousal_widget(),
                "adapter_strength": _strength_widget(1.0, ADAPTER_STRENGTH_TOOLTIP),
            },
            "optional": {
                "emotion_adapter": (EMOTION_ADAPTER_TYPE, {"tooltip": FROM_CONDITIONING_ADAPTER_TOOLTIP}),
            },
        }

    @clean_errors
    def apply(
        self, conditioning: list, emotion_adapter: Optional[EmotionAdapter] = None, valence: float = 0.0,
        arousal: float = 0.0, adapter_strength: float = 1.0,
    ) -> tuple[list, str]:
        target = VA(valence, arousal)
        if emotion_adapter is None:
            _LOG.warning("[EmoFeedback2] %s: %s", APPLY_DISPLAY_NAME, NO_ADAPTER_NOTE)
            return (conditioning, NO_ADAPTER_NOTE)
        moved = apply_adapter_to_conditioning(conditioning, emotion_adapter, target, float(adapter_strength))
        note = f"emotion adapter ({emotion_adapter.arch}) applied at strength {float(adapter_strength):g} toward {target}"
        return (moved, note)


NODE_CLASS_MAPPINGS: dict[str, type] = {NODE_ID: EmotionConditioner, APPLY_NODE_ID: EmotionConditionerFromConditioning}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {NODE_ID: DISPLAY_NAME, APPLY_NODE_ID: APPLY_DISPLAY_NAME}

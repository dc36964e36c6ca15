"""Constants and widget helpers shared by every node module (no ComfyUI imports)."""

from __future__ import annotations

from ..engines.emotion_space import VA_MAX, VA_MIN

#: the pack's name: the first word of every node's class name and display name, and its menu root
PACK = "EmoFeedback2"
CATEGORY = PACK


def category(leaf: str) -> str:
    """``EmoFeedback2/<leaf>``: one menu tree, with core's lowercase leaves (loaders, conditioning, sampling …)."""
    return f"{PACK}/{leaf}"


def node_id(name: str) -> str:
    """The ComfyUI class name of one of our nodes: the pack name, then the node's own (``EmoFeedback2Scorer``)."""
    return f"{PACK}{name.replace(' ', '')}"


def display_name(name: str) -> str:
    """What the canvas shows: ``EmoFeedback2 <name>``, short enough for the default node width."""
    return f"{PACK} {name}"

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


# --- sampling widgets shared with the core KSampler / EmptyLatentImage nodes ----------------------

#: ComfyUI's nodes.MAX_RESOLUTION
MAX_RESOLUTION = 16384
#: one negative prompt default for every node that takes one (and the shipped workflows)
NEGATIVE_DEFAULT = "blurry, low quality, watermark, text"


def steps_widget(tooltip: str = "Sampling steps per image, as in KSampler.") -> tuple:
    return ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": tooltip})


def cfg_widget(tooltip: str = "Classifier-free guidance scale, as in KSampler.") -> tuple:
    return ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": tooltip})


def size_widget(what: str) -> tuple:
    """Width/height exactly like EmptyLatentImage's (step 8; other values are floored to a multiple of 8)."""
    return ("INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                    "tooltip": f"{what} in pixels; like EmptyLatentImage, a value that is not a multiple of 8 "
                               "is rounded down to one."})  # fmt: skip


def negative_widget(tooltip: str) -> tuple:
    return ("STRING", {"multiline": True, "default": NEGATIVE_DEFAULT, "tooltip": tooltip})


#: what to do about an empty prompt typed into a widget
PROMPT_HINT = "type what the image should show (e.g. 'a lighthouse on a rocky coast')"


def check_prompt_given(prompt: object, hint: str = PROMPT_HINT) -> "bool | str":
    """``VALIDATE_INPUTS`` for a prompt that cannot be empty: ComfyUI rejects the queue request with this text.

    ComfyUI passes ``None`` for an input wired from another node (its value exists only at run
    time); that one is accepted here and checked when the node runs.
    """
    if prompt is None or str(prompt).strip():
        return True
    return f"prompt is empty: {hint}"


def latent_multiple(pixels: int) -> int:
    """EmptyLatentImage's rounding: the latent is ``pixels // 8`` wide, so the image is that × 8."""
    return (int(pixels) // 8) * 8

"""LVLM Loader node: pick a vision-language model folder under ComfyUI's ``models/LLM`` (or the colour heuristic).

The output (ComfyUI type ``"LVLM"``) is an :class:`~..engines.scoring.EmotionScorer`: an
:class:`~..engines.lvlm_scorer.LVLMScorer` or the weight-free
:class:`~..engines.color_scorer.ColorHeuristicScorer`. ComfyUI caches the loader's output, so the
model loads once and the scorer/refiner/loop nodes reuse it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..engines.judge.color_scorer import ColorHeuristicScorer
from ..engines.judge.lvlm_loading import adapter_pixel_limits
from ..engines.judge.options import ATTENTION_CHOICES, QUANTIZATION_CHOICES
from ..engines.judge.lvlm_scorer import LVLMConfig, LVLMLoadError, load_lvlm
from ..engines.judge.preset_judge import choose_reading, judge_with_reading
from ..engines.judge.presets import AUTO, DIGITS, shipped_preset_names
from ..engines.judge.scoring import EmotionScorer
from . import comfy_bridge
from .errors import clean_errors
from .common import category, display_name, node_id
from .lvlm_memory import ComfyResidency

LVLM_TYPE = "LVLM"
NAME = "LVLM Loader"
NODE_ID, DISPLAY_NAME = node_id(NAME), display_name(NAME)


def require_lvlm(lvlm: Any) -> EmotionScorer:
    """The object on an LVLM input, checked: nodes take it only from the LVLM loader."""
    if not isinstance(lvlm, EmotionScorer):
        raise TypeError(f"lvlm must come from the '{DISPLAY_NAME}' node, got {type(lvlm).__name__}")
    return lvlm


def judge_label(lvlm: EmotionScorer) -> str:
    """One line naming the judge, for the scorer's and the loop's ``judge`` outputs."""
    if lvlm.is_heuristic:
        return f"{lvlm.name}: NO LVLM judged (a brightness/saturation rule of thumb, not a reading of content)"
    return lvlm.name


LLM_FOLDER = "LLM"
#: the weight-free choice, named so that a graph running on it says so where the model name would be
COLOUR_OPTION = "no LVLM: colour heuristic judges"
#: its name before the rename (graphs saved with the old loader hold this value)
LEGACY_COLOUR_OPTION = "colour heuristic (no model)"
NO_ADAPTER = "none"
#: max_pixels = 0 without an adapter that recorded its limits: about 512 image tokens on Qwen-VL (speed).
AUTO_MAX_PIXELS = 401408
MAX_DEPTH = 2  # models/LLM/<name> and models/LLM/<org>/<name>


def llm_search_paths() -> list[str]:
    """Folders ComfyUI searches for LLMs (``models/LLM`` plus extra_model_paths.yaml entries)."""
    try:
        return comfy_bridge.ensure_model_folder(LLM_FOLDER)
    except ImportError:  # imported outside ComfyUI (CLI, docs): no folders to list
        return []


def _find_folders(marker: str) -> list[str]:
    """Relative names ("name" or "org/name") of folders containing ``marker`` under every LLM path."""
    found: list[str] = []
    for base in llm_search_paths():
        if not os.path.isdir(base):
            continue
        for dirpath, subdirs, files in os.walk(base, followlinks=True):
            rel = os.path.relpath(dirpath, base)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth and "model_index.json" in files:  # a diffusion pipeline: its parts are no judges
                subdirs[:] = []
                continue
            if depth and marker in files:
                name = rel.replace(os.sep, "/")
                if name not in found:
                    found.append(name)
                subdirs[:] = []  # a model folder's own sub-folders are not separate models
                continue
            if depth >= MAX_DEPTH:
                subdirs[:] = []
            subdirs.sort()
    return sorted(found, key=str.lower)


def list_model_folders() -> list[str]:
    """HF model folders (with config.json) under the LLM paths; adapters are listed separately."""
    adapters = set(list_adapter_folders())
    return [name for name in _find_folders("config.json") if name not in adapters]


def list_adapter_folders() -> list[str]:
    """peft LoRA adapter folders (with adapter_config.json) under the LLM paths."""
    return _find_folders("adapter_config.json")


PRESET_FOLDER = "judge_presets"  # user preset files: models/LLM/judge_presets/<name>.toml (or .json)


def list_judge_presets() -> list[str]:
    """The preset widget's choices: auto, digits, the shipped presets, then user files under models/LLM/judge_presets."""
    files = []
    for base in llm_search_paths():
        folder = os.path.join(base, PRESET_FOLDER)
        if os.path.isdir(folder):
            files += [name for name in sorted(os.listdir(folder)) if name.lower().endswith((".toml", ".json"))]
    return [AUTO, DIGITS, *shipped_preset_names(), *dict.fromkeys(files)]


def resolve_judge_preset(choice: str) -> str:
    """A widget choice as :func:`choose_reading` takes it: a name, or the full path of a user preset file."""
    if not choice.lower().endswith((".toml", ".json")):
        return choice
    if os.sep in choice or "/" in choice or ".." in choice:
        raise LVLMLoadError(f"invalid judge preset {choice!r}: pick one from the list")
    for base in llm_search_paths():
        path = os.path.join(base, PRESET_FOLDER, choice)
        if os.path.isfile(path):
            return path
    raise LVLMLoadError(f"judge preset file {choice!r} not found under models/LLM/{PRESET_FOLDER}/; put it there and refresh")


def model_choices() -> list[str]:
    """The model folders found, then the colour heuristic: with a model on disk, a model is the default."""
    return [*list_model_folders(), COLOUR_OPTION]


def resolve_llm_folder(name: str, marker: str = "config.json") -> str:
    """Full path of the listed folder ``name``; a clear error naming the searched folders otherwise."""
    parts = Path(name).parts
    if not name or ".." in parts or Path(name).is_absolute():
        raise LVLMLoadError(f"invalid model folder name {name!r}: pick one from the list")
    searched = llm_search_paths()
    for base in searched:
        candidate = os.path.join(base, *name.split("/"))
        if os.path.isfile(os.path.join(candidate, marker)):
            return candidate
    where = ", ".join(searched) or "ComfyUI/models/LLM"
    raise LVLMLoadError(
        f"model folder {name!r} not found (no {marker}) in {where}. Put the whole Hugging Face folder at "
        f"models/LLM/{name} (or a path listed in extra_model_paths.yaml under 'LLM') and refresh."
    )


class LVLMLoader:
    """Load a vision-language model to judge emotion, or select the colour heuristic."""

    CATEGORY = category("loaders")
    FUNCTION = "load"
    RETURN_TYPES = (LVLM_TYPE,)
    RETURN_NAMES = ("lvlm",)
    OUTPUT_TOOLTIPS = ("The emotion judge: connect it to the EmoFeedback2 Scorer, Prompt Refiner or Reward Loop.",)
    DESCRIPTION = (
        "Loads a Hugging Face image-text-to-text chat model (Qwen2/2.5/3-VL, Qwen3.5, Gemma 3/4, InternVL, "
        "LLaVA-OneVision, SmolVLM …) from a folder "
        "under ComfyUI/models/LLM/<name>, optionally with a LoRA adapter from training. The last option, "
        f"'{COLOUR_OPTION}', needs no model: it reads brightness and saturation (Valdez & Mehrabian 1994) "
        "and is a rough stand-in, not a content judgement; the nodes it feeds say so in their judge output."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": (
                    model_choices(),
                    {"tooltip": "A model folder under ComfyUI/models/LLM (must contain config.json and *.safetensors). "
                                f"'{COLOUR_OPTION}' (the only choice until a model is there) uses a weight-free "
                                "brightness/saturation rule instead of a model."},
                ),
                "dtype": (
                    ["auto", "bfloat16", "float16", "float32"],
                    {"default": "auto", "tooltip": "Weight precision. auto = bfloat16 on GPUs that support it, float32 on CPU."},
                ),
                "device": (
                    ["auto", "cuda", "cpu", "mps"],
                    {"default": "auto", "tooltip": "Where the model runs. auto = ComfyUI's main device."},
                ),
                "attention": (
                    ["auto", *ATTENTION_CHOICES],
                    {"default": "auto", "tooltip": "Attention kernel. auto = transformers' default (sdpa, fast on "
                                                   "every device); eager = plain PyTorch; flash_attention_2 needs a "
                                                   "CUDA GPU and the flash-attn package."},
                ),
                "keep_loaded": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "On: the model stays on the device between runs (fast), managed by "
                                                 "ComfyUI like its own models: it is unloaded when the diffusion model "
                                                 "needs the memory or on 'Unload Models', and loaded back when next "
                                                 "needed. Off: moved to RAM right after every use."},
                ),
            },
            "optional": {
                "adapter": (
                    [NO_ADAPTER, *list_adapter_folders()],
                    {"default": NO_ADAPTER, "tooltip": "A LoRA adapter folder (adapter_config.json) under models/LLM, "
                                                       "e.g. a scorer fine-tuned by emofeedback2 train."},
                ),
                "max_pixels": (
                    "INT",
                    {"default": 0, "min": 0, "max": 16777216, "step": 3136,
                     "tooltip": "Largest image area fed to the vision encoder (pixels); bigger is slower. "
                                "0 = auto: the judge preset's limits (e.g. eemo-logic's), else the limit the adapter was "
                                "trained at (train-judge records it), else 401408. A value here overrides them (the console says so)."},
                ),
                "trust_remote_code": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Run Python code shipped inside the model folder. Only for models "
                                                  "you trust; Qwen-VL models do not need it."},
                ),
                "quantization": (
                    list(QUANTIZATION_CHOICES),
                    {"default": "none", "tooltip": "Load the weights in 8-bit or 4-bit (bitsandbytes, CUDA GPU) to "
                                                   "fit a 7B judge beside the diffusion model: about 1/2 or 1/4 of "
                                                   "the bfloat16 memory. Needs the bitsandbytes package."},
                ),
                "judge_preset": (
                    list_judge_presets(),
                    {"default": AUTO, "tooltip": "How the judge is asked and read. auto: as its adapter was trained "
                                                 "(a GRPO adapter writes the paper's reasoning format, anything else "
                                                 "answers 1-9 digits read as an expected value). digits: always the "
                                                 "digit readout. paper / eemo-logic / your files in "
                                                 "models/LLM/judge_presets: the judge writes a reasoned answer that "
                                                 "is parsed (slower: it generates text; greedy, one answer)."},
                ),
            },
        }

    @clean_errors
    def load(
        self,
        model: str,
        dtype: str = "auto",
        device: str = "auto",
        attention: str = "auto",
        keep_loaded: bool = True,
        adapter: str = NO_ADAPTER,
        max_pixels: int = 0,
        trust_remote_code: bool = False,
        quantization: str = "none",
        judge_preset: str = AUTO,
    ):
        if model == COLOUR_OPTION:
            if judge_preset not in (AUTO, DIGITS):
                raise LVLMLoadError(f"judge_preset {judge_preset!r} needs a model that writes text; the colour "
                                    "heuristic reads none: pick a model folder or judge_preset auto")
            return (ColorHeuristicScorer(),)
        folder = resolve_llm_folder(model)
        adapter_path = None if adapter in (None, "", NO_ADAPTER) else resolve_llm_folder(adapter, "adapter_config.json")
        if device == "auto":
            device = str(comfy_bridge.torch_device())
        reading = choose_reading(resolve_judge_preset(judge_preset), adapter_path)
        if reading.warning:
            print(f"[EmoFeedback2] warning: {reading.warning}")
        config = LVLMConfig(
            model=folder,
            dtype=dtype,
            device=device,
            attn_implementation=None if attention == "auto" else attention,
            adapter=adapter_path,
            trust_remote_code=bool(trust_remote_code),
            # 0 = auto: the preset's limits (those its released judge was run at), else the adapter's, else 401408
            max_pixels=int(max_pixels) or (reading.preset.max_pixels if reading.preset and reading.preset.max_pixels
                                            else None if adapter_pixel_limits(adapter_path) else AUTO_MAX_PIXELS),
            min_pixels=None if int(max_pixels) or reading.preset is None else reading.preset.min_pixels,
            offload_after_use=not keep_loaded,
            offload_device=str(comfy_bridge.offload_device()),
            quantization=quantization,
        )
        residency = ComfyResidency(keep_loaded=bool(keep_loaded))
        scorer = judge_with_reading(load_lvlm(config, residency=residency), reading)
        comfy_bridge.soft_empty_cache()
        return (scorer,)


NODE_CLASS_MAPPINGS: dict[str, type] = {NODE_ID: LVLMLoader}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {NODE_ID: DISPLAY_NAME}

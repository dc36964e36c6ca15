"""EmoFeedback2 Prompt Refiner and Reward Loop: the LVLM's judgement as text that rewrites the prompt.

Both are thin: they parse widgets, build engine objects (refiner, ComfyUI generator, loop config)
and call :mod:`..engines.refiner` / :mod:`..engines.feedback_loop`; progress and Cancel go through
:func:`.comfy_bridge.make_progress`.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import torch

from ..engines.emotion_space import VA
from ..engines.loop.feedback_loop import LoopConfig, progress_units, run_feedback_loop
from ..engines.images import check_image_tensor
from ..engines.loop.refiner import make_refiner
from ..engines.judge.scoring import EmotionScorer, RecordedScorer
from ..engines.loop.trajectory_plot import plot_to_tensor, plot_trajectory
from . import comfy_bridge
from .errors import clean_errors
from .common import (
    arousal_widget, category, cfg_widget, check_prompt_given, display_name, latent_multiple, negative_widget, node_id,
    size_widget, steps_widget, valence_widget,
)
from .conditioner_nodes import EMOTION_ADAPTER_TYPE
from .loader_nodes import DISPLAY_NAME as LOADER_DISPLAY_NAME, LVLM_TYPE, judge_label, require_lvlm
from .scorer_nodes import JUDGE_OUTPUT_TOOLTIP

_DEFAULTS = LoopConfig()
MAX_SEED = 0xFFFFFFFFFFFFFFFF
REFINER_NAME, LOOP_NAME = "Prompt Refiner", "Reward Loop"
REFINER_NODE_ID, REFINER_DISPLAY_NAME = node_id(REFINER_NAME), display_name(REFINER_NAME)
LOOP_NODE_ID, LOOP_DISPLAY_NAME = node_id(LOOP_NAME), display_name(LOOP_NAME)


class FeedbackPromptRefiner:
    """One refinement step: image + its reading + target → feedback and a rewritten prompt."""

    CATEGORY = category("judge")
    FUNCTION = "refine"
    RETURN_TYPES = ("STRING", "STRING", "FLOAT", "FLOAT", "BOOLEAN")
    RETURN_NAMES = ("refined_prompt", "feedback", "measured_valence", "measured_arousal", "used_fallback")
    OUTPUT_TOOLTIPS = (
        "The rewritten prompt: your subject and composition words kept, emotional content (light, colour, "
        "weather, expression, setting) moved toward the target; at most ~75 CLIP tokens.",
        "Short feedback: what in the image pulls the emotion away from the target (sanitised model text, "
        "or the descriptor fallback's explanation, marked [fallback: …] when the LVLM answer was rejected).",
        "The valence the refinement started from (the measured input, or the LVLM's reading of the image).",
        "The arousal the refinement started from.",
        "True when the weight-free descriptor refiner wrote the prompt (colour heuristic loaded, or the "
        "LVLM's answer was malformed, hostile or dropped your subject).",
    )
    DESCRIPTION = (
        "Shows the image, its measured emotion and the target emotion to the LVLM, which explains what "
        "misses and rewrites the prompt, keeping the subject and changing only emotional content. Model "
        "text is sanitised; a bad answer falls back to emotion descriptors instead of failing the graph."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "lvlm": (LVLM_TYPE, {"tooltip": f"The judge from the {LOADER_DISPLAY_NAME} node. With the "
                                                "colour heuristic the descriptor fallback writes the prompt."}),
                "image": ("IMAGE", {"tooltip": "The generated image to critique (the first image of a batch is used)."}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompt that produced the image."}),
                "valence": valence_widget(0.0, "Target valence in [-3, 3]: how pleasant the next image should feel."),
                "arousal": arousal_widget(0.0, "Target arousal in [-3, 3]: how intense the next image should feel."),
            },
            "optional": {
                "measured_valence": ("FLOAT", {"forceInput": True, "default": 0.0, "min": -3.0, "max": 3.0,
                                               "tooltip": "Measured valence of the image (e.g. the Scorer's "
                                                          "measured_valence). Leave unconnected to let the LVLM read it."}),
                "measured_arousal": ("FLOAT", {"forceInput": True, "default": 0.0, "min": -3.0, "max": 3.0,
                                               "tooltip": "Measured arousal of the image. Leave unconnected to let the LVLM read it."}),
                "subject": ("STRING", {"default": "", "tooltip": "Optional: your original prompt, when 'prompt' is already "
                                                                 "a refined one, so its subject words are the ones kept."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt: Optional[str] = None) -> "bool | str":
        """Queue-time check (ComfyUI calls it before running anything): an empty prompt can only fail."""
        return check_prompt_given(
            prompt, "type the prompt that produced the image, or wire it in (e.g. the Conditioner's encoded_prompt)"
        )

    @clean_errors
    def refine(
        self,
        lvlm: EmotionScorer,
        image: torch.Tensor,
        prompt: str,
        valence: float,
        arousal: float,
        measured_valence: Optional[float] = None,
        measured_arousal: Optional[float] = None,
        subject: str = "",
    ):
        lvlm = require_lvlm(lvlm)
        if not prompt or not prompt.strip():
            raise ValueError("prompt is empty: connect the prompt that produced the image")
        target = VA(valence, arousal)
        image = check_image_tensor(image, "image")[:1]
        progress = comfy_bridge.make_progress(2)
        progress(0, 2)
        if measured_valence is None or measured_arousal is None:
            reading = lvlm.score(image)[0]
            measured = VA.clamped(
                reading.valence if measured_valence is None else measured_valence,
                reading.arousal if measured_arousal is None else measured_arousal,
            )
        else:
            measured = VA(measured_valence, measured_arousal)
        progress(1, 2)
        result = make_refiner(lvlm).refine(image, prompt, measured, target, subject=subject.strip() or None)
        progress(2, 2)
        return (result.prompt, result.feedback, measured.valence, measured.arousal, bool(result.used_fallback))


class EmoRewardLoop:
    """The whole feedback loop inside one node: rounds × candidates, LVLM judge, prompt rewriting."""

    CATEGORY = category("sampling")
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "IMAGE", "STRING", "STRING", "IMAGE", "STRING")
    RETURN_NAMES = ("best_image", "all_candidates", "final_prompt", "history_json", "trajectory_plot", "judge")
    OUTPUT_TOOLTIPS = (
        "The candidate whose measured emotion came closest to the target over all rounds.",
        "Every candidate of every completed round, in order (round 1 first).",
        "The prompt that produced the best image.",
        "JSON history: per round the prompt, feedback and every candidate's seed, valence, arousal and reward; "
        "stop reason, counts of generated and judged images, timings.",
        "The valence-arousal plane with the target, every candidate (coloured by round) and the best-so-far path.",
        JUDGE_OUTPUT_TOOLTIP,
    )
    DESCRIPTION = (
        "EmoFeedback² self-promotion loop: generates candidates, lets the LVLM judge their valence/arousal "
        "in one batch, keeps the best, and lets the LVLM explain what misses and rewrite the prompt for the "
        "next round. Stops early when the best image is within the tolerance of the target or a round "
        "brings no improvement. Seeds of the candidates are seed, seed+1, … in order."
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        samplers, schedulers = comfy_bridge.sampler_and_scheduler_names()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model (e.g. from Load Checkpoint or the trained-weights loader)."}),
                "clip": ("CLIP", {"tooltip": "The text encoder that goes with the model."}),
                "vae": ("VAE", {"tooltip": "The VAE that decodes the model's latents."}),
                "lvlm": (LVLM_TYPE, {"tooltip": f"The judge from the {LOADER_DISPLAY_NAME} node; it scores every "
                                                "candidate and writes the feedback (colour heuristic: descriptor fallback)."}),
                "prompt": ("STRING", {"multiline": True, "default": "a lighthouse on a rocky coast, wide shot",
                                      "tooltip": "What to draw. Subject and composition words are kept in every round; "
                                                 "emotional content is rewritten."}),
                "negative_prompt": negative_widget("Negative prompt, the same in every round."),
                "valence": valence_widget(1.5),
                "arousal": arousal_widget(1.0),
                "rounds": ("INT", {"default": _DEFAULTS.rounds, "min": 1, "max": 10,
                                   "tooltip": "Most rounds of generate → judge → rewrite (the paper uses 3)."}),
                "candidates": ("INT", {"default": _DEFAULTS.candidates, "min": 1, "max": 32,
                                       "tooltip": "Images per round, judged together in one batch (the paper uses 8)."}),
                "tolerance": ("FLOAT", {"default": _DEFAULTS.tolerance, "min": 0.0, "max": 6.0, "step": 0.05,
                                        "tooltip": "Stop early once the best image's mean |ΔV|,|ΔA| error is at most this "
                                                   "(V-A units). 0 = never stop on tolerance."}),
                "min_improvement": ("FLOAT", {"default": _DEFAULTS.min_improvement, "min": 0.0, "max": 6.0, "step": 0.01,
                                              "tooltip": "Stop early when a round brings neither the best nor the mean "
                                                         "reading this much closer. 0 = always run every round."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Seed of the first candidate; candidate k of the run uses seed + k."}),
                "steps": steps_widget(),
                "cfg": cfg_widget(),
                "sampler_name": (samplers, {"tooltip": "Sampler, as in KSampler."}),
                "scheduler": (schedulers, {"tooltip": "Noise schedule, as in KSampler."}),
                "width": size_widget("Image width"),
                "height": size_widget("Image height"),
            },
            "optional": {
                "emotion_adapter": (EMOTION_ADAPTER_TYPE, {"tooltip": "Optional trained emotion adapter: moves the prompt "
                                                                      "conditioning toward the target V-A in every round."}),
                "adapter_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                               "tooltip": "Strength of the emotion adapter (0 = off)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, prompt: Optional[str] = None) -> "bool | str":
        """Queue-time check: the loop keeps the prompt's subject, so an empty one can only fail."""
        return check_prompt_given(prompt)

    @clean_errors
    def run(
        self,
        model: Any,
        clip: Any,
        vae: Any,
        lvlm: EmotionScorer,
        prompt: str,
        negative_prompt: str,
        valence: float,
        arousal: float,
        rounds: int,
        candidates: int,
        tolerance: float,
        min_improvement: float,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        width: int,
        height: int,
        emotion_adapter: Any = None,
        adapter_strength: float = 1.0,
    ):
        from ..engines.generation.comfy_backend import ComfyGenerator

        lvlm = require_lvlm(lvlm)
        target = VA(valence, arousal)
        config = LoopConfig(
            rounds=int(rounds), candidates=int(candidates), tolerance=float(tolerance),
            min_improvement=float(min_improvement), seed=int(seed), steps=int(steps), cfg=float(cfg),
            width=latent_multiple(width), height=latent_multiple(height), negative_prompt=negative_prompt or "",
            adapter_strength=float(adapter_strength) if emotion_adapter is not None else 0.0,
        )
        generator = ComfyGenerator(model, clip, vae, sampler_name=sampler_name, scheduler=scheduler, adapter=emotion_adapter)
        progress = comfy_bridge.make_progress(progress_units(config))
        judged = RecordedScorer(lvlm)  # keeps the readings, to flag low digit mass / near-constant ones
        result = run_feedback_loop(generator, judged, make_refiner(lvlm), prompt, target, config, progress=progress)
        plot = plot_to_tensor(plot_trajectory(result))
        history = {**result.to_dict(), "reading_trust": judged.trust().as_dict()}
        return (result.best_image, result.images, result.final_prompt, json.dumps(history), plot, judge_label(lvlm))


NODE_CLASS_MAPPINGS: dict[str, type] = {REFINER_NODE_ID: FeedbackPromptRefiner, LOOP_NODE_ID: EmoRewardLoop}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {REFINER_NODE_ID: REFINER_DISPLAY_NAME, LOOP_NODE_ID: LOOP_DISPLAY_NAME}

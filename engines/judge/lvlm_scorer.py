"""The LVLM emotion scorer: any transformers image-text-to-text model as a valence/arousal judge.

Scoring never parses free text. For every image we ask for valence and arousal on 1..9 scales,
put an answer prefix (``"Valence: "`` or ``"Arousal: "``) after the prompt and read
the model's next-token distribution over the digit tokens ``1``…``9``. The reading is the expected
value of that distribution, converted linearly to [-3, 3] (SAM 1..9 → [-3, 3], as in
:func:`.emotion_space.from_sam`). This is the Q-Align idea: continuous, differentiable, one forward
pass, never "unparsable". All images go through one left-padded batch: the prompt and each image
run once, and the two answer prefixes run as ``2·B`` short rows on the prompt's key/value cache.

Free text is used only where text is the product: the optional short "analysis" and
:meth:`LVLMScorer.generate_text` (for the prompt refiner). It is always sanitised
(:func:`.text_safety.sanitize_model_text`).

Loading goes through ``AutoModelForImageTextToText`` + ``AutoProcessor`` from a local folder or a
hub id (safetensors only; ``trust_remote_code`` off unless asked), optionally with a peft LoRA
adapter folder produced by training.
"""

from __future__ import annotations

import logging
from typing import Optional, Union

import torch

from ..emotion_space import VA_MIN, VA_SPAN
from safetensors import SafetensorError

from ..images import ImageBatch, ImageBatchError, to_pil_list
from ..progress import ProgressCallback, report
from .scoring import EmotionReading
from ..text_safety import sanitize_model_text
from .options import ATTENTION_CHOICES, QUANTIZATION_CHOICES, check_attention, quantization_kwargs
from .lvlm_config import (  # noqa: F401  (re-exported: the scorer's public names)
    MODELS_LLM_HINT, SCALE_DIGITS, _SCALE_HI, _SCALE_LO, LVLMConfig, LVLMLoadError, ScoreDetails, ScoringPrompts,
)
from .lvlm_loading import (  # noqa: F401
    _apply_pixel_limits, _check_image_text_model, _module_bytes, apply_pixel_limits, load_lvlm_weights, resolve_device,
    resolve_dtype, resolve_model_source,
)
from .residency import Residency
from .lvlm_model import LVLMModel

def load_lvlm(config: LVLMConfig, residency: Optional[Residency] = None) -> "LVLMScorer":
    """Load the model, processor and optional adapter described by ``config``.

    ``residency`` decides where the weights live between calls (default :class:`LocalResidency`:
    on the device, or moved to ``offload_device`` after each call when ``offload_after_use``).
    """
    from transformers import AutoConfig, AutoProcessor

    if config.attn_implementation not in (None, *ATTENTION_CHOICES):
        raise LVLMLoadError(
            f"attn_implementation={config.attn_implementation!r}; use None or one of {', '.join(ATTENTION_CHOICES)}"
        )
    if config.max_images_per_pass < 0:
        raise LVLMLoadError("max_images_per_pass must be 0 (all at once) or a positive number")
    source, is_local = resolve_model_source(config.model)
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    check_attention(config.attn_implementation, device)
    quantization_kwargs(config.quantization, device, dtype)  # fail before reading weights
    common = {"trust_remote_code": config.trust_remote_code}
    try:
        hf_config = AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as exc:
        where = f"the folder {source}" if is_local else f"the Hugging Face hub id {source!r} (offline, private or misspelt?)"
        raise LVLMLoadError(
            f"could not read the model config from {where}: {exc}. Download the model into a folder and "
            f"pass that folder. {MODELS_LLM_HINT}."
        ) from exc
    _check_image_text_model(hf_config, source)
    model = load_lvlm_weights(config, source, device, dtype)
    try:
        processor = AutoProcessor.from_pretrained(source, **common)
    except (OSError, ValueError, ImportError, SafetensorError) as exc:  # SafetensorError: a corrupt weights file
        raise LVLMLoadError(
            f"could not load the processor from {source}: {exc}. The folder needs config.json, tokenizer and "
            f"processor files. {MODELS_LLM_HINT}."
        ) from exc
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise LVLMLoadError(f"{source} has no image processor and tokenizer; it is not a vision-language model folder.")
    apply_pixel_limits(processor, config)  # explicit limits, else those the adapter was trained at
    scorer = LVLMScorer(model, processor, config, device=device, dtype=dtype, source=source, residency=residency)
    if scorer.readout_note:  # the answer prefixes differ from the configured ones: say why, once per load
        logging.getLogger(__name__).info("judge %s: %s", source, scorer.readout_note)
    scorer.residency.place(scorer)
    return scorer


# --- scoring -----------------------------------------------------------------------------------


class LVLMScorer(LVLMModel):
    """An :class:`~.scoring.EmotionScorer` backed by a vision-language model."""

    is_heuristic = False

    def score_details(
        self, images: ImageBatch, *, grad: bool = False, progress: Optional[ProgressCallback] = None
    ) -> ScoreDetails:
        """Expected-value valence/arousal for every image (differentiable when ``grad=True``)."""
        pil = to_pil_list(images)
        p = self.prompts
        prompt = self._chat(p.question)
        suffixes = [p.valence_prefix, p.arousal_prefix]
        scale = torch.arange(_SCALE_LO, _SCALE_HI + 1.0, dtype=torch.float32)
        outputs: list[torch.Tensor] = []
        masses: list[torch.Tensor] = []
        chunks = self._chunks(len(pil))
        report(progress, 0, len(chunks))
        with self._on_device(), torch.set_grad_enabled(grad):
            for done, (start, stop) in enumerate(chunks, 1):
                logits = self._answer_logits(prompt, suffixes, pil[start:stop]).float()
                digit_logits = logits[:, self.digit_ids]
                probs = torch.softmax(digit_logits, dim=-1)
                expected = (probs * scale.to(probs.device)).sum(dim=-1)
                outputs.append(VA_MIN + (expected - _SCALE_LO) * VA_SPAN / (_SCALE_HI - _SCALE_LO))
                masses.append(torch.exp(torch.logsumexp(digit_logits, -1) - torch.logsumexp(logits, -1)))
                report(progress, done, len(chunks))
        values = torch.cat(outputs)
        mass = torch.cat(masses)
        if not torch.isfinite(values).all():
            raise FloatingPointError(
                f"{self.name} produced NaN/inf logits (dtype {self.dtype}); try dtype='float32' or 'bfloat16'"
            )
        return ScoreDetails(values[0::2], values[1::2], mass[0::2].detach(), mass[1::2].detach())

    def score_tensors(self, images: ImageBatch, *, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(valence[B], arousal[B])`` in [-3, 3]; gradients reach the model's weights when ``grad``."""
        details = self.score_details(images, grad=grad)
        return details.valence, details.arousal

    def score(
        self, images: ImageBatch, *, analysis: bool = False, progress: Optional[ProgressCallback] = None
    ) -> list[EmotionReading]:
        """One reading per image, in order; ``analysis=True`` adds a short sanitised explanation."""
        details = self.score_details(images, progress=progress)
        texts = [""] * len(details.valence)
        if analysis:
            texts = self.generate_text(
                images, self.prompts.analysis_instruction, max_new_tokens=self.config.analysis_max_new_tokens, max_chars=400
            )
        mass = torch.minimum(details.digit_mass_valence, details.digit_mass_arousal).tolist()
        return [
            EmotionReading(valence=float(v), arousal=float(a), analysis=t, digit_mass=float(m))
            for v, a, t, m in zip(details.valence.tolist(), details.arousal.tolist(), texts, mass)
        ]

    # -- free text (analysis, refiner) --

    @torch.no_grad()
    def generate_text(
        self,
        images: Optional[ImageBatch],
        instructions: Union[list[str], str],
        max_new_tokens: int = 128,
        max_chars: int = 600,
        keep_newlines: bool = False,
    ) -> list[str]:
        """Greedy answers to ``instructions`` (one per image, or one for all), sanitised.

        ``images=None`` asks text-only questions (then ``instructions`` must be a list).
        ``keep_newlines=True`` keeps the answer's line breaks (for callers that parse its structure).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        pil = None if images is None else to_pil_list(images)
        if isinstance(instructions, str):
            if pil is None:
                instructions = [instructions]
            else:
                instructions = [instructions] * len(pil)
        instructions = list(instructions)
        if not instructions:
            raise ValueError("instructions is empty: pass one instruction, or one per image")
        if pil is not None and len(instructions) != len(pil):
            raise ValueError(f"got {len(instructions)} instructions for {len(pil)} images; pass one per image or a single one")
        texts = [self._chat(str(text), with_image=pil is not None) for text in instructions]
        answers: list[str] = []
        with self._on_device():
            for start, stop in self._chunks(len(texts)):
                encoded = self._encode(texts[start:stop], None if pil is None else pil[start:stop])
                generated = self.model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
                new_tokens = generated[:, encoded["input_ids"].shape[1]:]
                for row in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                    answers.append(sanitize_model_text(row, max_chars=max_chars, keep_newlines=keep_newlines))
        return answers


def check_images_for_scoring(images: ImageBatch) -> None:
    """Raise :class:`ImageBatchError` early for an empty/NaN/odd-shaped batch (nodes call this first)."""
    to_pil_list(images)


__all__ = [
    "LVLMConfig",
    "LVLMLoadError",
    "QUANTIZATION_CHOICES",
    "LVLMScorer",
    "ScoreDetails",
    "ScoringPrompts",
    "ImageBatchError",
    "load_lvlm",
    "resolve_model_source",
]

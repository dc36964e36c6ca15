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

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from . import devices
from .emotion_space import VA_MIN, VA_SPAN
from safetensors import SafetensorError

from .images import ImageBatch, ImageBatchError, to_pil_list
from .progress import ProgressCallback, report
from .scoring import EmotionReading
from .text_safety import sanitize_model_text
from .errors import UserError
from .lvlm_options import ATTENTION_CHOICES, QUANTIZATION_CHOICES, check_attention, is_quantized, quantization_kwargs
from .lvlm_residency import LocalResidency, Residency
MODELS_LLM_HINT = "ComfyUI users: put the model folder under ComfyUI/models/LLM/<name> and pick <name> in the LVLM loader node"

#: The rating scale the questions ask for; digits map linearly to [-3, 3] (5 → 0).
SCALE_DIGITS = tuple(str(d) for d in range(1, 10))
_SCALE_LO, _SCALE_HI = 1.0, 9.0

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class LVLMLoadError(UserError, RuntimeError):
    """The LVLM (or its adapter/processor) cannot be loaded; the message says what to fix."""


@dataclass(frozen=True)
class ScoringPrompts:
    """The two questions and their answer prefixes. A prefix ends with a space: the digit follows."""

    question: str = (
        "Rate the feeling this image evokes on two 1-9 scales. Valence: 1 very unpleasant, 5 neutral, "
        "9 very pleasant. Arousal: 1 very calm, 5 moderate, 9 very excited. Answer with one digit per scale."
    )
    valence_prefix: str = "Valence: "
    arousal_prefix: str = "Arousal: "
    analysis_instruction: str = (
        "In one or two short sentences, say which visual elements of this image (colour, light, subject, "
        "expression, composition) make it feel pleasant or unpleasant, and calm or excited."
    )


@dataclass
class LVLMConfig:
    """How to load and run the judge model. Every field has a safe default except ``model``."""

    #: local model folder (with config.json) or a Hugging Face hub id such as "Qwen/Qwen2.5-VL-7B-Instruct"
    model: str
    #: "auto" (bfloat16 on a GPU that supports it, else float32), "float32", "bfloat16" or "float16"
    dtype: str = "auto"
    #: "auto" (cuda, then mps, then cpu), or a torch device string such as "cuda:1" or "cpu"
    device: str = "auto"
    #: None = transformers' default; or "sdpa", "eager", "flash_attention_2" (CUDA + flash-attn only)
    attn_implementation: Optional[str] = None
    #: "none", "8bit" or "4bit": bitsandbytes weight quantisation (needs bitsandbytes; CUDA in practice).
    #: A quantised model cannot be moved between devices: offloading frees it and it reloads when needed.
    quantization: str = "none"
    #: a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors), e.g. from training
    adapter: Optional[str] = None
    #: allow model code from the model folder/hub repo to run; off unless you trust the source
    trust_remote_code: bool = False
    #: cap on pixels per image fed to the vision encoder (speed/memory); None keeps the processor's
    max_pixels: Optional[int] = None
    #: floor on pixels per image; None keeps the processor's
    min_pixels: Optional[int] = None
    #: move the model to ``offload_device`` after every call (frees GPU memory between uses)
    offload_after_use: bool = False
    offload_device: str = "cpu"
    #: run each image through the vision tower once and reuse its features for both questions
    #: (models that accept transformers' ``mm_encoder_outputs``); False repeats the image per row
    share_vision: bool = True
    #: run the prompt (and image) once per image and only the short answer prefixes per question,
    #: on the prompt's key/value cache; False runs a full sequence per question
    share_prefix: bool = True
    #: images per forward pass; 0 = all images of a call in one pass (the default)
    max_images_per_pass: int = 0
    #: length cap of the optional per-image explanation, in generated tokens
    analysis_max_new_tokens: int = 64
    prompts: ScoringPrompts = field(default_factory=ScoringPrompts)


@dataclass
class ScoreDetails:
    """Tensors behind a batch of readings. ``digit_mass`` is the probability the model put on any
    scale digit at the answer position (near 1 = the model was answering the question; a low value
    flags a reading that rests on little probability mass)."""

    valence: torch.Tensor
    arousal: torch.Tensor
    digit_mass_valence: torch.Tensor
    digit_mass_arousal: torch.Tensor


# --- loading -----------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    return devices.resolve_device(device, error=LVLMLoadError)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    return devices.resolve_dtype(dtype, device, auto_cuda=torch.bfloat16, error=LVLMLoadError)


def _looks_like_hub_id(model: str) -> bool:
    """``owner/name`` with no leading ``.``/``~``/``/`` and no backslash: a Hugging Face hub id."""
    return (
        not os.path.isabs(model)
        and not model.startswith((".", "~"))
        and "\\" not in model
        and _HUB_ID.match(model) is not None
    )


def resolve_model_source(model: str) -> tuple[str, bool]:
    """Return ``(source, is_local)``: an existing folder with config.json, or a hub id.

    Raises :class:`LVLMLoadError` naming the folder (and ComfyUI's ``models/LLM``) when a path is
    given that does not exist or is not a model folder.
    """
    if not isinstance(model, str) or not model.strip():
        raise LVLMLoadError(f"model must be a model folder or a hub id, got {model!r}. {MODELS_LLM_HINT}.")
    model = model.strip()
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LVLMLoadError(
                f"{path} is not a Hugging Face model folder (no config.json in it). Put the whole model "
                f"folder there (config.json, *.safetensors, tokenizer and processor files). {MODELS_LLM_HINT}."
            )
        return str(path), True
    if path.exists():
        raise LVLMLoadError(f"{path} is a file; the LVLM must be a model folder with config.json. {MODELS_LLM_HINT}.")
    if not _looks_like_hub_id(model):
        raise LVLMLoadError(
            f"LVLM model folder not found: {path}. Check the path, or download the model into that folder. "
            f"{MODELS_LLM_HINT}."
        )
    return model, False


def _check_image_text_model(config: Any, source: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return
    if "AutoModelForImageTextToText" in (getattr(config, "auto_map", None) or {}):
        return
    if getattr(config, "vision_config", None) is None:
        raise LVLMLoadError(
            f"{source} is a text-only model (model_type {model_type!r}); the emotion scorer needs a "
            "vision-language (image-text-to-text) model such as Qwen2.5-VL-7B-Instruct, Qwen2-VL or Qwen3-VL."
        )
    raise LVLMLoadError(
        f"{source} (model_type {model_type!r}) is not an image-text-to-text model transformers knows; "
        "use a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model, or set trust_remote_code if its repo ships the code."
    )


def _apply_pixel_limits(processor: Any, min_pixels: Optional[int], max_pixels: Optional[int]) -> None:
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or (min_pixels is None and max_pixels is None):
        return
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise LVLMLoadError(f"{name} must be a positive integer number of pixels, got {value!r}")
    size = dict(getattr(image_processor, "size", None) or {})
    if "longest_edge" in size or "shortest_edge" in size:
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        if size.get("shortest_edge", 0) > size.get("longest_edge", float("inf")):
            raise LVLMLoadError(f"min_pixels ({size['shortest_edge']}) is larger than max_pixels ({size['longest_edge']})")
        image_processor.size = size
    for name, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and hasattr(image_processor, name):
            setattr(image_processor, name, value)


def _load_adapter(model: Any, adapter: str) -> Any:
    folder = Path(os.path.expanduser(adapter))
    if not folder.is_dir():
        raise LVLMLoadError(
            f"LoRA adapter folder not found: {folder}. Point 'adapter' at the folder training wrote "
            "(it contains adapter_config.json and adapter_model.safetensors), or leave it empty."
        )
    if not (folder / "adapter_config.json").is_file():
        raise LVLMLoadError(f"{folder} has no adapter_config.json; it is not a peft LoRA adapter folder.")
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as exc:  # peft raises various errors for mismatched adapters
        raise LVLMLoadError(f"could not apply the LoRA adapter in {folder} to this model: {exc}") from exc


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
    _apply_pixel_limits(processor, config.min_pixels, config.max_pixels)
    scorer = LVLMScorer(model, processor, config, device=device, dtype=dtype, source=source, residency=residency)
    scorer.residency.place(scorer)
    return scorer


def load_lvlm_weights(config: LVLMConfig, source: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The model (with its adapter) in eval mode; quantised models are placed on ``device`` here."""
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"dtype": dtype, "use_safetensors": True, "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    kwargs.update(quantization_kwargs(config.quantization, device, dtype))
    try:
        model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except SafetensorError as exc:  # truncated or overwritten weights file
        raise LVLMLoadError(
            f"the weights in {source} are damaged ({exc}): download the *.safetensors files of the model again"
        ) from exc
    except (OSError, ValueError, ImportError) as exc:
        raise LVLMLoadError(
            f"could not load the model from {source}: {exc}. The folder needs *.safetensors weights "
            f"(no .bin), config.json, tokenizer and processor files. {MODELS_LLM_HINT}."
        ) from exc
    if config.adapter:
        model = _load_adapter(model, config.adapter)
    model.eval()
    return model


# --- scoring -----------------------------------------------------------------------------------


class LVLMScorer:
    """An :class:`~.scoring.EmotionScorer` backed by a vision-language model."""

    is_heuristic = False

    def __init__(
        self, model: Any, processor: Any, config: LVLMConfig, device: torch.device, dtype: torch.dtype,
        source: Optional[str] = None, residency: Optional[Residency] = None,
    ):
        self.model = model
        self.source = source or config.model
        self.residency: Residency = residency or LocalResidency()
        self.quantized = is_quantized(model)
        self._weight_bytes = _module_bytes(model)
        self._emptied_model: Any = None
        self.processor = processor
        self.config = config
        self.device = device
        self.dtype = dtype
        self.prompts = config.prompts
        self.name = f"LVLM {Path(config.model).name or config.model}" + (
            f" + {Path(config.adapter).name}" if config.adapter else ""
        )
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.digit_ids = self._single_token_ids(SCALE_DIGITS)
        self._current_device = device
        self._share_vision: Optional[bool] = None
        self._cache_arg: Optional[str] = None

    def _single_token_ids(self, symbols: Sequence[str]) -> list[int]:
        ids = []
        for symbol in symbols:
            encoded = self.tokenizer.encode(symbol, add_special_tokens=False)
            if len(encoded) != 1:
                raise LVLMLoadError(
                    f"the tokenizer splits the digit {symbol!r} into {len(encoded)} tokens; expected-value scoring "
                    "needs one token per digit (true for Qwen-VL models)"
                )
            ids.append(encoded[0])
        return ids

    # -- device lifecycle (where the weights live is the residency's decision) --

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights (parameters + buffers), also while they are dropped."""
        return self._weight_bytes

    @property
    def weights_loaded(self) -> bool:
        return self.model is not None

    @property
    def current_device(self) -> Optional[torch.device]:
        """Where the weights are now (None while dropped)."""
        return self._current_device if self.model is not None else None

    def to(self, device: Union[str, torch.device]) -> "LVLMScorer":
        device = torch.device(device)
        self.ensure_weights()
        if self.quantized:  # bitsandbytes weights stay where they were loaded
            return self
        if device != self._current_device or next(self.model.parameters()).device != device:
            self.model.to(device)
            self._current_device = device
        return self

    def ensure_weights(self) -> None:
        """Load the weights again if :meth:`drop_weights` freed them."""
        if self.model is None:
            self.model = load_lvlm_weights(self.config, self.source, self.device, self.dtype)
            self._current_device = self.device if self.quantized else torch.device("cpu")
            self._emptied_model = None

    def drop_weights(self) -> None:
        """Free the weights (the way to free a quantised model); they reload from disk on next use.

        The tensors are released but the emptied module object is kept until the reload: a memory
        manager that watches the model object for garbage collection (ComfyUI does) must not see it
        vanish in the middle of its own unloading loop.
        """
        if self.model is None:
            return
        emptied, self.model = self.model, None
        for tensor in list(emptied.parameters()) + list(emptied.buffers()):
            tensor.data = torch.empty(0, dtype=tensor.dtype)
        self._emptied_model = emptied
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def offload(self) -> None:
        """Free the work device: move the weights to ``offload_device`` (a quantised model is dropped)."""
        if self.model is None:
            return
        if self.quantized:
            self.drop_weights()
            return
        self.to(self.config.offload_device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        self.residency.acquire(self)
        try:
            yield
        finally:
            self.residency.release(self)

    # -- prompts --

    def _chat(self, text: str, with_image: bool = True) -> str:
        content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (ValueError, AttributeError) as exc:
            raise LVLMLoadError(f"the model's processor has no usable chat template: {exc}") from exc

    def _encode(self, texts: list[str], images: Optional[list[Any]]) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if images is not None:
            kwargs["images"] = images
        batch = self.processor(**kwargs)
        return {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def _shares_vision(self) -> bool:
        """Whether the model takes precomputed image features (transformers ``mm_encoder_outputs``).

        Then each image goes through the image processor and the vision tower once, and its
        features are reused by both question rows; otherwise images are simply repeated per row.
        """
        if self._share_vision is None:
            import inspect

            forward_params = inspect.signature(self.model.forward).parameters
            base = getattr(self.model, "get_base_model", lambda: self.model)()
            self._share_vision = bool(
                self.config.share_vision
                and "mm_encoder_outputs" in inspect.signature(base.forward).parameters
                and ("mm_encoder_outputs" in forward_params or "kwargs" in forward_params)
                and hasattr(base, "get_image_features")
                and callable(getattr(self.processor, "replace_image_token", None))
                and isinstance(getattr(self.processor, "image_token", None), str)
            )
        return self._share_vision

    def _encode_shared(self, row_texts: list[str], images: list[Any]) -> dict[str, Any]:
        """Rows ``[image 0 × every text, image 1 × every text, …]`` with one vision pass per image."""
        processor = self.processor
        image_inputs = processor.image_processor(images=images, return_tensors="pt")
        grid = image_inputs["image_grid_thw"]
        placeholder = processor.image_token
        texts, order = [], []
        for k in range(len(images)):
            expanded = processor.replace_image_token(image_inputs, k)
            for text in row_texts:
                texts.append(text.replace(placeholder, expanded, 1))
                order.append(k)
        encoded = dict(self.tokenizer(texts, padding=True, return_tensors="pt"))
        if callable(getattr(processor, "create_mm_token_type_ids", None)):
            encoded["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(encoded["input_ids"].tolist()))
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        vision = base.get_image_features(
            image_inputs["pixel_values"].to(self.device), grid.to(self.device), return_dict=True
        )
        # Per-image tuples (pooler_output; Qwen3-VL also deepstack_features per layer) → one entry per row.
        vision.pooler_output = tuple(vision.pooler_output[k] for k in order)
        if getattr(vision, "deepstack_features", None) is not None:
            vision.deepstack_features = [tuple(layer[k] for k in order) for layer in vision.deepstack_features]
        encoded["image_grid_thw"] = grid[order].to(self.device)
        encoded["mm_encoder_outputs"] = {"image": vision}
        return encoded

    def _answer_logits(self, prompt: str, suffixes: list[str], images: list[Any]) -> torch.Tensor:
        """Next-token logits ``[len(images)·len(suffixes), vocab]`` after ``prompt + suffix`` per image.

        Row ``i·S + j`` is image ``i`` with suffix ``j``. With a shared prefix (the default where
        the model supports it) the prompt and image run once per image and only the short answer
        prefixes run per row, on top of the prompt's key/value cache; otherwise every row is a full
        sequence of one left-padded batch. Both give the same numbers.
        """
        if self._shares_prefix(prompt, suffixes):
            return self._prefix_shared_logits(prompt, suffixes, images)
        rows = [prompt + suffix for suffix in suffixes]
        if self._shares_vision():
            encoded = self._encode_shared(rows, images)
        else:
            encoded = self._encode([row for _ in images for row in rows], [im for im in images for _ in rows])
        return self.model(**encoded, logits_to_keep=1).logits[:, -1, :]

    def _shares_prefix(self, prompt: str, suffixes: list[str]) -> bool:
        if not (self.config.share_prefix and self._shares_vision()):
            return False
        core = getattr(self._base_model(), "model", None)
        if core is None or not hasattr(core, "rope_deltas"):
            return False
        # the suffix must tokenise the same on its own as after the prompt (true for Qwen's pre-tokeniser)
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        for suffix in suffixes:
            joint = self.tokenizer.encode(prompt + suffix, add_special_tokens=False)
            if joint[: len(prompt_ids)] != prompt_ids:
                return False
        return True

    def _base_model(self) -> Any:
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def _prefix_shared_logits(self, prompt: str, suffixes: list[str], images: list[Any]) -> torch.Tensor:
        import inspect

        n_suffix = len(suffixes)
        encoded = self._encode_shared([prompt], images)
        base = self._base_model()
        if self._cache_arg is None:
            self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        prefix_out = self.model(**encoded, use_cache=True, logits_to_keep=1)
        cache = getattr(prefix_out, "cache", None) or getattr(prefix_out, "past_key_values")
        # text position of the next token per image: real tokens so far + the image's mRoPE offset
        rope_deltas = base.model.rope_deltas.reshape(-1).to(self.device)
        prefix_mask = encoded["attention_mask"]
        next_position = prefix_mask.sum(dim=1) + rope_deltas
        prompt_len = len(self.tokenizer.encode(prompt, add_special_tokens=False))
        suffix_ids = [self.tokenizer.encode(prompt + s, add_special_tokens=False)[prompt_len:] for s in suffixes]
        width = max(len(ids) for ids in suffix_ids)
        pad = self.tokenizer.pad_token_id
        # right-padded suffixes: causal attention keeps the padding from touching earlier positions
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in suffix_ids], device=self.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in suffix_ids], device=self.device)
        n_images = len(images)
        ids = ids.repeat(n_images, 1)
        mask = mask.repeat(n_images, 1)
        cache.batch_repeat_interleave(n_suffix)
        full_mask = torch.cat([prefix_mask.repeat_interleave(n_suffix, dim=0), mask], dim=1)
        positions = next_position.repeat_interleave(n_suffix)[:, None] + torch.arange(width, device=self.device)[None]
        out = self.model(
            input_ids=ids,
            attention_mask=full_mask,
            position_ids=positions[None].expand(3, -1, -1),
            use_cache=False,
            **{self._cache_arg: cache},
        )
        last = torch.tensor([len(row) - 1 for row in suffix_ids], device=self.device).repeat(n_images)
        return out.logits[torch.arange(ids.shape[0], device=self.device), last]

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        size = self.config.max_images_per_pass or n
        return [(start, min(n, start + size)) for start in range(0, n, size)]

    # -- expected-value scoring --

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


def _module_bytes(model: Any) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.nelement() * t.element_size() for t in tensors)


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

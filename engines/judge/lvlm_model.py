"""The judge model behind the scorer: where its weights live, and how prompts and images reach its logits.

:class:`LVLMModel` owns the transformers model, processor and tokenizer, the device lifecycle (the
residency decides; weights can be dropped and reloaded) and the forward plumbing: chat template,
left-padded batches, the image encoded once per image, and the answer logits read after a shared
prompt prefix. :class:`~.lvlm_scorer.LVLMScorer` asks the emotion questions on top of it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from .lvlm_config import SCALE_DIGITS, LVLMConfig, LVLMLoadError
from .lvlm_loading import _module_bytes, load_lvlm_weights
from .options import is_quantized
from .residency import LocalResidency, Residency


def keeps_cache(model: Any) -> bool:
    """False in a training forward under gradient checkpointing: transformers then drops the key/value
    cache (``use_cache=False``), so there is no prompt cache to share and every row runs in full."""
    if not (model.training and torch.is_grad_enabled()):
        return True
    return not any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


class LVLMModel:
    """A loaded image-text-to-text model with its processor, ready to run prompts on images."""

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

    def to(self, device: Union[str, torch.device]) -> "LVLMModel":
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
        if self._shares_prefix(prompt, suffixes) and keeps_cache(self.model):
            logits = self._prefix_shared_logits(prompt, suffixes, images)
            if logits is not None:  # None: the model returned no cache to share; full sequences below
                return logits
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

    def _prefix_shared_logits(self, prompt: str, suffixes: list[str], images: list[Any]) -> Optional[torch.Tensor]:
        import inspect

        n_suffix = len(suffixes)
        encoded = self._encode_shared([prompt], images)
        base = self._base_model()
        if self._cache_arg is None:
            self._cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        prefix_out = self.model(**encoded, use_cache=True, logits_to_keep=1)
        cache = getattr(prefix_out, "cache", None) or getattr(prefix_out, "past_key_values", None)
        if cache is None:
            return None
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

"""The judge model behind the scorer: where its weights live, and how prompts and images reach its logits.

:class:`LVLMModel` owns the transformers model, processor and tokenizer, the device lifecycle (the
residency decides; weights can be dropped and reloaded) and the forward plumbing: chat template,
left-padded batches, the image encoded once per image, and the answer logits read after a shared
prompt prefix (the family-independent plumbing is in :mod:`.lvlm_batching`; where the answer digit
is read, per tokenizer, in :mod:`.digit_readout`). :class:`~.lvlm_scorer.LVLMScorer` asks the
emotion questions on top of it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from . import lvlm_batching
from .digit_readout import resolve_digit_readout
from .lvlm_config import LVLMConfig, LVLMLoadError
from .lvlm_loading import _module_bytes, load_lvlm_weights
from .options import is_quantized
from .residency import LocalResidency, Residency


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
        self._current_device = device
        self._share_vision: Optional[bool] = None
        # where the answer digit is read, checked now for this tokenizer (see digit_readout)
        readout = resolve_digit_readout(self.tokenizer, self._chat(self.prompts.question),
                                        (self.prompts.valence_prefix, self.prompts.arousal_prefix), self.source)
        self.prompts = replace(self.prompts, valence_prefix=readout.prefixes[0], arousal_prefix=readout.prefixes[1])
        self.digit_ids = list(readout.digit_ids)
        self.readout_note = readout.note

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

    # -- prompts and forward plumbing (the family-independent batching lives in lvlm_batching) --

    def _chat(self, text: str, with_image: bool = True) -> str:
        content: list[dict[str, str]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        try:
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (ValueError, AttributeError, TypeError) as exc:
            raise LVLMLoadError(
                f"the processor of {self.source} has no usable chat template ({exc}); the judge needs an instruction "
                "(chat) model whose folder ships its chat template (chat_template.jinja or in processor_config.json)"
            ) from exc

    def _encode(self, texts: list[str], images: Optional[list[Any]]) -> dict[str, Any]:
        return lvlm_batching.encode_rows(self, texts, images)

    def _shares_vision(self) -> bool:
        """Whether each image runs through the vision tower once for all its rows (see :mod:`.lvlm_batching`)."""
        if self._share_vision is None:
            self._share_vision = lvlm_batching.shares_vision(self)
        return self._share_vision

    def _encode_shared(self, row_texts: list[str], images: list[Any]) -> dict[str, Any]:
        return lvlm_batching.encode_shared_vision(self, row_texts, images)

    def _shares_prefix(self, prompt: str, suffixes: list[str]) -> bool:
        return lvlm_batching.shares_prefix(self, prompt, suffixes)

    def _answer_logits(self, prompt: str, suffixes: list[str], images: list[Any]) -> torch.Tensor:
        """Next-token logits ``[len(images)·len(suffixes), vocab]`` after ``prompt + suffix`` per image.

        Row ``i·S + j`` is image ``i`` with suffix ``j``. With a shared prefix (the default where
        the model returns a cache) the prompt and image run once per image and only the short
        answer prefixes run per row, on the prompt's key/value cache; otherwise every row is a full
        sequence of one left-padded batch. Both give the same numbers.
        """
        if self._shares_prefix(prompt, suffixes):
            return lvlm_batching.prefix_shared_logits(self, prompt, suffixes, images)
        return lvlm_batching.full_row_logits(self, prompt, suffixes, images)

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        size = self.config.max_images_per_pass or n
        return [(start, min(n, start + size)) for start in range(0, n, size)]

    # -- expected-value scoring --

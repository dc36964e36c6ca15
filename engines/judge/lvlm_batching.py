"""How prompts and images reach the judge's answer logits, for any image-text-to-text family.

Three ways, all giving the same numbers (tests hold them to 1e-5 on every family, images of mixed
sizes in one left-padded batch):

- **full rows**: one left-padded batch of ``image × answer prefix`` rows, through the processor
  (works for every family; each image is repeated per prefix);
- **shared vision**: the same rows, but each image goes through the vision tower once and its
  features are reused by its rows. Needs a model that takes precomputed features
  (``mm_encoder_outputs``) and an image processor that reports each image's patch grid
  (``image_grid_thw``), so the features split per image; otherwise the rows repeat the image;
- **shared prefix** (the default where the model returns a cache): the prompt and image run once
  per image, the cache is repeated per prefix (``Cache.reorder_cache``, which every cache layer
  kind implements, linear-attention ones included), and only the short answer prefixes run on
  top. Positions continue where the prompt ended: multimodal-RoPE models (a ``rope_deltas``
  attribute) get them explicitly, others number cached tokens themselves.

Capabilities are detected from signatures and attributes, never from family names.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch


def _base(judge: Any) -> Any:
    return judge.model.get_base_model() if hasattr(judge.model, "get_base_model") else judge.model


def adds_special_tokens(tokenizer: Any, texts: list[str]) -> bool:
    """False when the chat template already wrote the BOS token (Gemma): tokenising must not add a second
    one. The same rule transformers' ``ProcessorMixin.apply_chat_template`` uses."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and texts and all(text.startswith(bos) for text in texts))


def encode_rows(judge: Any, texts: list[str], images: Optional[list[Any]]) -> dict[str, Any]:
    """One left-padded batch through the processor: row ``i`` is ``texts[i]`` with ``images[i]``."""
    kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True,
                              "add_special_tokens": adds_special_tokens(judge.tokenizer, texts)}
    if images is not None:
        kwargs["images"] = [[image] for image in images]  # one image per row, whatever the processor's default nesting
    batch = judge.processor(**kwargs)
    return {k: (v.to(judge.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def shares_vision(judge: Any) -> bool:
    """Whether image features can be computed once per image and reused by several rows (see the module doc)."""
    base = _base(judge)
    forward_params = _forward_params(judge.model)
    processor = judge.processor
    image_processor = getattr(processor, "image_processor", None)
    return bool(
        judge.config.share_vision
        and "mm_encoder_outputs" in _forward_params(base)
        and ("mm_encoder_outputs" in forward_params or "kwargs" in forward_params)
        and hasattr(base, "get_image_features")
        and "image_grid_thw" in (getattr(image_processor, "model_input_names", None) or ())
        and callable(getattr(processor, "replace_image_token", None))
        and isinstance(getattr(processor, "image_token", None), str)
    )


def encode_shared_vision(judge: Any, row_texts: list[str], images: list[Any]) -> dict[str, Any]:
    """Rows ``[image 0 × every text, image 1 × every text, …]`` with one vision pass per image."""
    processor = judge.processor
    image_inputs = processor.image_processor(images=images, return_tensors="pt")
    grid = image_inputs["image_grid_thw"]
    placeholder = processor.image_token
    texts, order = [], []
    for k in range(len(images)):
        expanded = processor.replace_image_token(image_inputs, k)
        for text in row_texts:
            texts.append(text.replace(placeholder, expanded, 1))
            order.append(k)
    encoded = dict(judge.tokenizer(texts, padding=True, return_tensors="pt",
                                   add_special_tokens=adds_special_tokens(judge.tokenizer, texts)))
    if callable(getattr(processor, "create_mm_token_type_ids", None)):
        encoded["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(encoded["input_ids"].tolist()))
    encoded = {k: v.to(judge.device) for k, v in encoded.items()}
    vision = _base(judge).get_image_features(
        image_inputs["pixel_values"].to(judge.device), grid.to(judge.device), return_dict=True
    )
    # Per-image tuples (pooler_output; Qwen3-VL also deepstack_features per layer) → one entry per row.
    vision.pooler_output = tuple(vision.pooler_output[k] for k in order)
    if getattr(vision, "deepstack_features", None) is not None:
        vision.deepstack_features = [tuple(layer[k] for k in order) for layer in vision.deepstack_features]
    encoded["image_grid_thw"] = grid[order].to(judge.device)
    encoded["mm_encoder_outputs"] = {"image": vision}
    return encoded


def _forward_params(module: Any) -> Any:
    """The parameters of the module class's ``forward`` (the class, so a patched instance method does not hide them)."""
    return inspect.signature(type(module).forward).parameters


def cache_argument(judge: Any) -> Optional[str]:
    """The forward argument that takes a key/value cache (``cache`` in transformers 5, earlier ``past_key_values``)."""
    params = _forward_params(_base(judge))
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def keeps_cache(model: Any) -> bool:
    """False in a training forward under gradient checkpointing: transformers then drops the key/value
    cache (``use_cache=False``), so there is no prompt cache to share and every row runs in full."""
    if not (model.training and torch.is_grad_enabled()):
        return True
    return not any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def shares_prefix(judge: Any, prompt: str, suffixes: list[str]) -> bool:
    """Whether the shared-prefix path applies: asked for, a cache is returned (:func:`keeps_cache`), and the
    suffixes tokenise the same after the prompt as on their own."""
    if not judge.config.share_prefix or cache_argument(judge) is None or not keeps_cache(judge.model):
        return False
    prompt_ids = judge.tokenizer.encode(prompt, add_special_tokens=False)
    for suffix in suffixes:
        joint = judge.tokenizer.encode(prompt + suffix, add_special_tokens=False)
        if joint[: len(prompt_ids)] != prompt_ids:
            return False
    return True


def full_row_logits(judge: Any, prompt: str, suffixes: list[str], images: list[Any]) -> torch.Tensor:
    """Next-token logits of every ``image × (prompt + suffix)`` row as full sequences of one batch."""
    rows = [prompt + suffix for suffix in suffixes]
    if judge._shares_vision():  # memoised on the judge (shares_vision inspects signatures)
        encoded = encode_shared_vision(judge, rows, images)
    else:
        encoded = encode_rows(judge, [row for _ in images for row in rows], [im for im in images for _ in rows])
    return judge.model(**encoded, logits_to_keep=1).logits[:, -1, :]


def prefix_shared_logits(judge: Any, prompt: str, suffixes: list[str], images: list[Any]) -> torch.Tensor:
    """The same logits with the prompt and image run once per image and only the suffixes per row."""
    n_suffix, n_images = len(suffixes), len(images)
    if judge._shares_vision():  # memoised on the judge (shares_vision inspects signatures)
        encoded = encode_shared_vision(judge, [prompt], images)
    else:
        encoded = encode_rows(judge, [prompt] * n_images, images)
    prefix_out = judge.model(**encoded, use_cache=True, logits_to_keep=1)
    cache = getattr(prefix_out, "cache", None) or getattr(prefix_out, "past_key_values", None)
    if cache is None:  # the model ran without a cache after all: fall back to full rows
        return full_row_logits(judge, prompt, suffixes, images)
    device = judge.device
    prompt_len = len(judge.tokenizer.encode(prompt, add_special_tokens=False))
    suffix_ids = [judge.tokenizer.encode(prompt + s, add_special_tokens=False)[prompt_len:] for s in suffixes]
    width = max(len(ids) for ids in suffix_ids)
    pad = judge.tokenizer.pad_token_id
    # right-padded suffixes: causal attention keeps the padding from touching earlier positions
    ids = torch.tensor([row + [pad] * (width - len(row)) for row in suffix_ids], device=device).repeat(n_images, 1)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in suffix_ids], device=device)
    prefix_mask = encoded["attention_mask"]
    cache.reorder_cache(torch.arange(n_images, device=device).repeat_interleave(n_suffix))
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": torch.cat([prefix_mask.repeat_interleave(n_suffix, dim=0), mask.repeat(n_images, 1)], dim=1),
        "use_cache": False,
        cache_argument(judge): cache,
    }
    core = getattr(_base(judge), "model", None)
    if hasattr(core, "rope_deltas"):
        if core.rope_deltas is None:  # the prompt pass set no offsets: positions unknown, use full rows
            return full_row_logits(judge, prompt, suffixes, images)
        # multimodal RoPE: the next text position is the real tokens so far + the image's offset
        next_position = prefix_mask.sum(dim=1) + core.rope_deltas.reshape(-1).to(device)
        positions = next_position.repeat_interleave(n_suffix)[:, None] + torch.arange(width, device=device)[None]
        kwargs["position_ids"] = positions[None].expand(3, -1, -1)
    out = judge.model(**kwargs)
    last = torch.tensor([len(row) - 1 for row in suffix_ids], device=device).repeat(n_images)
    return out.logits[torch.arange(ids.shape[0], device=device), last]

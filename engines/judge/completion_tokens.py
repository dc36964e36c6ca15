"""Which token ids may appear in a sampled completion: the end tokens, and every id a completion must never carry.

A completion that is fed back into the model (GRPO's training forward, a second turn) is read as
input: a vision placeholder in it (Qwen's ``<|image_pad|>``) becomes an image slot without image
features, and transformers stops with ``Image features and image tokens do not match``. So sampling
suppresses every special token but the end tokens, every vision/placeholder id the model config
names, and the unused rows of a padded output vocabulary (Qwen's 151 936 logits for a 151 665-token
tokenizer). Plain-text added tokens (``<think>``, ``<tool_call>``) stay allowed: they are text.
"""

from __future__ import annotations

from typing import Any, Iterable


def end_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The ids that end a completion: the generation config's EOS ids and the tokenizer's."""
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([eos] if isinstance(eos, int) else list(eos or [])) + [tokenizer.eos_token_id]:
        if value is not None:
            ids.add(int(value))
    return ids


def _config_token_ids(config: Any) -> Iterable[int]:
    """Every ``*_token_id`` / ``*_token_index`` a model config (and its sub-configs) names."""
    seen = [config] + [getattr(config, name, None) for name in ("text_config", "vision_config")]
    for cfg in seen:
        if cfg is None:
            continue
        for name, value in vars(cfg).items():
            if not name.endswith(("_token_id", "_token_index")):
                continue
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, int) and item >= 0:
                    yield item


def _output_vocab_size(model: Any) -> int:
    embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(embeddings, "weight", None)
    return int(weight.shape[0]) if weight is not None else 0


def blocked_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Sorted ids a completion must never contain (see the module docstring); the end ids are not among them."""
    blocked = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
    for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            blocked.add(int(token_id))
    blocked.update(_config_token_ids(getattr(model, "config", None) or object()))
    blocked.update(range(len(tokenizer), _output_vocab_size(model)))  # logits rows no token decodes to
    return sorted(blocked - end_token_ids(model, tokenizer))


__all__ = ["blocked_token_ids", "end_token_ids"]

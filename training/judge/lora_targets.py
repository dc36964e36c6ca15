"""Which layers of a judge get LoRA, read from the model's own module tree (any image-text-to-text family).

- **Language model**: every ``nn.Linear`` inside the decoder that transformers reports
  (``model.get_decoder()``): attention and MLP projections under whatever names the family uses
  (``q_proj``…``down_proj``; Qwen3.5's linear-attention ``in_proj_qkv``/``out_proj``; …).
- **Projector** (optional): the vision-to-text projection — the linear layers outside the decoder
  and outside any repeated block (``nn.ModuleList``) whose module also holds a linear layer that
  outputs the text hidden size. That finds Qwen-VL's ``visual.merger``, InternVL's and
  LLaVA-OneVision's ``multi_modal_projector`` and SmolVLM's ``connector``, and nothing in the vision
  encoder's blocks. A family whose projector is a bare weight (Gemma 3) has no linear layer to adapt.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn


def _decoder_path(model: Any) -> str:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for name, module in model.named_modules():
        if module is decoder and name:
            return name
    raise ValueError(
        f"{type(model).__name__} reports no language model (get_decoder()); set model.target_modules in the judge "
        "config to a peft target regex for this architecture"
    )


def language_model_linears(model: Any) -> list[str]:
    """Full names of the decoder's linear layers."""
    prefix = _decoder_path(model) + "."
    return [name for name, module in model.named_modules() if name.startswith(prefix) and isinstance(module, nn.Linear)]


def _in_repeated_block(model: Any, name: str, lists: set[str]) -> bool:
    return any(name.startswith(path + ".") for path in lists)


def projector_linears(model: Any) -> list[str]:
    """Full names of the linear layers of the vision-to-text projector (empty when it has none)."""
    decoder = _decoder_path(model) + "."
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    lists = {name for name, module in model.named_modules() if isinstance(module, nn.ModuleList)}
    text_hidden = model.config.get_text_config().hidden_size
    linears = {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not name.startswith(decoder) and module is not output
        and not _in_repeated_block(model, name, lists)
    }
    parents = {name.rsplit(".", 1)[0] for name, module in linears.items() if module.out_features == text_hidden and "." in name}
    return sorted(name for name in linears if any(name.startswith(parent + ".") for parent in parents))


def _compact_pattern(model: Any, prefix: str, names: list[str]) -> str:
    """``prefix.(…).(leaf|leaf…)`` when that matches exactly ``names``; else the names themselves."""
    leaves = sorted({name.rsplit(".", 1)[1] for name in names})
    pattern = re.escape(prefix) + r"\.(?:.*\.)?(?:" + "|".join(re.escape(leaf) for leaf in leaves) + ")"
    matched = sorted(name for name, _ in model.named_modules() if re.fullmatch(pattern, name))
    return pattern if matched == sorted(names) else "|".join(re.escape(name) for name in names)


def architecture_targets(model: Any, include_projector: bool = True) -> str:
    """A peft ``target_modules`` regex (full-name match) naming exactly the layers above."""
    language = language_model_linears(model)
    if not language:
        raise ValueError(
            f"found no linear layer in the language model of {type(model).__name__}; set model.target_modules in the "
            "judge config to a peft target regex for this architecture"
        )
    parts = [_compact_pattern(model, _decoder_path(model), language)]
    projector = projector_linears(model) if include_projector else []
    if projector:
        parts.append("|".join(re.escape(name) for name in projector))
    return "|".join(f"(?:{part})" for part in parts)

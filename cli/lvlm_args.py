"""The LVLM judge's loading options on the command line, one definition for every command that loads it.

``--attention`` and ``--quantization`` map onto :class:`~..engines.lvlm_scorer.LVLMConfig`'s
``attn_implementation`` and ``quantization`` — the same engine options the ComfyUI LVLM Loader and
the training rewards use — and are checked there before any weights are read: flash-attention on a
machine without a CUDA GPU, or 8-bit/4-bit without bitsandbytes, stops with one line naming the fix.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional

from ..engines.judge.options import ATTENTION_CHOICES, QUANTIZATION_CHOICES

#: ``--lvlm`` values that mean the colour heuristic (weight-free), not a model folder
COLOUR_NAMES = ("colour", "color", "colour-heuristic", "color-heuristic")


def is_colour(spec: str) -> bool:
    return spec.strip().lower() in COLOUR_NAMES


def add_lvlm_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--attention`` (old spelling ``--attn`` still accepted) and ``--quantization`` to ``parser``."""
    parser.add_argument(
        "--attention", "--attn", dest="attention", default=None, choices=ATTENTION_CHOICES,
        help="LVLM attention kernel: sdpa (fast on every device), eager (plain PyTorch) or flash_attention_2 "
             "(CUDA GPU + the flash-attn package); default: transformers' choice",
    )
    parser.add_argument(
        "--quantization", default="none", choices=QUANTIZATION_CHOICES,
        help="load the LVLM's weights in 8-bit or 4-bit through bitsandbytes (CUDA GPU; pip install "
             "bitsandbytes): about 1/2 or 1/4 of the bfloat16 memory",
    )


def lvlm_load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``LVLMConfig`` fields these arguments set (absent arguments: the config's defaults)."""
    return {
        "attn_implementation": getattr(args, "attention", None),
        "quantization": getattr(args, "quantization", None) or "none",
    }


def load_scorer(spec: str, device: str = "auto", dtype: str = "auto", adapter: Optional[str] = None, **options):
    """``colour``/``color`` → the colour heuristic; anything else → an LVLM folder or hub id.

    ``options``: further :class:`LVLMConfig` fields, e.g. from :func:`.lvlm_args.lvlm_load_options`.
    """
    if is_colour(spec):
        from ..engines.judge.color_scorer import ColorHeuristicScorer

        return ColorHeuristicScorer()
    from ..engines.judge.lvlm_scorer import LVLMConfig, load_lvlm

    return load_lvlm(LVLMConfig(model=spec, device=device, dtype=dtype, adapter=adapter, **options))


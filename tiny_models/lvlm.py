"""Tiny random judge models of every supported family, built offline for tests, demo and benchmarks.

The Qwen-VL families (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) are built here; the others (Qwen3.5,
Gemma 3, Gemma 4, InternVL, LLaVA-OneVision, SmolVLM) in :mod:`.lvlm_families`.

Each model folder is what a user would download: ``config.json`` + safetensors weights, a
byte-level ``Qwen2Tokenizer`` and the family's processor (image + video processor, chat template),
all written with ``save_pretrained`` so the scorer loads them with the same
``AutoModelForImageTextToText`` / ``AutoProcessor`` ``from_pretrained`` calls it uses for real ones.

The tokenizer has the 256 byte symbols (GPT-2 byte-to-unicode alphabet) as ids 0..255, then the
Qwen-VL special tokens in their real order, and no merges: every byte is one token, so each digit
is its own token and a space is its own token, as with the real Qwen tokenizer for digits.
:func:`real_size_config` gives the real Qwen2.5-VL-7B architecture (hand-written values) for
speed/memory benchmarks with random weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .lvlm_tokenizers import bytes_to_unicode

QWEN_VL_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: every family ``emofeedback2 bench scorer --family`` and the tests know (the ones transformers ships)
FAMILIES = (*QWEN_VL_FAMILIES, "qwen3_5", "gemma3", "gemma4", "internvl", "llava_onevision", "smolvlm")

# Qwen-VL added tokens in the order of the real tokenizers (real ids 151643, 151644, ...).
QWEN_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
BYTE_VOCAB = 256
TINY_VOCAB_SIZE = 288  # 256 bytes + 14 specials, rounded up (real checkpoints pad their vocab too)

# Qwen2-VL's chat template logic, written for this project: default system prompt, images and
# videos as <|vision_start|><|image_pad|><|vision_end|>, generation prompt "<|im_start|>assistant\n".
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def special_token_ids() -> dict[str, int]:
    """Id of each Qwen-VL special token in the tiny tokenizer (right after the 256 bytes)."""
    return {token: BYTE_VOCAB + i for i, token in enumerate(QWEN_VL_SPECIAL_TOKENS)}


def build_tiny_tokenizer():
    """A byte-level ``Qwen2Tokenizer`` (no merges) with the Qwen-VL specials and chat template."""
    from transformers import Qwen2Tokenizer

    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    vocab.update(special_token_ids())
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        extra_special_tokens=list(QWEN_VL_SPECIAL_TOKENS[1:]),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _token_config_ids() -> dict[str, int]:
    ids = special_token_ids()
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _tiny_text_config(family: str) -> dict[str, Any]:
    ids = special_token_ids()
    text: dict[str, Any] = {
        "vocab_size": TINY_VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        # head_dim 16 → rotary half-dim 8 = 2 + 3 + 3 (temporal, height, width)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    }
    if family == "qwen3_vl":
        text["head_dim"] = 16
        text["rope_parameters"]["mrope_interleaved"] = True
    return text


def _tiny_vision_config(family: str) -> dict[str, Any]:
    if family == "qwen2_vl":
        return {"depth": 2, "embed_dim": 32, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2,
                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    if family == "qwen2_5_vl":
        return {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                "fullatt_block_indexes": [1]}
    return {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "num_position_embeddings": 16, "deepstack_visual_indexes": [0]}


def _config_class(family: str):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    return {"qwen2_vl": Qwen2VLConfig, "qwen2_5_vl": Qwen2_5_VLConfig, "qwen3_vl": Qwen3VLConfig}[family]


def tiny_config(family: str = "qwen2_5_vl"):
    """The tiny config of ``family`` (hidden 32, 2 layers, vision depth 1-2)."""
    _check_family(family)
    if family not in QWEN_VL_FAMILIES:
        from .lvlm_families import build_family

        return build_family(family)[0]
    return _config_class(family)(
        text_config=_tiny_text_config(family),
        vision_config=_tiny_vision_config(family),
        tie_word_embeddings=False,
        **_token_config_ids(),
    )


def real_size_config(name: str = "qwen2.5-vl-7b"):
    """The real architecture of a released model (hand-written values), with the tiny tokenizer's ids.

    Only for speed/memory benchmarks with random weights: the vocabulary keeps the real size so
    embedding and LM-head memory are realistic; special-token ids point into the tiny byte tokenizer.
    """
    if name != "qwen2.5-vl-7b":
        raise ValueError(f"unknown real-size architecture {name!r}; available: 'qwen2.5-vl-7b'")
    ids = special_token_ids()
    return _config_class("qwen2_5_vl")(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
            "hidden_act": "silu",
        },
        tie_word_embeddings=False,
        **_token_config_ids(),
    )


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown LVLM family {family!r}; choose one of {', '.join(FAMILIES)}")


def build_processor(family: str = "qwen2_5_vl", max_pixels: int | None = None):
    """The family's processor around the tiny tokenizer, with a small ``max_pixels`` by default."""
    _check_family(family)
    if family not in QWEN_VL_FAMILIES:
        from .lvlm_families import build_family

        return build_family(family)[1]
    from transformers import Qwen2VLImageProcessor

    tokenizer = build_tiny_tokenizer()
    patch = 16 if family == "qwen3_vl" else 14
    factor = patch * 2  # patch × spatial merge
    max_pixels = max_pixels or (2 * factor) ** 2  # ≤ 2×2 merged image tokens per image
    image_processor = Qwen2VLImageProcessor(
        min_pixels=factor * factor, max_pixels=max_pixels, patch_size=patch, merge_size=2, temporal_patch_size=2
    )
    if family == "qwen3_vl":
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        video = Qwen3VLVideoProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                      size={"shortest_edge": factor * factor, "longest_edge": max_pixels * 4})
        return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video,
                                chat_template=CHAT_TEMPLATE)
    from transformers import Qwen2VLVideoProcessor

    video = Qwen2VLVideoProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                  min_pixels=factor * factor, max_pixels=max_pixels * 4)
    if family == "qwen2_vl":
        from transformers import Qwen2VLProcessor as Processor
    else:
        from transformers import Qwen2_5_VLProcessor as Processor
    return Processor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video,
                     chat_template=CHAT_TEMPLATE)


def build_tiny_lvlm(out_dir: str | Path, family: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """Build a tiny random ``family`` model + processor and ``save_pretrained`` them into ``out_dir``.

    Deterministic for a given ``seed``. Returns the folder, which loads with
    ``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``.
    """
    _check_family(family)
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if family in QWEN_VL_FAMILIES:
        config, processor = tiny_config(family), build_processor(family)
    else:
        from .lvlm_families import build_family

        config, processor = build_family(family)
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
        # Random init gives near-uniform next-token logits; widen the LM head so readings differ
        # clearly between images/adapters, as a trained model's would.
        with torch.no_grad():
            model.get_output_embeddings().weight.normal_(0.0, 0.5)
            for param in model.parameters():
                if param.ndim >= 2 and not param.any():  # e.g. Gemma 3's projector starts at zero: image-blind
                    param.normal_(0.0, 0.05)
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m emofeedback2.tiny_models.lvlm OUT [--family qwen2_5_vl] [--seed 0]``: build a tiny judge folder."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m emofeedback2.tiny_models.lvlm",
                                     description="Build a tiny random judge folder (config, safetensors, processor).")
    parser.add_argument("out_dir", help="folder to write (created if missing)")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_5_vl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_lvlm(args.out_dir, family=args.family, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

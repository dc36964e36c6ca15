"""Tiny random configs and processors of the non-Qwen-VL judge families, built offline.

Each family is its real transformers classes (``*Config``, ``*ImageProcessor``, ``*Processor``)
shrunk to a text model of hidden 32 / 2 layers and a vision tower of hidden 48 / 1-2 layers, with
the family's tokenizer *kind* (:mod:`.lvlm_tokenizers`) and a chat template written for this
project in the family's turn format. The vision hidden size differs from the text one on purpose:
the projector from vision to text is then recognisable by its output size, as in real models.

Image processors keep the family's resizing rule (fixed square, tiles, any-resolution grid) at toy
sizes, so images of different sizes give different numbers of image tokens wherever the real
family does: that is what left-padded batching has to get right.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .lvlm_tokenizers import byte_bpe, gpt2_bpe, sentencepiece_bpe

TEXT_HIDDEN = 32
VISION_HIDDEN = 48


def _text(**extra: Any) -> dict[str, Any]:
    """The shared tiny decoder shape (head_dim 16, grouped-query attention with 1 KV head)."""
    base = {"hidden_size": TEXT_HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6}
    base.update(extra)
    return base


def _siglip(image_size: int, patch_size: int, **extra: Any) -> dict[str, Any]:
    vision = {"model_type": "siglip_vision_model", "hidden_size": VISION_HIDDEN, "intermediate_size": 96,
              "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": image_size, "patch_size": patch_size,
              "vision_use_head": False}
    vision.update(extra)
    return vision


# --- chat templates (written for this project, in each family's turn format) ----------------------------------------

def _template(turn_open: str, turn_close: str, assistant: str, image: str, prefix: str = "") -> str:
    """A one-or-more-turn template: ``prefix``, then per message ``turn_open`` role, contents (images
    as ``image``), ``turn_close``; with a generation prompt the assistant turn is opened."""
    return (
        prefix
        + "{% for message in messages %}" + turn_open
        + "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}" + image
        + "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
        + turn_close + "{% endfor %}{% if add_generation_prompt %}" + assistant + "{% endif %}"
    )


QWEN_TURNS = dict(turn_open="<|im_start|>{{ message['role'] }}\n", turn_close="<|im_end|>\n",
                  assistant="<|im_start|>assistant\n")


# --- Qwen3.5 (hybrid linear/full attention decoder, Qwen3-VL vision) -------------------------------------------------

QWEN3_5_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|image_pad|>", "<|video_pad|>")


def qwen3_5() -> tuple[Any, Any]:
    from transformers import Qwen2VLImageProcessor, Qwen3_5Config, Qwen3VLProcessor, Qwen3VLVideoProcessor

    template = _template(**QWEN_TURNS, image="<|vision_start|><|image_pad|><|vision_end|>")
    tokenizer = byte_bpe(QWEN3_5_SPECIALS, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                            "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>"},
                         unk="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", chat_template=template,
                         tokenizer_class="qwen3_5")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN3_5_SPECIALS}
    config = Qwen3_5Config(
        text_config=_text(vocab_size=288, layer_types=["linear_attention", "full_attention"],
                          linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8,
                          linear_num_key_heads=2, linear_num_value_heads=2, pad_token_id=ids["<|endoftext|>"],
                          eos_token_id=ids["<|im_end|>"],
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 0],
                                           "mrope_interleaved": True, "partial_rotary_factor": 0.25}),
        vision_config={"depth": 1, "hidden_size": VISION_HIDDEN, "intermediate_size": 96, "num_heads": 2,
                       "out_hidden_size": TEXT_HIDDEN, "patch_size": 16, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "num_position_embeddings": 16},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    factor = 32
    image = Qwen2VLImageProcessor(min_pixels=factor * factor, max_pixels=(2 * factor) ** 2, patch_size=16, merge_size=2,
                                  temporal_patch_size=2)
    video = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                  size={"shortest_edge": factor * factor, "longest_edge": 4 * (2 * factor) ** 2})
    return config, Qwen3VLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                    chat_template=template)


# --- Gemma 3 (SigLIP tower, pooled to a fixed number of soft tokens per image) -----------------------------------------

GEMMA_SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")
GEMMA_TURNS = dict(turn_open="<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n",
                   turn_close="<end_of_turn>\n", assistant="<start_of_turn>model\n", prefix="{{ bos_token }}")


def gemma3() -> tuple[Any, Any]:
    from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor

    template = _template(**GEMMA_TURNS, image="<start_of_image>")
    tokenizer = sentencepiece_bpe(GEMMA_SPECIALS, {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                   "image_token": "<image_soft_token>"}, chat_template=template)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA_SPECIALS}
    config = Gemma3Config(
        text_config=_text(vocab_size=len(tokenizer), sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                          query_pre_attn_scalar=16, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config=_siglip(image_size=32, patch_size=8),
        mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    image = Gemma3ImageProcessor(size={"height": 32, "width": 32})
    return config, Gemma3Processor(image_processor=image, tokenizer=tokenizer, chat_template=template, image_seq_length=4)


# --- InternVL 3.5 (HF-native; InternViT tower, pixel-shuffle projector, Qwen3 decoder, image tiles) -------------------

INTERNVL_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>")


def internvl() -> tuple[Any, Any]:
    from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLProcessor, InternVLVideoProcessor

    template = _template(**QWEN_TURNS, image="<IMG_CONTEXT>\n")
    tokenizer = byte_bpe(INTERNVL_SPECIALS, {"start_image_token": "<img>", "end_image_token": "</img>",
                                             "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                         unk="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", chat_template=template)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in INTERNVL_SPECIALS}
    config = InternVLConfig(
        text_config={"model_type": "qwen3", **_text(vocab_size=288, pad_token_id=ids["<|endoftext|>"],
                                                    eos_token_id=ids["<|im_end|>"])},
        vision_config={"hidden_size": VISION_HIDDEN, "intermediate_size": 96, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": [32, 32], "patch_size": [8, 8]},
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=4, downsample_ratio=0.5,
        tie_word_embeddings=False,
    )
    image = GotOcr2ImageProcessor(size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=4)
    video = InternVLVideoProcessor(size={"height": 32, "width": 32})
    return config, InternVLProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                     image_seq_length=4, chat_template=template)


# --- LLaVA-OneVision (SigLIP tower, any-resolution grid, Qwen2 decoder) ----------------------------------------------

LLAVA_OV_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>")


def llava_onevision() -> tuple[Any, Any]:
    from transformers import (
        LlavaOnevisionConfig, LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
    )

    template = _template(**QWEN_TURNS, image="<image>\n")
    tokenizer = byte_bpe(LLAVA_OV_SPECIALS, {"image_token": "<image>", "video_token": "<video>"},
                         unk="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>", chat_template=template)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_OV_SPECIALS}
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **_text(vocab_size=288, pad_token_id=ids["<|endoftext|>"],
                                                    eos_token_id=ids["<|im_end|>"])},
        vision_config=_siglip(image_size=32, patch_size=8, num_hidden_layers=2),
        image_token_index=ids["<image>"], video_token_index=ids["<video>"], image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_9",
    )
    image = LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
    video = LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    return config, LlavaOnevisionProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                           num_image_tokens=16, vision_feature_select_strategy="full",
                                           chat_template=template)


# --- SmolVLM (Idefics3 layout: SigLIP tower, pixel-shuffle connector, image split into tiles + a global view) -----------

SMOLVLM_SPECIALS = ("<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>", "<global-img>",
                    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))
SMOLVLM_TURNS = dict(turn_open="{{ message['role'] | capitalize }}:", turn_close="<end_of_utterance>\n",
                     assistant="Assistant:", prefix="<|im_start|>")


def smolvlm() -> tuple[Any, Any]:
    from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

    template = _template(**SMOLVLM_TURNS, image="<image>")
    tokenizer = gpt2_bpe(SMOLVLM_SPECIALS, {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                            "global_image_token": "<global-img>",
                                            "end_of_utterance_token": "<end_of_utterance>"},
                         bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_start|>", chat_template=template)
    config = SmolVLMConfig(
        text_config={"model_type": "llama", **_text(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    bos_token_id=tokenizer.bos_token_id)},
        vision_config={"hidden_size": VISION_HIDDEN, "intermediate_size": 96, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        image_token_id=tokenizer.image_token_id, scale_factor=2, tie_word_embeddings=False,
    )
    image = SmolVLMImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                  do_image_splitting=True)
    video = SmolVLMVideoProcessor(size={"longest_edge": 32}, max_image_size={"longest_edge": 32})
    return config, SmolVLMProcessor(image_processor=image, tokenizer=tokenizer, video_processor=video,
                                    image_seq_len=4, chat_template=template)


TINY_BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "qwen3_5": qwen3_5,
    "gemma3": gemma3,
    "internvl": internvl,
    "llava_onevision": llava_onevision,
    "smolvlm": smolvlm,
}


def build_family(family: str, max_pixels: Optional[int] = None) -> tuple[Any, Any]:
    """``(config, processor)`` of a tiny ``family`` model."""
    return TINY_BUILDERS[family]()


# --- Gemma 4 (variable-resolution vision tower, pooled soft tokens; Gemma turn format) ---------------------------------

GEMMA4_SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
                   "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>")


def gemma4() -> tuple[Any, Any]:
    from transformers import Gemma4Config, Gemma4ImageProcessor, Gemma4Processor, Gemma4VideoProcessor
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    template = _template(**GEMMA_TURNS, image="<image_soft_token>")  # Gemma 4 writes the soft token; the processor wraps it
    tokenizer = sentencepiece_bpe(GEMMA4_SPECIALS, {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                                    "image_token": "<image_soft_token>", "boa_token": "<start_of_audio>",
                                                    "eoa_token": "<end_of_audio>", "audio_token": "<audio_soft_token>"},
                                  chat_template=template)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA4_SPECIALS}
    vocab = len(tokenizer) + 1  # + the processor's "<|video|>"
    config = Gemma4Config(
        text_config=_text(vocab_size=vocab, vocab_size_per_layer_input=vocab, hidden_size_per_layer_input=8,
                          sliding_window=16, layer_types=["sliding_attention", "full_attention"], global_head_dim=16,
                          pad_token_id=0, eos_token_id=1, bos_token_id=2),
        vision_config={"hidden_size": VISION_HIDDEN, "intermediate_size": 96, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 24, "patch_size": 4,
                       "pooling_kernel_size": 3, "position_embedding_size": 256},
        audio_config=None,
        boi_token_id=ids["<start_of_image>"], eoi_token_id=ids["<end_of_image>"], image_token_id=ids["<image_soft_token>"],
        video_token_id=vocab - 1, boa_token_id=ids["<start_of_audio>"], eoa_token_index=ids["<end_of_audio>"],
        audio_token_id=ids["<audio_soft_token>"],
    )
    image = Gemma4ImageProcessor(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    video = Gemma4VideoProcessor(patch_size=4, max_soft_tokens=70, pooling_kernel_size=3)
    return config, Gemma4Processor(feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=image,
                                   tokenizer=tokenizer, video_processor=video, chat_template=template,
                                   image_seq_length=70)


TINY_BUILDERS["gemma4"] = gemma4

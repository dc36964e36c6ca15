"""Tiny text encoders and tokenizers of every family, built offline from configs.

Each is the real transformers class the diffusers pipeline expects, at toy size, with a tokenizer
written locally (no hub): a character-level BPE ``CLIPTokenizer`` for the CLIP encoders; a unigram
``T5Tokenizer`` over single characters for Flux.1's T5; the byte-level Qwen tokenizer of :mod:`.lvlm` for the Qwen2.5-VL (Qwen-Image) and Qwen3 (Flux.2 Klein,
Z-Image) language models, with a Qwen3-style chat template that honours ``enable_thinking`` as the
real one does (Flux.2 Klein asks for no thinking, Z-Image for thinking).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from .lvlm import QWEN_VL_SPECIAL_TOKENS, TINY_VOCAB_SIZE, build_tiny_tokenizer, special_token_ids, tiny_config

# Widths of the tiny text encoders. SDXL/SD3 concatenate two encoders' outputs.
TEXT_HIDDEN = 32
TEXT_PROJECTION = 32
TOKENIZER_MAX_LENGTH = 77


def _vocab() -> dict[str, int]:
    """A byte-free CLIP BPE vocabulary: specials, single characters and their word-final forms."""
    symbols = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [s + "</w>" for s in symbols]
    return {token: index for index, token in enumerate(tokens)}


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """Save a CLIPTokenizer (character-level BPE, max length 77) with ``save_pretrained`` into ``folder``.

    ``vocab.json`` and ``merges.txt`` are written too, in the layout of real CLIP tokenizer folders.
    """
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)
    tokenizer.save_pretrained(str(folder))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def _tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=_vocab(), merges=[], model_max_length=TOKENIZER_MAX_LENGTH)


def _text_encoder(with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = _vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        projection_dim=TEXT_PROJECTION,
        hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


T5_HIDDEN = 32
QWEN3_HIDDEN = 16
#: Flux.2 Klein reads hidden states 9, 18 and 27 of its Qwen3 (``text_encoder_out_layers``)
KLEIN_LAYERS = 27

# Qwen3's chat template logic, written for this project: user turns, the generation prompt, and the
# empty think block that ``enable_thinking=False`` adds to it.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def t5_tokenizer():
    """A unigram ``T5Tokenizer`` (pad 0, eos 1, unk 2) over lowercase letters, digits and punctuation."""
    from transformers import T5Tokenizer

    symbols = string.ascii_lowercase + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [(c, -2.0) for c in symbols] + [("▁" + c, -1.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def t5_encoder(vocab_size: int):
    """A 2-layer ``T5EncoderModel`` of width :data:`T5_HIDDEN` (Flux.1's ``text_encoder_2``)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, d_model=T5_HIDDEN, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def qwen3_tokenizer():
    """The byte-level Qwen tokenizer with the Qwen3 chat template (``enable_thinking`` aware)."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def _qwen3_config(layers: int):
    from transformers import Qwen3Config

    ids = special_token_ids()
    return Qwen3Config(vocab_size=TINY_VOCAB_SIZE, hidden_size=QWEN3_HIDDEN, intermediate_size=32,
                       num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                       max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                       bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                       pad_token_id=ids["<|endoftext|>"])


def qwen3_causal_lm(layers: int = KLEIN_LAYERS):
    """A ``Qwen3ForCausalLM`` with ``layers`` tiny layers (Flux.2 Klein's text encoder)."""
    from transformers import Qwen3ForCausalLM

    return Qwen3ForCausalLM(_qwen3_config(layers)).eval()


def qwen3_model(layers: int = 2):
    """A ``Qwen3Model`` (no LM head; Z-Image's text encoder)."""
    from transformers import Qwen3Model

    return Qwen3Model(_qwen3_config(layers)).eval()


def qwen25_vl_encoder():
    """A tiny ``Qwen2_5_VLForConditionalGeneration`` (Qwen-Image's text encoder; hidden 32)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration(tiny_config("qwen2_5_vl")).eval()


__all__ = ["QWEN_VL_SPECIAL_TOKENS", "T5_HIDDEN", "QWEN3_HIDDEN", "t5_tokenizer", "t5_encoder", "qwen3_tokenizer",
           "qwen3_causal_lm", "qwen3_model", "qwen25_vl_encoder", "build_tiny_tokenizer"]

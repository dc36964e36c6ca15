"""Tiny offline tokenizers for the tiny LVLM families, one per tokenizer *kind* the real models use.

Each is the real transformers tokenizer class (so its pre-tokenisation pipeline is the one users
run) over a vocabulary small enough to build in milliseconds:

- ``byte_bpe``: a byte-level BPE (``Qwen2Tokenizer`` / ``Qwen3_5Tokenizer``) with the 256 byte
  symbols as ids 0..255 and no merges: every byte, so every digit and the space, is its own token
  (Qwen-VL, Qwen3.5, InternVL 3.5, LLaVA-OneVision: their LMs use Qwen's tokenizer).
- ``gpt2_bpe``: ``GPT2Tokenizer`` whose merges join a space with the digit after it (``Ġ5``), as
  GPT-2's own vocabulary does: a prefix that ends with a space then leaves a lone ``Ġ`` before the
  digit, so the judge must drop that space (SmolVLM's tokenizer class; the merge is our choice, to
  exercise the per-tokenizer answer-prefix handling).
- ``sentencepiece_bpe``: ``GemmaTokenizer`` (spaces become ``▁``, byte fallback, a BOS token
  added when tokenising) over single characters (Gemma 3 / Gemma 4).

Special tokens are given by name (``extra_special_tokens``), so a processor finds e.g.
``tokenizer.image_token`` / ``tokenizer.image_token_id`` the way it does on the real files.
"""

from __future__ import annotations

from typing import Any, Optional

BYTE_VOCAB = 256
_DIGITS = "123456789"


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes map to themselves, others to U+0100 onwards."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _with_specials(vocab: dict[str, int], specials: tuple[str, ...]) -> dict[str, int]:
    start = max(vocab.values()) + 1
    vocab = dict(vocab)
    for i, token in enumerate(specials):
        vocab.setdefault(token, start + i)
    return vocab


def byte_bpe(specials: tuple[str, ...], named: dict[str, str], *, unk: str, eos: str, pad: str,
             chat_template: str, tokenizer_class: str = "qwen2") -> Any:
    """Byte-level BPE without merges; ``specials`` get ids 256, 257, … in order."""
    if tokenizer_class == "qwen3_5":
        from transformers import Qwen3_5Tokenizer as Tokenizer
    else:
        from transformers import Qwen2Tokenizer as Tokenizer

    alphabet = bytes_to_unicode()
    vocab = _with_specials({alphabet[b]: b for b in range(BYTE_VOCAB)}, specials)
    tokenizer = Tokenizer(
        vocab=vocab, merges=[], unk_token=unk, eos_token=eos, pad_token=pad, model_max_length=32768,
        extra_special_tokens=_named_specials(specials, named, exclude=(unk, eos, pad)),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def gpt2_bpe(specials: tuple[str, ...], named: dict[str, str], *, bos: str, eos: str, pad: str,
             chat_template: str) -> Any:
    """Byte-level GPT-2 BPE whose only merges are ``Ġ`` + digit (so ``" 5"`` is one token)."""
    from transformers import GPT2Tokenizer

    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(BYTE_VOCAB)}
    space = alphabet[ord(" ")]
    merges = [(space, d) for d in _DIGITS]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = BYTE_VOCAB + i
    vocab = _with_specials(vocab, specials)
    tokenizer = GPT2Tokenizer(
        vocab=vocab, merges=merges, unk_token=eos, bos_token=bos, eos_token=eos, pad_token=pad, model_max_length=32768,
        extra_special_tokens=_named_specials(specials, named, exclude=(bos, eos, pad)),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def sentencepiece_bpe(specials: tuple[str, ...], named: dict[str, str], *, chat_template: str) -> Any:
    """``GemmaTokenizer`` over single characters: ``<pad> <eos> <bos> <unk> <mask>``, ``specials``, the
    256 byte-fallback tokens, ``▁`` and printable ASCII."""
    from transformers import GemmaTokenizer

    base = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
    vocab = {token: i for i, token in enumerate(base)}
    vocab = _with_specials(vocab, specials)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for char in "▁" + "".join(chr(c) for c in range(ord("!"), ord("~") + 1)):
        vocab.setdefault(char, len(vocab))
    tokenizer = GemmaTokenizer(
        vocab=vocab, merges=[], model_max_length=32768, add_bos_token=True,  # as the released Gemma tokenizers
        extra_special_tokens=_named_specials(specials, named, exclude=base),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _named_specials(specials: tuple[str, ...], named: dict[str, str], exclude: tuple[Optional[str], ...]) -> Any:
    """``extra_special_tokens``: the named ones as a dict (attributes such as ``image_token``), the rest
    registered under generated names so they stay single special tokens."""
    out = dict(named)
    taken = set(named.values()) | {t for t in exclude if t}
    for i, token in enumerate(specials):
        if token not in taken:
            out[f"extra_token_{i}"] = token
    return out

"""Model text is untrusted: special tokens, control characters and length are neutralised."""

import pytest

from emofeedback2.engines.text_safety import sanitize_model_text


def test_strips_qwen_special_tokens_and_keeps_the_words():
    raw = "<|im_start|>assistant\nThe sky is <|vision_start|><|image_pad|><|vision_end|>grey.<|im_end|><|endoftext|>"
    assert sanitize_model_text(raw) == "assistant The sky is grey."


def test_removes_any_pipe_token_and_angle_tags():
    assert sanitize_model_text("a <|custom_tok_42|> b <image> c </s> <think>d</think>") == "a b c d"


def test_token_split_by_another_token_is_still_removed():
    assert "<|" not in sanitize_model_text("x <|im<|pad|>_start|> y")


def test_trailing_half_token_is_dropped():
    assert sanitize_model_text("calm scene <|im_e") == "calm scene"


def test_control_and_invisible_characters_removed_whitespace_collapsed():
    raw = "warm\x00 light\x1b[31m\u200b\u202e  and\t\n\n  soft\x7f colours"
    assert sanitize_model_text(raw) == "warm light and soft colours"


def test_length_is_capped_at_a_word_boundary():
    text = " ".join(["word"] * 500)
    out = sanitize_model_text(text, max_chars=50)
    assert len(out) <= 50
    assert out.endswith("…")
    assert "wor…" not in out


def test_non_strings_and_none_are_harmless():
    assert sanitize_model_text(None) == ""
    assert sanitize_model_text(b"caf\xc3\xa9 \xff ok") == "café ok"
    assert sanitize_model_text(12.5) == "12.5"


def test_bad_max_chars_is_an_error():
    with pytest.raises(ValueError, match="max_chars"):
        sanitize_model_text("x", max_chars=0)

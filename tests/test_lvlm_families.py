"""Every supported judge family, through the real loading code: readings, left-padded batches of images of
mixed sizes equal to one-by-one reading, the fast paths, and the per-tokenizer digit readout."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from PIL import Image

from emofeedback2.engines.judge import lvlm_batching
from emofeedback2.engines.judge.digit_readout import resolve_digit_readout
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, LVLMLoadError, load_lvlm
from emofeedback2.tiny_models.lvlm import FAMILIES

#: Gemma 3 resizes every image to one square: its image token count never varies (no padding to test there)
FIXED_IMAGE_TOKENS = {"gemma3"}


def mixed_images() -> list[Image.Image]:
    """Four images of different sizes and aspect ratios (so most families give them different token counts)."""
    generator = torch.Generator().manual_seed(11)
    noise = (torch.rand(40, 56, 3, generator=generator).numpy() * 255).astype("uint8")
    return [Image.fromarray(noise), Image.new("RGB", (90, 40), (200, 30, 90)), Image.new("RGB", (33, 100), (20, 130, 90)),
            Image.new("RGB", (64, 64), (240, 240, 40))]


def load(folder, **options):
    return load_lvlm(LVLMConfig(model=str(folder), device="cpu", dtype="float32", **options))


@pytest.mark.parametrize("family", FAMILIES)
def test_family_reads_mixed_sizes_in_one_padded_batch_as_one_by_one(tiny_lvlm_dirs, family):
    scorer = load(tiny_lvlm_dirs[family])
    images = mixed_images()
    batched = scorer.score_details(images)
    assert ((batched.valence >= -3) & (batched.valence <= 3)).all() and ((batched.arousal >= -3) & (batched.arousal <= 3)).all()
    assert len({round(v, 6) for v in batched.valence.tolist()}) > 1  # the reading depends on the pixels
    for i, image in enumerate(images):
        single = scorer.score_details([image])
        assert abs(batched.valence[i].item() - single.valence[0].item()) < 1e-5, family
        assert abs(batched.arousal[i].item() - single.arousal[0].item()) < 1e-5, family
        assert abs(batched.digit_mass_valence[i].item() - single.digit_mass_valence[0].item()) < 1e-5
    lengths = scorer._encode([scorer._chat("x")] * len(images), images)["attention_mask"].sum(dim=1)
    assert len(set(lengths.tolist())) > 1 or family in FIXED_IMAGE_TOKENS  # the batch really was left-padded


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_runs_prompt_once_and_equals_full_rows(tiny_lvlm_dirs, family, monkeypatch):
    folder = tiny_lvlm_dirs[family]
    fast, rows = load(folder), load(folder, share_prefix=False, share_vision=False)
    calls = []
    original = fast.model.forward
    monkeypatch.setattr(fast.model, "forward", lambda *a, **k: (calls.append(k["input_ids"].shape[0]), original(*a, **k))[1])
    images = mixed_images()
    a, b = fast.score_details(images), rows.score_details(images)
    assert calls == [4, 8]  # prompt + image once per image, then the 2 × 4 answer-prefix rows on its cache
    assert torch.allclose(a.valence, b.valence, atol=1e-5) and torch.allclose(a.arousal, b.arousal, atol=1e-5)


def test_shared_vision_is_used_only_where_features_split_per_image(tiny_lvlm_dirs):
    # a capability (per-image patch grids + precomputed features), not a family name
    for family in ("qwen2_vl", "qwen3_5", "gemma3", "internvl", "smolvlm"):
        scorer = load(tiny_lvlm_dirs[family])
        has_grids = "image_grid_thw" in scorer.processor.image_processor.model_input_names
        assert scorer._shares_vision() == has_grids


def test_gemma_prompt_carries_one_bos_token(tiny_lvlm_dirs):
    scorer = load(tiny_lvlm_dirs["gemma3"])
    prompt = scorer._chat("How does it feel?")
    assert prompt.startswith(scorer.tokenizer.bos_token)  # the chat template writes it ...
    ids = scorer._encode([prompt], [Image.new("RGB", (20, 20))])["input_ids"][0].tolist()
    assert ids.count(scorer.tokenizer.bos_token_id) == 1  # ... so tokenising must not add a second one


# --- the digit readout, per tokenizer ----------------------------------------------------------------------------


@pytest.mark.parametrize("family, kept", [("qwen2_5_vl", True), ("gemma3", True), ("smolvlm", False)])
def test_answer_prefix_keeps_or_drops_its_space_by_how_the_tokenizer_splits_it(tiny_lvlm_dirs, family, kept, caplog):
    with caplog.at_level(logging.INFO, logger="emofeedback2.engines.judge.lvlm_scorer"):
        scorer = load(tiny_lvlm_dirs[family])
    notes = [r.getMessage() for r in caplog.records if r.name == "emofeedback2.engines.judge.lvlm_scorer"]
    assert notes == ([] if kept else [f"judge {tiny_lvlm_dirs[family]}: {scorer.readout_note}"])  # said once, at load
    tokens = scorer.tokenizer.convert_ids_to_tokens(scorer.digit_ids)
    if kept:  # space and digit are separate tokens: the prefix ends with the space, digits are bare
        assert scorer.prompts.valence_prefix == "Valence: " and tokens == list("123456789")
        assert scorer.readout_note == ""
    else:  # GPT-2-style vocabulary joins them: the prefix stops before the space, digits carry it
        assert scorer.prompts.valence_prefix == "Valence:" and scorer.prompts.arousal_prefix == "Arousal:"
        assert [scorer.tokenizer.convert_tokens_to_string([t]) for t in tokens] == [f" {d}" for d in "123456789"]
        assert "without their trailing space" in scorer.readout_note
    # whichever form: the digit is exactly the next token after the prompt + prefix, as the model would write it
    prompt = scorer._chat(scorer.prompts.question) + scorer.prompts.valence_prefix
    base = scorer.tokenizer.encode(prompt, add_special_tokens=False)
    written = scorer.tokenizer.encode(scorer._chat(scorer.prompts.question) + "Valence: 7", add_special_tokens=False)
    assert written == base + [scorer.digit_ids[6]]


def _byte_tokenizer_without(missing: str):
    from transformers import Qwen2Tokenizer

    from emofeedback2.tiny_models.lvlm_tokenizers import bytes_to_unicode

    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256) if chr(b) not in missing}
    vocab["<|endoftext|>"] = 256
    return Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_tokenizer_without_single_digit_tokens_is_refused_with_the_fix():
    tokenizer = _byte_tokenizer_without("123456789")  # every digit falls back to the one unknown token
    with pytest.raises(LVLMLoadError) as info:
        resolve_digit_readout(tokenizer, "Question?\n", ["Valence: ", "Arousal: "], "tiny-judge")
    message = str(info.value)
    assert "tiny-judge" in message and "one token per digit" in message and "valence_prefix" in message


def test_a_working_tokenizer_gives_nine_distinct_digit_ids():
    readout = resolve_digit_readout(_byte_tokenizer_without(""), "Question?\n", ["Valence: ", "Arousal: "])
    assert len(set(readout.digit_ids)) == 9 and readout.prefixes == ("Valence: ", "Arousal: ")


def test_processor_without_chat_template_is_refused_at_load(tiny_lvlm_dirs, tmp_path):
    folder = tmp_path / "no_template"
    shutil.copytree(tiny_lvlm_dirs["internvl"], folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(LVLMLoadError, match="chat template"):
        load(folder)


def test_every_family_is_an_image_text_to_text_model_with_a_chat_template(tiny_lvlm_dirs):
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    for family in FAMILIES:
        scorer = load(tiny_lvlm_dirs[family])
        assert scorer.model.config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        assert scorer.processor.chat_template and lvlm_batching.cache_argument(scorer) is not None

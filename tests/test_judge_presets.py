"""Judge presets: the EEmo-Logic prompt against its published inference code, parsing of valid, hostile and
malformed answers, the scale mapping, preset files, the exact expected value of written digits, and the whole
generate-then-read path on the tiny Qwen2.5-VL judge (a random judge writes garbage: the unparsable count shows it)."""

from __future__ import annotations

import json
import re
import time

import pytest
import torch

from emofeedback2.engines.judge.answer_parsing import parse_answer
from emofeedback2.engines.judge.digit_expectation import (
    NumberSite, digit_token_ids, expected_numbers, locate_site,
)
from emofeedback2.engines.judge.generated_reading import GeneratedReader, SamplingSettings
from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
from emofeedback2.engines.judge.paper_format import REASONING_INSTRUCTION, parse_paper_answer
from emofeedback2.engines.judge.preset_judge import GeneratedReadingJudge, choose_reading
from emofeedback2.engines.judge.presets import (
    PAPER, JudgePresetError, load_preset, preset_from_dict, shipped_preset_names,
)

# --- the published EEmo-Logic prompt ------------------------------------------------------------------------
# Reference text, quoted from github.com/workerred/EEmo-Logic, inference/evaluate_vad.py (commit 08896886):
# QUESTION_TEMPLATE (a triple-quoted string whose second line starts with 12 spaces), the per-axis question,
# and the replacement of "Score: " by replace_content[i]; processor min/max pixels and max_new_tokens=1024.
PUBLISHED_TEMPLATE = (
    'Answer the question: "[QUESTION]" according to the content of the image. Firstly, give a through thinking on '
    "this and then output your thought and analysis process within the <think> </think> tags and provide your "
    "answer within the <answer> </answer> tags (formatted as Score: ). The final output should be with the "
    "following format:\n            <think></think><answer>Score: </answer>"
)
PUBLISHED_QUESTION = ("As an expert in emotional attribute assessment, please rate the level of {axis} the image "
                      "evokes in you on a scale from 0 to 1. ")
PUBLISHED_REPLACE = {"valence": "Valence: x.xxxx", "arousal": "Arousal: x.xxxx"}


def published_prompt(axis: str) -> str:
    prompt = PUBLISHED_TEMPLATE.replace("[QUESTION]", PUBLISHED_QUESTION.format(axis=axis))
    return prompt.replace("Score: ", PUBLISHED_REPLACE[axis])


@pytest.mark.parametrize("axis", ["valence", "arousal"])
def test_eemo_logic_prompt_equals_the_published_one(axis):
    preset = load_preset("eemo-logic")
    assert preset.questions[axis] == published_prompt(axis)
    assert "(formatted as Valence: x.xxxx)" in published_prompt("valence")  # both "Score: " occurrences replaced


def test_eemo_logic_settings_are_the_published_ones():
    preset = load_preset("eemo-logic")
    assert (preset.min_pixels, preset.max_pixels, preset.max_new_tokens) == (256 * 28 * 28, 1280 * 28 * 28, 1024)
    assert preset.scale == (0.0, 1.0) and not preset.joint and preset.match == "last"
    assert {"eemo-logic", "paper"} <= set(shipped_preset_names())


def test_paper_preset_is_the_grpo_objectives_instruction_and_parser():
    assert load_preset("paper") is PAPER and PAPER.questions["both"] is REASONING_INSTRUCTION
    # what the paper's format defines: <think>…</think><answer>v, a</answer> and nothing after, both on [-3, 3]
    cases = {"<think>warm light</think><answer>1.25, -0.50</answer>": (1.25, -0.5),
             "<answer>1, 2</answer>": None,  # no reasoning block
             "<think>a</think><answer>3.5, 0</answer>": None,  # off the scale
             "<think>a</think><answer>1, 2</answer> more": None,  # text after the answer
             "<think>x</think><answer>-3, 3</answer>": (-3.0, 3.0)}
    for text, expected in cases.items():
        parsed = parse_answer(PAPER, "both", text)
        read = None if parsed is None else (parsed.numbers["valence"].value, parsed.numbers["arousal"].value)
        assert read == expected, text
        assert parse_paper_answer(text) == expected, text  # the GRPO objective's parser agrees


# --- parsing untrusted answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("<think>bright, calm</think><answer>Valence: 0.6523</answer>", 0.6523),
    ("<think>x</think>\n<answer> valence :0.7 </answer>", 0.7),
    ("<answer>0.25</answer>", 0.25),  # the label is optional, as in the published extraction
    ("<answer>Valence: 0.1</answer> second thoughts <answer>Valence: 0.9000</answer>", 0.9),  # the last tag counts
    ("<answer>Valence: 1</answer>", 1.0),
    ("<answer>Arousal: 0.4</answer>", None),  # another axis's label
    ("<answer>Valence: 1.5</answer>", None),  # out of [0, 1]: unparsable, never clamped
    ("<answer>Valence: -0.1</answer>", None),
    ("<answer>Valence: nan</answer>", None),
    ("<answer>Valence: 1e-3</answer>", None),
    ("<answer>Valence: \u0660.\u0665</answer>", None),  # Arabic-Indic digits
    ("<answer>Valence: 0.5", None),  # no closing tag
    ("Valence: 0.5", None),
    ("", None),
])
def test_eemo_logic_answers_parse_only_when_well_formed_and_in_scale(text, expected):
    parsed = parse_answer(load_preset("eemo-logic"), "valence", text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed.numbers["valence"].value == pytest.approx(expected)
        number = parsed.numbers["valence"]
        assert text[number.start:number.end] == number.text


@pytest.mark.parametrize("text", [None, 3.5, b"<answer>0.5</answer>", "<answer>Valence: 0.5</answer>" + " " * 9000,
                                  "<answer>" * 20000, "<answer>Valence: " + "9" * 5000 + "</answer>"])
def test_hostile_answers_are_unparsable_and_fast(text):
    start = time.perf_counter()
    assert parse_answer(load_preset("eemo-logic"), "valence", text) is None
    assert parse_answer(PAPER, "both", text) is None
    assert time.perf_counter() - start < 1.0


def test_a_preset_pattern_that_backtracks_badly_times_out_as_unparsable():
    preset = preset_from_dict({"name": "slow", "scale": [0, 1], "questions": {"valence": "v?", "arousal": "a?"},
                               "patterns": {"valence": "(x+x+)+y(?P<value>[0-9])", "arousal": "(?P<value>[0-9])"}})
    start = time.perf_counter()
    assert parse_answer(preset, "valence", "x" * 5000) is None
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("scale, answer, va", [((0.0, 1.0), 0.0, -3.0), ((0.0, 1.0), 0.5, 0.0), ((0.0, 1.0), 1.0, 3.0),
                                               ((0.0, 1.0), 0.75, 1.5), ((1.0, 9.0), 5.0, 0.0), ((1.0, 9.0), 9.0, 3.0),
                                               ((-3.0, 3.0), -1.25, -1.25)])
def test_answers_map_linearly_onto_minus_three_to_three(scale, answer, va):
    preset = preset_from_dict({"name": "s", "scale": list(scale), "questions": {"both": "q"},
                               "patterns": {"both": "(?P<valence>[0-9.-]+),(?P<arousal>[0-9.-]+)"}})
    assert preset.to_va(answer) == pytest.approx(va)


# --- preset files ------------------------------------------------------------------------------------------


def test_a_user_preset_file_needs_no_code(tmp_path):
    toml = tmp_path / "nine.toml"
    toml.write_text('name = "nine"\nscale = [1, 9]\nexpected_value = false\nmax_new_tokens = 32\n'
                    '[questions]\nboth = "Rate valence and arousal 1-9 as V=<v> A=<a>."\n'
                    "[patterns]\nboth = 'V=(?P<valence>[0-9.]+)\\s+A=(?P<arousal>[0-9.]+)'\n")
    preset = load_preset(str(toml))
    answer = parse_answer(preset, "both", "I think V=7 A=3.5")
    assert (answer.numbers["valence"].value, answer.numbers["arousal"].value) == (7.0, 3.5)
    assert preset.to_va(7.0) == pytest.approx(1.5)
    as_json = tmp_path / "nine.json"
    as_json.write_text(json.dumps({"name": "nine", "scale": [1, 9], "questions": {"both": "q"},
                                   "patterns": {"both": "V=(?P<valence>[0-9]) A=(?P<arousal>[0-9])"}}))
    assert load_preset(str(as_json)).joint


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "questions": {"both": "q"}, "patterns": {"both": "(?P<valence>1)"}}, "arousal"),
    ({"name": "x", "questions": {"valence": "q"}, "patterns": {"valence": "(?P<value>1)"}}, "'valence' and 'arousal'"),
    ({"name": "x", "questions": {"both": "q"}, "patterns": {"both": "(?P<valence>1)(?P<arousal>2"}}, "not a valid regular"),
    ({"name": "x", "scale": [1, 1], "questions": {"both": "q"}, "patterns": {"both": "x"}}, "low < high"),
    ({"name": "x", "questions": {"both": "q"}, "parser": "paper_format", "scale": [0, 1]}, "scale = [-3, 3]"),
    ({"name": "x", "questions": {"both": "q"}, "patterns": {"both": "x"}, "promt": "typo"}, "unknown field"),
    ({"questions": {"both": "q"}, "patterns": {"both": "x"}}, "name is missing"),
    ({"name": "x", "questions": {"both": "q"}, "patterns": {"both": "(?P<valence>1)(?P<arousal>2)"},
      "max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_preset_data_names_the_field(data, message):
    with pytest.raises(JudgePresetError, match=re.escape(message)):
        preset_from_dict(data)


def test_unknown_preset_names_the_choices(tmp_path):
    with pytest.raises(JudgePresetError, match="eemo-logic, paper"):
        load_preset("eemo")
    with pytest.raises(JudgePresetError, match="does not exist"):
        load_preset(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(JudgePresetError, match="not valid TOML"):
        load_preset(str(bad))


# --- the expected value of written digits --------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge(tiny_lvlm_dir):
    torch.set_num_threads(1)
    return load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))


def _image(seed: int, size: int = 56):
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).byte().numpy())


def _site(judge, question: str, answer: str, image, preset):
    ids = judge.tokenizer.encode(answer, add_special_tokens=False)
    text = judge.tokenizer.decode(ids, skip_special_tokens=True)
    number = parse_answer(preset, "valence" if not preset.joint else "both", text).numbers["valence"]
    token = locate_site(judge.tokenizer, ids, text, number, digit_token_ids(judge.tokenizer))
    assert token is not None and judge.tokenizer.decode([ids[token]]) == text[number.start + number.text.index(".") + 1]
    return NumberSite(judge._chat(question), image, ids, token, number)


@torch.no_grad()
def _next_token_probs(judge, site, suffix: list[int], logits: bool = False) -> torch.Tensor:
    """Reference: one unpadded row, the full-vocabulary distribution (or logits) after prompt + ``suffix``."""
    encoded = judge._encode([site.prompt], [site.image])
    ids = torch.cat([encoded["input_ids"], torch.tensor([suffix])], dim=1)
    rest = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    if "mm_token_type_ids" in encoded:  # the appended tokens are text (type 0)
        rest["mm_token_type_ids"] = torch.cat([encoded["mm_token_type_ids"], torch.zeros(1, len(suffix)).long()], 1)
    out = judge.model(input_ids=ids, attention_mask=torch.ones_like(ids), **rest).logits[0, -1].float()
    return out if logits else torch.softmax(out, dim=-1)


def _exact_fraction(judge, site, digits: list[int], depth: int) -> float:
    """E[0.d1 d2 … d_depth] under the model by full enumeration (d1 renormalised over digits, later non-digits = 0)."""
    prefix = list(site.completion[:site.first_fraction_token])

    def walk(path: list[int], level: int) -> float:
        probs = _next_token_probs(judge, site, prefix + [digits[d] for d in path])[digits]
        if level == 1:
            probs = probs / probs.sum()
        if level == depth:
            return float(sum(p * d for d, p in enumerate(probs.tolist()))) / 10 ** level
        return float(sum(p * (d / 10 ** level + walk(path + [d], level + 1)) for d, p in enumerate(probs.tolist())))

    return walk([], 1)


def test_expected_value_equals_the_reference_formula_one_row_at_a_time(judge):
    preset = load_preset("eemo-logic")
    digits = digit_token_ids(judge.tokenizer)
    sites = [_site(judge, preset.questions["valence"], "<think>soft light</think><answer>Valence: 0.6523</answer>",
                   _image(1), preset),
             _site(judge, preset.questions["valence"], "<think>é</think><answer>Valence: 0.2</answer>", _image(2, 84),
                   preset)]
    batched = expected_numbers(judge, sites, digits)  # ten left-padded rows per site, two lengths, two image sizes
    for site, got, rest in zip(sites, batched, (0.0023, 0.0)):
        reference = _exact_fraction(judge, site, digits, depth=2) + rest
        assert got.value == pytest.approx(reference, abs=1e-5)
        p1 = _next_token_probs(judge, site, list(site.completion[:site.first_fraction_token]))
        assert got.digit_mass == pytest.approx(float(p1[digits].sum()), abs=1e-5)


def test_expected_value_is_within_a_hundredth_of_the_three_digit_expectation(judge):
    preset = load_preset("eemo-logic")
    digits = digit_token_ids(judge.tokenizer)
    site = _site(judge, preset.questions["arousal"].replace("Arousal", "Valence"),
                 "<think>a</think><answer>Valence: 0.318</answer>", _image(3), preset)
    ours = expected_numbers(judge, [site], digits)[0].value
    exact = _exact_fraction(judge, site, digits, depth=3)
    assert abs(ours - exact) <= 0.01
    assert abs(ours - 0.318) > 0.005  # a random judge is not sure of the digits it wrote: the reading is not the text


def test_signed_paper_answers_keep_the_written_sign_and_integer(judge):
    digits = digit_token_ids(judge.tokenizer)
    site = _site(judge, REASONING_INSTRUCTION, "<think>dark</think><answer>-2.50, 1.25</answer>", _image(4), PAPER)
    value = expected_numbers(judge, [site], digits)[0].value
    assert -3.0 < value < -2.0


# --- the whole path on the tiny judge ---------------------------------------------------------------------------


class ForceAnswers:
    """A logits processor that makes generation write given answers (one token list per row), then the end token.
    It runs after the reader's digit recorder, so the recorded scores are the model's own at each position."""

    def __init__(self, rows: list[list[int]], end: int):
        self.rows, self.end, self.start = rows, end, None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(self.rows):
            forced[row, ids[step] if step < len(ids) else self.end] = 0.0
        return forced


def script(judge, reader, n_images: int, answers: dict[str, str]):
    """Make ``reader``'s next read generate ``answers[question]`` for every image and sample."""
    rows = [judge.tokenizer.encode(answers[q], add_special_tokens=False)
            for _ in range(n_images) for q in reader.preset.question_keys for _ in range(reader.settings.samples)]
    reader.extra_processors = [ForceAnswers(rows, judge.tokenizer.eos_token_id)]


def test_scripted_answers_are_read_as_expected_values_or_parsed_numbers(judge):
    preset = load_preset("eemo-logic")
    answers = {"valence": "<think>x</think><answer>Valence: 0.6523</answer>",
               "arousal": "<think>y</think><answer>Arousal: 1.7</answer>"}  # arousal out of scale
    images = torch.rand(2, 56, 56, 3)
    expected = GeneratedReadingJudge(judge, preset)
    script(judge, expected.reader, 2, answers)
    readings = expected.read_details(images)
    assert [r.valence.kinds for r in readings] == [["expected"], ["expected"]]
    assert all(r.unparsable and r.arousal.values == [None] and r.unparsable_answers == 1 for r in readings)
    assert readings[0].texts[0].endswith("<answer>Valence: 0.6523</answer>")
    parsed = GeneratedReadingJudge(judge, preset, SamplingSettings(reading="parsed"))
    script(judge, parsed.reader, 2, answers)
    reading = parsed.score(images)[0]
    assert reading.valence == pytest.approx(6 * 0.6523 - 3) and reading.arousal == 0.0 and reading.unparsable
    assert reading.digit_mass == 0.0  # an unparsable axis: every low-mass flag fires


def test_digit_by_digit_reading_equals_teacher_forced_distributions(judge):
    preset = load_preset("eemo-logic")
    answer = "<think>soft light</think><answer>Valence: 0.652</answer>"
    reader = GeneratedReader(judge, preset, SamplingSettings(max_new_tokens=80))
    script(judge, reader, 1, {"valence": answer, "arousal": "<answer>Arousal: 0.5</answer>"})
    image = _image(7)
    got = reader.read([image])[0].valence
    site = _site(judge, preset.questions["valence"], answer, image, preset)
    digits, prefix = digit_token_ids(judge.tokenizer), list(site.completion[:site.first_fraction_token])
    keep = torch.ones(_next_token_probs(judge, site, prefix).shape[0], dtype=torch.bool)
    keep[reader.suppress] = False  # generation masks the special tokens; so does the reference

    def probs(suffix):
        p = _next_token_probs(judge, site, prefix + suffix, logits=True)
        return torch.softmax(p.masked_fill(~keep, float("-inf")), dim=-1)

    first = probs([])
    fraction = float((first[digits] / first[digits].sum() * torch.arange(10)).sum()) / 10
    for j in range(3):  # the written digits 6, 5, 2 and the position after them
        nxt = probs([digits[int(d)] for d in "652"[:j + 1]])
        fraction += float((nxt[digits] * torch.arange(10)).sum()) / 10 ** (j + 2)
    assert got.kinds == ["expected"] and got.values[0] == pytest.approx(6 * fraction - 3, abs=1e-4)
    assert got.masses[0] == pytest.approx(float(first[digits].sum()), abs=1e-5)


def test_a_random_tiny_judge_writes_garbage_and_the_unparsable_count_shows_it(judge):
    reader = GeneratedReader(judge, load_preset("eemo-logic"), SamplingSettings(max_new_tokens=24))
    readings = reader.read(torch.rand(3, 56, 56, 3))
    assert [r.unparsable_answers for r in readings] == [2, 2, 2]
    assert all(r.unparsable and r.point == (0.0, 0.0) and len(r.texts) == 2 for r in readings)


def test_generation_never_writes_vision_or_other_special_tokens(judge):
    reader = GeneratedReader(judge, PAPER, SamplingSettings(samples=4, temperature=2.0, max_new_tokens=40))
    completions, _ = reader._generate([judge._chat(REASONING_INSTRUCTION)] * 4, [_image(k) for k in range(4)])
    written = set(completions.flatten().tolist())
    specials = set(judge.tokenizer.all_special_ids) - reader.end_ids - {judge.tokenizer.pad_token_id}
    assert written and not written & specials and max(written) < len(judge.tokenizer)


def test_sampled_readings_are_seeded_and_their_spread_is_reported(judge):
    images = torch.rand(2, 56, 56, 3)
    settings = SamplingSettings(samples=3, temperature=1.0, max_new_tokens=12, seed=5)
    first = GeneratedReader(judge, PAPER, settings).read(images)
    again = GeneratedReader(judge, PAPER, settings).read(images)
    assert [r.texts for r in first] == [r.texts for r in again] and len(first[0].texts) == 3
    other = GeneratedReader(judge, PAPER, SamplingSettings(samples=3, temperature=1.0, max_new_tokens=12, seed=6))
    assert [r.texts for r in other.read(images)] != [r.texts for r in first]
    with pytest.raises(JudgePresetError, match="identical"):
        SamplingSettings(samples=2).check()


def test_the_spread_is_the_std_over_parsed_samples(judge):
    reader = GeneratedReader(judge, PAPER, SamplingSettings(samples=2, temperature=1.0, reading="parsed"))
    rows = [judge.tokenizer.encode(text, add_special_tokens=False) for text in
            ("<think>a</think><answer>1.00, -2.00</answer>", "<think>b</think><answer>2.00, -1.00</answer>")]
    reader.extra_processors = [ForceAnswers(rows, judge.tokenizer.eos_token_id)]
    reading = reader.read(torch.rand(1, 56, 56, 3))[0]
    assert reading.point == (1.5, -1.5) and reading.valence.std == pytest.approx(0.5)
    assert reading.arousal.std == pytest.approx(0.5) and not reading.unparsable


# --- which reading a judge gets ----------------------------------------------------------------------------------


def _adapter(tmp_path, objective: str, **settings):
    folder = tmp_path / objective
    folder.mkdir()
    (folder / "judge_training.json").write_text(json.dumps({"objective": objective, "objective_settings": settings}))
    return str(folder)


def test_auto_reads_a_judge_as_its_adapter_was_trained(tmp_path):
    grpo, soft = _adapter(tmp_path, "grpo", max_new_tokens=48), _adapter(tmp_path, "soft_label")
    choice = choose_reading("auto", grpo)
    assert choice.preset is PAPER and choice.max_new_tokens == 48 and choice.warning is None
    assert choose_reading("auto", soft).preset is None and choose_reading("auto", None).preset is None
    assert "paper preset" in choose_reading("digits", grpo).warning
    assert "digit readout" in choose_reading("eemo-logic", soft).warning
    assert "paper preset" in choose_reading("eemo-logic", grpo).warning
    assert choose_reading("paper", grpo).warning is None and choose_reading("eemo-logic", None).warning is None


def test_a_preset_needs_a_model_that_writes_text():
    from emofeedback2.engines.judge.color_scorer import ColorHeuristicScorer

    with pytest.raises(JudgePresetError, match="writes text"):
        GeneratedReadingJudge(ColorHeuristicScorer(), PAPER)


def test_score_cli_with_the_eemo_logic_preset_flags_every_garbage_answer(tiny_lvlm_dir, tmp_path, capsys, one_thread):
    from emofeedback2.cli import main

    for k in range(2):
        _image(k).save(tmp_path / f"{k}.png")
    assert main(["score", str(tmp_path), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--dtype", "float32",
                 "--judge-preset", "eemo-logic", "--judge-max-new-tokens", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scorer"].endswith("[preset eemo-logic]")
    assert out["judge_reading"]["preset"] == "eemo-logic" and out["judge_reading"]["decoding"] == "greedy"
    assert out["judge_reading"]["max_new_tokens"] == 16
    assert all(row["unparsable"] and row["low_digit_mass"] for row in out["readings"])
    assert all(row["answers"] == 2 and row["unparsable_answers"] == 2 for row in out["readings"])
    assert main(["score", str(tmp_path / "0.png"), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu",
                 "--judge-preset", "eemo-logic", "--judge-max-new-tokens", "8"]) == 0
    assert "UNPARSABLE" in capsys.readouterr().out
    assert main(["score", str(tmp_path / "0.png"), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--json",
                 "--judge-preset", "paper", "--judge-samples", "3", "--judge-temperature", "1", "--judge-max-new-tokens",
                 "6"]) == 0
    row = json.loads(capsys.readouterr().out)["readings"][0]
    assert row["answers"] == 3 and row["valence_std"] == 0.0  # no answer parsed: no spread to measure
    assert main(["score", str(tmp_path / "0.png"), "--lvlm", str(tiny_lvlm_dir), "--judge-preset", "paper",
                 "--judge-samples", "3"]) == 2
    assert "temperature > 0" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "0.png"), "--lvlm", "colour", "--judge-preset", "paper"]) == 2
    assert "colour heuristic" in capsys.readouterr().err


def test_loop_and_eval_check_the_judge_options_before_loading_any_weights(tmp_path, capsys, monkeypatch):
    """A bad --judge-* option fails before the generator loads (with a real generator that is minutes)."""
    from emofeedback2.cli import main
    from emofeedback2.engines.generation import diffusers_backend

    def no_load(*args, **kwargs):
        raise AssertionError("the generator was loaded before the judge options were checked")

    monkeypatch.setattr(diffusers_backend, "load_diffusers_generator", no_load)
    bad = ["--judge-preset", "paper", "--judge-samples", "2"]  # > 1 sample needs a temperature > 0
    assert main(["loop", "--prompt", "a lake", "--valence", "1", "--arousal", "1", "--generator", str(tmp_path / "gen"), "--lvlm", str(tmp_path / "judge"),
                 "--out", str(tmp_path / "loop"), *bad]) == 2
    assert "temperature > 0" in capsys.readouterr().err
    (tmp_path / "prompts.txt").write_text("a lake\n")
    assert main(["eval", "--generator", str(tmp_path / "gen"), "--lvlm", str(tmp_path / "judge"),
                 "--prompts", str(tmp_path / "prompts.txt"),
                 "--out", str(tmp_path / "eval"), *bad]) == 2
    assert "temperature > 0" in capsys.readouterr().err


def test_loader_node_offers_the_presets_and_returns_a_preset_judge(fake_comfy, tiny_lvlm_dir):
    import shutil

    from emofeedback2.nodes.loader_nodes import LVLMLoader

    shutil.copytree(tiny_lvlm_dir, fake_comfy.models_dir / "LLM" / "tiny")
    user = fake_comfy.models_dir / "LLM" / "judge_presets"
    user.mkdir()
    (user / "mine.toml").write_text('name = "mine"\nscale = [1, 9]\n[questions]\nboth = "q"\n'
                                    "[patterns]\nboth = '(?P<valence>[0-9]) (?P<arousal>[0-9])'\n")
    optional = LVLMLoader.INPUT_TYPES()["optional"]
    assert list(optional)[-1] == "judge_preset"
    assert optional["judge_preset"][0] == ["auto", "digits", "eemo-logic", "paper", "mine.toml"]
    node = LVLMLoader()
    lvlm = node.load(model="tiny", dtype="float32", device="cpu", judge_preset="eemo-logic", max_pixels=0)[0]
    assert isinstance(lvlm, GeneratedReadingJudge) and lvlm.lvlm.config.max_pixels == 1280 * 28 * 28
    mine = node.load(model="tiny", dtype="float32", device="cpu", judge_preset="mine.toml")[0]
    assert mine.preset.name == "mine" and mine.lvlm.config.max_pixels == 401408
    assert not isinstance(node.load(model="tiny", dtype="float32", device="cpu")[0], GeneratedReadingJudge)


def test_a_preset_judge_still_drives_the_prompt_refiner(judge):
    from emofeedback2.engines.loop.refiner import LVLMRefiner, make_refiner

    preset_judge = GeneratedReadingJudge(judge, PAPER, SamplingSettings(max_new_tokens=8))
    refiner = make_refiner(preset_judge)
    assert isinstance(refiner, LVLMRefiner) and refiner._keeps_lines()
    texts = preset_judge.generate_text(torch.rand(1, 56, 56, 3), "Describe the light.", max_new_tokens=4)
    assert len(texts) == 1 and isinstance(texts[0], str)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_both_expected_readings_run_on_every_tiny_family_and_agree_within_the_stated_bound(tiny_lvlm_dirs, family,
                                                                                            one_thread):
    judge = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dirs[family]), device="cpu", dtype="float32"))
    answers = {"valence": "<answer>Valence: 0.65</answer>", "arousal": "<answer>Arousal: 0.2</answer>"}
    values = {}
    for reading in ("expected", "exact_expected"):
        reader = GeneratedReader(judge, load_preset("eemo-logic"), SamplingSettings(reading=reading, max_new_tokens=40))
        script(judge, reader, 2, answers)
        out = reader.read(torch.rand(2, 56, 72, 3, generator=torch.Generator().manual_seed(1)))
        assert all(r.valence.kinds == ["expected"] and r.arousal.kinds == ["expected"] for r in out)
        values[reading] = [r.point for r in out]
    for (v1, a1), (v2, a2) in zip(values["expected"], values["exact_expected"]):
        assert abs(v1 - v2) <= 0.6 and abs(a1 - a2) <= 0.6  # digit by digit: < 0.1 of [0, 1] from the exact reading

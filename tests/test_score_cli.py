"""``emofeedback2 score`` and ``emofeedback2 bench scorer`` on the tiny model, through the real CLI entry point."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from emofeedback2.cli import main


@pytest.fixture
def image_files(tmp_path):
    bright = tmp_path / "bright.png"
    dark = tmp_path / "dark.jpg"
    Image.new("RGB", (40, 30), (250, 200, 30)).save(bright)
    Image.new("RGB", (30, 40), (35, 35, 35)).save(dark)
    return [bright, dark]


def test_score_with_tiny_lvlm_prints_json_rows(tiny_lvlm_dir, image_files, capsys):
    code = main(["score", *map(str, image_files), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu",
                 "--valence", "1.5", "--arousal", "-0.5", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out["readings"]] == [str(p) for p in image_files]
    assert all(-3 <= r["valence"] <= 3 and 0 <= r["reward"] <= 1 for r in out["readings"])
    assert out["heuristic"] is False and out["target"] == {"valence": 1.5, "arousal": -0.5}


@pytest.mark.parametrize("name", ["colour", "color-heuristic"])  # every name loop and eval accept
def test_colour_heuristic_on_a_folder_is_labelled(image_files, capsys, name):
    assert main(["score", str(image_files[0].parent), "--lvlm", name]) == 0
    out = capsys.readouterr().out
    assert "heuristic" in out and "bright.png" in out and "dark.jpg" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lvlm", "/nowhere/models/LLM/Qwen2.5-VL"], "models/LLM"),
        (["--lvlm", "colour", "--valence", "5", "--arousal", "0"], "valence=5"),
        (["--lvlm", "colour", "--valence", "1"], "both --valence and --arousal"),
    ],
)
def test_bad_input_is_a_clear_error_with_exit_code_2(image_files, capsys, extra, message):
    assert main(["score", str(image_files[0]), *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_image_file_is_named(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope.png"), "--lvlm", "colour"]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_bench_scorer_cli_headline_is_like_for_like_with_the_floor_and_paper_ratio_before_it(capsys):
    code = main(["bench", "scorer", "--images", "2", "--repeats", "1", "--image-size", "32", "--reasoning-tokens", "3"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("expected_value:") and "digit mass mean" in line for line in lines)
    assert any(line.startswith("prefill:") for line in lines)
    digits = next(line for line in lines if line.startswith("generate_then_parse[digits_answer]:"))
    assert "the scorer's question and 1-9 scale" in digits
    assert any(line.startswith("generate_then_parse[paper_format]:") for line in lines)
    diff = next(line for line in lines if line.startswith("batch_vs_single_max_diff="))
    assert float(diff.split("=")[1]) < 1e-5  # mixed image sizes in one left-padded batch read as one by one
    assert lines[-3].startswith("ev_over_prefill=") and float(lines[-3].split("=")[1]) > 0
    assert lines[-2].startswith("ev_vs_paper_format_speedup=")
    assert lines[-1].startswith("ev_vs_generate_speedup=") and float(lines[-1].split("=")[1]) > 0


def test_bench_scorer_takes_every_family_and_reports_batch_against_one_by_one(capsys):
    from emofeedback2.bench.scorer import add_arguments
    from emofeedback2.tiny_models.lvlm import FAMILIES

    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert {a.dest: a.choices for a in parser._actions}["family"] == FAMILIES
    assert main(["bench", "scorer", "--family", "smolvlm", "--images", "3", "--repeats", "1", "--image-size", "32",
                 "--reasoning-tokens", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model: tiny smolvlm")
    lengths = next(line for line in lines if line.startswith("mixed sizes:"))
    assert len(set(lengths.split("prompt lengths [")[1].split("]")[0].split(", "))) > 1  # really padded
    control = float(next(line for line in lines if line.startswith("control:")).rsplit(" ", 1)[1])
    diff = float(next(line for line in lines if line.startswith("batch_vs_single_max_diff=")).split("=")[1])
    assert diff < 1e-5 < control  # the control (another image's reading) moves; the batch does not


def test_digits_answer_parser_reads_the_scale_and_refuses_other_text():
    from emofeedback2.bench.scorer import DIGITS, _digit_to_va

    assert DIGITS.search("7, 3").groups() == ("7", "3")
    assert DIGITS.search(" 9/1 and more").groups() == ("9", "1")
    assert DIGITS.search("0, 3") is None and DIGITS.search("seven, three") is None and DIGITS.search("73") is None
    assert _digit_to_va(1.0) == -3.0 and _digit_to_va(5.0) == 0.0 and _digit_to_va(9.0) == 3.0


def test_low_digit_mass_readings_are_flagged_in_rows_and_the_cli(tiny_lvlm_dir, image_files, capsys):
    from emofeedback2.engines.judge.scoring import LOW_DIGIT_MASS, EmotionReading, reading_rows

    rows = reading_rows([EmotionReading(1.0, 0.0, digit_mass=0.9), EmotionReading(1.0, 0.0, digit_mass=0.1),
                         EmotionReading(1.0, 0.0)])
    assert rows[0]["low_digit_mass"] is False and rows[1]["low_digit_mass"] is True
    assert "digit_mass" not in rows[2] and LOW_DIGIT_MASS == 0.5
    # a random tiny judge puts almost no probability on the digits: every reading is flagged
    assert main(["score", *map(str, image_files), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--json"]) == 0
    readings = json.loads(capsys.readouterr().out)["readings"]
    assert all(r["low_digit_mass"] and 0.0 <= r["digit_mass"] < LOW_DIGIT_MASS for r in readings)
    assert main(["score", *map(str, image_files), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("LOW DIGIT MASS") == 2


# --- the LVLM's loading options: one definition (cli/lvlm_args.py) for score, loop, eval and eval-judge ---


def _capture_configs(monkeypatch):
    import emofeedback2.engines.judge.lvlm_scorer as lvlm_scorer

    configs, real = [], lvlm_scorer.load_lvlm

    def recording(config, *args, **kwargs):
        configs.append(config)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(lvlm_scorer, "load_lvlm", recording)
    return configs


def test_score_attention_choice_reaches_the_loaded_model(tiny_lvlm_dir, image_files, capsys, monkeypatch):
    configs = _capture_configs(monkeypatch)
    assert main(["score", str(image_files[0]), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu",
                 "--attention", "eager", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["readings"]
    assert configs[-1].attn_implementation == "eager" and configs[-1].quantization == "none"


def test_score_old_attn_spelling_still_works(tiny_lvlm_dir, image_files, capsys, monkeypatch):
    configs = _capture_configs(monkeypatch)
    assert main(["score", str(image_files[0]), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--attn", "sdpa"]) == 0
    assert configs[-1].attn_implementation == "sdpa"


@pytest.mark.parametrize("kind", ["8bit", "4bit"])
def test_score_quantization_without_bitsandbytes_says_what_to_install(tiny_lvlm_dir, image_files, capsys, monkeypatch, kind):
    import emofeedback2.engines.judge.options as options

    real = options._installed
    monkeypatch.setattr(options, "_installed", lambda module: False if module == "bitsandbytes" else real(module))
    assert main(["score", str(image_files[0]), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--quantization", kind]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install bitsandbytes" in err and kind in err and "'none'" in err


def test_score_flash_attention_on_cpu_asks_for_a_cuda_gpu(tiny_lvlm_dir, image_files, capsys):
    assert main(["score", str(image_files[0]), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu",
                 "--attention", "flash_attention_2"]) == 2
    err = capsys.readouterr().err
    assert "CUDA GPU" in err and "flash-attn" in err and "sdpa" in err and "models/LLM" not in err


def test_score_rejects_an_unknown_quantization(image_files, capsys):
    with pytest.raises(SystemExit) as info:
        main(["score", str(image_files[0]), "--lvlm", "colour", "--quantization", "3bit"])
    assert info.value.code == 2 and "8bit" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["score", "x.png", "--lvlm", "m"],
    ["loop", "--generator", "g", "--lvlm", "m", "--valence", "0", "--arousal", "0"],
    ["eval", "--lvlm", "m"],
    ["eval-judge", "--data", "d.csv", "--lvlm", "m"],
])
def test_every_command_that_loads_the_judge_takes_the_same_options(argv):
    from emofeedback2.cli import build_parser
    from emofeedback2.cli.lvlm_args import lvlm_load_options

    parser = build_parser()
    assert lvlm_load_options(parser.parse_args(argv)) == {"attn_implementation": None, "quantization": "none"}
    args = parser.parse_args([*argv, "--attention", "sdpa", "--quantization", "4bit"])
    assert lvlm_load_options(args) == {"attn_implementation": "sdpa", "quantization": "4bit"}


def test_loop_and_eval_load_the_judge_with_those_options(tiny_lvlm_dir, monkeypatch):
    from emofeedback2.cli.lvlm_args import load_scorer

    configs = _capture_configs(monkeypatch)
    scorer = load_scorer(str(tiny_lvlm_dir), "cpu", "float32", None, attn_implementation="eager", quantization="none")
    assert configs[-1].attn_implementation == "eager" and scorer.name

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


def test_colour_heuristic_on_a_folder_is_labelled(image_files, capsys):
    assert main(["score", str(image_files[0].parent), "--lvlm", "colour"]) == 0
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


def test_bench_scorer_cli_prints_both_paths_and_the_speedup_last(capsys):
    code = main(["bench", "scorer", "--images", "2", "--repeats", "1", "--image-size", "32", "--new-tokens", "2",
                 "--reasoning-tokens", "3"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("expected_value:") and "images/s" in line for line in lines)
    assert any(line.startswith("generate_then_parse[paper_format]:") for line in lines)
    assert any(line.startswith("generate_then_parse[bare_answer]:") for line in lines)
    assert lines[-2].startswith("ev_vs_bare_answer_speedup=")
    assert lines[-1].startswith("ev_vs_generate_speedup=") and float(lines[-1].split("=")[1]) > 0

"""Readings that cannot be trusted say so, everywhere: low digit mass and near-constant readings are flagged by
``score``, ``eval``, ``eval-judge``, ``loop`` and the ComfyUI nodes, and notes name the judge that judged."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from emofeedback2.cli import main
from emofeedback2.engines.judge.scoring import (
    LOW_DIGIT_MASS, NEAR_CONSTANT_STD, EmotionReading, RecordedScorer, assess_values,
)


class ConstantLowMassJudge:
    """A judge that reads every image the same, with almost no probability on the digits (a random LVLM)."""

    name = "constant low-mass judge"
    is_heuristic = False

    def score(self, images, *, analysis=False):
        return [EmotionReading(0.3, -0.2, digit_mass=0.01) for _ in range(len(images))]


# --- the assessment ---------------------------------------------------------------------------------------------


def test_low_mass_and_near_constant_readings_are_flagged_with_the_judge_named():
    trust = assess_values([0.10, 0.11, 0.12, 0.10], [-1.0, 0.5, 2.0, -2.5], [0.01, 0.9, 0.02, 0.95], judge="J")
    assert trust.low_mass_share == 0.5 and trust.near_constant == {"valence": True, "arousal": False}
    assert not trust.trusted and len(trust.warnings) == 2 and all("J" in w for w in trust.warnings)
    assert "50% of the readings rest on low digit mass" in trust.warnings[0]
    assert f"< {NEAR_CONSTANT_STD:g}" in trust.warnings[1] and "correlations" in trust.warnings[1]
    assert "either the images do not differ" in trust.warnings[1]  # the generator may be the cause, not the judge
    as_dict = trust.as_dict()
    assert as_dict["trusted"] is False and as_dict["low_mass_threshold"] == LOW_DIGIT_MASS


def test_spread_out_confident_readings_are_trusted_and_few_readings_have_no_spread_verdict():
    good = assess_values([-2.0, 0.0, 2.5], [1.0, -1.0, 0.2], [0.9, 0.8, 0.99], judge="J")
    assert good.trusted and good.warnings == () and good.low_mass_share == 0.0
    two = assess_values([0.1, 0.1], [0.1, 0.1], [None, None], judge="colour", heuristic=True)
    assert two.trusted and two.valence_std is None and two.low_mass_share is None  # no digits, no spread verdict


def test_recorded_scorer_passes_calls_on_and_keeps_every_reading():
    judge = RecordedScorer(ConstantLowMassJudge())
    assert judge.name == "constant low-mass judge" and judge.is_heuristic is False
    judge.score(torch.zeros(2, 8, 8, 3))
    judge.score(torch.zeros(3, 8, 8, 3))
    assert len(judge.readings) == 5 and not judge.trust().trusted
    with pytest.raises(AttributeError):
        judge.no_such_method  # noqa: B018 - delegation stops at the wrapped scorer's attributes


# --- score --------------------------------------------------------------------------------------------------------


@pytest.fixture
def three_images(tmp_path):
    paths = []
    for i, colour in enumerate([(250, 200, 30), (30, 30, 30), (20, 120, 220)]):
        path = tmp_path / f"image_{i}.png"
        Image.new("RGB", (40, 32), colour).save(path)
        paths.append(str(path))
    return paths


def test_score_flags_a_random_judge_in_the_table_and_the_json(tiny_lvlm_dir, three_images, capsys):
    assert main(["score", *three_images, "--lvlm", str(tiny_lvlm_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 100% of the readings rest on low digit mass" in out and "near-constant" in out
    assert main(["score", *three_images, "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--json"]) == 0
    trust = json.loads(capsys.readouterr().out)["reading_trust"]
    assert trust["trusted"] is False and trust["low_mass_share"] == 1.0 and trust["judge"].startswith("LVLM ")


def test_score_with_the_colour_heuristic_on_distinct_images_has_no_warning(three_images, capsys):
    assert main(["score", *three_images, "--lvlm", "colour", "--json"]) == 0
    trust = json.loads(capsys.readouterr().out)["reading_trust"]
    assert trust["trusted"] is True and trust["heuristic"] is True and trust["low_mass_share"] is None


# --- eval ---------------------------------------------------------------------------------------------------------


def test_eval_demo_with_a_random_judge_warns_and_its_note_names_that_judge(tiny_lvlm_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--demo", "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--grid", "2",
                 "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "WARNING: 100% of the readings rest on low digit mass" in printed and "near-constant" in printed
    assert "judged by LVLM" in printed and "colour heuristic" not in printed.splitlines()[-1]
    report = json.loads((out / "report.json").read_text())
    assert report["reading_trust"]["trusted"] is False and report["reading_trust"]["near_constant"]["valence"]
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Readings that cannot be trusted") < markdown.index("## Overall")
    from emofeedback2.evaluation.report import compare_table

    table = compare_table([out]).splitlines()
    assert table[0].endswith("| readings trusted |") and table[2].endswith("| NO |")


def test_report_of_a_trustworthy_judge_has_no_warning_section(tmp_path):
    from emofeedback2.evaluation.records import ImageRecord
    from emofeedback2.evaluation.report import build_report, report_markdown

    records = [ImageRecord(f"{i}.png", 0, "p", 0, i, tv, ta, tv * 0.8, ta * 0.7, 0.9, 0.95)
               for i, (tv, ta) in enumerate([(-3, -3), (0, 0), (3, 3), (-3, 3)])]

    class NoQuality:
        def values(self, records):
            from emofeedback2.evaluation.metrics import Values

            return Values()

    report = build_report(records, tmp_path, ["p"], NoQuality(), {"judge": "good judge"})
    assert report["reading_trust"]["trusted"] is True
    assert "cannot be trusted" not in report_markdown(report)


# --- eval-judge ---------------------------------------------------------------------------------------------------


def test_eval_judge_flags_a_random_judge(tiny_lvlm_dir, tmp_path, capsys):
    from emofeedback2.bench.judge import write_synthetic_judge_set

    data = write_synthetic_judge_set(tmp_path / "set", n_train=2, n_test=4, seed=2, size=32)
    args = ["eval-judge", "--data", str(data), "--lvlm", str(tiny_lvlm_dir), "--device", "cpu", "--plots", ""]
    assert main(args) == 0
    assert "WARNING: 100% of the readings rest on low digit mass" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    trust = json.loads(capsys.readouterr().out)["reading_trust"]
    assert trust["trusted"] is False and trust["n"] == 4


# --- loop (CLI) and the ComfyUI nodes -----------------------------------------------------------------------------


def test_loop_report_and_console_flag_a_judge_that_cannot_tell_images_apart(tmp_path, capsys):
    from emofeedback2.cli.loop_commands import _run_and_report
    from emofeedback2.engines.emotion_space import VA
    from emofeedback2.engines.loop.feedback_loop import LoopConfig
    from emofeedback2.engines.loop.refiner import FallbackRefiner
    from loop_fakes import PromptResponsiveGenerator

    config = LoopConfig(rounds=2, candidates=2, tolerance=0.0, min_improvement=0.0, seed=1, steps=1)
    assert _run_and_report(PromptResponsiveGenerator(), ConstantLowMassJudge(), FallbackRefiner(), "a house",
                           VA(1.0, 1.0), config, tmp_path, {"demo": False}) == 0
    assert "WARNING: 100% of the readings rest on low digit mass" in capsys.readouterr().out
    trust = json.loads((tmp_path / "report.json").read_text())["reading_trust"]
    assert trust["trusted"] is False and trust["n"] == 4 and trust["near_constant"] == {"valence": True, "arousal": True}


def test_scorer_node_report_carries_the_warning(tiny_lvlm_dir, fake_comfy):
    from emofeedback2.engines.judge.lvlm_scorer import LVLMConfig, load_lvlm
    from emofeedback2.nodes.scorer_nodes import LVLMEmotionScorer

    lvlm = load_lvlm(LVLMConfig(model=str(tiny_lvlm_dir), device="cpu", dtype="float32"))
    images = torch.rand(3, 24, 32, 3, generator=torch.Generator().manual_seed(1))
    report = LVLMEmotionScorer().score(lvlm=lvlm, images=images)[3]
    assert "WARNING: 100% of the readings rest on low digit mass" in report and lvlm.name in report


def test_loop_node_history_says_whether_readings_can_be_trusted(comfy_sampling):
    from emofeedback2.engines.judge.color_scorer import ColorHeuristicScorer
    from emofeedback2.nodes.loop_nodes import EmoRewardLoop
    from test_loop_nodes import loop_inputs

    history = json.loads(EmoRewardLoop().run(**loop_inputs(comfy_sampling, lvlm=ConstantLowMassJudge()))[3])
    assert history["reading_trust"]["trusted"] is False and history["reading_trust"]["low_mass_share"] == 1.0
    history = json.loads(EmoRewardLoop().run(**loop_inputs(comfy_sampling, lvlm=ColorHeuristicScorer()))[3])
    assert history["reading_trust"]["judge"] == ColorHeuristicScorer().name and history["reading_trust"]["heuristic"]

"""`emofeedback2 eval` end to end on the demo: every report key, figures recomputed independently
from images.csv and from re-scoring the saved PNGs, the target-blind control, --compare, errors."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from emofeedback2.cli import main
from emofeedback2.engines.judge.color_scorer import ColorHeuristicScorer

REPORT_KEYS = (
    "valence_error", "arousal_error", "valence_error_constant", "arousal_error_constant",
    "valence_error_ratio", "arousal_error_ratio", "valence_pearson", "arousal_pearson",
    "valence_spearman", "arousal_spearman", "valence_slope", "arousal_slope",
    "valence_monotonicity", "arousal_monotonicity", "clip_score", "clip_iqa", "lpips_continuous",
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("eval_cli_models")
    (root / "tiny-sd15").symlink_to(tiny_pipeline_dir, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory, workdir):
    """The demo (text route on) and its target-blind control (text route off), grid 3, one seed."""
    root = tmp_path_factory.mktemp("eval_runs")
    out = {}
    for name, strength in (("text", "1"), ("blind", "0")):
        out[name] = root / name
        assert main(["eval", "--demo", "--grid", "3", "--workdir", str(workdir), "--text-strength", strength,
                     "--label", name, "--out", str(out[name])]) == 0
    return out


def _rows(folder):
    with (folder / "images.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_demo_report_has_every_key_and_the_files(runs):
    folder = runs["text"]
    report = json.loads((folder / "report.json").read_text())
    for key in REPORT_KEYS:
        assert key in report, key
        assert key in report["per_prompt"][0], key
    for key in ("clip_score", "clip_iqa", "lpips_continuous"):
        assert report[key] is None and report["null_reasons"][key]
    assert report["n_images"] == 2 * 9 and len(_rows(folder)) == 18
    for name in ("report.md", "heatmap_error.png", "scatter.png", "grids/p000_s0.png", "grids/p001_s0.png"):
        assert (folder / name).is_file(), name
    assert "| V-Err |" in (folder / "report.md").read_text() or "V-Err" in (folder / "report.md").read_text()


def test_errors_and_correlations_recompute_from_csv_and_from_the_saved_images(runs):
    folder = runs["text"]
    report = json.loads((folder / "report.json").read_text())
    rows = _rows(folder)
    scorer = ColorHeuristicScorer()
    for row in rows:  # the PNG on disk reads back exactly what the CSV says
        reading = scorer.score([Image.open(folder / row["file"])])[0]
        assert reading.valence == pytest.approx(float(row["valence"]), abs=1e-9)
        assert reading.arousal == pytest.approx(float(row["arousal"]), abs=1e-9)
    for axis in ("valence", "arousal"):
        t = np.array([float(r[f"target_{axis}"]) for r in rows])
        m = np.array([float(r[axis]) for r in rows])
        assert report[f"{axis}_error"] == pytest.approx(np.abs(m - t).mean())
        assert report[f"{axis}_error_constant"] == pytest.approx(np.abs(t - m.mean()).mean())
        assert report[f"{axis}_pearson"] == pytest.approx(stats.pearsonr(t, m)[0])
        assert report[f"{axis}_spearman"] == pytest.approx(stats.spearmanr(t, m)[0])
        assert report[f"{axis}_slope"] == pytest.approx(stats.linregress(t, m).slope)
    # the text route moves the toy's readings with the target
    assert report["valence_error_ratio"] < 0.9 and report["valence_pearson"] > 0.5


def test_the_target_blind_control_scores_its_constant_baseline(runs):
    # the images of one prompt differ across targets only by batch-size rounding (chunks of 8 and 1)
    report = json.loads((runs["blind"] / "report.json").read_text())
    for axis in ("valence", "arousal"):
        assert report[f"{axis}_error_ratio"] >= 1.0 - 1e-4
        assert report[f"{axis}_error"] == pytest.approx(report[f"{axis}_error_constant"], rel=0.05)
        assert abs(report[f"{axis}_pearson"]) < 0.05
        assert report[f"{axis}_monotonicity"] < 0.7  # ~ a coin flip on rounding noise, 1.0 for the text route


def test_compare_prints_one_markdown_table(runs, capsys):
    capsys.readouterr()
    assert main(["eval", "--compare", str(runs["text"]), str(runs["blind"])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run | images | V-Err |")
    text = json.loads((runs["text"] / "report.json").read_text())
    assert lines[2].startswith("| text | 18 | " + f"{text['valence_error']:.3f} |")
    assert lines[3].startswith("| blind | 18 |")


@pytest.mark.parametrize("argv, message", [
    (["eval", "--prompt", "a"], "--generator is required"),
    (["eval", "--generator", "x"], "--prompts FILE"),
    (["eval", "--demo", "--prompt", "a", "--prompts", "f.txt"], "not both"),
    (["eval", "--compare", "/nonexistent/run"], "report.json not found"),
])
def test_argument_errors_are_one_line_and_name_the_fix(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_targets_file_names_file_and_line(tmp_path, capsys):
    targets = tmp_path / "targets.txt"
    targets.write_text("valence,arousal\n1, 2\n4, 0\n")
    assert main(["eval", "--demo", "--targets", str(targets), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "targets.txt:3" in err and "outside [-3, 3]" in err


def test_an_existing_run_needs_resume(runs, workdir, capsys):
    assert main(["eval", "--demo", "--grid", "3", "--workdir", str(workdir), "--out", str(runs["text"])]) == 2
    assert "--resume" in capsys.readouterr().err


def test_the_report_names_the_models_versions_and_seed(runs):
    from importlib import metadata

    run = json.loads((runs["text"] / "report.json").read_text())["run"]
    assert run["demo"] is True and run["lvlm"] is None and run["judge_is_heuristic"] is True
    assert run["lvlm_adapter"] is None and "generator" in run and "text_strength" in run
    assert run["seed"] == 0 and run["seeds"] == [0]
    for package in ("torch", "diffusers", "transformers"):
        assert run["versions"][package] == metadata.version(package), package
    assert not (runs["text"] / ".lock").exists()  # released (and removed) when the run ended

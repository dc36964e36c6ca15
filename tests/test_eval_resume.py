"""A killed evaluation resumes where it stopped and ends with the report of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emofeedback2.evaluation.records import read_records
from emofeedback2.evaluation.report import QualityScores, build_report
from emofeedback2.evaluation.runner import EvalOutputError, EvalPlan, Sampling, run_evaluation
from emofeedback2.evaluation.targets import grid_targets

from eval_fakes import CellCodeGenerator, CellCodeScorer

PROMPTS = ["a house", "a tree"]
TARGETS = grid_targets(3)


def _response(p, seed, t):
    return (0.5 * t.valence + 0.1 * seed + p, 0.3 * t.arousal - 0.05 * seed)


def _plan(seeds=(0, 1)):
    return EvalPlan(prompts=PROMPTS, targets=TARGETS, seeds=list(seeds), sampling=Sampling(width=16, height=16, steps=1), batch_size=4)


def _report(out: Path, generator=None, resume=False):
    scorer = CellCodeScorer(TARGETS, _response)
    records = run_evaluation(generator or CellCodeGenerator(PROMPTS, TARGETS), scorer, _plan(), out, resume=resume)
    return build_report(records, out, PROMPTS, QualityScores(records, out), run={}), scorer


def test_resume_after_a_kill_gives_the_uninterrupted_report(tmp_path):
    whole, _ = _report(tmp_path / "whole")
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _report(killed, CellCodeGenerator(PROMPTS, TARGETS, fail_on_call=4))
    done = read_records(killed / "images.csv")
    assert 0 < len(done) < _plan().total and not (killed / "report.json").exists()
    with (killed / "images.csv").open("a") as handle:  # a kill in the middle of writing a row
        handle.write('images/p001_s0_t000_v-3.00_a-3.00.png,1,"a tr')
    with pytest.raises(EvalOutputError, match="--resume"):
        _report(killed)
    resumed, scorer = _report(killed, resume=True)
    assert scorer.images_scored == _plan().total - len(done)  # only the missing cells were made
    assert resumed == whole
    rows = read_records(killed / "images.csv")
    assert len(rows) == len({r.key for r in rows}) == _plan().total


def test_resume_refuses_a_folder_made_with_other_settings(tmp_path):
    _report(tmp_path)
    scorer = CellCodeScorer(TARGETS, _response)
    with pytest.raises(EvalOutputError, match="seeds"):
        run_evaluation(CellCodeGenerator(PROMPTS, TARGETS), scorer, _plan(seeds=(0, 1, 2)), tmp_path, resume=True)


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory, tiny_pipeline_dir):
    root = tmp_path_factory.mktemp("eval_demo_models")
    (root / "tiny-sd15").symlink_to(tiny_pipeline_dir, target_is_directory=True)
    return root


def _args(out: Path, workdir: Path, *extra: str) -> list[str]:
    return ["eval", "--demo", "--grid", "3", "--seeds", "2", "--batch-size", "1", "--workdir", str(workdir), "--out", str(out), *extra]


def _cli(out: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emofeedback2.cli", *_args(out, workdir, *extra)]


def test_sigkill_then_resume_gives_the_same_report(tmp_path, demo_workdir, one_thread):
    from emofeedback2.cli import main

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    assert main(_args(whole, demo_workdir)) == 0  # the uninterrupted run, in this process (one thread too)
    killed = tmp_path / "killed"
    process = subprocess.Popen(_cli(killed, demo_workdir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if len(read_records(killed / "images.csv")) >= 4:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    made = len(read_records(killed / "images.csv"))
    assert 4 <= made < 18 and not (killed / "report.json").exists(), f"the kill came too late ({made} of 18 rows)"
    assert main(_args(killed, demo_workdir, "--resume")) == 0
    first = json.loads((whole / "report.json").read_text())
    second = json.loads((killed / "report.json").read_text())
    assert second == first
    assert (killed / "images.csv").read_text() == (whole / "images.csv").read_text()

"""The loop and judge benchmarks end to end at small settings: the report's layout and its last lines."""

import re

import pytest

from emofeedback2.cli import main


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The benchmarks set torch's thread count for themselves; give the rest of the session its own back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _last_lines(capsys, argv, n=2):
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, lines[-n:]


def test_bench_loop_reports_every_schedule_and_ends_with_the_two_ratios(capsys):
    lines, (ratio, reach) = _last_lines(capsys, ["bench", "loop", "--families", "rotated", "--plants", "1", "--targets", "3"])
    assert re.fullmatch(r"error_ratio_at_paper_budget=\d+\.\d{3}", ratio)
    assert re.fullmatch(r"evaluations_to_paper_error=(\d+\.\d{3}|inf)", reach)
    rows = {(m.group(1), m.group(2)): m.group(3) for m in
            (re.match(r"(rotated|all)\s+(\S+)\s+\| (.*)", line) for line in lines) if m}
    for family in ("rotated", "all"):
        for schedule in ("paper", "ours", "ours-integral", "paper-secant", "no-feedback"):
            cells = rows[(family, schedule)].split(" | ")
            assert [c.split(":")[0] for c in cells] == ["B=8", "B=12", "B=24"]
            assert all(re.search(r"true \d\.\d{3} judged \d\.\d{3} evals \d+\.\d images \d+\.\d", c) for c in cells)
        assert re.fullmatch(r"true \d\.\d{3} judged \d\.\d{3} evals \d+\.\d images \d+\.\d", rows[(family, "default")])
    # The headline ratio is the printed 24-evaluation figures' ratio, not a separate computation.
    paper = float(re.search(r"B=24: true (\d\.\d{3})", rows[("all", "paper")]).group(1))
    ours = float(re.search(r"B=24: true (\d\.\d{3})", rows[("all", "ours")]).group(1))
    assert float(ratio.split("=")[1]) == pytest.approx(ours / paper, abs=0.01)


def test_bench_judge_reports_base_trained_and_control_and_ends_with_the_gain(capsys):
    lines, (control, gain) = _last_lines(capsys, [
        "bench", "judge", "--steps", "3", "--batch-size", "4", "--pixels", "28",
        "--train-images", "6", "--test-images", "6"])
    assert re.fullmatch(r"shuffled_control_plcc_gain=[+-]\d\.\d{3}", control)
    assert re.fullmatch(r"judge_plcc_gain=[+-]\d\.\d{3}", gain)
    table = [line.split() for line in lines if re.match(r"(base|trained|shuffled)\s+(valence|arousal)\s", line)]
    assert sorted((row[0], row[1]) for row in table) == sorted(
        (j, a) for j in ("base", "trained", "shuffled") for a in ("valence", "arousal"))
    assert any(re.search(r"training throughput: \d+\.\d images/s", line) for line in lines)


@pytest.mark.parametrize("argv, flag", [
    (["--test-images", "1"], "--test-images"),
    (["--train-images", "0"], "--train-images"),
    (["--pixels", "5"], "--pixels"),
])
def test_bench_judge_refuses_sizes_it_cannot_measure(argv, flag, capsys):
    assert main(["bench", "judge", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]

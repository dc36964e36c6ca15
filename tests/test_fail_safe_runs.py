"""Runs that cannot trample each other: a live process holds its run folder, and every command that
would write there (train with --overwrite or --resume, train-judge, eval --resume, demo/loop --out)
is refused with the holder's pid before it touches anything; the lock dies with its holder."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from emofeedback2.cli import main
from emofeedback2.training import run_lock
from emofeedback2.training.run_lock import RunFolderBusy, check_not_held, hold_run_folder, holder_of, is_main_rank

from fixtures_diffusion import small_train_toml

HOLDER = (
    "import sys, time\n"
    "from emofeedback2.training.run_lock import hold_run_folder\n"
    "hold_run_folder(sys.argv[1], 'test holder')\n"
    "print('held', flush=True)\n"
    "time.sleep(600)\n"
)


@contextmanager
def live_holder(folder: Path, **env: str):
    """A second process that holds ``folder`` until the block ends (it is killed with SIGKILL)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                            env={**os.environ, **env}, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` with its size, mtime and content hash: any touch changes it."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns, digest)
    return found


def one_line_refusal(capsys, pid: int) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"pid {pid}" in err and "nothing in it was touched" in err, err
    return err


# --- the lock itself -------------------------------------------------------------------------------


def test_a_live_holder_is_named_and_its_death_frees_the_folder(tmp_path):
    folder = tmp_path / "run"
    with live_holder(folder) as proc:
        with pytest.raises(RunFolderBusy, match=f"pid {proc.pid}") as refused:
            check_not_held(folder)
        assert refused.value.holder.pid == proc.pid and refused.value.holder.host
        with pytest.raises(RunFolderBusy, match=f"kill {proc.pid}"):
            hold_run_folder(folder)
        kill(proc)  # kill -9: no cleanup code runs in the holder
        assert (folder / run_lock.LOCK_FILE).is_file()  # its file stays, but nobody holds it
        assert holder_of(folder) is None
        lock = hold_run_folder(folder)
    assert run_lock.read_holder(folder).pid == os.getpid()
    lock.release()
    assert not (folder / run_lock.LOCK_FILE).exists() and folder.is_dir()


def test_holding_is_reentrant_within_a_process_and_the_last_release_frees_it(tmp_path):
    folder = tmp_path / "run"
    outer = hold_run_folder(folder)
    inner = hold_run_folder(folder)
    assert inner is outer and holder_of(folder) is None  # this process's own hold is no obstacle to it
    probe = [sys.executable, "-c", "import sys\nfrom emofeedback2.training.run_lock import check_not_held\n"
             "check_not_held(sys.argv[1])", str(folder)]
    inner.release()
    refused = subprocess.run(probe, capture_output=True, text=True)
    assert refused.returncode != 0 and f"pid {os.getpid()}" in refused.stderr
    outer.release()
    assert subprocess.run(probe, capture_output=True, text=True).returncode == 0


def test_ranks_of_one_launch_share_rank_0s_lock_and_another_launch_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    launch = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}
    with live_holder(folder, RANK="0", **launch) as proc:
        for key, value in {**launch, "RANK": "1"}.items():
            monkeypatch.setenv(key, value)
        assert not is_main_rank()
        assert holder_of(folder) is None  # rank 1 waits for its own rank 0
        monkeypatch.setenv("MASTER_PORT", "29556")  # a rank of another launch
        assert holder_of(folder).pid == proc.pid
    monkeypatch.setenv("RANK", "0")
    assert is_main_rank()


# --- the commands ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tiny_pipeline_dir, tmp_path_factory):
    """A finished one-step training run (config, checkpoints, export, tb), made through the CLI."""
    root = tmp_path_factory.mktemp("locked_run")
    config = root / "c.toml"
    config.write_text(small_train_toml(root / "run", tiny_pipeline_dir), encoding="utf-8")
    assert main(["train", "--config", str(config)]) == 0
    return root / "run", tiny_pipeline_dir


def copy_run(trained_run, tmp_path) -> tuple[Path, Path]:
    """A private copy of the run (this process holds the original) and its config."""
    import shutil

    source, pipeline = trained_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    config = tmp_path / "c.toml"
    config.write_text(small_train_toml(run, pipeline), encoding="utf-8")
    return run, config


@pytest.mark.usefixtures("one_thread")
def test_train_overwrite_and_resume_in_a_live_run_are_refused_and_touch_nothing(trained_run, tmp_path, capsys):
    run, config = copy_run(trained_run, tmp_path)
    capsys.readouterr()
    with live_holder(run) as proc:
        before = snapshot(run)
        for extra in (["--overwrite"], ["--resume", "--max-steps", "2"], [], ["--dry-run", "--resume"]):
            assert main(["train", "--config", str(config), *extra]) == 2, extra
            one_line_refusal(capsys, proc.pid)
            assert snapshot(run) == before, extra
        kill(proc)
        assert main(["train", "--config", str(config), "--resume", "--max-steps", "2"]) == 0
    assert "resumed at step 1" in capsys.readouterr().out
    assert (run / "checkpoints" / "step-000002").is_dir()


def test_a_two_process_launch_over_a_live_run_is_refused_on_every_rank(trained_run, tmp_path):
    """torchrun with two ranks and --overwrite: rank 0 would take the lock, rank 1 would wait for it; a live
    holder of another launch stops both before anything is deleted."""
    run, config = copy_run(trained_run, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with live_holder(run) as proc:
        before = snapshot(run)
        launch = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                 "-m", "emofeedback2.cli", "train", "--config", str(config), "--overwrite"],
                                capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert launch.returncode != 0
        refusals = [line for line in launch.stderr.splitlines() if f"in use by pid {proc.pid}" in line]
        assert len(refusals) == 2, launch.stderr[-3000:]  # one per rank
        assert snapshot(run) == before


def test_train_judge_eval_resume_and_demo_overwrite_in_a_held_folder_are_refused(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,valence,arousal\na.png,0,0\n", encoding="utf-8")
    (tmp_path / "a.png").write_bytes(b"")  # never read: the refusal comes first
    commands = {
        "train-judge": lambda out: ["train-judge", "--data", str(manifest), "--model", str(tmp_path / "base"),
                                    "--out", str(out), "--resume"],
        "eval": lambda out: ["eval", "--demo", "--out", str(out), "--resume"],
        "demo": lambda out: ["demo", "--out", str(out), "--overwrite"],
        "loop": lambda out: ["loop", "--generator", str(tmp_path / "gen"), "--lvlm", "colour", "--valence", "1",
                             "--arousal", "1", "--prompt", "a house", "--out", str(out), "--overwrite"],
    }
    for name, argv in commands.items():
        out = tmp_path / name
        out.mkdir()
        (out / "report.json").write_text("{}", encoding="utf-8")
        (out / "run.json").write_text("{}", encoding="utf-8")
        with live_holder(out) as proc:
            before = snapshot(out)
            assert main(argv(out)) == 2, name
            one_line_refusal(capsys, proc.pid)
            assert snapshot(out) == before, name


def test_a_failed_loop_or_eval_leaves_no_folder_it_made_and_an_existing_one_as_it_was(tmp_path, capsys):
    def loop(out: Path) -> int:
        return main(["loop", "--generator", str(tmp_path / "no-such-model"), "--lvlm", "colour", "--valence", "1",
                     "--arousal", "1", "--prompt", "a house", "--out", str(out)])

    assert loop(tmp_path / "new" / "deeper" / "out") == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert loop(existing) == 2
    assert existing.is_dir() and not any(existing.iterdir())
    assert main(["eval", "--generator", str(tmp_path / "no-such-model"), "--lvlm", "colour", "--prompt", "a house",
                 "--out", str(tmp_path / "eval" / "out")]) == 2
    assert "no-such-model" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


# --- a disk that fills inside a save ----------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_a_full_disk_in_a_training_save_is_one_line_and_the_run_resumes_from_the_last_checkpoint(
        trained_run, tmp_path, monkeypatch, capsys):
    from emofeedback2.training import checkpoint as ckpt
    from test_fail_safe_checkpoints import FillsUp

    run, config = copy_run(trained_run, tmp_path)
    capsys.readouterr()
    with monkeypatch.context() as m:
        FillsUp(m, ckpt.STATE)
        assert main(["train", "--config", str(config), "--resume", "--max-steps", "2"]) == 2
    stderr = capsys.readouterr().err  # (the model-loading bars come first)
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert "Traceback" not in stderr and len(errors) == 1, stderr
    err = errors[0]
    assert err.startswith("emofeedback2 train: error: no space left on ") and "training_state.pt" in err, err
    assert "step-000001 is intact" in err and "MiB free" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000001"]
    assert main(["train", "--config", str(config), "--resume", "--max-steps", "2"]) == 0
    assert "resumed at step 1" in capsys.readouterr().out
    assert (run / "checkpoints" / "step-000002").is_dir()


# --- Ctrl-C -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
def test_ctrl_c_in_train_names_the_kept_step_and_the_resume_command(trained_run, tmp_path, monkeypatch, capsys):
    from emofeedback2.training.generator.trainer import GRPOTrainer

    run, config = copy_run(trained_run, tmp_path)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(GRPOTrainer, "train_step", interrupted)
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--resume", "--max-steps", "3", "--set", "save_every=1"]) == 130
    err = capsys.readouterr().err
    assert f"keeps its last checkpoint, step 1 ({run / 'checkpoints' / 'step-000001'})" in err, err
    assert (f"emofeedback2 train --config {config} --resume --max-steps 3 --set save_every=1" in err
            or f"emofeedback2 train --config {config} --max-steps 3 --set save_every=1 --resume" in err), err
    assert err.strip().endswith("interrupted")

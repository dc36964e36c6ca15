"""Checkpoints that survive anything: a failure at every file-system step of a save, hashes, pointers."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess

import pytest
import torch

from emofeedback2.training import checkpoint as ckpt
from emofeedback2.training.disk_space import DiskFullError


def _save(root, step, value, keep=2):
    weights = {"w": torch.full((4,), float(value))}
    state = {"optimizer": {"x": torch.ones(2) * value}, "rng": ckpt.rng_state()}
    return ckpt.save_checkpoint(root, step, weights, state, {"config": {"v": value}}, keep=keep)


class Killed(BaseException):
    """A kill: not an OSError, so no cleanup code inside the save can swallow it."""


class Fault:
    """Counts calls of os.replace / os.fsync and raises at the k-th (a kill at that point of the save)."""

    def __init__(self, monkeypatch, at: int):
        self.at, self.calls, self.names = at, 0, []
        real_replace, real_fsync = os.replace, os.fsync

        def replace(src, dst, *a, **k):
            self._tick(f"replace {os.path.basename(str(src))} -> {os.path.basename(str(dst))}")
            return real_replace(src, dst, *a, **k)

        def fsync(fd):
            self._tick("fsync")
            return real_fsync(fd)

        monkeypatch.setattr(ckpt.os, "replace", replace)
        monkeypatch.setattr(ckpt.os, "fsync", fsync)

    def _tick(self, name):
        self.names.append(name)
        self.calls += 1
        if self.calls == self.at:
            raise Killed(f"killed at {name}")


def _sequence_length(tmp_path, monkeypatch) -> int:
    root = tmp_path / "count"
    _save(root, 1, 1.0)
    with monkeypatch.context() as m:
        counter = Fault(m, at=-1)
        _save(root, 2, 2.0)
    assert any(n.startswith("replace .tmp-step-000002") for n in counter.names)
    assert counter.names[-1].startswith("fsync")  # the pointer's directory entry is made durable last
    return counter.calls


def test_a_failure_at_every_step_of_the_save_sequence_leaves_latest_complete_and_verified(tmp_path, monkeypatch):
    n = _sequence_length(tmp_path, monkeypatch)
    assert n >= 8  # 4 files + tmp dir + rename + pointer file + pointer rename (+ dir syncs)
    outcomes = set()
    for k in range(1, n + 1):
        root = tmp_path / f"run{k}"
        _save(root, 1, 1.0)
        with monkeypatch.context() as m:
            Fault(m, at=k)
            with pytest.raises(Killed, match="killed"):
                _save(root, 2, 2.0)
        latest = ckpt.latest_checkpoint(root)
        weights, state, meta = ckpt.load_checkpoint(latest)  # sha256 verified
        expected = {"step-000001": 1.0, "step-000002": 2.0}[latest.name]
        assert torch.equal(weights["w"], torch.full((4,), expected)) and meta["step"] == ckpt.step_of(latest.name)
        # the previous complete checkpoint is never removed before the new one is pointed to
        assert (root / "step-000001").is_dir()
        ckpt.load_checkpoint(root / "step-000001")
        outcomes.add(latest.name)
        # the next save of a resumed run (one step past latest) cleans the leftovers and succeeds
        nxt = ckpt.step_of(latest.name) + 1
        _save(root, nxt, 2.5)
        names = sorted(p.name for p in root.iterdir())
        assert names == ["latest", f"step-{nxt - 1:06d}", f"step-{nxt:06d}"], names
        w, _, _ = ckpt.load_checkpoint(ckpt.latest_checkpoint(root))
        assert torch.equal(w["w"], torch.full((4,), 2.5))
    assert outcomes == {"step-000001", "step-000002"}  # kills before and after the pointer switch were both hit


def test_flipped_bytes_or_an_edited_state_are_refused(tmp_path):
    root = tmp_path / "c"
    path = _save(root, 3, 1.0)
    data = bytearray((path / ckpt.WEIGHTS).read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: safetensors itself would load it without a word
    (path / ckpt.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.load_checkpoint(path)

    path = _save(tmp_path / "d", 3, 1.0)
    meta = json.loads((path / ckpt.META).read_text())
    meta["step"] = 600
    (path / ckpt.META).write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.load_checkpoint(path)
    (path / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match="manifest"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("pointer,match", [
    ("../../other/checkpoints/step-000001", "not a checkpoint folder"),
    ("/etc", "not a checkpoint folder"),
    ("step-000009", "incomplete"),
    ("", "not a checkpoint folder"),
])
def test_latest_must_name_a_complete_checkpoint_inside_this_run(tmp_path, pointer, match):
    other = tmp_path / "other" / "checkpoints"
    _save(other, 1, 7.0)
    root = tmp_path / "run" / "checkpoints"
    _save(root, 1, 1.0)
    (root / ckpt.LATEST).write_text(pointer)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.latest_checkpoint(root)


def test_a_symlinked_checkpoint_folder_is_refused(tmp_path):
    other = _save(tmp_path / "other", 5, 7.0)
    root = tmp_path / "run"
    root.mkdir()
    (root / "step-000005").symlink_to(other, target_is_directory=True)
    (root / ckpt.LATEST).write_text("step-000005")
    with pytest.raises(ckpt.CheckpointError, match="not a folder inside"):
        ckpt.latest_checkpoint(root)


def test_non_finite_weights_are_never_written(tmp_path):
    root = tmp_path / "c"
    _save(root, 1, 1.0)
    with pytest.raises(ckpt.NonFiniteError, match="NaN or inf"):
        _save(root, 2, float("nan"))
    with pytest.raises(ckpt.NonFiniteError):
        _save(root, 2, float("inf"))
    assert ckpt.latest_checkpoint(root).name == "step-000001"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]


def test_pruning_keeps_the_newest_by_step_number_and_cleans_temp_leftovers(tmp_path):
    root = tmp_path / "c"
    (root / ".tmp-step-000004-999").mkdir(parents=True)
    (root / ".latest.tmp-999").write_text("x")
    for step in (8, 9, 10, 1000000):
        _save(root, step, float(step), keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000010", "step-1000000"]


# --- a disk that fills inside a save ----------------------------------------------------------------


class FillsUp:
    """``open`` inside the checkpoint module, with the disk filling halfway through writing ``name``."""

    def __init__(self, monkeypatch, name: str):
        self.name, self.hit = name, False
        real_open = open

        def fake_open(path, mode="r", *args, **kwargs):
            handle = real_open(path, mode, *args, **kwargs)
            if "w" in mode and os.path.basename(str(path)).startswith((self.name, f".{self.name}")):
                return _HalfWriter(handle, self)
            return handle

        monkeypatch.setattr(ckpt, "open", fake_open, raising=False)


class _HalfWriter:
    def __init__(self, handle, fault):
        self.handle, self.fault = handle, fault

    def write(self, data):
        self.handle.write(data[: max(1, len(data) // 2)])
        self.fault.hit = True
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.parametrize("name", [ckpt.WEIGHTS, ckpt.STATE, ckpt.LATEST])
def test_a_full_disk_inside_a_save_ends_in_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, name):
    root = tmp_path / "c"
    _save(root, 1, 1.0)
    with monkeypatch.context() as m:
        fault = FillsUp(m, name)
        with pytest.raises(DiskFullError) as full:
            _save(root, 2, 2.0)
    assert fault.hit
    message = str(full.value)
    assert len(message.splitlines()) == 1
    assert message.startswith("no space left on ") and f"{name}" in message
    assert re.search(r"needed ~\d+\.\d MiB, \d+\.\d MiB free", message), message
    assert "step-000001 is intact" in message and "--resume" in message
    # nothing of the failed save is left (it would keep the disk full); the previous one is whole
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]
    assert ckpt.latest_checkpoint(root).name == "step-000001"
    weights, _, meta = ckpt.load_checkpoint(root / "step-000001")
    assert meta["step"] == 1 and float(weights["w"][0]) == 1.0
    _save(root, 2, 2.0)  # space freed: the next save works
    assert ckpt.latest_checkpoint(root).name == "step-000002"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB file system (tmpfs) when this machine lets us mount one (root in a permissive sandbox)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_real_full_disk_keeps_the_previous_checkpoint_resumable(small_tmpfs):
    root = small_tmpfs / "c"
    weights = {"w": torch.ones(150_000)}  # 600 kB: one checkpoint fits in 1 MiB, two do not
    ckpt.save_checkpoint(root, 1, weights, {"rng": ckpt.rng_state()}, {"config": {}}, keep=2)
    with pytest.raises(DiskFullError, match=r"no space left on tmpfs \(mounted at .*\) writing .*needed ~0\.\d MiB"):
        ckpt.save_checkpoint(root, 2, {"w": torch.full((150_000,), 2.0)}, {"rng": ckpt.rng_state()}, {"config": {}})
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]
    loaded, _, meta = ckpt.load_checkpoint(ckpt.latest_checkpoint(root))
    assert meta["step"] == 1 and torch.equal(loaded["w"], weights["w"])

"""Checkpoints that survive anything: a failure at every file-system step of a save, hashes, pointers."""

from __future__ import annotations

import json
import os

import pytest
import torch

from emofeedback2.training import checkpoint as ckpt


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

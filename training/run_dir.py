"""The run folder (``output_dir``): a new run never lands on top of an old one, nor on a live one.

A new run in a folder that already holds something would overwrite the old run's export and orphan
its checkpoints; it is refused unless ``--resume`` (continue it) or ``--overwrite`` (replace the
folders a run writes: checkpoints/, export/, tb/; other files are left alone) is given. A folder
held by a live trainer (:mod:`.run_lock`) is refused in every case, before anything in it is read
for resuming, deleted or written: :func:`prepare_output_dir` takes the lock first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checkpoint import LATEST, CheckpointError, clean_leftovers, latest_checkpoint
from .config_fields import ConfigError
from .run_lock import LOCK_FILE, check_not_held, hold_run_folder

RUN_FOLDERS = ("checkpoints", "export", "tb")


def check_output_dir(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Read-only checks (safe on every process): what ``prepare_output_dir`` would refuse."""
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: resume continues the run, "
                          "overwrite replaces it; pass one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file; choose a folder (--output-dir)")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"output_dir {out} lies under {parent}, which is a file")
            break
    check_not_held(out, "output_dir")  # a live run's folder: refused whatever the flags say
    if resume:
        root = out / "checkpoints"
        if not (root / LATEST).is_file() and not (root / LATEST).is_symlink():
            raise CheckpointError(f"--resume: {root / LATEST} does not exist, so there is nothing to resume; "
                                  "drop --resume to start a new run (or point --output-dir at the run folder)")
        latest_checkpoint(root)  # a bad pointer is an error, never a fresh start
        return
    if out.is_dir():
        content = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)  # a dead run's lock file is no content
        if content and not overwrite:
            shown = ", ".join(content[:4]) + (" ..." if len(content) > 4 else "")
            raise ConfigError(f"output_dir {out} is not empty ({shown}); continue that run with --resume, choose "
                              "another --output-dir, or pass --overwrite to replace its checkpoints, logs and export")


def prepare_output_dir(out: str | Path, resume: bool, overwrite: bool) -> Path:
    """Check, hold (:func:`.run_lock.hold_run_folder`, until this process ends), check again under the
    lock, then create the run folder (removing the old run's folders when ``overwrite``)."""
    check_output_dir(out, resume, overwrite)
    out = Path(out)
    hold_run_folder(out, "output_dir")  # before any deletion: a live run's files are never touched
    check_output_dir(out, resume, overwrite)  # what another process may have changed before we held it
    if overwrite and out.is_dir():
        for name in RUN_FOLDERS:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir {out} cannot be written ({exc.strerror or exc}); choose another folder") from exc
    clean_leftovers(out / "checkpoints")
    return out

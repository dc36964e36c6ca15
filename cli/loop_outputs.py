"""What ``loop`` and ``demo`` write into ``--out``, and the checks before they write anything.

``OUT/round_NN/candidate_KK_seedS.png`` and a partial ``report.json`` after every round (so a later
failure loses nothing), then ``best.png``, ``trajectory.png`` and the final ``report.json``. A
non-empty ``OUT`` is refused unless ``--overwrite``, which removes only what an earlier run wrote;
a folder another live run holds is refused in every case. A run that fails before writing anything
leaves no empty folder behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..engines.errors import UserError
from ..training.run_lock import LOCK_FILE, RunLock, check_not_held, hold_run_folder, remove_empty_folders, top_missing


class LoopCommandError(UserError):
    """A loop/demo argument or output folder that cannot be used."""


def strict_json(value):
    """``value`` with NaN/inf floats replaced by None, so the report is valid (strict) JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# What RoundWriter and _write_outputs put in --out (plus their temp/probe files): all --overwrite removes.
_ROUND_FOLDER = re.compile(r"round_\d{2,}")
_CANDIDATE_FILE = re.compile(r"candidate_\d{2,}_seed\d+\.png")
_OUTPUT_FILES = re.compile(r"(best\.png|trajectory\.png|report\.json|\.report\.json\.tmp|\.write-test-\d+)")


def _ours(entry: Path) -> bool:
    if entry.is_symlink():  # never followed: removing through a link could reach another folder
        return False
    if entry.is_dir():
        return bool(_ROUND_FOLDER.fullmatch(entry.name)) and all(
            f.is_file() and not f.is_symlink() and _CANDIDATE_FILE.fullmatch(f.name) for f in entry.iterdir())
    return entry.is_file() and bool(_OUTPUT_FILES.fullmatch(entry.name))


def _check_previous_run(out: Path, overwrite: bool) -> list[Path]:
    """Refuse a non-empty ``out`` (rounds of two runs would mix) unless ``overwrite``, and with it a folder
    holding anything a run does not write; returns what ``overwrite`` would remove. Read-only."""
    entries = sorted(e for e in out.iterdir() if e.name != LOCK_FILE)
    if not entries:
        return []
    shown = ", ".join(e.name for e in entries[:4]) + (" ..." if len(entries) > 4 else "")
    if not overwrite:
        raise LoopCommandError(f"--out {out} is not empty ({shown}); choose a new folder, or pass --overwrite "
                               "to replace the earlier run's outputs in it")
    foreign = [e.name for e in entries if not _ours(e)]
    if foreign:  # checked before anything is removed: all or nothing
        raise LoopCommandError(f"--out {out} holds files a loop/demo run does not write ({', '.join(foreign[:4])}); "
                               "--overwrite only replaces round_NN/, best.png, trajectory.png and report.json: "
                               "choose another folder")
    return entries


@dataclass
class OutFolder:
    """``--out``, held by this run (:mod:`..training.run_lock`) from before anything in it is removed."""

    path: Path
    lock: RunLock
    created: Optional[Path]  # the top-most folder this run created (``path`` or a parent), None if it existed

    def close(self) -> None:
        """Release the folder (its lock file goes with it); when the run wrote nothing, also remove the
        folders it made. Partial rounds, when there are any, stay."""
        self.lock.release()
        remove_empty_folders(self.path, self.created)


def prepare_out(out: Path, overwrite: bool = False) -> OutFolder:
    """Check, create and hold ``--out`` before anything is generated (a bad folder must not cost the run).
    A folder another live run holds is refused before anything in it is touched."""
    if out.exists() and not out.is_dir():
        raise LoopCommandError(f"--out {out} is a file; choose a folder")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LoopCommandError(f"--out {out} lies under {parent}, which is a file; choose another folder")
            break
    check_not_held(out, "--out")
    if out.is_dir():
        _check_previous_run(out, overwrite)  # refused before the folder is held or anything is created
    created = top_missing(out)
    try:
        lock = hold_run_folder(out, "--out")
    except OSError as exc:
        raise LoopCommandError(f"--out {out} cannot be written ({exc.strerror or exc}); choose another folder") from exc
    folder = OutFolder(out, lock, created)
    try:
        for entry in _check_previous_run(out, overwrite):  # again under the lock; removes only a run's outputs
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        folder.close()
        raise LoopCommandError(f"--out {out} cannot be written ({exc.strerror or exc}); choose another folder") from exc
    except BaseException:
        folder.close()
        raise
    return folder


class RoundWriter:
    """Writes each round's candidates and a partial ``report.json`` as soon as the round is committed."""

    def __init__(self, out: Path, extra: dict):
        self.out, self.extra = out, extra

    def __call__(self, result, images) -> None:
        from ..engines.images import to_pil_list

        record = result.rounds[-1]
        folder = self.out / f"round_{record.round:02d}"
        folder.mkdir(exist_ok=True)
        for candidate, image in zip(record.candidates, to_pil_list(images)):
            image.save(folder / f"candidate_{candidate.index:02d}_seed{candidate.seed}.png")
        write_report(self.out, result, {**self.extra, "complete": False}, {"rounds": str(self.out / "round_NN")})


def write_report(out: Path, result, extra: dict, files: dict) -> dict:
    report = result.to_dict()
    report.update(extra)
    report["files"] = {**files, "report": str(out / "report.json")}
    report = strict_json(report)
    _write_atomic(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    return report


def write_outputs(out: Path, result, extra: dict) -> dict:
    """best.png, trajectory.png, report.json; returns the report."""
    from ..engines.images import to_pil_list
    from ..engines.loop.trajectory_plot import plot_trajectory

    out.mkdir(parents=True, exist_ok=True)
    files = {"rounds": str(out / "round_NN")}
    if result.best_image is not None:
        to_pil_list(result.best_image)[0].save(out / "best.png")
        files["best"] = str(out / "best.png")
    plot_trajectory(result).save(out / "trajectory.png")
    files["trajectory"] = str(out / "trajectory.png")
    return write_report(out, result, extra, files)


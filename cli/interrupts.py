"""What a trainer stopped with Ctrl-C tells the user: which step is kept and the exact command that continues it."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

#: Flags of the interrupted command that must not be repeated when resuming.
_DROPPED = {"--overwrite", "--dry-run", "--help-config"}


def resume_command(command: str, argv: Optional[Sequence[str]]) -> str:
    """``emofeedback2 <command> <the same arguments> --resume`` (``--overwrite`` dropped)."""
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == [command]:
        args = args[1:]
    args = [a for a in args if a not in _DROPPED]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["emofeedback2", command, *args])


def interrupted_note(output_dir: str | Path, command: str, argv: Optional[Sequence[str]] = None) -> str:
    """Two lines: the checkpoint the run keeps (or that none was saved), and how to continue."""
    from ..training.checkpoint import CheckpointError, latest_checkpoint, step_of

    root = Path(output_dir) / "checkpoints"
    try:
        latest = latest_checkpoint(root)
    except CheckpointError as exc:
        return f"interrupted; the run folder's latest checkpoint is not usable ({exc})"
    if latest is None:
        return (f"interrupted before the first checkpoint was saved: nothing in {output_dir} to resume; "
                f"start the run again (with --overwrite)")
    launcher = " (with the same launcher)" if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
    return (f"interrupted: the run keeps its last checkpoint, step {step_of(latest.name)} ({latest}); steps after "
            f"it are lost. Continue with{launcher}:\n  {resume_command(command, argv)}")

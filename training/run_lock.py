"""A run folder is held by the process writing it: a lock that dies with that process.

``hold_run_folder(folder)`` locks ``folder/.lock`` (``flock`` on Linux/macOS, ``LockFileEx`` on
Windows, through :func:`filelock.lock_descriptor`) and writes the holder's pid, host and command
into it. The operating system releases the lock when the process ends in any way (``kill -9``
included), so a stale lock file never blocks a later run: only a live holder does. A second run in a
held folder is refused with the holder's pid *before* it reads, deletes or writes anything there
(:class:`RunFolderBusy`).

* Re-entrant within a process: holding a folder twice (the CLI, then the trainer it runs) keeps one
  lock; it is freed when every holder released it, or when the process ends.
* Launchers with several processes (``accelerate launch``, ``torchrun``): only rank 0 takes the lock;
  the other ranks check it and treat a lock held by their own launch (same rendezvous address) as
  theirs, so they wait for rank 0 instead of refusing.
* Limits: the lock file sits in the run folder, so two hosts see each other's lock only where the
  shared file system supports ``flock`` across hosts (local disks, most NFSv4 and Lustre set-ups).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from ..engines.errors import UserError

LOCK_FILE = ".lock"
#: How long a contended lock is retried before it counts as held: covers another process's
#: momentary check (which takes the lock for microseconds), never a real run.
GRACE_SECONDS = 1.0


class RunFolderBusy(UserError, RuntimeError):
    """The run folder is held by another live process; nothing in it was touched."""

    def __init__(self, message: str, holder: "Optional[Holder]" = None):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """Who holds a run folder (read from its lock file)."""

    pid: Optional[int]
    host: str = ""
    command: str = ""
    started: str = ""
    launch: str = ""

    def describe(self) -> str:
        pid = f"pid {self.pid}" if self.pid is not None else "a process that has not yet written its pid"
        host = f" on {self.host}" if self.host else ""
        command = f" ({self.command})" if self.command else ""
        started = f", started {self.started}" if self.started else ""
        return f"{pid}{host}{command}{started}"


def _launch_id() -> str:
    """The same string on every rank of one multi-process launch; '' for a lone process."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return ""
    parts = [os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")]
    return ":".join(parts) if any(parts) else ""


def is_main_rank() -> bool:
    """Rank 0 of a launcher (``RANK`` as torchrun and accelerate set it), or a lone process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _lock_fd(fd: int) -> bool:
    from filelock import lock_descriptor

    return lock_descriptor(fd, blocking=False)


def _unlock_fd(fd: int) -> None:
    from filelock import unlock_descriptor

    unlock_descriptor(fd)


def _lock_with_grace(fd: int) -> bool:
    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        if _lock_fd(fd):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def read_holder(folder: str | Path) -> Optional[Holder]:
    """The holder recorded in ``folder/.lock`` (it may be stale: see :func:`holder_of`)."""
    path = Path(folder) / LOCK_FILE
    try:
        # Byte 0 is the lock byte on Windows (locked bytes cannot be read there): the record follows it.
        with open(path, "rb") as handle:
            handle.seek(1)
            record = json.loads(handle.read(4096).decode("utf-8") or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    pid = record.get("pid")
    return Holder(pid=int(pid) if isinstance(pid, int) else None, host=str(record.get("host", "")),
                  command=str(record.get("command", "")), started=str(record.get("started", "")),
                  launch=str(record.get("launch", "")))


class RunLock:
    """A held run folder. ``release()`` (or leaving the ``with`` block) frees it when no other holder
    in this process still needs it; the process ending frees it in every case."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self._fd, self._count = folder, fd, 1

    @property
    def held(self) -> bool:
        return self._count > 0

    def release(self) -> None:
        if self._count <= 0:
            return
        self._count -= 1
        if self._count == 0:
            _HELD.pop(_key(self.folder), None)
            try:
                # Removed while still locked: a process that opened it meanwhile finds it unlinked and
                # retries (see hold_run_folder), so the folder is left as the run made it.
                (self.folder / LOCK_FILE).unlink(missing_ok=True)
            except OSError:  # pragma: no cover - Windows keeps an open file
                pass
            try:
                _unlock_fd(self._fd)
            finally:
                os.close(self._fd)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


_HELD: dict[str, RunLock] = {}


def _key(folder: Path) -> str:
    return str(Path(folder).resolve())


def _busy(folder: Path, holder: Optional[Holder], what: str) -> RunFolderBusy:
    who = holder.describe() if holder else "another process (no holder recorded)"
    stop = f" (or stop it: kill {holder.pid})" if holder and holder.pid is not None else ""
    return RunFolderBusy(
        f"{what} {folder} is in use by {who}; nothing in it was touched. Wait for that run to finish{stop}, "
        f"or choose another folder", holder)


def holder_of(folder: str | Path) -> Optional[Holder]:
    """Read-only: the live holder of ``folder``, or None when it is free (or held by this process or its
    own launch). Creates nothing."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    if _key(folder) in _HELD or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _lock_with_grace(fd):
            _unlock_fd(fd)
            return None
    finally:
        os.close(fd)
    holder = read_holder(folder) or Holder(pid=None)
    own_launch = _launch_id()
    if own_launch and holder.launch == own_launch:
        return None  # rank 0 of this very launch holds it for all ranks
    return holder


def check_not_held(folder: str | Path, what: str = "run folder") -> None:
    """Refuse (:class:`RunFolderBusy`, naming the holder's pid) when another live process holds ``folder``."""
    holder = holder_of(folder)
    if holder is not None:
        raise _busy(Path(folder), holder, what)


def _open_locked(folder: Path, what: str) -> int:
    """An open, locked descriptor of ``folder/.lock`` that is still the file at that path (a releasing
    holder unlinks it while locked; whoever locked the unlinked file tries again)."""
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not _lock_with_grace(fd):
                holder = read_holder(folder)
                if holder is not None and _launch_id() and holder.launch == _launch_id():
                    raise RunFolderBusy(f"{what} {folder}: only rank 0 of a launch takes its lock (this is rank "
                                        f"{os.environ.get('RANK')}); this is a bug in the caller", holder)
                raise _busy(folder, holder, what)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def hold_run_folder(folder: str | Path, what: str = "run folder") -> RunLock:
    """Create ``folder`` if needed and hold it for this process (re-entrant). Refuses with the holder's
    pid when another live process holds it. Take it before deleting or writing anything in the folder."""
    folder = Path(folder)
    held = _HELD.get(_key(folder))
    if held is not None:
        held._count += 1
        return held
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(folder, what)
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:300],
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "launch": _launch_id()}
        data = b"\n" + json.dumps(record).encode("utf-8")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.ftruncate(fd, len(data))
    except BaseException:
        os.close(fd)
        raise
    lock = RunLock(folder, fd)
    _HELD[_key(folder)] = lock
    return lock


def remove_empty_folders(folder: str | Path, created: Optional[str | Path]) -> None:
    """After a run that wrote nothing: remove ``folder`` and its parents up to ``created`` (the top-most
    folder the run made; None = it made none) while they are empty. Call after releasing the lock."""
    if created is None:
        return
    folder, created = Path(folder), Path(created)
    for path in (folder, *folder.parents):
        if not path.is_relative_to(created) or _key(path) in _HELD:
            break
        try:
            path.rmdir()  # only an empty folder goes
        except OSError:
            break


def top_missing(folder: str | Path) -> Optional[Path]:
    """The top-most of ``folder`` and its parents that does not exist yet (what creating it will make)."""
    folder = Path(folder)
    return next((p for p in reversed((folder, *folder.parents)) if not p.exists()), None)


@contextmanager
def holding(folder: str | Path, what: str = "run folder") -> Iterator[RunLock]:
    """Hold ``folder`` for the block; if the block fails before anything was written there, the folders
    this call created go again (a run that could not start leaves no empty folder behind)."""
    created = top_missing(folder)
    lock = hold_run_folder(folder, what)
    try:
        yield lock
    finally:
        lock.release()
        remove_empty_folders(folder, created)

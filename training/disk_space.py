"""A full disk, said in one line: which device, which path was being written, how much was needed and free.

Standard library only (the command line imports it for its error path).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional

from ..engines.errors import UserError

#: "No space left on device" and "disk quota exceeded": both mean the same to the user.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})

MIB = 1 << 20


class DiskFullError(UserError, RuntimeError):
    """The disk filled while writing; what was being replaced is left as it was."""


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (the file being written may be gone after cleanup)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_of(path: str | Path) -> tuple[str, str]:
    """(device, mount point) holding ``path``: from /proc/self/mounts where there is one, else ('', the
    top-most folder on the same device)."""
    here = _existing(Path(path))
    try:
        device_id = os.stat(here).st_dev
    except OSError:
        return "", str(here)
    top = here
    while top != top.parent:
        try:
            if os.stat(top.parent).st_dev != device_id:
                break
        except OSError:
            break
        top = top.parent
    try:
        with open("/proc/self/mounts", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) >= 2 and fields[1].replace("\\040", " ") == str(top):
                    return fields[0], str(top)
    except OSError:
        pass
    return "", str(top)


def free_bytes(path: str | Path) -> Optional[int]:
    try:
        return shutil.disk_usage(_existing(Path(path))).free
    except OSError:
        return None


def disk_full_message(path: str | Path, exc: Optional[BaseException] = None, needed: Optional[int] = None,
                      after: str = "") -> str:
    """"no space left on /dev/sda1 (mounted at /data) writing /data/run/x (needed ~120.0 MiB, 3.2 MiB free)"."""
    device, mount = mount_of(path)
    where = f"{device} (mounted at {mount})" if device else mount
    sizes = []
    if needed is not None:
        sizes.append(f"needed ~{needed / MIB:.1f} MiB")
    free = free_bytes(path)
    if free is not None:
        sizes.append(f"{free / MIB:.1f} MiB free")
    what = "disk quota exceeded" if exc is not None and getattr(exc, "errno", None) == getattr(errno, "EDQUOT", None) \
        else "no space left"
    sizes_text = f" ({', '.join(sizes)})" if sizes else ""
    return f"{what} on {where} writing {path}{sizes_text}" + (f"; {after}" if after else "")

"""Progress and cancellation for engines without knowing who is watching (ComfyUI, tqdm, tests).

Engines call ``progress(done, total)``; the caller's callback may raise to cancel (ComfyUI's
interrupt exception does). Engines keep their partial results consistent before such a raise.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressCallback = Callable[[int, int], None]


def report(progress: Optional[ProgressCallback], done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


class TqdmProgress:
    """A ``(done, total)`` callback backed by a tqdm bar, for the command line."""

    def __init__(self, desc: str, total: int = 0):
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, desc=desc, leave=False)

    def __call__(self, done: int, total: int) -> None:
        self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

"""What every report records about the software that made it: the package and library versions, and the seed."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Optional

#: The libraries whose versions change results (images, readings, training).
LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors")


def versions() -> dict[str, Optional[str]]:
    """``{"emofeedback2": ..., "python": ..., "torch": ..., ...}``; a library that is not installed is None."""
    from .. import __version__

    found: dict[str, Optional[str]] = {"emofeedback2": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_identity(seed: Optional[int]) -> dict[str, Any]:
    """The report keys ``seed`` and ``versions``."""
    return {"seed": seed, "versions": versions()}

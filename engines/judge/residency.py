"""Where the judge's weights live between calls: the seam between the scorer and a memory manager.

The scorer asks its residency for the weights before every forward pass (:meth:`acquire`) and hands
them back after (:meth:`release`). :class:`LocalResidency` is the standalone policy used by the CLI
and training: keep the model on its device, or move it to ``offload_device`` after each call when
``LVLMConfig.offload_after_use`` is set. Inside ComfyUI the node layer installs a residency that
registers the model with ComfyUI's model management instead, so ComfyUI can evict it for the
diffusion model and it is loaded back on demand (see ``nodes/lvlm_memory.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class ResidentModel(Protocol):
    """What a residency moves: the scorer's side of the seam (no import of the scorer, so no cycle)."""

    config: Any  # has offload_after_use and offload_device
    device: torch.device

    def to(self, device: Any) -> Any: ...

    def offload(self) -> None: ...


class Residency(Protocol):
    def place(self, scorer: "ResidentModel") -> None:
        """Right after loading: put the weights where they wait for the first call."""

    def acquire(self, scorer: "ResidentModel") -> None:
        """Make the weights present on ``scorer.device`` (reloading dropped weights)."""

    def release(self, scorer: "ResidentModel") -> None:
        """The call is over: keep the weights, or free the device, as the policy says."""


class LocalResidency:
    """Standalone policy: on the device while working; offloaded afterwards if the config asks."""

    def place(self, scorer: "ResidentModel") -> None:
        scorer.to(scorer.config.offload_device if scorer.config.offload_after_use else scorer.device)

    def acquire(self, scorer: "ResidentModel") -> None:
        scorer.to(scorer.device)

    def release(self, scorer: "ResidentModel") -> None:
        if scorer.config.offload_after_use:
            scorer.offload()

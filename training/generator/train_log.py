"""What a GRPO run reports: one console line per step and TensorBoard scalars and sample grids.

The TensorBoard writer opens lazily (constructing a trainer writes nothing) and only on the main
process; non-finite values are not written as scalars.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch


class TrainLog:
    """Console and TensorBoard output of one run (``enabled=False``: silent, e.g. in tests and benches)."""

    def __init__(self, config: Any, out: Path, enabled: bool, main_process: bool):
        self.config = config
        self.out = out
        self.console_enabled = enabled and main_process
        self.writer_enabled = enabled and main_process
        self.writer: Optional[Any] = None

    def open_writer(self) -> Optional[Any]:
        if self.writer is None and self.writer_enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        return self.writer

    def console(self, step: int, metrics: dict[str, float], shares: dict[str, float], names: Sequence[str]) -> None:
        """One line per step: the reward and each reward term's share of the advantage variance."""
        if not self.console_enabled:
            return
        from tqdm.auto import tqdm

        # The raw term means are what a user can read (the combined reward is normalised per group, ~0).
        raw = " ".join(f"{name}={metrics[f'reward/{name}']:.4f}" for name in names)
        split = " ".join(f"{name}={share:.2f}" for name, share in shares.items())
        notes = ""
        for key, count in metrics.items():
            if key.startswith("reward_flags/") and count:
                notes += f"; {int(count)} flagged {key[len('reward_flags/'):]}"
        if metrics.get("train/skipped_updates"):  # fp16 overflow: the grad scaler skipped, and lowered its scale
            notes += f"; {int(metrics['train/skipped_updates'])} update(s) skipped by the fp16 grad scaler"
        tqdm.write(f"[train] step {step} rewards {raw} advantage share: {split}{notes}")

    def scalars(self, step: int, metrics: dict[str, float], images: Optional[torch.Tensor]) -> None:
        """Every ``log_every`` steps the metrics; every ``image_log_every`` steps a grid of ``images`` [B,H,W,3]."""
        writer = self.open_writer()
        if writer is None:
            return
        c = self.config
        if step % c.log_every == 0:
            for key, value in metrics.items():
                if math.isfinite(value):
                    writer.add_scalar(key, value, step)
        if c.image_log_every and step % c.image_log_every == 0 and images is not None:
            from torchvision.utils import make_grid

            grid = images.permute(0, 3, 1, 2)
            writer.add_image("samples", make_grid(grid, nrow=min(8, grid.shape[0])), step)
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

"""The batch arithmetic of a run (samples per step, micro-batches, updates), computed from its config."""

from __future__ import annotations

from dataclasses import dataclass

from .config_checks import validate
from .config_schema import TrainConfig


@dataclass(frozen=True)
class Derived:
    """Numbers computed from the config and the process count; printed at start."""

    num_processes: int
    samples_per_step_per_process: int
    samples_per_step: int
    groups_per_step: int
    micro_batches_per_step: int
    micro_batches_per_update: int
    trained_timesteps: int
    backward_passes_per_update: int
    optimizer_updates_per_step: int
    total_optimizer_updates: int
    total_images: int

    def summary(self) -> str:
        return (
            f"processes={self.num_processes} groups/step={self.groups_per_step} "
            f"samples/step={self.samples_per_step} ({self.samples_per_step_per_process}/process) "
            f"micro-batches/step/process={self.micro_batches_per_step} trained timesteps/sample={self.trained_timesteps} "
            f"backward passes/update={self.backward_passes_per_update} updates/step={self.optimizer_updates_per_step} "
            f"total updates={self.total_optimizer_updates} total images={self.total_images}"
        )


def train_window(config: TrainConfig) -> tuple[int, int]:
    """The ``[start, end)`` sampling-step indices a sample may train on.

    Default ``[0, steps - 1]``: the last step goes to (almost) no noise, so its std is tiny (≈0.006 against
    ≈0.7 at the first step on SD3.5's 10-step schedule) and its log-ratio ~100x more sensitive; Flow-GRPO
    trains the first ``int(T·f)`` steps and so never reaches it either. A one-step sampler keeps its step.
    """
    steps = config.sampling.steps
    window = config.grpo.train_window
    if window:
        return int(window[0]), int(window[1])
    return 0, max(1, steps - 1)


def trained_step_indices_count(config: TrainConfig) -> int:
    """``int(steps × fraction)`` (floor, as Flow-GRPO), at least 1 and at most the window's size."""
    start, end = train_window(config)
    wanted = int(config.sampling.steps * config.grpo.train_timestep_fraction)
    return max(1, min(wanted, end - start))


def derive(config: TrainConfig, num_processes: int = 1) -> Derived:
    validate(config)
    g = config.grpo
    per_process = g.group_size * g.groups_per_step
    micro = per_process // g.batch_size
    per_update = micro // g.updates_per_step
    trained = trained_step_indices_count(config)
    updates = g.updates_per_step * g.inner_epochs
    return Derived(
        num_processes=num_processes,
        samples_per_step_per_process=per_process,
        samples_per_step=per_process * num_processes,
        groups_per_step=g.groups_per_step * num_processes,
        micro_batches_per_step=micro,
        micro_batches_per_update=per_update,
        trained_timesteps=trained,
        backward_passes_per_update=per_update * trained,
        optimizer_updates_per_step=updates,
        total_optimizer_updates=updates * config.max_steps,
        total_images=per_process * num_processes * config.max_steps,
    )

"""The GRPO trainer: sample groups, score them off the critical path, update LoRA + emotion adapter.

One step on each process, one phase module each:
1. :mod:`.rollout_phase` — draw ``groups_per_step`` (prompt, target) pairs from ``(seed, step)``; each
   group's G members stay on this process and get distinct seeds; roll out micro-batches of
   ``batch_size`` with the stochastic sampler, storing latents and log-probs; decoded images go to
   the reward thread while the next micro-batch is sampled (or once per step);
2. :mod:`.reward_phase` — gather rewards from all processes, compute group advantages (global std,
   zero-spread groups dropped and counted, clip ±adv_clip);
3. :mod:`.update_phase` — for the *same* micro-batches, per trained timestep: recompute the log-prob
   with gradients, PPO-clip loss + β·KL to the base model, ``backward`` right away (memory flat in T);
4. :mod:`.run_checkpoint` saves and resumes, :mod:`.train_log` reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ...engines.devices import DTYPES
from ..checkpoint import NonFiniteError
from ..grpo import EMA, ema_export_choice
from .config import Derived, TrainConfig, check_inputs, derive
from .data import PromptTargetSampler, load_prompts
from .heldout import attach_heldout
from .policies import DiffusionPolicy, Trajectory
from .policy_net import PolicyNet
from .precision import check_mixed_precision, make_accelerator
from .prompt_cache import attach_prompt_cache
from .reward_phase import RewardPhase
from .rewards import AsyncRewardRunner, CompositeReward, build_reward
from .rollout_phase import RolloutPhase
from . import sharding
from .run_checkpoint import json_equal, resume_run, save_run
from .train_log import TrainLog
from .trainer_setup import (build_optimizer, build_policy_net, count_trainable, denoiser_of, load_base,
                            trainable_parameters)
from .update_phase import UpdatePhase

__all__ = ["GRPOTrainer", "json_equal"]


class GRPOTrainer:
    """GRPO on a diffusers pipeline's denoiser LoRA and an emotion adapter. See the module docstring."""

    def __init__(self, config: TrainConfig, *, reward: Optional[CompositeReward] = None, pipe: Any = None,
                 accelerator: Any = None, log: bool = True):
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        acc = self.accelerator
        check_mixed_precision(acc, config.model.dtype)
        sharding.check_sharding(acc, config.model)  # FSDP1 needs use_orig_params; no quantised base under FSDP
        self.derived: Derived = derive(config, acc.num_processes)
        check_inputs(config, need_model=pipe is None)  # data files parsed, paths present: before any loading
        self.device = acc.device
        self.dtype = DTYPES[config.model.dtype]
        sharded = sharding.is_sharded(acc)
        self.pipe, self.arch = load_base(config, self.device, self.dtype, pipe, sharded)
        net = build_policy_net(self.pipe, self.arch, config, self.dtype, self.device, sharded)
        self.adapter = net.adapter
        self.net, self.optimizer = acc.prepare(net, build_optimizer(trainable_parameters(net), config))
        self.raw_net: PolicyNet = acc.unwrap_model(self.net)
        # under FSDP the prepared model holds new (sharded) parameters: name the ones that train now
        self.trainable = trainable_parameters(self.raw_net)
        s = config.sampling
        self.policy = DiffusionPolicy(self.pipe, self.arch, self.raw_net, resolution=s.resolution, device=self.device,
                                      eta=s.eta, noise_level=s.sde_noise_level)
        self.ema = EMA([p for _, p in self.trainable], config.optim.ema_decay) if config.optim.ema else None
        # the one loss scaler is accelerate's (fp16 mixed precision); a disabled stand-in keeps checkpoints uniform
        self.scaler = acc.scaler if acc.scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
        self.sampler = PromptTargetSampler(load_prompts(config.data.prompts_file), config.data.targets, config.seed)
        # CFG-free training (Flow-GRPO): rollouts, updates and evaluation at guidance 1; a guidance-distilled
        # model keeps its guidance embedding's value (it has no branch to drop)
        cfg_free = s.cfg_free_training and self.raw_net.guidance_mode == "cfg"
        self.train_guidance = 1.0 if cfg_free else s.guidance_scale
        # encode once and free the text encoders BEFORE the reward models load: the two never share memory
        self.prompt_cache = attach_prompt_cache(self)
        self.reward = reward if reward is not None else build_reward(config.rewards, str(self.device))
        self.runner = AsyncRewardRunner(self.reward, config.reward_workers)
        self.rollout_phase = RolloutPhase(self)
        self.reward_phase = RewardPhase(self)
        self.update_phase = UpdatePhase(self)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.out = Path(config.output_dir)
        self.config_history: list[dict] = []  # settings changed at resumes (kept in every checkpoint)
        self.train_log = TrainLog(config, self.out, enabled=log, main_process=acc.is_main_process)
        self.heldout = attach_heldout(self)  # reward-hacking check every heldout.every steps (optional)

    # --- state the phases keep ---------------------------------------------------------------------
    @property
    def updates(self) -> int:
        return self.update_phase.updates

    @updates.setter
    def updates(self, value: int) -> None:
        self.update_phase.updates = value

    @property
    def ratio_dev_before_first_update(self) -> float:
        return self.update_phase.ratio_dev_before_first_update

    @property
    def writer(self) -> Any:
        """The TensorBoard writer (None until the first logged step, and when logging is off)."""
        return self.train_log.writer

    def _denoiser(self):
        return denoiser_of(self.pipe, self.arch)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """Full LoRA tensors (under FSDP gathered from the shards: every process must call it)."""
        lora = [(n, p) for n, p in self.trainable if n.startswith("denoiser.")]
        return sharding.gather_full(self.accelerator, self.net, lora)

    def print_summary(self) -> None:
        if self.accelerator.is_main_process:
            print(f"[train] arch={self.arch} dtype={self.config.model.dtype} device={self.device} "
                  f"LoRA params={count_trainable(self.trainable, 'denoiser.')} "
                  f"adapter params={count_trainable(self.trainable, 'adapter.')}")
            print(f"[train] {self.derived.summary()}")

    # --- one step ---------------------------------------------------------------------------------
    def sample_step(self) -> tuple[list[Trajectory], dict[str, torch.Tensor], Any]:
        """Roll out this process's groups; rewards are scored on the worker while sampling continues."""
        return self.rollout_phase.sample(self.step)

    def train_step(self) -> dict[str, float]:
        import time

        t0 = time.perf_counter()
        trajs, parts, batch = self.sample_step()
        t_sample = time.perf_counter() - t0
        scored = self.reward_phase.score(parts, batch, self.step)
        stats = self.update_phase.run(trajs, scored.advantages, scored.keep, self.step)
        metrics = {**scored.metrics, "time/sample_s": t_sample,
                   "time/update_s": time.perf_counter() - t0 - t_sample, **stats}
        self.train_log.scalars(self.step, metrics, trajs[0].images if trajs else None)
        self.train_log.console(self.step, metrics, scored.shares, self.reward.names)
        self.step += 1
        self.history.append(metrics)
        return metrics

    def evaluate(self, prompts: Sequence[str], targets: torch.Tensor, seeds: Sequence[int],
                 steps: Optional[int] = None, use_ema: bool = False,
                 guidance_scale: Optional[float] = None) -> dict[str, torch.Tensor]:
        """Reward parts of images from the deterministic sampler (same seeds → same images), at the trained
        guidance unless ``guidance_scale`` is given (see :meth:`.rollout_phase.RolloutPhase.evaluate`)."""
        return self.rollout_phase.evaluate(prompts, targets, seeds, steps, use_ema, guidance_scale)

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoint_root(self) -> Path:
        return self.out / "checkpoints"

    def save(self) -> Optional[Path]:
        return save_run(self)

    def resume(self, path: Optional[str | Path] = None, allow_change: Sequence[str] = ()) -> bool:
        """Load the latest (or given) checkpoint; False when there is none (see :mod:`.run_checkpoint`)."""
        return resume_run(self, path, allow_change)

    # --- the loop ---------------------------------------------------------------------------------
    def _check_finite_step(self, metrics: dict[str, float]) -> None:
        """Stop before a diverged step is saved: NaN/inf in the loss, reward, an applied update's gradient norm
        or any trainable weight, or too many fp16-skipped updates in a row. A skipped update is not divergence."""
        import math

        names = ["train/loss", "reward/mean"] + (["train/grad_norm"] if metrics.get("train/applied_updates", 1) else [])
        bad = [k for k in names if not math.isfinite(metrics.get(k, 0.0))]
        bad += sharding.nonfinite_names([(n, p.detach()) for n, p in self.trainable])[:1]
        if bad:
            raise NonFiniteError(
                f"step {self.step}: {bad[0]} became NaN/inf, so the run stopped before saving it; "
                f"'latest' still names the last good checkpoint. Lower optim.lr (now {self.config.optim.lr}) "
                "and continue with --resume")
        self.update_phase.check_skips(self.step)

    def train(self, resume: bool = False, overwrite: bool = False,
              allow_change: Sequence[str] = ()) -> list[dict[str, float]]:
        """Run to ``max_steps``. A new run needs an empty ``output_dir`` (or ``overwrite``); ``resume``
        needs a valid ``latest`` there (a missing one is an error, not a fresh start)."""
        from tqdm.auto import tqdm

        from ..run_dir import check_output_dir, prepare_output_dir

        c, acc = self.config, self.accelerator
        check_output_dir(self.out, resume, overwrite)  # every process: read-only, so all refuse together
        acc.wait_for_everyone()
        if acc.is_main_process:
            prepare_output_dir(self.out, resume, overwrite)
        acc.wait_for_everyone()
        if resume:
            self.resume(allow_change=allow_change)
            if acc.is_main_process:
                print(f"[train] resumed at step {self.step}")
                if self.step == c.max_steps:
                    print(f"[train] nothing to train: the checkpoint is already at max_steps={c.max_steps}")
        self.print_summary()
        bar = tqdm(total=c.max_steps, initial=self.step, disable=not (c.progress and acc.is_main_process),
                   desc="GRPO")
        try:
            if self.heldout is not None:
                self.heldout.maybe_run(self.step)
            while self.step < c.max_steps:
                metrics = self.train_step()
                self._check_finite_step(metrics)
                if self.heldout is not None:
                    self.heldout.maybe_run(self.step)
                bar.update(1)
                first = self.reward.names[0]  # raw, not the group-normalised combination (~0)
                bar.set_postfix({first: f"{metrics[f'reward/{first}']:.3f}", "kl": f"{metrics['train/kl']:.2e}"})
                if self.step % c.save_every == 0 or self.step == c.max_steps:
                    self.save()
        finally:
            bar.close()
            self.runner.close()
            self.train_log.close()
        if c.export_at_end:  # every process: under FSDP the LoRA is gathered from all of them
            self.export(self.out / "export")
        return self.history

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the LoRA and adapter; the EMA weights once the EMA has warmed up, else the live ones (said so).
        Every process must call it (under FSDP the weights are gathered); the main process writes."""
        from .export import export_all

        use_ema, note = ema_export_choice(self.ema)  # reads its counters, copies no shadow
        if self.accelerator.is_main_process:
            print(f"[train] {note}")
        if use_ema:
            self.ema.swap()
        try:
            lora = self.lora_state()
            adapter = self._gathered_adapter()
        finally:
            if use_ema:
                self.ema.swap()
        if not self.accelerator.is_main_process:
            return {}
        return export_all(out_dir, self.arch, lora, self.config.model.lora_rank, self.config.model.lora_alpha,
                          adapter, metadata={"step": self.step, "weights": "ema" if use_ema else "live",
                                             "weights_note": note})

    def _gathered_adapter(self):
        """A CPU copy of the emotion adapter with full weights (under FSDP its parameters are shards)."""
        if self.adapter is None:
            return None
        from ...engines.generation.emotion_adapter import EmotionAdapter  # not the FSDP-wrapped class

        values = sharding.gather_full(self.accelerator, self.net, list(self.adapter.named_parameters()))
        plain = EmotionAdapter(self.adapter.config)
        plain.load_state_dict(values)
        return plain

"""The GRPO trainer: sample groups, score them off the critical path, update LoRA + emotion adapter.

One step on each process:
1. draw ``groups_per_step`` (prompt, target) pairs from ``(seed, step)``; each group's G members
   stay on this process and get distinct seeds;
2. roll out micro-batches of ``batch_size`` with the stochastic sampler, storing latents and
   log-probs; each decoded micro-batch goes to the reward thread while the next one is sampled;
3. gather rewards from all processes, compute group advantages (global std, zero-spread groups
   dropped and counted, clip ±adv_clip);
4. for the *same* micro-batches (same batch size, dtype and order inside a batch, so the first
   ratio is exactly 1): for each trained timestep, recompute the log-prob with gradients, PPO-clip
   loss + β·KL to the base model (peft ``disable_adapters``), and ``backward`` right away — memory
   stays flat in T; DDP gradient sync happens only on the last backward before each update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ...engines.devices import DTYPES
from . import resume_guard
from ..checkpoint import (
    CheckpointError,
    NonFiniteError,
    check_finite,
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import Derived, TrainConfig, check_inputs, config_to_dict, derive
from .data import PromptTargetSampler, load_prompts, quadrant
from ..grpo import EMA, group_advantages, ppo_clip_loss
from .precision import check_mixed_precision, make_accelerator
from .families import family_for
from .policies import DiffusionPolicy, Trajectory, rollout
from .policy_net import PolicyNet, adapters_disabled, add_lora
from .step_logprob import gaussian_kl_mean
from .guards import guarded_log_probs
from .heldout import attach_heldout
from .prompt_cache import attach_prompt_cache
from .quantized_base import check_quantization, from_pretrained_kwargs
from . import sharding
from .rewards import AsyncRewardRunner, CompositeReward, build_reward



def json_equal(a: Any, b: Any) -> Optional[bool]:
    """Compare a config as saved in JSON with one built now (tuples become lists); None if nothing saved."""
    import json

    if a is None:
        return None
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


class GRPOTrainer:
    """GRPO on a diffusers pipeline's denoiser LoRA and an emotion adapter. See the module docstring."""

    def __init__(self, config: TrainConfig, *, reward: Optional[CompositeReward] = None, pipe: Any = None,
                 accelerator: Any = None, log: bool = True):
        from ...engines.generation.diffusers_backend import DiffusersGeneratorConfig, detect_arch, load_pipeline

        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        acc = self.accelerator
        check_mixed_precision(acc, config.model.dtype)
        sharding.check_sharding(acc, config.model)  # FSDP1 needs use_orig_params; no quantised base under FSDP
        self.derived: Derived = derive(config, acc.num_processes)
        check_inputs(config, need_model=pipe is None)  # data files parsed, paths present: before any loading
        self.device = acc.device
        self.dtype = DTYPES[config.model.dtype]
        check_quantization(config.model, self.device.type)  # bitsandbytes on the CPU this run got: refused
        sharded = sharding.is_sharded(acc)
        if pipe is None:  # a quantised base (model.quantization) is quantised as it loads
            load_on = torch.device("cpu") if sharded else self.device  # FSDP moves each shard to its GPU
            pipe = load_pipeline(DiffusersGeneratorConfig(
                model=config.model.pretrained, dtype=config.model.dtype, device=str(load_on),
                extra_from_pretrained=from_pretrained_kwargs(config.model, self.dtype)), load_on, self.dtype)
            if sharded:
                sharding.place_unsharded_parts(pipe, self.device)  # text encoders and VAE stay whole
        self.pipe = pipe
        self.arch = detect_arch(pipe) if config.model.arch == "auto" else config.model.arch
        vae_config = getattr(getattr(pipe, "vae", None), "config", None)
        if self.dtype == torch.float16 and getattr(vae_config, "force_upcast", False):
            pipe.vae.to(torch.float32)  # the SD/SDXL VAEs overflow in fp16 (diffusers upcasts them too)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
        family = family_for(self.arch)
        denoiser = family.denoiser(pipe)
        torch.manual_seed(config.seed)  # LoRA init is random (gaussian A, zero B)
        add_lora(denoiser, self.arch, config.model.lora_rank, config.model.lora_alpha, config.model.lora_targets)
        if config.model.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        self.adapter = self._build_adapter() if config.model.train_adapter or config.model.adapter_init else None
        net = PolicyNet(self.arch, denoiser, self.adapter, self.dtype, guidance_mode=family.guidance_mode(pipe))
        if not sharded:  # under FSDP the full denoiser never sits on one GPU: accelerate moves the shards
            net = net.to(self.device)
        if self.adapter is not None and not config.model.train_adapter:
            self.adapter.requires_grad_(False)
        self.trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
        o = config.optim
        groups = [{"params": [p for n, p in self.trainable if n.startswith("denoiser.")], "lr": o.lr}]
        adapter_params = [p for n, p in self.trainable if n.startswith("adapter.")]
        if adapter_params:
            groups.append({"params": adapter_params, "lr": o.adapter_lr if o.adapter_lr is not None else o.lr})
        optimizer = torch.optim.AdamW(groups, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.net, self.optimizer = acc.prepare(net, optimizer)
        self.raw_net: PolicyNet = acc.unwrap_model(self.net)
        # under FSDP the prepared model holds new (sharded) parameters: name the ones that train now
        self.trainable = [(n, p) for n, p in self.raw_net.named_parameters() if p.requires_grad]
        self.policy = DiffusionPolicy(pipe, self.arch, self.raw_net, resolution=config.sampling.resolution,
                                      device=self.device, eta=config.sampling.eta,
                                      noise_level=config.sampling.sde_noise_level)
        self.ema = EMA([p for _, p in self.trainable], o.ema_decay) if o.ema else None
        # the one loss scaler is accelerate's (fp16 mixed precision); a disabled stand-in keeps checkpoints uniform
        self.scaler = acc.scaler if acc.scaler is not None else torch.amp.GradScaler("cuda", enabled=False)
        self.reward = reward if reward is not None else build_reward(config.rewards, str(self.device))
        self.runner = AsyncRewardRunner(self.reward, config.reward_workers)
        self.sampler = PromptTargetSampler(load_prompts(config.data.prompts_file), config.data.targets, config.seed)
        # CFG-free training (Flow-GRPO): rollouts and updates at guidance 1, evaluation at guidance_scale;
        # a guidance-distilled model keeps its guidance embedding's value (it has no branch to drop)
        cfg_free = config.sampling.cfg_free_training and self.raw_net.guidance_mode == "cfg"
        self.train_guidance = 1.0 if cfg_free else config.sampling.guidance_scale
        self.prompt_cache = attach_prompt_cache(self)  # encode once, free the text encoders (optional)
        self.heldout = attach_heldout(self)  # reward-hacking check every heldout.every steps (optional)
        self.step = 0
        self.updates = 0
        self.ratio_dev_before_first_update = 0.0
        self.history: list[dict[str, float]] = []
        self.out = Path(config.output_dir)
        self.config_history: list[dict] = []  # settings changed at resumes (kept in every checkpoint)
        self.writer = None
        self.log_console = log
        self._log_enabled = log and acc.is_main_process  # the writer opens lazily: construction writes nothing

    # --- set-up helpers ---------------------------------------------------------------------------
    def _build_adapter(self):
        from ...engines.generation.emotion_adapter import EmotionAdapter, EmotionAdapterConfig, load_emotion_adapter

        if self.config.model.adapter_init:
            adapter = load_emotion_adapter(self.config.model.adapter_init, expected_arch=self.arch)
        else:
            policy = DiffusionPolicy(self.pipe, self.arch, PolicyNet(self.arch, self._denoiser(), None, self.dtype),
                                     resolution=self.config.sampling.resolution, device=self.device)
            cond = policy.encode(["a"], "", False)
            extra = {"hidden_dim": self.config.model.adapter_hidden} if self.config.model.adapter_hidden else {}
            adapter = EmotionAdapter(EmotionAdapterConfig.from_conditioning(self.arch, cond.context, cond.pooled, **extra))
        return adapter.float().train()

    def _denoiser(self):
        return family_for(self.arch).denoiser(self.pipe)

    def lora_state(self) -> dict[str, torch.Tensor]:
        """Full LoRA tensors (under FSDP gathered from the shards: every process must call it)."""
        lora = [(n, p) for n, p in self.trainable if n.startswith("denoiser.")]
        return sharding.gather_full(self.accelerator, self.net, lora)

    def print_summary(self) -> None:
        if self.accelerator.is_main_process:
            n_lora = sum(p.numel() for n, p in self.trainable if n.startswith("denoiser."))
            n_adapter = sum(p.numel() for n, p in self.trainable if n.startswith("adapter."))
            print(f"[train] arch={self.arch} dtype={self.config.model.dtype} device={self.device} "
                  f"LoRA params={n_lora} adapter params={n_adapter}")
            print(f"[train] {self.derived.summary()}")

    # --- one step ---------------------------------------------------------------------------------
    def _chunks(self, n: int) -> list[slice]:
        b = self.config.grpo.batch_size
        return [slice(i, i + b) for i in range(0, n, b)]

    def _train_indices(self, rng: np.random.Generator) -> list[int]:
        steps = self.config.sampling.steps
        window = self.config.grpo.train_window
        pool = list(range(int(window[0]), int(window[1]))) if window else list(range(steps))
        k = self.derived.trained_timesteps
        if k >= len(pool):
            return pool
        return sorted(rng.choice(pool, size=k, replace=False).tolist())

    def sample_step(self) -> tuple[list[Trajectory], dict[str, torch.Tensor], Any]:
        """Roll out this process's groups; rewards are scored on the worker while sampling continues."""
        c = self.config
        batch = self.sampler.sample(self.step, c.grpo.groups_per_step, c.grpo.group_size,
                                    self.accelerator.process_index, self.accelerator.num_processes)
        cfg = self.train_guidance != 1.0
        per_step = c.reward_schedule == "step"
        trajs = []
        self.raw_net.eval()
        for sl in self._chunks(len(batch.prompts)):
            cond = self.policy.encode(batch.prompts[sl], c.sampling.negative_prompt, cfg)
            va = torch.from_numpy(batch.targets[sl]).to(self.device)
            traj = rollout(self.policy, self.raw_net, cond, va, batch.seeds[sl], c.sampling.steps,
                           self.train_guidance, c.sampling.adapter_strength,
                           keep_means=c.grpo.ratio_norm == "grpo_guard")
            if not per_step:
                self.runner.submit(traj.images, batch.prompts[sl], va)
            trajs.append(traj)
        if per_step:  # one reward call for the whole step: the judge is swapped in at most once
            self.runner.submit(torch.cat([t.images for t in trajs]), batch.prompts, torch.from_numpy(batch.targets))
        return trajs, self.runner.collect(), batch

    def train_step(self) -> dict[str, float]:
        c, acc = self.config, self.accelerator
        t0 = time.perf_counter()
        trajs, parts, batch = self.sample_step()
        t_sample = time.perf_counter() - t0
        n_local = len(batch.prompts)
        gids = torch.as_tensor(batch.group_ids, device=self.device)
        all_parts = {k: acc.gather(v.to(self.device)).cpu() for k, v in parts.items()}
        all_gids = acc.gather(gids).cpu()
        rewards = self.reward.combine(all_parts, all_gids)
        self._check_finite_rewards(all_parts, rewards)
        shares = self.reward.advantage_shares(all_parts, all_gids)
        adv_all, info = group_advantages(rewards, all_gids, global_std=c.grpo.global_std, clip=c.grpo.adv_clip)
        me = acc.process_index
        adv = adv_all[me * n_local:(me + 1) * n_local].to(self.device)
        keep = info.keep[me * n_local:(me + 1) * n_local].to(self.device)
        if c.grpo.shuffle_advantages:  # control runs only: break the sample-advantage link
            perm = torch.from_numpy(np.random.default_rng([c.seed, self.step, 99]).permutation(n_local))
            adv, keep = adv[perm.to(self.device)], keep[perm.to(self.device)]
        stats = self._update(trajs, adv, keep)
        metrics = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std(unbiased=False)),
            "grpo/zero_std_ratio": info.zero_std_ratio,
            "grpo/zero_std_groups": float(info.zero_std_groups),
            "time/sample_s": t_sample,
            "time/update_s": time.perf_counter() - t0 - t_sample,
            **stats,
        }
        for name, value in all_parts.items():
            metrics[f"reward/{name}"] = float(value.mean())
        for name, share in shares.items():  # which term sets the advantages (within-group variance)
            metrics[f"reward_share/{name}"] = share
        metrics.update(getattr(self.reward, "pop_stats", dict)())  # e.g. the reasoning judge's unparsable answers and spread
        all_targets = acc.gather(torch.from_numpy(batch.targets).to(self.device)).cpu()
        regions: dict[str, list[float]] = {}
        for (v, a), r in zip(all_targets.tolist(), rewards.tolist()):
            regions.setdefault(quadrant(v, a), []).append(r)
        for region, values in regions.items():
            metrics[f"reward_by_region/{region}"] = float(np.mean(values))
        self._log(metrics, trajs)
        self._console(metrics, shares)
        self.step += 1
        self.history.append(metrics)
        return metrics

    def _update(self, trajs: list[Trajectory], adv: torch.Tensor, keep: torch.Tensor) -> dict[str, float]:
        c, acc = self.config, self.accelerator
        g = c.grpo
        rng = np.random.default_rng([c.seed, self.step, 1])
        per_update = self.derived.micro_batches_per_update
        sums = {"loss": 0.0, "kl": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "grad_norm": 0.0}
        counts = {"pass": 0, "update": 0, "kept": 0}
        bsz = g.batch_size
        self.raw_net.train()
        for _epoch in range(g.inner_epochs):
            order = rng.permutation(len(trajs)).tolist()
            for u in range(g.updates_per_step):
                chunk_ids = order[u * per_update:(u + 1) * per_update]
                plan = [(ci, j) for ci in chunk_ids for j in self._train_indices(rng)]
                # Every kept (sample, timestep) term of the update weighs the same, wherever the kept
                # samples fall: the policy loss is summed and divided by the update's kept-term count
                # (over all processes; DDP averages gradients, hence the division by their number).
                kept_terms = sum(int(keep[ci * bsz:(ci + 1) * bsz].sum()) for ci, _ in plan)
                kept_terms = float(acc.gather(torch.tensor([kept_terms], device=self.device)).sum()) / acc.num_processes
                for k, (ci, j) in enumerate(plan):
                    traj = trajs[ci]
                    a = adv[ci * bsz:(ci + 1) * bsz]
                    m = keep[ci * bsz:(ci + 1) * bsz]
                    last = k == len(plan) - 1
                    sync = contextlib.nullcontext() if last else acc.no_sync(self.net)
                    with sync:
                        loss, parts = self._timestep_loss(traj, j, a, m, kept_terms=kept_terms, terms=len(plan))
                        acc.backward(loss)  # accelerate owns loss scaling (fp16) and gradient sync
                    sums["kl"] += parts["kl"]
                    sums["clipfrac"] += parts["clipfrac"] * parts["kept"]
                    sums["approx_kl"] += parts["approx_kl"] * parts["kept"]
                    sums["loss"] += float(loss.detach())
                    counts["pass"] += 1
                    counts["kept"] += parts["kept"]
                    if self.updates == 0:
                        self.ratio_dev_before_first_update = max(self.ratio_dev_before_first_update, parts["ratio_dev"])
                norm = self._clip_gradients()
                self.optimizer.step()  # accelerate's optimizer: steps through its scaler when there is one
                self.optimizer.zero_grad(set_to_none=True)
                if self.ema is not None:
                    self.ema.update()
                self.updates += 1
                sums["grad_norm"] += float(norm)
                counts["update"] += 1
        self.raw_net.eval()
        n, kept = max(1, counts["pass"]), max(1, counts["kept"])
        return {
            "train/loss": sums["loss"] / max(1, counts["update"]),
            "train/kl": sums["kl"] / n,
            "train/clipfrac": sums["clipfrac"] / kept,
            "train/approx_kl": sums["approx_kl"] / kept,
            "train/kept_fraction": counts["kept"] / max(1, counts["pass"] * bsz),
            "train/grad_norm": sums["grad_norm"] / max(1, counts["update"]),
        }

    def _clip_gradients(self) -> torch.Tensor:
        """Total gradient norm before clipping, of the *unscaled* gradients (accelerate unscales fp16 first)."""
        params = [p for _, p in self.trainable]
        if self.config.optim.max_grad_norm > 0:
            return self.accelerator.clip_grad_norm_(params, self.config.optim.max_grad_norm)
        self.accelerator.unscale_gradients()
        grads = [p.grad.float() for p in params if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros(())

    def _timestep_loss(self, traj: Trajectory, j: int, adv: torch.Tensor, keep: torch.Tensor,
                       kept_terms: Optional[float] = None, terms: int = 1):
        """One trained timestep of one micro-batch: PPO-clip over kept samples / ``kept_terms`` + β·KL / ``terms``."""
        c = self.config
        x = traj.latents[:, j]
        prev = traj.latents[:, j + 1]
        t = traj.timesteps[j].to(self.device)
        out = self.net(x, t, traj.cond, traj.va, self.train_guidance, c.sampling.adapter_strength)
        res = self.policy.step(out, x, traj.params[j], prev_sample=prev)
        log_prob, old_log_prob, weight = guarded_log_probs(c.grpo.ratio_norm, self.arch, res, traj, j)
        loss, info = ppo_clip_loss(log_prob, old_log_prob, adv, c.grpo.clip_range, mask=keep,
                                   normalizer=kept_terms)
        loss = loss * weight
        kl_value = 0.0
        if c.grpo.kl_beta > 0:
            with torch.no_grad(), adapters_disabled(self.raw_net):
                ref_out = self.raw_net(x, t, traj.cond, traj.va, self.train_guidance, 0.0)
                ref = self.policy.step(ref_out, x, traj.params[j], prev_sample=prev)
            kl = gaussian_kl_mean(res.mean, ref.mean, res.std).mean()
            loss = loss + c.grpo.kl_beta * kl / terms  # the KL anchors every sample: mean over the update
            kl_value = float(kl.detach())
        return loss, {"kl": kl_value, "clipfrac": info.clipfrac, "approx_kl": info.approx_kl,
                      "ratio_dev": info.ratio_max_dev, "kept": info.kept}

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, prompts: Sequence[str], targets: torch.Tensor, seeds: Sequence[int],
                 steps: Optional[int] = None, use_ema: bool = False) -> dict[str, torch.Tensor]:
        """Reward parts of images from the deterministic sampler (same seeds → same images)."""
        c = self.config
        steps = steps or c.sampling.eval_steps
        cfg = c.sampling.guidance_scale != 1.0
        if use_ema and self.ema is not None:
            self.ema.swap()
        try:
            self.raw_net.eval()
            parts: list[dict[str, torch.Tensor]] = []
            for sl in self._chunks(len(prompts)):
                cond = self.policy.encode(list(prompts[sl]), c.sampling.negative_prompt, cfg)
                va = targets[sl].to(self.device).float()
                traj = rollout(self.policy, self.raw_net, cond, va, list(seeds[sl]), steps,
                               c.sampling.guidance_scale, c.sampling.adapter_strength, stochastic=False)
                parts.append(self.reward.score_parts(traj.images, list(prompts[sl]), va.cpu()))
        finally:
            if use_ema and self.ema is not None:
                self.ema.swap()
        merged = {k: torch.cat([p[k] for p in parts]) for k in self.reward.names}
        merged["total"] = sum(w * merged[n] for n, w in zip(self.reward.names, self.reward.weights))
        return merged

    # --- logging ----------------------------------------------------------------------------------
    def _console(self, metrics: dict[str, float], shares: dict[str, float]) -> None:
        """One line per step: the reward and each reward term's share of the advantage variance."""
        if not (self.log_console and self.accelerator.is_main_process):
            return
        from tqdm.auto import tqdm

        # The raw term means are what a user can read (the combined reward is normalised per group, ~0).
        raw = " ".join(f"{name}={metrics[f'reward/{name}']:.4f}" for name in self.reward.names)
        split = " ".join(f"{name}={share:.2f}" for name, share in shares.items())
        tqdm.write(f"[train] step {self.step} rewards {raw} advantage share: {split}")

    def _log(self, metrics: dict[str, float], trajs: list[Trajectory]) -> None:
        if self.writer is None and self._log_enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tb"))
        if self.writer is None:
            return
        c = self.config
        if self.step % c.log_every == 0:
            for key, value in metrics.items():
                if math.isfinite(value):
                    self.writer.add_scalar(key, value, self.step)
        if c.image_log_every and self.step % c.image_log_every == 0 and trajs:
            from torchvision.utils import make_grid

            images = trajs[0].images.permute(0, 3, 1, 2)
            self.writer.add_image("samples", make_grid(images, nrow=min(8, images.shape[0])), self.step)
        self.writer.flush()

    # --- checkpoints ------------------------------------------------------------------------------
    def checkpoint_root(self) -> Path:
        return self.out / "checkpoints"

    def save(self) -> Optional[Path]:
        acc = self.accelerator
        acc.wait_for_everyone()
        # every process gathers (collective under FSDP); only the main one writes
        weights = sharding.gather_full(acc, self.net, self.trainable)
        ema = sharding.ema_state(self.ema) if self.ema is not None else None
        optimizer = sharding.optimizer_state(acc, self.net, self.optimizer)
        if not acc.is_main_process:
            return None
        if ema is not None:
            weights.update({f"ema.{n}": s for (n, _), s in zip(self.trainable, ema["shadow"])})
        state = {
            "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "ema": ema,
            "rng": rng_state(),
            "updates": self.updates,
        }
        meta = {
            "config": config_to_dict(self.config),
            "arch": self.arch,
            "adapter_config": dataclasses.asdict(self.adapter.config) if self.adapter is not None else None,
            "derived": dataclasses.asdict(self.derived),
            "config_history": self.config_history,
        }
        return save_checkpoint(self.checkpoint_root(), self.step, weights, state, meta, self.config.keep_checkpoints)

    def resume(self, path: Optional[str | Path] = None, allow_change: Sequence[str] = ()) -> bool:
        """Load the latest (or given) checkpoint; False when there is none.

        The checkpoint must come from the same run (see :mod:`.resume_guard`): identity and
        run-defining changes are refused, optimiser/EMA changes are applied here and recorded.
        """
        path = Path(path) if path else latest_checkpoint(self.checkpoint_root())
        if path is None:
            return False
        weights, state, meta = load_checkpoint(path)
        if meta.get("arch") != self.arch:
            raise resume_guard.ResumeMismatchError(
                f"resume refused: checkpoint {path} is for {meta.get('arch')}, this run's model is {self.arch}")
        changes = resume_guard.compare(meta.get("config") or {}, self.config, allow_change)
        adapter_config = dataclasses.asdict(self.adapter.config) if self.adapter is not None else None
        if json_equal(meta.get("adapter_config"), adapter_config) is False:
            raise resume_guard.ResumeMismatchError(
                f"resume refused: the emotion adapter's shape differs from checkpoint {path} "
                f"({meta.get('adapter_config')} vs {adapter_config}); restore the adapter settings")
        params = dict(self.trainable)
        saved = {k for k in weights if not k.startswith("ema.")}
        missing, extra = sorted(set(params) - saved), sorted(saved - set(params))
        if missing or extra:
            example = (missing or extra)[0]
            raise resume_guard.ResumeMismatchError(
                f"resume refused: checkpoint {path} does not hold this model's trainable tensors "
                f"({len(missing)} missing, {len(extra)} extra, e.g. {example}); was it written with another "
                "LoRA rank/targets or adapter setting?")
        for name, p in params.items():
            if tuple(weights[name].shape) != tuple(p.shape):
                raise resume_guard.ResumeMismatchError(
                    f"resume refused: {name} is {tuple(weights[name].shape)} in {path}, {tuple(p.shape)} now")
        check_finite(weights, f"checkpoint {path}")
        resume_guard.check_step(int(meta["step"]), self.config, str(path))
        sharding.load_full_parameters(self.accelerator, self.net, params, weights)  # shards under FSDP
        try:
            sharding.load_optimizer_state(self.accelerator, self.net, self.optimizer, state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"the optimiser state in {path} does not fit this run: {exc}") from exc
        resume_guard.apply_optimizer_settings(self.optimizer, self.config)  # changed lr/betas/... take effect
        if self.ema is not None:
            if state.get("ema"):
                sharding.load_ema_state(self.ema, state["ema"])
                self.ema.decay = float(self.config.optim.ema_decay)
            else:  # EMA switched on at this resume: it starts from the resumed weights, not the initial ones
                self.ema = EMA([p for _, p in self.trainable], self.config.optim.ema_decay)
        set_rng_state(state["rng"])
        self.updates = int(state["updates"])
        self.step = int(meta["step"])
        self.config_history = resume_guard.config_history(meta, self.step, changes)
        if changes and self.accelerator.is_main_process:
            print(f"[train] resume at step {self.step} with changed settings: {resume_guard.describe(changes)}")
        return True

    # --- the loop ---------------------------------------------------------------------------------
    def _check_finite_rewards(self, parts: dict[str, torch.Tensor], rewards: torch.Tensor) -> None:
        """A NaN/inf reward stops the run with the reward's name (it would poison every advantage)."""
        if bool(torch.isfinite(rewards).all()):
            return
        bad = [name for name, value in parts.items() if not bool(torch.isfinite(value).all())] or ["total"]
        raise NonFiniteError(f"step {self.step}: reward {bad[0]!r} returned NaN/inf, so the run stopped before "
                             "this step was used or saved; check that reward model, then continue with --resume")

    def _check_finite_step(self, metrics: dict[str, float]) -> None:
        """Stop before a diverged step is saved: NaN/inf in the loss, reward or any trainable weight."""
        bad = [k for k in ("train/loss", "reward/mean", "train/grad_norm") if not math.isfinite(metrics.get(k, 0.0))]
        bad += sharding.nonfinite_names([(n, p.detach()) for n, p in self.trainable])[:1]
        if bad:
            raise NonFiniteError(
                f"step {self.step}: {bad[0]} became NaN/inf, so the run stopped before saving it; "
                f"'latest' still names the last good checkpoint. Lower optim.lr (now {self.config.optim.lr}) "
                "and continue with --resume")

    def train(self, resume: bool = False, overwrite: bool = False,
              allow_change: Sequence[str] = ()) -> list[dict[str, float]]:
        """Run to ``max_steps``. A new run needs an empty ``output_dir`` (or ``overwrite``); ``resume``
        needs a valid ``latest`` there (a missing one is an error, not a fresh start)."""
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
        from tqdm.auto import tqdm

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
            if self.writer is not None:
                self.writer.close()
        if c.export_at_end:  # every process: under FSDP the LoRA is gathered from all of them
            self.export(self.out / "export")
        return self.history

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the kohya/diffusers LoRA and the adapter (main process; every process must call it)."""
        from .export import export_all

        if self.ema is not None:
            self.ema.swap()
        try:
            lora = self.lora_state()
            adapter = self._gathered_adapter()
        finally:
            if self.ema is not None:
                self.ema.swap()
        if not self.accelerator.is_main_process:
            return {}
        return export_all(out_dir, self.arch, lora, self.config.model.lora_rank, self.config.model.lora_alpha,
                          adapter, metadata={"step": self.step})

    def _gathered_adapter(self):
        """A CPU copy of the emotion adapter with full weights (under FSDP its parameters are shards)."""
        if self.adapter is None:
            return None
        from ...engines.generation.emotion_adapter import EmotionAdapter  # not the FSDP-wrapped class

        values = sharding.gather_full(self.accelerator, self.net, list(self.adapter.named_parameters()))
        plain = EmotionAdapter(self.adapter.config)
        plain.load_state_dict(values)
        return plain

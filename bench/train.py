"""``emofeedback2 bench train``: GRPO rollout/update throughput and what an update holds for backward vs T.

On a tiny random pipeline (default) it runs real GRPO steps of :class:`GRPOTrainer` for T=4 and
T=16 sampling steps (every step trained) and reports
- rollout and update throughput (images/s);
- the bytes of tensors saved for backward that are alive at the peak of a whole GRPO update (all
  trained timesteps, all micro-batches), counted with ``saved_tensors_hooks`` and weak references
  that release a storage only when it dies (:class:`LiveSavedBytes`); on CUDA also
  ``torch.cuda.max_memory_allocated`` over the update;
- a negative control in the same run: one backward over all timesteps of each micro-batch, as
  naive implementations do, whose figure must grow with T.
The last two lines are ``whole_graph_mem_ratio_T16_T4=<x>`` (the control; ≈4 = 16/4) and
``update_mem_ratio_T16_T4=<x>`` (the trainer; ≈1 when memory is flat in T); the line before them gives
the LoRA rank (``--lora-rank``) and its trainable parameter count. At least two different T are needed.

``--real-size sd3.5-medium --device cuda --dtype float16 --resolution 512`` builds the real SD3.5
Medium MMDiT (24 layers, width 1536, dual attention in layers 0-12, rms qk-norm, random weights)
plus a real-size SD3 VAE, with random prompt-embedding tensors of the real shapes in place of the
text encoders (CLIP-L/G + T5: context [B, 333, 4096], pooled [B, 2048]) and a cheap brightness
reward: its CUDA peak covers the transformer, VAE, LoRA, optimizer and activations only — no text
encoders and no reward model are resident, unlike a real training run.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import weakref
import tempfile

from ..training.generator.real_configs import SD3_VAE, SD35_MEDIUM_TRANSFORMER as SD35_MEDIUM  # one copy of the real shapes
from .train_plan import REAL_PIPELINES

TEXT_TOKENS = 77 + 256  # CLIP (77) and T5 (256) sequences concatenated, as SD3 pipelines do
GIB = 1024**3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=["sd15", "sdxl", "sd3"], default="sd15", help="tiny pipeline to use")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 16],
                        help="sampling steps to compare: at least two different counts")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="GRPO steps timed per T (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids oversubscription)")
    parser.add_argument("--real-size", choices=list(REAL_PIPELINES), default=None,
                        help="benchmark the real-size architecture with random weights instead of a tiny model "
                             "(sd3.5-medium; the other families with --plan only)")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="LoRA rank (default: 32 at --real-size, 4 on the tiny model)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--size-override", default="", help=argparse.SUPPRESS)  # JSON; tests shrink the real config
    from .train_plan import add_plan_arguments  # memory plan of the one-GPU recipes (issues 15, 23)

    add_plan_arguments(parser)


class LiveSavedBytes:
    """Bytes of tensors saved for backward that are *alive*, and their peak, over everything tracked.

    ``saved_tensors_hooks`` sees each tensor autograd saves; a ``weakref.finalize`` on it takes its
    storage off the books only when autograd (or anything else) lets go of it. So graphs kept alive
    — on purpose, by a bug, or by one backward over many timesteps — keep counting: the peak is what a
    whole update really holds at its worst moment, not one timestep's graph.
    """

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._refs: dict[tuple, int] = {}  # storage key -> live saved tensors on it
        self._sizes: dict[tuple, int] = {}

    def _release(self, key: tuple) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= self._sizes.pop(key)

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = (tensor.device.type, tensor.device.index, storage.data_ptr())
        if key not in self._refs:
            self._refs[key] = 0
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._refs[key] += 1
        weakref.finalize(tensor, self._release, key)
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor

    @contextlib.contextmanager
    def track(self):
        import torch

        with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
            yield self


def measure_update(trainer, update=None) -> tuple[dict, int, int]:
    """One GRPO step of ``trainer`` whose update (all micro-batches, all trained timesteps) runs under
    :class:`LiveSavedBytes`; ``update(trainer, trajs, adv, keep)`` replaces the trainer's own update
    (the negative control). Returns (metrics, peak live saved bytes, CUDA peak bytes or 0)."""
    import torch

    counter = LiveSavedBytes()
    phase = trainer.update_phase
    original = phase.run
    cuda = trainer.device.type == "cuda"

    def tracked(trajs, adv, keep, step):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with counter.track():
            out = original(trajs, adv, keep, step) if update is None else update(trainer, trajs, adv, keep)
        gc.collect()
        return out

    phase.run = tracked
    try:
        metrics = trainer.train_step()
    finally:
        del phase.run  # back to the class method (no cycle through the trainer left behind)
    return metrics, counter.peak, (torch.cuda.max_memory_allocated() if cuda else 0)


def one_backward_over_all_timesteps(trainer, trajs, adv, keep) -> dict:
    """Negative control, as naive implementations do it: per micro-batch, sum the losses of every
    trained timestep and call backward once, so all their graphs are alive together. No optimizer step."""
    bsz = trainer.config.grpo.batch_size
    steps = list(range(trainer.config.sampling.steps))
    kept_terms = float(keep.sum()) * len(steps)
    trainer.raw_net.train()
    for ci, traj in enumerate(trajs):
        a, m = adv[ci * bsz:(ci + 1) * bsz], keep[ci * bsz:(ci + 1) * bsz]
        total = sum(trainer.update_phase.timestep_loss(traj, j, a, m, kept_terms=kept_terms, terms=len(steps))[0] for j in steps)
        trainer.accelerator.backward(total)
        del total
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.raw_net.eval()
    return {"train/loss": 0.0, "train/kl": 0.0, "train/clipfrac": 0.0, "train/approx_kl": 0.0, "train/grad_norm": 0.0}


class _ShapeOnlySD3Pipe:
    """A real SD3 transformer + VAE + scheduler; ``encode_prompt`` returns random tensors of the real shapes."""

    def __init__(self, transformer, vae, scheduler, device, dtype):
        self.transformer, self.vae, self.scheduler = transformer, vae, scheduler
        self.device, self.dtype = device, dtype

    def encode_prompt(self, prompt, prompt_2=None, prompt_3=None, device=None, num_images_per_prompt=1,
                      do_classifier_free_guidance=True, negative_prompt=None, **_):
        import torch

        n = len(prompt)
        g = torch.Generator().manual_seed(n)
        cfg = self.transformer.config
        ctx = torch.randn(n, TEXT_TOKENS, cfg.joint_attention_dim, generator=g).to(self.device, self.dtype)
        pooled = torch.randn(n, cfg.pooled_projection_dim, generator=g).to(self.device, self.dtype)
        neg = torch.zeros_like(ctx) if do_classifier_free_guidance else None
        neg_pooled = torch.zeros_like(pooled) if do_classifier_free_guidance else None
        return ctx, neg, pooled, neg_pooled


def _tiny_pipe(arch: str, folder: str, device, dtype_name: str):
    from ..engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline
    from ..tiny_models.diffusion import build_tiny_pipeline
    from ..engines.devices import DTYPES

    path = build_tiny_pipeline(folder, arch)
    config = DiffusersGeneratorConfig(model=str(path), dtype=dtype_name, device=str(device))
    return load_pipeline(config, device, DTYPES[dtype_name])


def _real_pipe(override: dict, device, dtype):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    tcfg = {**SD35_MEDIUM, **override.get("transformer", {})}
    vcfg = {**SD3_VAE, **override.get("vae", {})}
    with torch.device(device):
        transformer = SD3Transformer2DModel(**tcfg).to(dtype).eval()
        vae = AutoencoderKL(**vcfg).to(dtype).eval()
    return _ShapeOnlySD3Pipe(transformer, vae, FlowMatchEulerDiscreteScheduler(shift=3.0), device, dtype)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..training.generator.config import RewardSpec, TrainConfig
    from ..engines.devices import DTYPES
    from ..training.generator.trainer import GRPOTrainer

    if getattr(args, "plan", False):
        from .train_plan import run_plan

        return run_plan(args)
    if args.real_size not in (None, "sd3.5-medium"):
        raise SystemExit(f"bench train --real-size {args.real_size}: only --plan is available for this family "
                         "(the timed real-size run builds SD3.5 Medium)")
    step_counts = list(dict.fromkeys(args.steps))  # a repeated T would only re-measure (and overwrite) itself
    if args.device == "cpu":
        torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    override = json.loads(args.size_override) if args.size_override else {}
    real = args.real_size is not None
    arch = "sd3" if real else args.arch
    print(f"bench train: {'real-size ' + args.real_size if real else 'tiny ' + arch} on {device} {args.dtype}, "
          f"resolution {args.resolution}, group {args.group_size}, batch {args.batch_size}")
    if real:
        print("  note: random weights; random prompt-embedding tensors of the real shapes replace the text "
              f"encoders (context [B,{TEXT_TOKENS},4096], pooled [B,2048]); reward = brightness (cheap)")
    peaks: dict[int, int] = {}
    whole_peaks: dict[int, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in step_counts:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            pipe = _real_pipe(override, device, dtype) if real else _tiny_pipe(arch, f"{tmp}/{arch}", device, args.dtype)
            c = TrainConfig()
            c.model.pretrained = "in-memory"
            c.model.dtype = args.dtype
            c.model.lora_rank = args.lora_rank if args.lora_rank is not None else (32 if real else 4)
            c.model.lora_alpha = float(c.model.lora_rank)
            c.model.adapter_hidden = 0 if real else 16
            c.model.gradient_checkpointing = args.gradient_checkpointing
            c.sampling.steps = steps
            c.grpo.train_window = [0, steps]  # every step trained (the default window leaves the last one out)
            c.sampling.resolution = args.resolution
            c.sampling.guidance_scale = 1.0
            c.grpo.group_size = args.group_size
            c.grpo.groups_per_step = 1
            c.grpo.batch_size = args.batch_size
            c.grpo.kl_beta = 0.01
            c.rewards = [RewardSpec(kind="brightness")]
            c.device = "cpu" if device.type == "cpu" else "cuda"
            c.output_dir = f"{tmp}/run"
            c.reward_workers = 0
            trainer = GRPOTrainer(c, pipe=pipe, log=False)
            lora_params = sum(p.numel() for n, p in trainer.trainable if n.startswith("denoiser."))
            trainer.train_step()  # warm-up (allocations, kernels)
            sample_s = update_s = 0.0
            peak = cuda_peak = 0
            for _ in range(args.repeats):
                m, p, cp = measure_update(trainer)
                sample_s += m["time/sample_s"]
                update_s += m["time/update_s"]
                peak, cuda_peak = max(peak, p), max(cuda_peak, cp)
            _, whole, whole_cuda = measure_update(trainer, one_backward_over_all_timesteps)
            images = args.repeats * args.group_size
            peaks[steps], whole_peaks[steps] = peak, whole
            print(f"T={steps}: rollout {images / sample_s:.2f} images/s, update {images / update_s:.2f} images/s; "
                  f"live saved-for-backward at the peak of a whole update: {peak / 2**20:.2f} MiB "
                  f"(per-timestep backward, {trainer.derived.trained_timesteps} timesteps x "
                  f"{trainer.derived.micro_batches_per_step} micro-batches); "
                  f"negative control, one backward over all {steps} timesteps: {whole / 2**20:.2f} MiB")
            if device.type == "cuda":
                print(f"T={steps}: torch.cuda.max_memory_allocated during the update={cuda_peak} ({cuda_peak / GIB:.2f} GiB), "
                      f"one backward over all timesteps={whole_cuda} ({whole_cuda / GIB:.2f} GiB); includes the "
                      "resident model weights, excludes text encoders and reward models (not loaded here)")
            trainer.runner.close()
            del trainer, pipe
            gc.collect()
    print(f"LoRA rank {c.model.lora_rank}: {lora_params} trainable LoRA parameters (the same at every T)")
    lo, hi = min(peaks), max(peaks)
    print(f"whole_graph_mem_ratio_T{hi}_T{lo}={whole_peaks[hi] / max(1, whole_peaks[lo]):.3f}")
    print(f"update_mem_ratio_T{hi}_T{lo}={peaks[hi] / max(1, peaks[lo]):.3f}")
    return 0

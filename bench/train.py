"""``emofeedback2 bench train``: GRPO rollout/update throughput and backward memory vs sampling steps.

On a tiny random pipeline (default) it runs real GRPO steps of :class:`GRPOTrainer` for T=4 and
T=16 sampling steps and reports
- rollout and update throughput (images/s),
- the bytes of tensors saved for backward, counted exactly with
  ``torch.autograd.graph.saved_tensors_hooks`` (unique storages per autograd graph): the peak held
  during one GRPO update with per-timestep backward, and, for contrast, what one backward through
  all trained timesteps of a micro-batch would hold (the sum over its per-timestep graphs).
Last line: ``update_mem_ratio_T16_T4=<peak(T=16)/peak(T=4)>`` (≈1: memory flat in T).

``--real-size sd3.5-medium --device cuda --dtype float16 --resolution 512`` builds the real SD3.5
Medium MMDiT (24 layers, width 1536, dual attention in layers 0-12, rms qk-norm, random weights)
plus a real-size SD3 VAE, with random prompt-embedding tensors of the real shapes in place of the
text encoders (CLIP-L/G + T5: context [B, 333, 4096], pooled [B, 2048]); it prints images/s and
``torch.cuda.max_memory_allocated`` and whether the run fits in 24 GB.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from types import SimpleNamespace

SD35_MEDIUM = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD3_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    shift_factor=0.0609, scaling_factor=1.5305, use_quant_conv=False, use_post_quant_conv=False,
)
TEXT_TOKENS = 77 + 256  # CLIP (77) and T5 (256) sequences concatenated, as SD3 pipelines do
GIB = 1024**3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=["sd15", "sdxl", "sd3"], default="sd15", help="tiny pipeline to use")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 16], help="sampling steps to compare")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="GRPO steps timed per T (after one warm-up)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 avoids oversubscription)")
    parser.add_argument("--real-size", choices=["sd3.5-medium"], default=None,
                        help="benchmark the real-size architecture with random weights instead of a tiny model")
    parser.add_argument("--lora-rank", type=int, default=32)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--size-override", default="", help=argparse.SUPPRESS)  # JSON; tests shrink the real config
    from .train_plan import add_plan_arguments  # memory plan of the one-GPU recipe (issue 15)

    add_plan_arguments(parser)


class SavedBytes:
    """Counts bytes saved for backward per autograd graph (unique storages), and the peak."""

    def __init__(self):
        self.current = 0
        self.peak = 0
        self.graphs: list[int] = []
        self._seen: set[int] = set()

    def new_graph(self) -> None:
        if self._seen:
            self.graphs.append(self.current)
        self.current = 0
        self._seen = set()

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self._seen:
            self._seen.add(key)
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor

    def finish(self) -> None:
        self.new_graph()


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
    from ..engines.diffusers_backend import DiffusersGeneratorConfig, load_pipeline
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

    from ..training.config import RewardSpec, TrainConfig
    from ..engines.devices import DTYPES
    from ..training.trainer import GRPOTrainer

    if getattr(args, "plan", False):
        from .train_plan import run_plan

        return run_plan(args)
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
    with tempfile.TemporaryDirectory() as tmp:
        for steps in args.steps:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            pipe = _real_pipe(override, device, dtype) if real else _tiny_pipe(arch, f"{tmp}/{arch}", device, args.dtype)
            c = TrainConfig()
            c.model.pretrained = "in-memory"
            c.model.dtype = args.dtype
            c.model.lora_rank = args.lora_rank if real else 4
            c.model.lora_alpha = float(c.model.lora_rank)
            c.model.adapter_hidden = 0 if real else 16
            c.model.gradient_checkpointing = args.gradient_checkpointing
            c.sampling.steps = steps
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
            trainer.train_step()  # warm-up (allocations, kernels)
            counter = SavedBytes()
            original = trainer._timestep_loss

            def counted(*a, _orig=original, _counter=counter, **kw):
                _counter.new_graph()
                with torch.autograd.graph.saved_tensors_hooks(_counter.pack, _counter.unpack):
                    return _orig(*a, **kw)

            trainer._timestep_loss = counted
            sample_s = update_s = 0.0
            for _ in range(args.repeats):
                m = trainer.train_step()
                sample_s += m["time/sample_s"]
                update_s += m["time/update_s"]
            counter.finish()
            images = args.repeats * args.group_size
            per_sample_graphs = counter.graphs[: trainer.derived.trained_timesteps]
            peaks[steps] = counter.peak
            print(f"T={steps}: rollout {images / sample_s:.2f} images/s, update {images / update_s:.2f} images/s, "
                  f"peak saved-for-backward {counter.peak / 2**20:.2f} MiB per update (per-timestep backward); "
                  f"one backward over all {len(per_sample_graphs)} steps would hold "
                  f"{sum(per_sample_graphs) / 2**20:.2f} MiB")
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated()
                print(f"T={steps}: torch.cuda.max_memory_allocated={peak} ({peak / GIB:.2f} GiB); "
                      f"fits in 24 GB: {'yes' if peak < 24e9 else 'no'}")
            trainer.runner.close()
            # The patched method closes a reference cycle through the trainer: break it and collect,
            # or the previous run's model would still be allocated while the next one is measured.
            del trainer, pipe, original, counted
            gc.collect()
    lo, hi = min(peaks), max(peaks)
    print(f"update_mem_ratio_T{hi}_T{lo}={peaks[hi] / max(1, peaks[lo]):.3f}")
    return 0

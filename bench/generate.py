"""``emofeedback2 bench generate``: overhead of the diffusers backend over calling the pipeline directly.

Both paths make the same images: same pipeline object, prompts, negative prompt, per-image seeds
(one CPU ``torch.Generator`` each), steps, guidance and size. The backend path goes through
:class:`DiffusersGenerator.generate` (its own ``encode_prompt`` call, embeddings passed to the
pipeline, per-step progress callback, conversion to a float32 ``[B,H,W,3]`` CPU tensor); the direct
path is ``pipe(prompt=..., output_type="pt")`` plus the same move to CPU. After a warm-up, the two
paths alternate for ``--repeats`` rounds and the medians are compared.

Default: the tiny SD1.5-like pipeline built locally (CPU). ``--real-size --device cuda --dtype
float16`` builds the real SD1.5 (``--arch sdxl``: SDXL; ``--arch sd3``: SD3.5-Medium without T5) architecture with random
weights on the GPU. ``--model DIR`` uses a diffusers folder instead. The last line is
``backend_overhead=<ratio>`` (backend median / direct median; goal ≤ 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="sd15", choices=["sd15", "sdxl", "sd3"], help="pipeline family (default sd15)")
    parser.add_argument("--model", default=None, help="a diffusers folder or hub id instead of a built pipeline")
    parser.add_argument("--real-size", action="store_true",
                        help="real-size architecture with random weights (sd15, sdxl, or sd3 = SD3.5 Medium without T5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--batch", type=int, default=2, help="images per call, one seed each (default 2)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (default 4)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32; use 512 for real size)")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance scale (default 5)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds per path (default 9)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per path first (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: 1 on CPU, where the tiny pipeline's timings are "
                             "otherwise dominated by thread scheduling noise; torch's choice on a GPU)")


def _pipeline(args, workdir: str):
    from ..engines.generation.diffusers_backend import DiffusersGeneratorConfig, load_pipeline, resolve_device, resolve_dtype
    from ..tiny_models.diffusion import build_real_size_pipeline, build_tiny_pipeline

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.real_size:
        pipe = build_real_size_pipeline(args.arch, device=str(device), dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe, f"real-size {args.arch} (random weights)"
    model = args.model or str(build_tiny_pipeline(f"{workdir}/{args.arch}", arch=args.arch, seed=0))
    pipe = load_pipeline(DiffusersGeneratorConfig(model=model), device, dtype)
    return pipe, (args.model or f"tiny {args.arch} (built locally)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..engines.generation.diffusers_backend import DiffusersGenerator
    from ..engines.generation.protocol import GenerationRequest

    threads = args.threads or (1 if args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    prompts = [f"a small house by a lake, picture {i}" for i in range(args.batch)]
    seeds = [1000 + i for i in range(args.batch)]
    negative = "blurry, low quality"
    with tempfile.TemporaryDirectory() as workdir:
        pipe, label = _pipeline(args, workdir)
        generator = DiffusersGenerator(pipe, max_batch_size=args.batch)
        request = GenerationRequest(prompts=prompts, seeds=seeds, negative_prompt=negative, width=args.size,
                                    height=args.size, steps=args.steps, cfg=args.cfg)
        cuda = pipe._execution_device.type == "cuda"

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize()

        def direct() -> torch.Tensor:
            extra = {"max_sequence_length": generator.max_sequence_length} if generator.arch == "sd3" else {}
            with torch.no_grad():
                out = pipe(prompt=prompts, negative_prompt=[negative] * len(prompts), height=args.size,
                           width=args.size, num_inference_steps=args.steps, guidance_scale=args.cfg,
                           generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pt",
                           **extra).images
            return out.float().permute(0, 2, 3, 1).cpu()

        def ours() -> torch.Tensor:
            return generator.generate(request, progress=lambda done, total: None)

        def timed(fn):
            sync()
            start = time.perf_counter()
            result = fn()
            sync()
            return time.perf_counter() - start, result

        for _ in range(args.warmup):
            direct()
            ours()
        times = {"direct": [], "backend": []}
        images = {}
        for round_ in range(args.repeats):
            order = (("direct", direct), ("backend", ours)) if round_ % 2 == 0 else (("backend", ours), ("direct", direct))
            for name, fn in order:
                seconds, images[name] = timed(fn)
                times[name].append(seconds)

    med_direct = statistics.median(times["direct"])
    med_backend = statistics.median(times["backend"])
    diff = (images["direct"] - images["backend"]).abs().max().item()
    print(f"pipeline: {label}; device {args.device}, dtype {args.dtype}, {torch.get_num_threads()} CPU threads")
    print(f"batch {args.batch} × {args.size}px, {args.steps} steps, cfg {args.cfg}; warm-up {args.warmup}, repeats {args.repeats}")
    for name in ("direct", "backend"):
        values = times[name]
        print(f"{name:>8}: median {statistics.median(values) * 1000:.1f} ms  (min {min(values) * 1000:.1f}, "
              f"max {max(values) * 1000:.1f}; {args.batch / statistics.median(values):.2f} images/s)")
    if cuda:
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"max |backend - direct| pixel difference: {diff:.2e}")
    # Each round times both paths back to back, so a slow spell of the machine hits the pair alike:
    # the median of per-round ratios is steadier than the ratio of the two medians.
    paired = statistics.median(b / d for b, d in zip(times["backend"], times["direct"]))
    print(f"ratio of medians: {med_backend / med_direct:.3f}")
    print(f"backend_overhead={paired:.3f}")
    return 0

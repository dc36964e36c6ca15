"""``emofeedback2 bench gpu``: the real-size figures of this project in one prepared run on one GPU.

GPU time comes in short slots on machines that reach no network, so this command builds everything
it measures from the real configs with random weights on the device (no downloads) and spends the
slot measuring. Its sections run in this order, each printing ``key=value`` lines, and each survives
the failure of the one before (an out-of-memory error is a figure, ``<section>_oom=1``, not a crash):

1. ``scorer`` — the judge (Qwen2.5-VL-7B, bf16) reads a batch of 8 images of 1024²: expected-value
   reading against one prefill pass of the same prompt and images (``ev_over_prefill``), images/s,
   peak memory;
2. ``grpo`` — three GRPO steps of the shipped SD3.5-Medium recipe with that judge as the reward
   (prompt cache filled with random embeddings of the real shapes): ``torch.cuda.max_memory_allocated``
   per phase (rollout, reward, update) beside the memory plan's figure for the same phase, and
   seconds per step;
3. ``judge_train`` — one judge-training step of a LoRA on the 7B judge with gradient checkpointing,
   for both objectives (soft labels, GRPO): memory and seconds;
4. ``fp16`` — the fp16 path with accelerate's grad scaler: an overflow forced into one update is
   skipped (``fp16_skipped_updates``), and the run goes on;
5. ``family`` — where time remains, the GRPO figures of a 2026 model family (skipped cleanly when the
   trainer has no such family).

``--budget-s`` is the device time this command may use: a section whose expected cost does not fit
in what is left is skipped (``<section>_skipped=budget``) and the figures so far stay printed.
``--device cpu --tiny`` runs the very same code on tiny models: the test suite runs it, so the script
cannot rot between GPU slots. On the CPU, memory figures print as ``n/a`` (no allocator statistics).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import traceback
from typing import Any, Callable

from . import gpu_grpo, gpu_sections

#: (name, function, expected seconds at real size, at tiny size): the order the sections run in
SECTIONS: tuple[tuple[str, Callable[[Any], None], float, float], ...] = (
    ("scorer", gpu_sections.scorer_section, 90.0, 5.0),
    ("grpo", gpu_grpo.grpo_section, 240.0, 20.0),
    ("judge_train", gpu_sections.judge_train_section, 120.0, 10.0),
    ("fp16", gpu_sections.fp16_section, 60.0, 10.0),
    ("family", gpu_grpo.family_section, 150.0, 20.0),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu with --tiny for the test)")
    parser.add_argument("--tiny", action="store_true", help="tiny models instead of the real-size architectures")
    parser.add_argument("--budget-s", type=float, default=540.0,
                        help="seconds this command may use; sections that would not fit are skipped (default 540)")
    parser.add_argument("--sections", default=",".join(name for name, *_ in SECTIONS),
                        help="comma-separated sections to run, in the fixed order (default: all)")
    parser.add_argument("--family", default="flux.2-klein-4b",
                        help="the model family of the last section (a --real-size name of bench train)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (tiny models: 1 avoids oversubscription)")


class Budget:
    """Seconds left of ``seconds`` since construction."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


class Figures:
    """Prints ``key=value`` lines at once (a killed run keeps what it printed) and keeps them for the summary."""

    def __init__(self):
        self.values: dict[str, Any] = {}

    def __call__(self, key: str, value: Any) -> None:
        if isinstance(value, float):
            value = f"{value:.4g}"
        self.values[key] = value
        print(f"{key}={value}", flush=True)


class Context:
    """What every section gets: the device, the size, the budget, a scratch folder, shared models."""

    def __init__(self, device: str, tiny: bool, budget: Budget, workdir: str, figures: Figures, family: str):
        import torch

        self.device = torch.device(device)
        self.tiny = tiny
        self.budget = budget
        self.workdir = workdir
        self.emit = figures
        self.family = family
        self.shared: dict[str, Any] = {}  # models built once and reused by later sections (the 7B judge)
        self.small_sizes = tiny  # recipes shrunk to tiny sizes (tests also use it on real-size code paths)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        import torch

        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> Any:
        """Peak allocated GiB since the last :meth:`reset_peak`, or ``"n/a"`` off CUDA."""
        import torch

        if not self.cuda:
            return "n/a"
        self.sync()
        return torch.cuda.max_memory_allocated(self.device) / 2**30


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _free(ctx: Context) -> None:
    import torch

    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


def run(args: argparse.Namespace) -> int:
    import torch

    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    known = [name for name, *_ in SECTIONS]
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        print(f"error: unknown section(s) {unknown}; choose from {known}")
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device} but no CUDA GPU is available here (use --device cpu --tiny to try it)")
        return 2
    if not args.device.startswith("cuda") and not args.tiny:
        print("error: real-size sections need a GPU; on the CPU add --tiny")
        return 2
    torch.set_num_threads(max(1, args.threads))
    figures = Figures()
    budget = Budget(args.budget_s)
    with tempfile.TemporaryDirectory(prefix="emofeedback2_bench_gpu_") as workdir:
        ctx = Context(args.device, args.tiny, budget, workdir, figures, args.family)
        figures("device", torch.cuda.get_device_name(ctx.device) if ctx.cuda else "cpu")
        figures("size", "tiny" if args.tiny else "real")
        figures("torch", torch.__version__)
        done = []
        for name, section, real_s, tiny_s in SECTIONS:
            if name not in chosen:
                continue
            need = tiny_s if args.tiny else real_s
            if budget.left() < need:
                figures(f"{name}_skipped", f"budget ({budget.left():.0f} s left, needs ~{need:.0f} s)")
                continue
            started = time.monotonic()
            try:
                section(ctx)
                done.append(name)
            except Exception as exc:  # noqa: BLE001 - every section's failure is a figure, the next one still runs
                if _is_oom(exc):
                    figures(f"{name}_oom", 1)
                figures(f"{name}_error", _one_line(exc))
                if not _is_oom(exc):
                    traceback.print_exc(limit=4)
            finally:
                _free(ctx)
                figures(f"{name}_seconds", time.monotonic() - started)
        figures("sections_done", ",".join(done) or "none")
        figures("seconds_total", budget.seconds - budget.left())
    return 0

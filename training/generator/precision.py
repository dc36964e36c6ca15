"""Who owns mixed precision in GRPO training: accelerate, alone.

accelerate's ``mixed_precision`` (from ``accelerate launch``/its config, or chosen here) sets the
autocast of the prepared model and, for fp16, the one gradient scaler: ``accelerator.backward``
scales the loss, ``accelerator.clip_grad_norm_`` unscales before clipping, and the prepared
optimizer steps through the scaler (skipping steps with inf/NaN gradients). The trainer never
runs a scaler of its own. Combinations that would need a second mechanism, or that mix two
half-precision types, are refused with the fix.
"""

from __future__ import annotations

import os
from typing import Any

from .config import ConfigError, TrainConfig

SUPPORTED = ("no", "fp16", "bf16")
# model.dtype -> the accelerate mixed_precision values it works with on an accelerator device
COMPATIBLE = {"float32": ("no", "fp16", "bf16"), "float16": ("fp16",), "bfloat16": ("no", "bf16")}


def make_accelerator(config: TrainConfig) -> Any:
    """An ``Accelerator`` for ``config``; fp16 base weights on a GPU get fp16 mixed precision (its scaler)
    unless ``accelerate launch`` already chose a mixed-precision mode (then that choice is checked)."""
    from accelerate import Accelerator

    cpu = config.device == "cpu"
    chosen = os.environ.get("ACCELERATE_MIXED_PRECISION")
    mixed = None
    if chosen is None and config.model.dtype == "float16" and not cpu:
        mixed = "fp16"
    acc = Accelerator(cpu=cpu, mixed_precision=mixed)
    check_mixed_precision(acc, config.model.dtype)
    return acc


def check_mixed_precision(accelerator: Any, model_dtype: str) -> None:
    """Refuse accelerate mixed-precision settings the trainer cannot honour, naming the fix."""
    mode = str(getattr(accelerator, "mixed_precision", "no") or "no")
    if mode not in SUPPORTED:
        raise ConfigError(
            f"accelerate mixed_precision={mode!r} is not supported by GRPO training; use 'no', 'fp16' or "
            "'bf16' (accelerate config / --mixed_precision)"
        )
    on_cpu = getattr(accelerator, "device", None) is not None and accelerator.device.type == "cpu"
    if on_cpu and model_dtype == "float16":
        return  # CPU: no autocast/scaler in fp16 (accelerate ignores fp16 there); plain fp16 math
    if mode not in COMPATIBLE[model_dtype]:
        if model_dtype == "float16":
            fix = ("fp16 base weights need accelerate's loss scaler: run with mixed_precision fp16 "
                   "(accelerate launch --mixed_precision fp16) or set model.dtype = \"bfloat16\"")
        else:
            fix = (f"model.dtype={model_dtype} under accelerate mixed_precision={mode} would mix two half "
                   f"precisions: set model.dtype = \"{'float16' if mode == 'fp16' else 'bfloat16'}\" "
                   "or change the accelerate mixed_precision")
        raise ConfigError(fix)


def cpu_accelerator_with_grad_scaler(**scaler_kwargs: Any) -> Any:
    """A CPU ``Accelerator`` that runs the fp16 scaler path, for checks of that path without a GPU.

    accelerate makes its fp16 grad scaler only on accelerators. This gives a CPU Accelerator a real
    ``torch.amp.GradScaler("cpu")`` before ``prepare`` (its optimizer then steps through it and skips
    updates with inf/NaN gradients, as on a GPU) and lets ``unscale_gradients`` unscale as accelerate
    does for fp16 (it gates that on a GPU's native AMP). Used by ``bench gpu --device cpu --tiny`` and tests.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", **scaler_kwargs)

    def unscale_gradients(optimizer: Any = None) -> None:
        for opt in acc._optimizers:
            while isinstance(opt, AcceleratedOptimizer):
                opt = opt.optimizer
            acc.scaler.unscale_(opt)

    acc.unscale_gradients = unscale_gradients
    return acc


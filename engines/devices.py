"""Device and dtype names → torch objects, one place for every engine, the trainer and benchmarks."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


def resolve_device(device: str = "auto", error: type[Exception] = ValueError) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else must be a usable torch device.

    ``error`` is the exception class the caller's users expect (e.g. the engine's load error).
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise error(f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise error(f"device={device!r} asked for CUDA but no CUDA GPU is available; use device='cpu' or 'auto'")
    return resolved


def resolve_dtype(dtype: str, device: torch.device, auto_cuda: torch.dtype = torch.bfloat16,
                  error: type[Exception] = ValueError) -> torch.dtype:
    """``"auto"`` is ``auto_cuda`` on a GPU (bfloat16 falls back to float16 where unsupported), else
    float32; other names come from :data:`DTYPES`."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        if auto_cuda == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return torch.float16
        return auto_cuda
    if dtype not in DTYPES:
        raise error(f"dtype={dtype!r} is not supported; use 'auto' or one of {', '.join(DTYPES)}")
    return DTYPES[dtype]

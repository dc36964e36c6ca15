"""Atomic, resumable training checkpoints.

A checkpoint is a folder ``step-000123/`` holding the trainable weights (LoRA + emotion adapter,
safetensors), ``training_state.pt`` (optimizer, grad scaler, EMA, RNG states; plain tensors and
numbers, loaded with ``weights_only=True``) and ``state.json`` (step, config). It is written into a
temporary folder and moved into place with ``os.replace``; only then is the ``latest`` pointer file
(also temp + replace) switched to it. A crash at any moment leaves ``latest`` naming a complete
checkpoint (or nothing).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..engines.errors import UserError

LATEST = "latest"
WEIGHTS = "trainable.safetensors"
STATE = "training_state.pt"
META = "state.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the model being resumed."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    root: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and point ``latest`` at it."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    (tmp / META).write_text(json.dumps({**meta, "step": step}, indent=2, default=str), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        old = root / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    _write_text_atomic(root / LATEST, name)
    _prune(root, keep, protect=name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # leftovers of a crashed writer
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Optional[Path]:
    """The folder ``latest`` points at, or None when there is no complete checkpoint."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text(encoding="utf-8").strip()
    if not all((path / f).is_file() for f in (WEIGHTS, STATE, META)):
        raise CheckpointError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} to start over")
    return path


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, training state, meta) of a checkpoint folder."""
    from safetensors.torch import load_file

    path = Path(path)
    for f in (WEIGHTS, STATE, META):
        if not (path / f).is_file():
            raise CheckpointError(f"{path} is not a complete checkpoint: {f} is missing")
    weights = load_file(str(path / WEIGHTS))
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    meta = json.loads((path / META).read_text(encoding="utf-8"))
    return weights, state, meta
